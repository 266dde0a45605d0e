"""The granularity study: how coarse should tasks be, per tuner?

Finer tasks (operators) allow mappings that coarse ones (groups of layers) cannot
express, but they make the search slower and its space larger. The study runs
every tuner at every granularity on one problem and reports, per cell (a
granularity x tuner pair), the best value found, its gap to the best over all
cells, the tuner's wall time and evaluations, and the size of the space it
searched (:mod:`._space_size`), so quality can be set against optimisation effort.

What each family searches at granularity ``g``:

* exact solvers (``dp``, ``enumerate``): the layered space of ``g`` (stage cuts only
  where a task starts, so ``layers:k`` restricts them while op, sublayer and layer
  give the same space: same answer, but a bigger graph to price); certified.
* ``dag-exact``: task placements of the graph at ``g``; instances over its size
  limits (16 tasks, 8 devices) are refused and the cell is "skipped" with its reason.
* heuristics: their rule, which always plans at ``layer`` granularity (the row's
  ``plan_granularity`` says so): the same answer at every ``g``.
* ``optuna-*``: the ``placement`` space (a device group per task, which can split a
  layer across stages) at op and sublayer, their default ``hybrid`` space (stage
  count, layer shares, TP per stage) at layer and layers:k; ``budget`` trials.

Gaps are relative to a reference value ``ref``: ``(v - ref) / ref`` when minimising,
``(ref - v) / ref`` when maximising, so always a fraction >= 0 against the best.
Values within :data:`TIE_RTOL` of each other are ties (the analytic evaluator and the
simulator sum the same terms in different orders) and get gap 0.

The **sweet spot** of a tuner is the coarsest granularity (the cheapest to optimise)
whose best value is within :data:`SWEET_SPOT_TOL` (1%) of *that tuner's* best over all
granularities (``gap_to_tuner_best <= 0.01``): where to run this tuner without losing
more than 1% of what it can find. Its gap to the best over all cells is reported next
to it, so a tuner whose sweet spot is still far from the overall best shows it.

The study's ``best`` is the best value over all cells; as many cells tie (same plan,
found by several tuners), it names the tied cell whose tuner finished fastest, and
``ties`` counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..graphs import parse_granularity
from ..problem import Problem
from ..search import Family, tune, tuner_entries, tuner_names
from ._common import Checkpoints, StudyTable, fmt_pct, fmt_seconds, provenance, write_study
from ._space_size import log10, space_log10

Say = Callable[[str], None]

#: Tuners the study runs unless told otherwise (those registered).
DEFAULT_TUNERS = ("dp", "balanced-pp", "megatron", "optuna-tpe", "optuna-random")
#: Group sizes of the default ``layers:k`` granularities (only k < layers / 2: at least three groups).
DEFAULT_GROUPS = (2, 4, 8)
#: Relative difference below which two values are the same plan quality.
TIE_RTOL = 1e-9
#: The sweet spot's tolerance to the tuner's best (see the module docstring).
SWEET_SPOT_TOL = 0.01
VERSION = 1
_FINE_LEVELS = ("op", "sublayer")


# -- inputs ----------------------------------------------------------------------


def granularity_rank(granularity: str) -> tuple[int, int]:
    """Sort key from fine to coarse: op, sublayer, layer, layers:2, layers:4, ..."""
    level, k = parse_granularity(granularity)
    return {"op": 0, "sublayer": 1, "layer": 2}.get(level, 3), k


def default_granularities(n_layers: int) -> list[str]:
    """op, sublayer, layer and layers:k for k in 2, 4, 8 with k < n_layers / 2."""
    return ["op", "sublayer", "layer"] + [f"layers:{k}" for k in DEFAULT_GROUPS if k < n_layers / 2]


def _check_inputs(
    problem: Problem, granularities: Sequence[str] | None, tuners: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    if problem.resolved_objective.multi:
        raise ValueError(
            f"granularity study: objective {problem.objective!r} has "
            f"{len(problem.resolved_objective.directions)} values; the study compares one number per cell: "
            f"use {problem.objective.split('+')[0]!r}"
        )
    grans = list(granularities) if granularities else default_granularities(problem.n_layers)
    for g in grans:
        try:
            parse_granularity(g)
        except ValueError as exc:
            raise ValueError(f"granularity study: {exc}") from None
    grans = sorted(dict.fromkeys(grans), key=granularity_rank)

    known = tuner_names()
    names = list(tuners) if tuners else [t for t in DEFAULT_TUNERS if t in known]
    for t in names:
        if t not in known:
            raise ValueError(f"granularity study: unknown tuner {t!r}; registered: {', '.join(known)}")
    if not names:
        raise ValueError(f"granularity study: no tuner to run; registered: {', '.join(known)}")
    return grans, list(dict.fromkeys(names))


# -- one cell ----------------------------------------------------------------------


def _family(tuner: str) -> str:
    return str(next(e.family for e in tuner_entries() if e.name == tuner))


def _options(family: str, granularity: str) -> dict[str, Any]:
    """Tuner options of a cell: Optuna searches task placements at op and sublayer (their default elsewhere)."""
    if family == Family.OPTUNA and parse_granularity(granularity)[0] in _FINE_LEVELS:
        return {"space": "placement"}
    return {}


def _space(family: str, tuner: str, options: dict[str, Any], graph_layered: bool) -> str:
    """The name of the space the tuner searches (see :func:`._space_size.space_log10`)."""
    if family == Family.OPTUNA:
        return str(options.get("space") or ("hybrid" if graph_layered else "placement"))
    if tuner == "dag-exact":
        return "dag-placement"
    return {Family.HEURISTIC: "rule", Family.RL: "policy"}.get(Family(family), "layered")


def _problem_spec(problem: Problem) -> dict[str, Any]:
    """The problem without its granularity (the study sweeps it)."""
    spec = problem.to_dict()
    spec.pop("granularity", None)
    return spec


def _cell_key(problem: Problem, granularity: str, tuner: str, budget: int, seed: int) -> str:
    """What a cell's answer depends on; a checkpoint is reused only for the same key.

    The file name keeps the key's first 120 characters, so the distinctive parts come
    first, the problem's digest among them (the full key is compared on reading).
    """
    spec = json.dumps(_problem_spec(problem), sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
    family = _family(tuner)
    options = json.dumps(_options(family, granularity), sort_keys=True)
    if family not in (Family.OPTUNA, Family.RL):  # exact solvers and rules run to completion, whatever the budget
        return f"{granularity}|{tuner}|{digest}|options={options}|problem={spec}"
    return f"{granularity}|{tuner}|budget={budget}|seed={seed}|{digest}|options={options}|problem={spec}"


CellStatus = Literal["ok", "skipped", "infeasible", "error"]


@dataclass(frozen=True)
class GranularityCell:
    """One row of the granularity study: a tuner at a granularity (``to_dict`` is study.json's row).

    ``status`` ok (a feasible plan, ``best`` its value), skipped (the tuner refused the
    instance: ``reason``), infeasible (no feasible plan found) or error (a failure,
    retried when the study is re-run). ``gap`` and ``gap_to_tuner_best`` are filled in
    when every cell is known (:func:`run_granularity_study`).
    """

    granularity: str
    tuner: str
    family: str
    space: str | None = None
    status: CellStatus = "ok"
    reason: str = ""
    tasks: int | None = None
    best: float | None = None
    gap: float | None = None
    gap_to_tuner_best: float | None = None
    wall_s: float | None = None
    evaluations: int = 0
    space_log10: float | None = None
    certified: bool | None = None
    pp: int | None = None
    tp: tuple[int, ...] | None = None
    micro_batches: int | None = None
    replicas: int | None = None
    plan: dict[str, Any] | None = None
    plan_granularity: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The row as study.json and the checkpoints write it (lists for tuples)."""
        out = dataclasses.asdict(self)
        out["tp"] = None if self.tp is None else list(self.tp)
        out["notes"] = list(self.notes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GranularityCell:
        """A row read back (a checkpoint or study.json); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("tp") is not None:
            kwargs["tp"] = tuple(kwargs["tp"])
        kwargs["notes"] = tuple(kwargs.get("notes") or ())
        return cls(**kwargs)


def run_cell(problem: Problem, granularity: str, tuner: str, *, budget: int, seed: int) -> GranularityCell:
    """Run ``tuner`` on ``problem`` at ``granularity``: one row of the study (gaps filled in later).

    Search tuners (``optuna-*``, ``rl``) get ``budget`` evaluations; heuristics and
    exact solvers run to completion (a budget would only cut a rule or a proof short).
    A tuner that refuses the instance (``ValueError``) gives a "skipped" row.
    """
    family = _family(tuner)
    q = problem.with_(granularity=granularity)
    options = _options(family, granularity)
    row = GranularityCell(granularity, tuner, family)
    start = time.perf_counter()
    try:
        result = tune(q, tuner, budget=budget if family in (Family.OPTUNA, Family.RL) else None, seed=seed, **options)
    except ValueError as exc:
        row = replace(row, status="skipped", reason=str(exc), wall_s=time.perf_counter() - start)
    except Exception as exc:  # one broken cell must not lose the study's other cells
        row = replace(row, status="error", reason=f"{type(exc).__name__}: {exc}", wall_s=time.perf_counter() - start)
    else:
        row = replace(row, wall_s=result.wall_s, evaluations=result.evaluations, notes=tuple(result.notes))
        if family == Family.EXACT:
            row = replace(row, certified=bool(result.optimal))
        plan = result.best_plan
        if plan is None or result.objective_value is None:
            row = replace(row, status="infeasible", reason="; ".join(result.notes) or "no feasible plan found")
        else:
            row = replace(
                row,
                best=float(result.objective_value),
                pp=plan.pp,
                tp=tuple(s.tp for s in plan.stages),
                micro_batches=plan.micro_batches,
                replicas=plan.replicas,
                plan=plan.to_dict(),
                plan_granularity=plan.granularity,
            )
            if plan.granularity != granularity:
                row = replace(row, reason=f"plans at {plan.granularity!r} granularity whatever the study's")
    try:
        graph = q.graph()
    except Exception:  # the tuner's failure to build it is already the row's reason
        return row
    space = _space(family, tuner, options, graph.is_layered)
    if space == "rule":
        size = log10(row.evaluations)  # the rule's candidates: the plans it priced
    elif space != "policy":
        size = space_log10(q, granularity, space)
    else:
        size = None
    return replace(row, space=space, tasks=graph.num_tasks, space_log10=size)


# -- the study ----------------------------------------------------------------------


def run_granularity_study(
    problem: Problem,
    *,
    granularities: Sequence[str] | None = None,
    tuners: Sequence[str] | None = None,
    budget: int = 300,
    seed: int = 0,
    out_dir: Path | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Every tuner at every granularity on ``problem``; returns (and with ``out_dir`` writes) study.json's data.

    Args:
        problem: the model, platform, phase, shape, single objective and limits
            (its granularity is ignored: the study sweeps it).
        granularities: default op, sublayer, layer, layers:k (k in 2, 4, 8 with
            k < layers / 2); sorted fine to coarse.
        tuners: default dp, balanced-pp, megatron, optuna-tpe, optuna-random.
        budget: evaluations of each search tuner (optuna-*, rl) per cell.
        out_dir: where to write the study (and its per-cell checkpoints, which a
            re-run with the same inputs reuses); None writes nothing.
        say: receives one progress line per cell.

    Raises:
        ValueError: an unknown granularity or tuner, or a multi-objective problem.
    """
    grans, names = _check_inputs(problem, granularities, tuners)
    if budget < 1:
        raise ValueError(f"granularity study: budget must be >= 1 evaluation, got {budget}")
    checkpoints = Checkpoints(out_dir)
    total = len(grans) * len(names)
    rows: list[GranularityCell] = []
    for g in grans:
        for t in names:
            key = _cell_key(problem, g, t, budget, seed)
            saved = checkpoints.get(key)
            reused = saved is not None
            if saved is not None:
                row = GranularityCell.from_dict(saved)
            else:
                row = run_cell(problem, g, t, budget=budget, seed=seed)
                if row.status != "error":  # errors are retried on the next run
                    checkpoints.put(key, row.to_dict())
            rows.append(row)
            if say is not None:
                say(f"[{len(rows)}/{total}] {_cell_line(row, problem)}" + (" (reused)" if reused else ""))
    data = _assemble(problem, grans, names, rows, budget, seed)
    data["summary"] = granularity_summary(data)
    if out_dir is not None:
        write_study(
            Path(out_dir),
            data,
            granularity_tables(data),
            granularity_figures(data),
            f"Granularity study: {problem.name}",
        )
    return data


def _cell_line(row: GranularityCell, problem: Problem) -> str:
    head = f"{row.granularity} x {row.tuner}: "
    if row.status != "ok":
        return head + f"{row.status} ({_first_line(row.reason)})"
    return head + (
        f"{format_value(row.best, _unit(problem.objective))} ({row.wall_s or 0.0:.2f} s, {row.evaluations} evaluations)"
    )


def _first_line(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unit(objective: str) -> str:
    return "tokens/s" if objective == "throughput" else "s"


def format_value(value: Any, unit: str) -> str:
    """An objective value with its unit (seconds scaled to ms / us)."""
    if value is None:
        return "-"
    return fmt_seconds(value) if unit == "s" else f"{float(value):.4g} {unit}"


def _gap(value: float, ref: float, maximize: bool) -> float | None:
    if not ref or not math.isfinite(ref):
        return None
    gap = (ref - value) / ref if maximize else (value - ref) / ref
    return 0.0 if gap <= TIE_RTOL else gap


def _assemble(
    problem: Problem, grans: list[str], names: list[str], cells: list[GranularityCell], budget: int, seed: int
) -> dict[str, Any]:
    maximize = problem.resolved_objective.direction == "maximize"
    pick = max if maximize else min
    values = [v for c in cells if c.status == "ok" and (v := c.best) is not None]
    best_all = pick(values) if values else None
    best_of: dict[str, float | None] = {}
    for t in names:
        mine = [v for c in cells if c.tuner == t and c.status == "ok" and (v := c.best) is not None]
        best_of[t] = pick(mine) if mine else None

    def with_gaps(c: GranularityCell) -> GranularityCell:
        if c.status != "ok" or c.best is None:
            return c
        best_t = best_of.get(c.tuner)
        return replace(
            c,
            gap=_gap(c.best, best_all, maximize) if best_all is not None else None,
            gap_to_tuner_best=_gap(c.best, best_t, maximize) if best_t is not None else None,
        )

    rows = [with_gaps(c).to_dict() for c in cells]
    ok = [r for r in rows if r["status"] == "ok"]
    best: dict[str, Any] = {"value": None, "granularity": None, "tuner": None, "ties": 0}
    tied = [r for r in ok if r["gap"] == 0.0]
    if tied:
        # Among cells of the best quality, name the one found fastest (the tie is float noise otherwise).
        cheapest = min(tied, key=lambda r: (r["wall_s"] or 0.0, -granularity_rank(r["granularity"])[0]))
        best = {
            "value": best_all,
            "granularity": cheapest["granularity"],
            "tuner": cheapest["tuner"],
            "ties": len(tied),
        }
    sweet: dict[str, Any] = {}
    for t in names:
        within = [
            r
            for r in ok
            if r["tuner"] == t and r["gap_to_tuner_best"] is not None and r["gap_to_tuner_best"] <= SWEET_SPOT_TOL
        ]
        if not within:
            sweet[t] = None
            continue
        r = max(within, key=lambda r: granularity_rank(r["granularity"]))
        sweet[t] = {
            "granularity": r["granularity"],
            "value": r["best"],
            "gap": r["gap"],
            "gap_to_tuner_best": r["gap_to_tuner_best"],
            "wall_s": r["wall_s"],
            "plan_granularity": r["plan_granularity"],
        }
    return {
        "kind": "granularity",
        "version": VERSION,
        "problem": _problem_spec(problem),
        "objective": problem.objective,
        "direction": problem.resolved_objective.direction,
        "unit": _unit(problem.objective),
        "granularities": grans,
        "tuners": names,
        "budget": budget,
        "seed": seed,
        "tie_rtol": TIE_RTOL,
        "sweet_spot_tol": SWEET_SPOT_TOL,
        "rows": rows,
        "best": best,
        "sweet_spot": sweet,
        "summary": [],
        "provenance": provenance(seed, problem.resolved_platform.profile.name, study="granularity"),
    }


# -- what the study says ----------------------------------------------------------------


def granularity_summary(data: dict[str, Any]) -> list[str]:
    """Short sentences with the study's numbers: the best, each tuner's sweet spot and cost, finer vs layer."""
    unit, rows = data["unit"], data["rows"]
    value = lambda v: format_value(v, unit)  # noqa: E731
    ok = [r for r in rows if r["status"] == "ok"]
    out: list[str] = []
    best = data["best"]
    if best.get("value") is None:
        return ["No cell found a feasible plan.", *_not_ok_line(rows)]
    out.append(
        f"Best {data['objective']}: {value(best['value'])}, reached by {best['ties']} of {len(rows)} cells; "
        f"fastest: {best['tuner']} at {best['granularity']}."
    )
    grans = data["granularities"]
    coarsest = grans[-1]
    for t in data["tuners"]:
        spot = data["sweet_spot"].get(t)
        mine = {r["granularity"]: r for r in ok if r["tuner"] == t}
        if spot is None:
            out.append(f"{t}: no feasible plan at any granularity.")
            continue
        planned = {r["plan_granularity"] for r in mine.values()}
        if len(planned) == 1 and len(mine) > 1:  # a rule that plans at one granularity whatever the study's
            (g,) = planned
            out.append(
                f"{t}: plans at {g} granularity whatever the study's: {value(spot['value'])}, "
                f"{fmt_pct(spot['gap'])} from the best overall."
            )
            continue
        text = (
            f"{t}: sweet spot {spot['granularity']} ({value(spot['value'])}, {fmt_pct(spot['gap'])} from the best "
            f"overall, {fmt_seconds(spot['wall_s'])} to tune)"
        )
        last = mine.get(coarsest)
        if last is not None:
            text += f"; at the coarsest, {coarsest}, it loses {fmt_pct(last['gap_to_tuner_best'])} to its own best"
        out.append(text + ".")
    for t in data["tuners"]:
        mine = {r["granularity"]: r for r in ok if r["tuner"] == t}
        if len({r["plan_granularity"] for r in mine.values()}) == 1 and len(mine) > 1:
            continue  # a rule: its time does not depend on the study's granularity
        fine = next((g for g in grans if g in mine and granularity_rank(g)[0] < 2), None)
        if fine is not None and "layer" in mine and mine["layer"]["wall_s"]:
            ratio = (mine[fine]["wall_s"] or 0.0) / mine["layer"]["wall_s"]
            diff = (mine[fine]["gap"] or 0.0) - (mine["layer"]["gap"] or 0.0)
            quality = (
                "the same quality" if abs(diff) < 1e-4 else f"{fmt_pct(abs(diff))} {'worse' if diff > 0 else 'better'}"
            )
            out.append(
                f"{t}: {fine} takes {ratio:.1f}x the time of layer ({fmt_seconds(mine[fine]['wall_s'])} vs "
                f"{fmt_seconds(mine['layer']['wall_s'])}; {mine[fine]['tasks']} vs {mine['layer']['tasks']} tasks) "
                f"for {quality}."
            )
    out += _finer_vs_layer(data, ok, value)
    return out + _not_ok_line(rows)


def _finer_vs_layer(data: dict[str, Any], ok: list[dict[str, Any]], value: Callable[[Any], str]) -> list[str]:
    maximize = data["direction"] == "maximize"
    pick = max if maximize else min
    layer = [r for r in ok if r["granularity"] == "layer"]
    finer = [r for r in ok if granularity_rank(r["granularity"])[0] < 2]
    if not layer or not finer:
        return []
    ref = pick(r["best"] for r in layer)
    top = pick(finer, key=lambda r: r["best"])
    gain = _gap(ref, top["best"], maximize)  # how much worse the layer best is than the finer best
    if gain:
        return [
            f"Finer than layer paid off: {top['tuner']} at {top['granularity']} found {value(top['best'])}, "
            f"{fmt_pct(gain)} better than the best at layer ({value(ref)})."
        ]
    loss = _gap(top["best"], ref, maximize)
    behind = "ties it" if not loss else f"is {fmt_pct(loss)} behind"
    return [
        f"No finer-than-layer cell beat the best at layer ({value(ref)}); the best finer one, {top['tuner']} at "
        f"{top['granularity']}, {behind}."
    ]


def _not_ok_line(rows: list[dict[str, Any]]) -> list[str]:
    bad = [f"{r['granularity']} x {r['tuner']} ({r['status']})" for r in rows if r["status"] != "ok"]
    return [f"Cells without a plan: {', '.join(bad)}."] if bad else []


def granularity_tables(data: dict[str, Any]) -> list[StudyTable]:
    """One row per cell (raw numbers, SI units), and the gap pivoted granularity x tuner."""
    unit = data["unit"]
    columns = [
        "granularity",
        "tuner",
        "family",
        "space",
        "status",
        "tasks",
        "best",
        "gap",
        "gap_to_tuner_best",
        "wall_s",
        "evaluations",
        "space_log10",
        "certified",
        "pp",
        "tp",
        "micro_batches",
        "replicas",
        "reason",
    ]
    rows = []
    for r in data["rows"]:
        cells = {**r, "tp": "/".join(str(t) for t in r["tp"]) if r.get("tp") else None}
        cells["reason"] = _first_line(r.get("reason") or "")
        rows.append([cells.get(c) for c in columns])
    fmt_space: Callable[[Any], str] = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    main = StudyTable(
        "granularity_cells",
        f"Every tuner at every granularity ({data['objective']}, {unit})",
        columns,
        rows,
        note="gap: to the best over all cells; space_log10: log10 of the plans in the space the tuner searches.",
        formats={
            "best": lambda v: format_value(v, unit),
            "gap": fmt_pct,
            "gap_to_tuner_best": fmt_pct,
            "wall_s": fmt_seconds,
            "space_log10": fmt_space,
        },
    )
    by = {(r["granularity"], r["tuner"]): r for r in data["rows"]}
    pivot_rows = [[g] + [by.get((g, t), {}).get("gap") for t in data["tuners"]] for g in data["granularities"]]
    pivot = StudyTable(
        "granularity_gap",
        "Gap to the best plan, by granularity x tuner",
        ["granularity", *data["tuners"]],
        pivot_rows,
        note="'-': no feasible plan (or the tuner refused the instance).",
        formats={t: fmt_pct for t in data["tuners"]},
    )
    return [main, pivot]


def granularity_figures(data: dict[str, Any]) -> list[Any]:
    """Quality vs granularity, wall time vs granularity, and the Pareto of quality vs optimisation time."""
    import plotly.graph_objects as go

    grans, tuners = data["granularities"], data["tuners"]
    by = {(r["granularity"], r["tuner"]): r for r in data["rows"]}

    def column(t: str, field: str, scale: float = 1.0) -> list[float | None]:
        out: list[float | None] = []
        for g in grans:
            v = by.get((g, t), {}).get(field)
            out.append(None if v is None or by[(g, t)]["status"] != "ok" else scale * v)
        return out

    axis = {"title": "task granularity (fine to coarse)", "categoryorder": "array", "categoryarray": grans}
    quality = go.Figure([go.Scatter(x=grans, y=column(t, "gap", 100.0), name=t, mode="lines+markers") for t in tuners])
    quality.update_layout(
        title=f"Plan quality vs granularity: gap to the best {data['objective']} (%)",
        xaxis=axis,
        yaxis_title="gap to the best plan (%)",
    )
    cost = go.Figure([go.Scatter(x=grans, y=column(t, "wall_s"), name=t, mode="lines+markers") for t in tuners])
    cost.update_layout(
        title="Optimisation time vs granularity (s, log scale)",
        xaxis=axis,
        yaxis={"title": "tuner wall time (s)", "type": "log"},
    )
    points = [
        (r["wall_s"], 100.0 * r["gap"], f"{r['tuner']}@{r['granularity']}")
        for r in data["rows"]
        if r["status"] == "ok" and r["gap"] is not None and r["wall_s"]
    ]
    front, best_gap = [], math.inf
    for p in sorted(points):
        if p[1] < best_gap:
            front.append(p)
            best_gap = p[1]
    pareto = go.Figure(
        [
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                text=[p[2] for p in points],
                mode="markers+text",
                textposition="top center",
                name="cells",
            ),
            go.Scatter(
                x=[p[0] for p in front], y=[p[1] for p in front], mode="lines", name="Pareto front", hoverinfo="skip"
            ),
        ]
    )
    pareto.update_layout(
        title="Quality vs optimisation time: gap (%) against tuner wall time (s)",
        xaxis={"title": "tuner wall time (s, log scale)", "type": "log"},
        yaxis_title="gap to the best plan (%)",
    )
    return [quality, cost, pareto]


__all__ = [
    "GranularityCell",
    "default_granularities",
    "granularity_figures",
    "granularity_rank",
    "granularity_summary",
    "granularity_tables",
    "run_cell",
    "run_granularity_study",
]
