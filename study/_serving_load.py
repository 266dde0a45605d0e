"""Serving under a changing load: which deployment decisions a run time must take, which a compiler can fix once.

The static-vs-runtime question of :mod:`._runtime`, asked again with arrivals. A cluster of ``G`` GPUs serves a
traffic (prompt and output lengths, Poisson arrivals) whose rate moves between a trough and the peak the cluster
can carry within the SLO. At each load the **oracle** is the deployment (on at most ``G`` GPUs) with the lowest
*stretch*: the largest ratio of a latency percentile to its SLO target (``max(TTFT_p / TTFT_slo, TPOT_p /
TPOT_slo)``; without an SLO, the mean request's end-to-end latency), i.e. what a run time that re-deploys as the
load changes would reach. The **static** deployment is the one candidate that minimises the worst ratio of its
stretch to the oracle's over the loads: what a compiler fixes once. Its **regret** at a load is
``stretch_static / stretch_oracle - 1``.

The decisions of a deployment: the mode (aggregated or disaggregated), the instance shape (TP, PP per pool), the
batch cap, the token budget (chunk), and the prefill:decode ratio of a disaggregated deployment. For each
decision, the study measures how much of the static regret re-deciding **that one alone** at each load removes
(the others kept as static): a decision whose re-decision removes most of the regret is a run-time decision.

Candidates: every aggregated shape of the grid with replicas filling the cluster, and every disaggregated pair of
PP-1 shapes (prefill TP and token budget, decode TP and batch cap) at every prefill:decode split that fills the
cluster to within one instance. Priced by the steady-state analytic model (:func:`paratune.serving.analytic`);
the chosen deployments can be replayed in the simulator with ``paratune serve-tune``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..search._serve import Evaluator, ServingProblem, ServingSpace, instances, search_deployments
from ..serving import Deployment, Pool, ServingMetrics
from ._common import StudyTable, fmt_pct, provenance, write_study

KIND = "serving-load"
VERSION = 1
#: Loads, as fractions of the most the cluster carries within the SLO.
DEFAULT_LOADS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.95)
#: What a deployment decides, and the decisions re-decided together at run time (the others kept as static):
#: ``layout`` is a re-deployment (mode, instance shapes, prefill:decode split), ``ratio`` moves instances between
#: the prefill and decode roles (shapes kept), ``knobs`` are the engine's batch cap and token budget together.
KEYS: tuple[str, ...] = ("mode", "shape", "ratio", "batch_cap", "token_budget")
DECISIONS: dict[str, frozenset[str]] = {
    "layout": frozenset({"mode", "shape", "ratio"}),
    "ratio": frozenset({"ratio"}),
    "batch_cap": frozenset({"batch_cap"}),
    "token_budget": frozenset({"token_budget"}),
    "knobs": frozenset({"batch_cap", "token_budget"}),
}


@dataclass(frozen=True)
class _Choice:
    """A candidate deployment and the value of each decision (for the one-decision-at-a-time re-decisions)."""

    deployment: Deployment

    def decisions(self) -> dict[str, Any]:
        pools = self.deployment.pools
        if len(pools) == 1:
            p = pools[0]
            return {
                "mode": "agg",
                "shape": (p.tp, p.pp),
                "batch_cap": p.max_num_seqs,
                "token_budget": p.max_batched_tokens,
                "ratio": None,
            }
        pre, dec = pools
        return {
            "mode": "disagg",
            "shape": (pre.tp, pre.pp, dec.tp, dec.pp),
            "batch_cap": dec.max_num_seqs,
            "token_budget": pre.max_batched_tokens,
            "ratio": (pre.replicas, dec.replicas),
        }

    def label(self) -> str:
        return " + ".join(
            f"{p.role} {p.replicas}xTP{p.tp}"
            + (f"PP{p.pp}" if p.pp > 1 else "")
            + f" b{p.max_num_seqs} c{p.max_batched_tokens}"
            for p in self.deployment.pools
        )


def _stretch(problem: ServingProblem, m: ServingMetrics | None) -> float:
    """Latency relative to the SLO (lower is better); inf when saturated or not evaluable."""
    if m is None or m.saturated:
        return math.inf
    slo = problem.slo
    if slo is None or (slo.ttft_ms is None and slo.tpot_ms is None):
        return m.ttft_ms["mean"] + problem.traffic.output.mean * m.tpot_ms["mean"]
    key = f"p{slo.percentile:g}"
    parts = []
    if slo.ttft_ms:
        parts.append(m.ttft_ms.get(key, m.ttft_ms["p90"]) / slo.ttft_ms)
    if slo.tpot_ms:
        parts.append(m.tpot_ms.get(key, m.tpot_ms["p90"]) / slo.tpot_ms)
    return max(parts)


def candidates(problem: ServingProblem, space: ServingSpace | None = None) -> list[_Choice]:
    """Aggregated shapes filling the cluster, and disaggregated PP-1 pairs at every split filling it."""
    space = space or problem.space()
    gpus = problem.gpus
    proto = Deployment((Pool(),), engine=problem.engine, dtype=problem.dtype, kv_dtype=problem.kv_dtype)
    out = [
        _Choice(replace(proto, pools=(replace(pool, replicas=gpus // pool.gpus_per_instance),)))
        for pool in instances(space, "mixed", gpus)
    ]
    if "disagg" in space.modes and gpus >= 2:
        budgets = sorted({min(space.max_batched_tokens), max(space.max_batched_tokens)})
        for p_tp in space.tp:
            for d_tp in space.tp:
                for x in range(1, gpus // p_tp + 1):
                    y = (gpus - x * p_tp) // d_tp
                    if y < 1 or gpus - x * p_tp - y * d_tp >= min(p_tp, d_tp):
                        continue
                    for chunk in budgets:
                        for seqs in space.max_num_seqs:
                            pre = Pool(
                                "prefill",
                                tp=p_tp,
                                replicas=x,
                                max_num_seqs=max(space.max_num_seqs),
                                max_batched_tokens=chunk,
                            )
                            dec = Pool(
                                "decode",
                                tp=d_tp,
                                replicas=y,
                                max_num_seqs=seqs,
                                max_batched_tokens=max(space.max_batched_tokens),
                            )
                            out.append(_Choice(replace(proto, pools=(pre, dec))))
    return out


def run_serving_load_study(
    problem: ServingProblem,
    *,
    loads: tuple[float, ...] = DEFAULT_LOADS,
    space: ServingSpace | None = None,
    out_dir: Path | None = None,
    say: Any = None,
) -> dict[str, Any]:
    """Run the study (see the module docstring); returns study.json's data and writes the folder when given."""
    if not loads or any(not (0 < f <= 1) for f in loads):
        raise ValueError(f"loads must be fractions in (0, 1], got {list(loads)}")
    started = time.perf_counter()
    say = say or (lambda _line: None)
    plat = problem.resolved_platform()
    peak = search_deployments(
        problem.model,
        plat,
        problem.traffic,
        problem.slo,
        gpus=problem.gpus,
        engine=problem.engine,
        dtype=problem.dtype,
        kv_dtype=problem.kv_dtype,
        space=space,
    )
    if peak.best is None:
        raise ValueError(f"no deployment of {problem.gpus} GPUs serves this traffic: {peak.reason}")
    peak_rate = peak.best.load
    say(f"peak: {peak_rate:.3g} requests/s on {peak.best.deployment.gpus} GPUs")
    ev: Evaluator = problem.evaluator()
    choices = candidates(problem, space)
    say(f"{len(choices)} candidate deployments x {len(loads)} loads")
    rates = [f * peak_rate for f in loads]
    stretch: list[list[float]] = []  # [candidate][load]
    for c in choices:
        stretch.append([_stretch(problem, ev.at(c.deployment, r)) for r in rates])
    oracle = [min(range(len(choices)), key=[row[j] for row in stretch].__getitem__) for j in range(len(rates))]
    best = [stretch[oracle[j]][j] for j in range(len(rates))]

    def worst_ratio(i: int) -> float:
        return max(stretch[i][j] / best[j] for j in range(len(rates)))

    static = min(range(len(choices)), key=worst_ratio)
    regret = [stretch[static][j] / best[j] - 1 for j in range(len(rates))]
    static_dec = choices[static].decisions()
    per_decision: dict[str, list[float]] = {}
    decided = [c.decisions() for c in choices]
    for d, free in DECISIONS.items():
        same = [i for i, dec in enumerate(decided) if all(dec[k] == static_dec[k] for k in KEYS if k not in free)]
        per_decision[d] = [min(stretch[i][j] for i in same) / best[j] - 1 for j in range(len(rates))]
    rows = []
    for j, (f, r) in enumerate(zip(loads, rates, strict=True)):
        rows.append(
            [
                f,
                r,
                choices[oracle[j]].label(),
                best[j],
                stretch[static][j],
                regret[j],
                *(per_decision[d][j] for d in DECISIONS),
            ]
        )
    changes = [k for k in KEYS if len({str(decided[oracle[j]][k]) for j in range(len(rates))}) > 1]
    worst = max(regret)
    removed = {d: 1 - max(per_decision[d]) / worst if worst > 0 else 0.0 for d in DECISIONS}
    ranked = sorted(DECISIONS, key=lambda d: -removed[d])
    summary = [
        f"{problem.model} on {problem.gpus} x {plat.device.name}, prompts {problem.traffic.prompt.mean:g} / outputs "
        f"{problem.traffic.output.mean:g} tokens, loads {', '.join(f'{f:g}' for f in loads)} of the peak "
        f"{peak_rate:.3g} requests/s.",
        f"Static deployment: {choices[static].label()}; worst regret {fmt_pct(worst)} "
        f"(mean {fmt_pct(sum(regret) / len(regret))}).",
        "What the oracle changes with the load: " + (", ".join(changes) if changes else "none") + ".",
        "Share of the worst static regret removed by re-deciding at run time: "
        + ", ".join(f"{d} {fmt_pct(removed[d])}" for d in ranked)
        + ".",
    ]
    data: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "problem": problem.to_dict(),
        "peak_rate": peak_rate,
        "peak_deployment": peak.best.deployment.to_dict(),
        "loads": list(loads),
        "rates": rates,
        "candidates": len(choices),
        "static": {
            "deployment": choices[static].deployment.to_dict(),
            "label": choices[static].label(),
            "regret": regret,
        },
        "oracle": [
            {"deployment": choices[i].deployment.to_dict(), "label": choices[i].label(), "stretch": best[j]}
            for j, i in enumerate(oracle)
        ],
        "per_decision_regret": per_decision,
        "removed": removed,
        "changes": changes,
        "rows": rows,
        "summary": summary,
        "wall_s": time.perf_counter() - started,
        "provenance": provenance(0, plat.profile.name, evaluations=ev.calls),
    }
    if out_dir is not None:
        write_study(out_dir, data, serving_load_tables(data), serving_load_figures(data), "serving under load")
    return data


def serving_load_tables(data: dict[str, Any]) -> list[StudyTable]:
    cols = [
        "load",
        "rate_per_s",
        "oracle",
        "oracle_stretch",
        "static_stretch",
        "static_regret",
        *(f"redecide_{d}" for d in DECISIONS),
    ]
    pct: dict[str, Callable[[Any], str]] = {
        c: fmt_pct for c in cols if c == "static_regret" or c.startswith("redecide_")
    }
    return [
        StudyTable(
            "loads",
            "Oracle and static deployment at each load (regret left when one decision is re-decided)",
            cols,
            data["rows"],
            note="stretch = the largest latency percentile / SLO target (lower is better)",
            formats=pct,
        )
    ]


def serving_load_figures(data: dict[str, Any]) -> list[Any]:
    import plotly.graph_objects as go

    fig = go.Figure()
    loads = data["loads"]
    fig.add_trace(go.Scatter(x=loads, y=data["static"]["regret"], name="static", mode="lines+markers"))
    for d, values in data["per_decision_regret"].items():
        fig.add_trace(go.Scatter(x=loads, y=values, name=f"re-decide {d}", mode="lines+markers"))
    fig.update_layout(
        title="Regret of the static deployment, and with one decision re-decided at run time",
        xaxis_title="load (fraction of the peak)",
        yaxis_title="stretch / oracle - 1",
        yaxis_tickformat=".0%",
    )
    return [fig]
