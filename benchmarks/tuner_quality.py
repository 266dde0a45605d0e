"""Tuner quality on the scenario suite: gap to the optimum, evaluations to get within 1%, wall time.

Runs every registered tuner (or ``--tuners``) on every scenario of
``benchmarks/scenarios`` (or ``--scenarios GLOB`` of them): exact and heuristic
tuners once, stochastic ones over ``--seeds`` seeds. The reference of a
scenario is the certified optimum of ``dp`` (``TuneResult.optimal``) when it
has one, else the best value any tuner found (the output says which). For
multi-objective scenarios (``*+memory``) the gap is on the primary value (the
latency).

Printed per tuner: the gap to the reference (median, 90th percentile and max
over scenarios x seeds; a run that found no feasible plan counts as an infinite
gap, and is also counted in ``no plan``), the evaluations after which the
best-so-far came within 1% of the reference (median; a run that never did
counts as never), wall time (median, total); plus a per-scenario table of the
median gap of each tuner. ``--json PATH`` writes every run, the references and
the summary.

Budgets: ``--budget`` (default 500, the quality target's budget) applies to search
tuners; exact solvers and heuristics run to completion (a budget would cut an
exact solver before it certifies); the reference dp runs with a label cap of
``--dp-max-labels`` (3,000,000 by default, ten times its own), so more references
are certified, and the output names those that are not, with dp's reason. ``--time-limit`` stops any run that reports
progress after that many seconds (through the tuner callback; the run is then
marked ``stopped``). Tuners that cannot be imported (missing dependency, not
written yet) are skipped with the reason; a tuner that raises on a scenario is
recorded (``refused`` for a ``ValueError``, which tuners use to say a problem is
outside what they handle, ``error`` otherwise) and the benchmark goes on.

Run: ``python benchmarks/tuner_quality.py [--json PATH] [--budget N] [--seeds K]
[--tuners a,b,...] [--scenarios GLOB] [--time-limit S] [--dp-max-labels N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from paratune.problem import default_scenarios_dir, load_scenarios
from paratune.search import Problem, Tuner, TuneResult, make_tuner, tuner_names

REFERENCE_TUNER = "dp"


@dataclass
class Run:
    """One tuner on one scenario with one seed."""

    tuner: str
    scenario: str
    seed: int
    status: str  # ok | no-plan | refused | error
    value: float | None = None
    evaluations: int = 0
    wall_s: float = 0.0
    optimal: bool = False
    stopped: bool = False
    gap: float | None = None
    evals_to_1pct: int | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    result: TuneResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("result")
        out["gap"] = _finite(self.gap)
        out["plan"] = self.result.best_plan.to_dict() if self.result and self.result.best_plan else None
        return out


@dataclass
class Reference:
    value: float | None
    source: str  # "dp (certified)" | "best found (by TUNER)" | "none"
    certified: bool


def _finite(x: float | None) -> float | str | None:
    if x is None or math.isnan(x):
        return None
    return x if math.isfinite(x) else "inf"


def load_tuners(names: list[str], console: Console, dp_max_labels: int | None = None) -> dict[str, Tuner]:
    """Instantiate each tuner; one that cannot be imported is skipped with a printed reason.

    ``dp_max_labels`` sets the reference tuner's label cap (None: its default).
    """
    out: dict[str, Tuner] = {}
    for name in names:
        options = {"max_labels": dp_max_labels} if name == REFERENCE_TUNER and dp_max_labels else {}
        try:
            out[name] = make_tuner(name, **options)
        except Exception as exc:  # an import error, a missing dependency, a tuner not written yet
            console.print(f"[yellow]skipped tuner {name}:[/yellow] {type(exc).__name__}: {exc}")
    return out


def run_one(name: str, tuner: Tuner, problem: Problem, seed: int, budget: int, time_limit: float) -> Run:
    """One tune call, never raising: failures become a Run with status refused/error."""
    searches = tuner.stochastic or not (tuner.exact or tuner.family == "heuristic")
    run_budget = budget if searches else None

    def stop_late(progress: Any) -> bool:
        return not (time_limit > 0 and progress.wall_s > time_limit)

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = tuner.tune(problem, budget=run_budget, seed=seed, callback=stop_late)
        except ValueError as exc:
            return Run(name, problem.name, seed, "refused", wall_s=time.perf_counter() - start, message=str(exc))
        except Exception as exc:  # a bug in one tuner must not stop the benchmark
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            return Run(
                name,
                problem.name,
                seed,
                "error",
                wall_s=time.perf_counter() - start,
                message=f"{type(exc).__name__}: {exc} | {''.join(tb[-2:]).strip()}",
            )
    texts = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return Run(
        tuner=name,
        scenario=problem.name,
        seed=seed,
        status="ok" if result.found else "no-plan",
        value=result.objective_value,
        evaluations=result.evaluations,
        wall_s=result.wall_s,
        optimal=result.optimal,
        stopped=result.stopped_early,
        message="; ".join(result.notes)[:500],
        warnings=texts[:5],
        result=result,
    )


def reference_of(problem: Problem, runs: list[Run]) -> Reference:
    """dp's certified optimum when there is one, else the best value any tuner found."""
    obj = problem.resolved_objective
    certified = [r for r in runs if r.tuner == REFERENCE_TUNER and r.optimal and r.value is not None]
    if certified:
        return Reference(certified[0].value, f"{REFERENCE_TUNER} (certified)", True)
    best: Run | None = None
    for r in runs:
        if r.value is not None and (best is None or obj.better(r.value, best.value)):
            best = r
    if best is None:
        return Reference(None, "none", False)
    return Reference(best.value, f"best found (by {best.tuner})", False)


def score_runs(problem: Problem, runs: list[Run], ref: Reference) -> None:
    """Fill each run's gap to the reference and its evaluations to get within 1%."""
    obj = problem.resolved_objective
    for r in runs:
        if r.status not in ("ok", "no-plan") or ref.value is None:
            continue
        r.gap = math.inf if r.value is None else obj.gap(r.value, ref.value)
        if r.result is not None and r.value is not None:
            r.evals_to_1pct = r.result.evaluations_to_within(ref.value, 0.01)


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile that keeps infinities (a failed run is an infinite gap, not a missing one)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarise(runs: list[Run], names: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [r for r in runs if r.tuner == name]
        scored = [r for r in mine if r.gap is not None]
        gaps = [r.gap for r in scored if r.gap is not None]
        to1 = [math.inf if r.evals_to_1pct is None else float(r.evals_to_1pct) for r in scored]
        walls = [r.wall_s for r in mine if r.status in ("ok", "no-plan")]
        out[name] = {
            "runs": len(mine),
            "scored": len(scored),
            "gap_median": _quantile(gaps, 0.5),
            "gap_p90": _quantile(gaps, 0.9),
            "gap_max": max(gaps, default=math.nan),
            "beats_reference": sum(1 for g in gaps if g < -1e-9),
            "evals_to_1pct_median": _quantile(to1, 0.5),
            "within_1pct": sum(1 for g in gaps if g <= 0.01),
            "wall_median_s": _quantile(walls, 0.5),
            "wall_total_s": sum(walls),
            "no_plan_scenarios": len({r.scenario for r in mine if r.status == "no-plan"}),
            "refused": len({r.scenario for r in mine if r.status == "refused"}),
            "errors": len({r.scenario for r in mine if r.status == "error"}),
            "stopped": sum(1 for r in mine if r.stopped),
        }
    return out


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{100 * x:.1f}%"


def _count(x: float) -> str:
    if math.isnan(x):
        return "-"
    return "never" if math.isinf(x) else f"{x:.0f}"


def print_tables(
    console: Console, problems: list[Problem], refs: dict[str, Reference], runs: list[Run], names: list[str]
) -> dict[str, dict[str, Any]]:
    summary = summarise(runs, names)
    t = Table(title="tuner quality (gap to the reference: scenarios x seeds; a run without a plan counts as inf)")
    for col in (
        "tuner",
        "runs",
        "gap median",
        "gap p90",
        "gap max",
        "within 1%",
        "evals to 1% (median)",
        "wall median s",
        "wall total s",
        "no plan",
        "refused",
        "errors",
        "stopped",
    ):
        t.add_column(col, justify="left" if col == "tuner" else "right")
    for name in names:
        s = summary[name]
        t.add_row(
            name,
            str(s["runs"]),
            _pct(s["gap_median"]),
            _pct(s["gap_p90"]),
            _pct(s["gap_max"]),
            f"{s['within_1pct']}/{s['scored']}",
            _count(s["evals_to_1pct_median"]),
            f"{s['wall_median_s']:.3f}" if not math.isnan(s["wall_median_s"]) else "-",
            f"{s['wall_total_s']:.1f}",
            str(s["no_plan_scenarios"]),
            str(s["refused"]),
            str(s["errors"]),
            str(s["stopped"]),
        )
    console.print(t)
    per = Table(title="median gap per scenario (- : refused or error; inf: no feasible plan)")
    per.add_column("scenario")
    per.add_column("reference")
    for name in names:
        per.add_column(name, justify="right")
    for p in problems:
        ref = refs[p.name]
        value = "-" if ref.value is None else f"{ref.value:.4g}"
        row = [p.name, f"{value} {p.resolved_objective.name} [{ref.source}]"]
        for name in names:
            gaps = [r.gap for r in runs if r.tuner == name and r.scenario == p.name and r.gap is not None]
            row.append(_pct(_quantile(gaps, 0.5)) if gaps else "-")
        per.add_row(*row)
    console.print(per)
    certified = sum(1 for r in refs.values() if r.certified)
    console.print(
        f"references: {certified} of {len(refs)} scenarios certified by {REFERENCE_TUNER}; "
        "the others use the best value any tuner found (gaps there are lower bounds)."
    )
    for p in problems:  # say which are not certified, and dp's reason
        if not refs[p.name].certified:
            why = next((r.message for r in runs if r.tuner == REFERENCE_TUNER and r.scenario == p.name), "dp not run")
            console.print(f"  not certified: {p.name}: {why[:200]}")
    problems_seen = [r for r in runs if r.status in ("refused", "error")]
    for r in problems_seen[:20]:
        console.print(f"[dim]{r.status}: {r.tuner} on {r.scenario}: {r.message[:160]}[/dim]")
    if len(problems_seen) > 20:
        console.print(f"[dim]... and {len(problems_seen) - 20} more refused/error runs (see --json)[/dim]")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write runs, references and summary to this file")
    ap.add_argument("--budget", type=int, default=500, help="evaluations per search-tuner run (default 500)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per stochastic tuner (default 3)")
    ap.add_argument("--tuners", default="", help="comma-separated tuner names (default: every registered tuner)")
    ap.add_argument("--scenarios", default="*", help="shell glob on scenario names (default: all)")
    ap.add_argument("--dir", type=Path, default=None, help=f"scenario directory (default {default_scenarios_dir()})")
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per run before it is stopped (0: none)")
    ap.add_argument(
        "--dp-max-labels",
        type=int,
        default=3_000_000,
        help="label cap of the reference dp (default 3,000,000, ten times dp's own: references are worth the time)",
    )
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 250)  # wide tables when piped to a file
    if args.budget < 1 or args.seeds < 1:
        ap.error("--budget and --seeds must be >= 1")
    wanted = [n.strip() for n in args.tuners.split(",") if n.strip()] or tuner_names()
    unknown = [n for n in wanted if n not in tuner_names()]
    if unknown:
        ap.error(f"unknown tuner(s) {', '.join(unknown)}; allowed: {', '.join(tuner_names())}")
    if REFERENCE_TUNER not in wanted:
        console.print(f"[yellow]{REFERENCE_TUNER} is not in --tuners: references are the best values found[/yellow]")
    tuners = load_tuners(wanted, console, args.dp_max_labels)
    names = list(tuners)
    problems = load_scenarios(args.dir, pattern=args.scenarios)
    if not problems:
        console.print(f"[red]no scenario matches {args.scenarios!r}[/red]")
        return 2
    # dp first on each scenario, so its reference exists before the others run (for the progress line).
    order = sorted(names, key=lambda n: n != REFERENCE_TUNER)
    seeds = {n: list(range(args.seeds)) if tuners[n].stochastic else [0] for n in names}
    total = len(problems) * sum(len(seeds[n]) for n in names)
    runs: list[Run] = []
    refs: dict[str, Reference] = {}
    started = time.perf_counter()
    interrupted = False
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("tuning", total=total)
        try:
            for p in problems:
                p.graph()
                p.evaluator()  # built once here, so no tuner's wall time includes the graph
                mine: list[Run] = []
                for name in order:
                    for seed in seeds[name]:
                        progress.update(task, description=f"{p.name} / {name} / seed {seed}")
                        run = run_one(name, tuners[name], p, seed, args.budget, args.time_limit)
                        mine.append(run)
                        progress.advance(task)
                refs[p.name] = reference_of(p, mine)
                score_runs(p, mine, refs[p.name])
                runs.extend(mine)
                ref = refs[p.name]
                progress.console.print(
                    f"{p.name}: {len(mine)} runs, {sum(r.wall_s for r in mine):.1f} s, reference "
                    f"{'-' if ref.value is None else f'{ref.value:.4g}'} [{ref.source}]"
                )
        except KeyboardInterrupt:
            interrupted = True
            console.print("[yellow]interrupted: results so far[/yellow]")
    done = [p for p in problems if p.name in refs]
    summary = print_tables(console, done, refs, runs, names)
    console.print(
        f"{len(runs)} runs on {len(done)} scenarios in {time.perf_counter() - started:.1f} s "
        f"(budget {args.budget}, {args.seeds} seed(s) for stochastic tuners)"
    )
    if args.json:
        out = {
            "benchmark": "tuner_quality",
            "format_version": 1,
            "settings": {
                "budget": args.budget,
                "seeds": args.seeds,
                "tuners": names,
                "skipped_tuners": [n for n in wanted if n not in tuners],
                "scenarios": args.scenarios,
                "time_limit_s": args.time_limit,
                "dp_max_labels": args.dp_max_labels,
                "interrupted": interrupted,
            },
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
            "references": {
                p.name: {
                    "value": refs[p.name].value,
                    "source": refs[p.name].source,
                    "certified": refs[p.name].certified,
                    "objective": p.resolved_objective.name,
                    "direction": p.resolved_objective.direction,
                    "problem": p.to_dict(),
                }
                for p in done
            },
            "summary": {
                n: {k: _finite(v) if isinstance(v, float) else v for k, v in s.items()} for n, s in summary.items()
            },
            "runs": [r.to_dict() for r in runs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        console.print(f"wrote {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
