"""A ``serve-tune`` result as a study folder: what the dashboard's Studies page and the HTML report show of it.

``paratune serve-tune ... --out DIR`` writes the command's JSON as ``DIR/study.json`` (kind ``serve-tune``) with
tables (the chosen deployment, its latency percentiles from the analytic model and from the simulator, the Pareto
front) and figures (tokens/s per GPU against tokens/s per user with the TPOT target as a line, against TTFT with the
TTFT target, and the simulated latency distributions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import StudyTable, write_study

KIND = "serve-tune"
VERSION = 1


def write_serve_tune(out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` (serve-tune's JSON) as a study folder; returns the study data."""
    best = result.get("deployment")
    summary = [f"{result['model']} on {result['platform']} ({result['profile']})"]
    if best is None:
        summary.append(f"No deployment: {result.get('reason', '')}")
    else:
        pools = "; ".join(
            f"{p['role']} {p['replicas']} x TP{p['tp']} PP{p['pp']} (batch cap {p['max_num_seqs']}, "
            f"token budget {p['max_batched_tokens']})"
            for p in best["pools"]
        )
        summary.append(f"Chosen: {pools}, {best['engine']}, {best['gpus']} GPUs.")
        summary.append(
            f"{result['tokens_per_s_per_gpu']:.1f} tokens/s per GPU, {result['tokens_per_s_per_user']:.1f} tokens/s "
            f"per user; meets the SLO: {result['meets_slo']}."
        )
    data = {"kind": KIND, "version": VERSION, **result, "summary": summary}
    write_study(out_dir, data, serve_tune_tables(data), serve_tune_figures(data), "serve-tune")
    return data


def serve_tune_tables(data: dict[str, Any]) -> list[StudyTable]:
    tables = []
    dep = data.get("deployment")
    if dep is not None:
        tables.append(
            StudyTable(
                "deployment",
                "Chosen deployment",
                ["role", "replicas", "tp", "pp", "max_num_seqs", "max_batched_tokens"],
                [
                    [p["role"], p["replicas"], p["tp"], p["pp"], p["max_num_seqs"], p["max_batched_tokens"]]
                    for p in dep["pools"]
                ],
            )
        )
        rows = []
        for source, m in (("analytic", data.get("analytic")), ("simulated", data.get("simulated"))):
            if m:
                rows.append(
                    [
                        source,
                        *(m["ttft_ms"].get(k) for k in ("p50", "p90", "p99")),
                        *(m["tpot_ms"].get(k) for k in ("p50", "p90", "p99")),
                        m["tokens_per_s_per_gpu"],
                    ]
                )
        tables.append(
            StudyTable(
                "latency",
                "Latency percentiles (ms) and throughput of the chosen deployment",
                ["model", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p90", "tpot_p99", "tokens_s_gpu"],
                rows,
            )
        )
    tables.append(
        StudyTable(
            "pareto_front",
            "Pareto front: tokens/s per GPU against tokens/s per user",
            ["deployment", "load", "tokens_s_gpu", "tokens_s_user", "ttft_p90_ms", "tpot_p90_ms"],
            [
                [
                    p["label"],
                    p["load"],
                    p["tokens_per_s_per_gpu"],
                    p["tokens_per_s_per_user"],
                    p["ttft_ms"].get("p90"),
                    p["tpot_ms"].get("p90"),
                ]
                for p in data.get("pareto_front", [])
            ],
        )
    )
    return tables


def serve_tune_figures(data: dict[str, Any]) -> list[Any]:
    import plotly.graph_objects as go

    figs = []
    slo = data.get("slo") or {}
    front = data.get("pareto_front", [])
    fig = go.Figure(
        go.Scatter(
            x=[p["tokens_per_s_per_user"] for p in front],
            y=[p["tokens_per_s_per_gpu"] for p in front],
            text=[p["label"] for p in front],
            mode="lines+markers",
            name="Pareto front",
        )
    )
    if slo.get("tpot_ms"):
        fig.add_vline(x=1000.0 / slo["tpot_ms"], line_dash="dash", annotation_text="TPOT target")
    _mark_best(fig, data, "tokens_per_s_per_user")
    fig.update_layout(
        title="tokens/s per GPU against tokens/s per user",
        xaxis_title="tokens/s per user",
        yaxis_title="tokens/s per GPU",
    )
    figs.append(fig)
    ttft_front = data.get("ttft_front", [])
    key = f"p{(slo.get('percentile') or 90.0):g}"
    fig2 = go.Figure(
        go.Scatter(
            x=[p["ttft_ms"].get(key, p["ttft_ms"].get("p90")) for p in ttft_front],
            y=[p["tokens_per_s_per_gpu"] for p in ttft_front],
            text=[p["label"] for p in ttft_front],
            mode="lines+markers",
            name="Pareto front",
        )
    )
    if slo.get("ttft_ms"):
        fig2.add_vline(x=slo["ttft_ms"], line_dash="dash", annotation_text="TTFT target")
    fig2.update_layout(
        title=f"tokens/s per GPU against TTFT {key}", xaxis_title=f"TTFT {key} (ms)", yaxis_title="tokens/s per GPU"
    )
    figs.append(fig2)
    cdf = (data.get("simulated") or {}).get("cdf")
    if cdf:
        fig3 = go.Figure()
        for name in ("ttft_ms", "tpot_ms"):
            values = cdf.get(name, [])
            if values:
                n = len(values) - 1
                fig3.add_trace(go.Scatter(x=values, y=[i / n for i in range(n + 1)], name=name, mode="lines"))
                target = slo.get(name)
                if target:
                    fig3.add_vline(x=target, line_dash="dash", annotation_text=f"{name} target")
        fig3.update_layout(
            title="Simulated latency distributions (CDF)", xaxis_title="ms", yaxis_title="fraction", xaxis_type="log"
        )
        figs.append(fig3)
    return figs


def _mark_best(fig: Any, data: dict[str, Any], x_key: str) -> None:
    import plotly.graph_objects as go

    if data.get("deployment") is None:
        return
    fig.add_trace(
        go.Scatter(
            x=[data[x_key]],
            y=[data["tokens_per_s_per_gpu"]],
            mode="markers",
            name="chosen",
            marker={"size": 14, "symbol": "star"},
        )
    )
