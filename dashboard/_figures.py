"""Plotly figures and formatted tables, shared by the Dash app and the HTML report.

Tables are plain :class:`Table` values (column names and rows of strings with
their units) so the app renders them as Dash components and the report as escaped
HTML, from the same numbers. User-provided strings (scenario, tuner and campaign
names) go into figures through :func:`text`, which escapes them: Plotly reads
``<b>``-like tags in titles and labels, and a name must show as typed.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

from ..campaign import JobState, Role
from ..costmodel import TECHNIQUE_DEFAULTS
from ._data import (
    BEST_KNOWN,
    GIB,
    PlanView,
    Results,
    TransferRow,
    anytime,
    fmt_pct,
    fmt_seconds,
    fmt_value,
    front,
    leaderboard,
    overall,
    pareto_points,
    unit,
)

PALETTE = qualitative.Plotly + qualitative.D3
KIND_COLORS = {"compute": "#4C78A8", "allreduce": "#F58518", "transfer": "#54A24B"}


def text(value: Any) -> str:
    """A user string made safe for Plotly's pseudo-HTML (shown exactly as typed)."""
    return html.escape(str(value), quote=False)


@dataclass
class Table:
    """A formatted table: header, rows of strings, and a note under it."""

    columns: list[str]
    rows: list[list[str]]
    title: str = ""
    note: str = ""
    row_keys: list[str] = field(default_factory=list)  # e.g. the tuner of each row (for tests and styling)


def _colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


# -- overview --------------------------------------------------------------------------------------


def campaigns_table(results: Results) -> Table:
    rows = []
    for c in results.campaigns:
        created = datetime.fromtimestamp(c.created_at).strftime("%Y-%m-%d %H:%M")
        n = c.counts
        rows.append(
            [
                c.name,
                c.description,
                str(c.total),
                str(n.get("done", 0)),
                str(n.get("running", 0)),
                str(n.get("failed", 0)),
                str(n.get("waiting", 0)),
                created,
                c.output,
                c.storage,
            ]
        )
    cols = ["campaign", "description", "jobs", "done", "running", "failed", "waiting", "created", "run folder", "store"]
    return Table(cols, rows, "Campaigns", row_keys=[c.name for c in results.campaigns])


def scenarios_table(results: Results) -> Table:
    rows, keys = [], []
    for key, s in results.scenarios.items():
        p = s.problem
        limits = ", ".join(f"{k}={v}" for k, v in (p.get("limits") or {}).items()) or "-"
        ref = fmt_value(s.objective, s.reference) + (f" ({s.reference_kind})" if s.reference_kind else "")
        rows.append(
            [
                results.scenario_label(key),
                s.field("model"),
                s.field("platform"),
                s.field("phase"),
                s.objective,
                str(p.get("batch", "")),
                str(p.get("seq", "")),
                str(p.get("context", "")),
                limits,
                str(len(results.jobs_of(key))),
                ref,
            ]
        )
        keys.append(results.scenario_label(key))
    cols = [
        "scenario",
        "model",
        "platform",
        "phase",
        "objective",
        "batch",
        "seq",
        "context",
        "limits",
        "jobs",
        "reference",
    ]
    return Table(cols, rows, "Scenarios", "reference: the dp optimum when certified, else the best value found", keys)


def tuners_table(results: Results) -> Table:
    info: dict[str, dict[str, Any]] = {}
    for j in results.jobs:
        d = info.setdefault(j.tuner, {"name": j.tuner_name, "budgets": set(), "seeds": set(), "states": {}})
        d["budgets"].add("default" if j.budget is None else str(j.budget))
        d["seeds"].add(j.seed)
        d["states"][j.state] = d["states"].get(j.state, 0) + 1
    rows = []
    for tuner, d in info.items():
        states = ", ".join(f"{n} {s}" for s, n in sorted(d["states"].items()))
        rows.append([tuner, d["name"], "/".join(sorted(d["budgets"])), str(len(d["seeds"])), states])
    return Table(["tuner", "registry name", "budget", "seeds", "jobs"], rows, "Tuners", row_keys=list(info))


def failures_table(results: Results) -> Table:
    rows = [
        [results.scenario_label((j.campaign, j.scenario)), j.tuner, str(j.seed), str(j.id), j.error or ""]
        for j in results.jobs
        if j.state == JobState.FAILED
    ]
    return Table(["scenario", "tuner", "seed", "job", "error"], rows, "Failed jobs")


def status_figure(results: Results) -> go.Figure:
    """Jobs per state for each campaign (stacked bars)."""
    fig = go.Figure()
    colors = {"done": "#54A24B", "running": "#4C78A8", "failed": "#E45756", "waiting": "#BAB0AC"}
    names = [text(c.name) for c in results.campaigns]
    for state, color in colors.items():
        fig.add_bar(
            y=names,
            x=[c.counts.get(state, 0) for c in results.campaigns],
            name=state,
            orientation="h",
            marker_color=color,
        )
    fig.update_layout(
        barmode="stack",
        title="Jobs per state",
        xaxis_title="jobs",
        height=160 + 40 * len(names),
        margin=dict(l=10, r=10, t=50, b=40),
    )
    return fig


# -- leaderboard ------------------------------------------------------------------------------------


def leaderboard_table(results: Results, key: tuple[str, str]) -> Table:
    """A scenario's tuners: best and median value, gaps, spread over seeds, evaluations and time to within 1%."""
    s = results.scenarios[key]
    rows, keys = [], []
    for e in leaderboard(results, key):
        reached = f"{e.reached}/{e.done}"
        rows.append(
            [
                e.tuner + (" (optimum)" if e.role == Role.OPTIMUM else ""),
                f"{e.done}/{e.jobs}" + (f", {e.failed} failed" if e.failed else ""),
                fmt_value(s.objective, e.best),
                fmt_value(s.objective, e.median),
                fmt_pct(e.gap_best),
                fmt_pct(e.gap_median),
                fmt_pct(e.spread),
                "-" if e.evals_to_within is None else f"{e.evals_to_within:.0f}",
                fmt_seconds(e.wall_to_within),
                reached,
                "-" if e.evaluations is None else f"{e.evaluations:.0f}",
                fmt_seconds(e.wall_s),
            ]
        )
        keys.append(e.tuner)
    ref = "unknown" if s.reference is None else fmt_value(s.objective, s.reference)
    kind = s.reference_kind or "none"
    what = (
        "the dp optimum (certified)"
        if kind != BEST_KNOWN
        else "the best value found by any tuner (no certified optimum)"
    )
    direction = "higher is better" if s.direction == "maximize" else "lower is better"
    cols = [
        "tuner",
        "jobs done",
        "best",
        "median",
        "gap (best)",
        "gap (median)",
        "spread over seeds",
        "evals to 1%",
        "time to 1%",
        "seeds within 1%",
        "evaluations",
        "wall time",
    ]
    note = (
        f"{s.objective} ({direction}); gaps to the {kind} {ref}: {what}. 'to 1%' = median over seeds of the "
        "evaluations / wall time when the best-so-far first came within 1% (- : half the seeds never did); "
        "spread = (worst - best seed) / reference."
    )
    return Table(cols, rows, results.scenario_label(key), note, keys)


def overall_table(results: Results) -> Table:
    rows, keys = [], []
    for st in overall(results):
        rows.append(
            [
                st.tuner,
                str(st.scenarios),
                f"{st.within}/{st.scenarios}",
                fmt_pct(st.median_gap),
                fmt_pct(st.mean_gap),
                "-" if st.mean_rank is None else f"{st.mean_rank:.2f}",
                str(st.failed),
            ]
        )
        keys.append(st.tuner)
    cols = ["tuner", "scenarios", "within 1%", "median gap", "mean gap", "mean rank", "failed jobs"]
    note = (
        "Over the selected scenarios, each tuner's median value over seeds; gaps to each scenario's reference "
        "(dp optimum when certified, else best known); rank 1 = best on a scenario (ties share)."
    )
    return Table(cols, rows, "Overall", note, keys)


def gap_heatmap(results: Results) -> go.Figure:
    """Median gap (%) of each tuner on each scenario: the leaderboard at a glance."""
    keys = list(results.scenarios)
    tuners = [st.tuner for st in overall(results)]
    z: list[list[float | None]] = []
    labels: list[list[str]] = []
    for t in tuners:
        row, lab = [], []
        for k in keys:
            e = next((e for e in leaderboard(results, k) if e.tuner == t), None)
            g = None if e is None or e.gap_median is None or math.isinf(e.gap_median) else 100 * e.gap_median
            row.append(g)
            lab.append("-" if g is None else f"{g:.1f}%")
        z.append(row)
        labels.append(lab)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[text(results.scenario_label(k)) for k in keys],
            y=[text(t) for t in tuners],
            text=labels,
            texttemplate="%{text}",
            colorscale="RdYlGn_r",
            zmin=0,
            colorbar_title="gap %",
            hovertemplate="%{y} on %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Median gap to the reference (%)",
        height=140 + 32 * len(tuners),
        margin=dict(l=10, r=10, t=50, b=10),
        yaxis_autorange="reversed",
    )
    return fig


# -- anytime curves --------------------------------------------------------------------------------------


def anytime_figure(results: Results, key: tuple[str, str], axis: str = "evaluations") -> go.Figure:
    """Best-so-far against evaluations (log x) or wall time: median line and min-max band per tuner."""
    s = results.scenarios[key]
    name, factor = unit(s.objective)
    curves = anytime(results, key, axis)
    colors = _colors([c.tuner for c in curves])
    fig = go.Figure()
    for c in curves:
        color = colors[c.tuner]
        if c.seeds > 1:
            fig.add_scatter(
                x=c.x + c.x[::-1],
                y=[v * factor for v in c.high + c.low[::-1]],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line_width=0,
                line_shape="hv",
                hoverinfo="skip",
                showlegend=False,
                legendgroup=text(c.tuner),
            )
        fig.add_scatter(
            x=c.x,
            y=[v * factor for v in c.median],
            mode="lines+markers",
            line_shape="hv",
            line_color=color,
            marker_size=4,
            name=f"{text(c.tuner)} ({c.seeds} seed{'s' * (c.seeds > 1)})",
            legendgroup=text(c.tuner),
        )
    if s.reference is not None:
        fig.add_hline(
            y=s.reference * factor,
            line_dash="dot",
            line_color="black",
            annotation_text=f"{s.reference_kind} {fmt_value(s.objective, s.reference)}",
        )
    xt = "evaluations" if axis == "evaluations" else "wall time (s)"
    fig.update_layout(
        title=f"{text(results.scenario_label(key))}: best-so-far vs {xt.split(' (')[0]}",
        xaxis_title=xt,
        yaxis_title=f"{s.objective} ({name})",
        xaxis_type="log",
        height=380,
        margin=dict(l=10, r=10, t=50, b=40),
        legend_title="median, band min-max over seeds",
    )
    return fig


# -- Pareto -------------------------------------------------------------------------------------------------


def pareto_figure(results: Results, key: tuple[str, str]) -> go.Figure:
    """Latency vs peak memory per device: each tuner's Pareto points and the combined front."""
    s = results.scenarios[key]
    name, factor = unit(s.objective)
    points = pareto_points(results, key)
    tuners = list(dict.fromkeys(p.tuner for p in points))
    colors = _colors(tuners)
    fig = go.Figure()
    for t in tuners:
        mine = [p for p in points if p.tuner == t]
        fig.add_scatter(
            x=[p.latency_s * factor for p in mine],
            y=[p.memory_bytes / GIB for p in mine],
            mode="markers",
            name=text(t),
            marker_color=colors[t],
            text=[f"job {p.job}, seed {p.seed}" for p in mine],
        )
    best = front(points)
    if best:
        fig.add_scatter(
            x=[p.latency_s * factor for p in best],
            y=[p.memory_bytes / GIB for p in best],
            mode="lines",
            line_shape="hv",
            line_color="black",
            line_dash="dot",
            name="front of all tuners",
        )
    limit = (s.problem.get("limits") or {}).get("memory_gib")
    if limit:
        fig.add_hline(y=float(limit), line_color="#E45756", annotation_text=f"limit {limit} GiB")
    base = s.objective.split("+")[0]
    fig.update_layout(
        title=f"{text(results.scenario_label(key))}: Pareto front",
        height=420,
        xaxis_title=f"{base} ({name}, log scale)",
        xaxis_type="log",
        yaxis_title="peak memory per device (GiB)",
        margin=dict(l=10, r=10, t=50, b=40),
    )
    return fig


# -- plan view ----------------------------------------------------------------------------------------------


def stages_figure(view: PlanView, title: str = "") -> go.Figure:
    """Stages over the layers: one bar per stage spanning its layers, labelled with TP degree and devices."""
    fig = go.Figure()
    tps = sorted({s["tp"] for s in view.stages})
    colors = _colors([f"TP {t}" for t in tps])
    shown: set[int] = set()
    for s in view.stages:
        layered = s["first"] is not None
        start = s["first"] if layered else 0
        width = (s["last"] - s["first"] + 1) if layered else max(s["tasks"], 1)
        devices = _ranges(s["devices"])
        span = f"layers {s['first']}-{s['last']}" if layered else f"{s['tasks']} tasks"
        fig.add_bar(
            y=[f"stage {s['stage']}"],
            x=[width],
            base=[start],
            orientation="h",
            marker_color=colors[f"TP {s['tp']}"],
            name=f"TP {s['tp']}",
            legendgroup=f"TP {s['tp']}",
            showlegend=s["tp"] not in shown,
            text=[f"TP {s['tp']} · devices {devices}"],
            textposition="inside",
            insidetextanchor="middle",
            hovertemplate=f"{span}<br>TP {s['tp']}<br>devices {devices}<extra></extra>",
        )
        shown.add(s["tp"])
    plan = view.plan
    sub = (
        f"{len(view.stages)} stage(s), {plan.get('micro_batches', 1)} micro-batch(es), "
        f"{plan.get('replicas', 1)} replica(s), {plan.get('schedule', '1f1b')}"
    )
    techniques = [f"{k} {plan[k]}" if not isinstance(plan[k], bool) else k for k in TECHNIQUE_DEFAULTS if k in plan]
    if techniques:  # plan-wide training techniques (ZeRO, SP, interleaving...): the plan JSON lists only those set
        sub += " · " + ", ".join(text(t.replace("_", " ")) for t in techniques)
    fig.update_layout(
        title=f"{title}stages over layers<br><sup>{sub}</sup>",
        barmode="overlay",
        xaxis_title="layer",
        yaxis_autorange="reversed",
        height=180 + 40 * len(view.stages),
        margin=dict(l=10, r=10, t=70, b=40),
    )
    return fig


def gantt_figure(view: PlanView, title: str = "") -> go.Figure:
    """The simulator's pipeline timeline: one row per stage, bars per task, all-reduce and transfer."""
    fig = go.Figure()
    for kind, color in KIND_COLORS.items():
        evs = [e for e in view.events if e.kind == kind]
        if not evs:
            continue
        fig.add_bar(
            y=[f"stage {e.stage}" for e in evs],
            x=[(e.end - e.start) * 1e3 for e in evs],
            base=[e.start * 1e3 for e in evs],
            orientation="h",
            name=kind,
            marker_color=color,
            marker_line_width=0.3,
            marker_line_color="white",
            customdata=[[text(e.task), e.micro_batch, e.step] for e in evs],
            hovertemplate="%{customdata[0]} mb %{customdata[1]} step %{customdata[2]}<br>"
            "%{base:.3f} ms + %{x:.3f} ms<extra>" + kind + "</extra>",
        )
    sim = "" if view.simulated_s is None else f"simulated {fmt_seconds(view.simulated_s)}"
    stored = "" if view.latency_s is None else f", stored {fmt_seconds(view.latency_s)}"
    fig.update_layout(
        title=f"{title}pipeline timeline (simulator)<br><sup>{sim}{stored}</sup>",
        barmode="overlay",
        xaxis_title="time (ms)",
        yaxis_autorange="reversed",
        height=220 + 40 * len(view.stages),
        margin=dict(l=10, r=10, t=70, b=40),
        bargap=0.3,
    )
    return fig


def memory_figure(view: PlanView, title: str = "") -> go.Figure:
    """Peak memory of each device against its capacity (and the scenario's memory limit)."""
    mem = [m / GIB for m in view.memory_bytes]
    fig = go.Figure()
    fig.add_bar(
        x=[str(i) for i in range(len(mem))],
        y=mem,
        name="peak memory",
        marker_color="#4C78A8",
        hovertemplate="device %{x}: %{y:.2f} GiB<extra></extra>",
    )
    if view.capacity_bytes:
        fig.add_hline(
            y=view.capacity_bytes / GIB,
            line_color="black",
            line_dash="dash",
            annotation_text=f"capacity {view.capacity_bytes / GIB:.1f} GiB",
        )
    if view.limit_bytes:
        fig.add_hline(
            y=view.limit_bytes / GIB,
            line_color="#E45756",
            annotation_text=f"limit {view.limit_bytes / GIB:.1f} GiB",
            annotation_position="bottom right",
        )
    terms = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.1f}" for k, v in view.memory_breakdown.items() if v > 0)
    fig.update_layout(
        title=f"{title}peak memory per device" + (f"<br><sup>most loaded device (GiB): {terms}</sup>" if terms else ""),
        xaxis_title="device",
        yaxis_title="GiB",
        xaxis_type="category",
        height=340,
        margin=dict(l=10, r=10, t=50, b=40),
    )
    return fig


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 3, 8]`` -> ``0-3,8``."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# -- transfer --------------------------------------------------------------------------------------------


def transfer_table(rows: list[TransferRow], results: Results) -> Table:
    objectives = {results.scenario_label(k): s.objective for k, s in results.scenarios.items()}
    out = []
    for r in rows:
        obj = objectives.get(r.scenario, "")
        value = fmt_value(obj, r.value) if obj else ("-" if r.value is None else f"{r.value:.6g}")
        out.append([r.scenario, r.kind, r.label, value, fmt_pct(r.gap), r.source])
    note = (
        "zero-shot: the shipped (or given) policy on a scenario it was not trained on: its greedy rollout and "
        "the best of the rl tuner's sampled rollouts; optimum: the scenario's reference. Fine-tuned rows come "
        "from `paratune transfer --json` reports saved as RUN_DIR/transfer/*.json."
    )
    return Table(
        ["scenario", "kind", "result", "value", "gap to optimum", "source"],
        out,
        "Transfer",
        note,
        [r.kind for r in rows],
    )


def transfer_figure(rows: list[TransferRow]) -> go.Figure:
    """Gap to the optimum of zero-shot, rollouts and fine-tuned results per scenario."""
    fig = go.Figure()
    kinds = ["zero-shot", "rollouts", "fine-tuned"]
    colors = {"zero-shot": "#F58518", "rollouts": "#4C78A8", "fine-tuned": "#54A24B"}
    for kind in kinds:
        mine = [r for r in rows if r.kind == kind and r.gap is not None and math.isfinite(r.gap)]
        if mine:
            fig.add_bar(
                x=[text(r.scenario) for r in mine],
                y=[100 * (r.gap or 0.0) for r in mine],
                name=kind,
                marker_color=colors[kind],
                text=[text(r.label) for r in mine],
                hovertemplate="%{x}<br>%{text}: %{y:.2f}%<extra></extra>",
            )
    fig.update_layout(
        title="RL policy: gap to the optimum (%)",
        barmode="group",
        yaxis_title="gap (%)",
        height=380,
        margin=dict(l=10, r=10, t=50, b=40),
    )
    return fig


__all__ = [
    "Table",
    "anytime_figure",
    "campaigns_table",
    "failures_table",
    "gantt_figure",
    "gap_heatmap",
    "leaderboard_table",
    "memory_figure",
    "overall_table",
    "pareto_figure",
    "scenarios_table",
    "stages_figure",
    "status_figure",
    "text",
    "transfer_figure",
    "transfer_table",
    "tuners_table",
]


def study_parts(study: Any) -> tuple[list[Table], list[go.Figure], list[str]]:
    """A study's tables (formatted), figures and summary lines, as the Studies page and the report show them."""
    from ..study import study_outputs

    tables, figures, summary = study_outputs(study.data)
    out = [Table(t.columns, t.formatted(), t.title, t.note) for t in tables]
    return out, figures, summary
