"""``paratune study granularity | static-vs-runtime | show | workloads``: the studies of :mod:`paratune.study`.

Each study prints one progress line per unit of work (a tuner at a granularity, a
bucket's optimum), writes its folder (``-o DIR``: study.json, CSV tables,
summary.md, plots.html) and ends with its generated summary. Re-running the same
command on the same folder reuses the finished units (an interrupted study
resumes). ``--json`` prints study.json's data instead (a contract: keys are only added).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .._limits import MAX_BUDGET
from ._common import (
    BatchOpt,
    ContextOpt,
    JsonOpt,
    MemoryOpt,
    ModelOpt,
    ObjectiveOpt,
    PhaseOpt,
    PlatformOpt,
    ScenarioOpt,
    SeedOpt,
    SeqOpt,
    console,
    flag_named,
    output_folder,
    positive_number,
    print_json,
    problem_from_options,
    user_errors,
)

study_app = typer.Typer(
    help="Studies: how coarse should tasks be (granularity), which decisions must wait for run time.",
    no_args_is_help=True,
)

OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Folder for study.json, CSV tables, plots.html.")]
BudgetOpt = Annotated[
    int, typer.Option("--budget", "-n", min=1, max=MAX_BUDGET, help="Evaluations per search (Optuna tuners).")
]


def _names(text: str | None, option: str) -> list[str] | None:
    """The names of a comma-separated option, or None when it is not given (given but empty is a mistake)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{option} is {text!r}: give at least one name, or leave {option} out for the default")
    return names


def _finish(data: dict[str, Any], output: Path, as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    from ..study import study_outputs

    tables, _figures, summary = study_outputs(data)
    for t in tables[:2]:
        table = Table(title=escape(t.title))
        for c in t.columns:
            table.add_column(escape(c))
        for row in t.formatted():
            table.add_row(*(escape(v) for v in row))
        console.print(table)
    console.print("[bold]summary[/bold]")
    for line in summary:
        console.print(f"- {escape(line)}")
    console.print(f"written to {escape(str(output))}/ (study.json, *.csv, summary.md, plots.html)")
    console.print(f"view: paratune dashboard {escape(str(output))}   or open {escape(str(output / 'plots.html'))}")


def _run(kind: str, problem: Any, options: dict[str, Any], budget: int, seed: int, output: Path, quiet: bool) -> Any:
    """Run the study; Ctrl-C keeps the finished cells and says how to resume (exit code 130)."""
    from ..study import check_study_options, run_study

    try:
        check_study_options(kind, options)
    except ValueError as exc:
        raise flag_named(exc, options) from None
    output_folder(output)
    try:
        return run_study(kind, problem, options=options, budget=budget, seed=seed, out_dir=output, say=_say(quiet))
    except KeyboardInterrupt:
        console.print(
            f"interrupted: the finished cells are kept in {escape(str(output / 'cells'))}; "
            "run the same command again to resume"
        )
        raise typer.Exit(130) from None


def _say(quiet: bool) -> Any:
    return None if quiet else (lambda line: console.print(escape(line), highlight=False))


@study_app.command("granularity")
@user_errors
def granularity(
    output: OutOpt,
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    phase: PhaseOpt = "decode",
    objective: ObjectiveOpt = "",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    context: ContextOpt = 0,
    memory_gib: MemoryOpt = None,
    scenario: ScenarioOpt = None,
    tuners: Annotated[
        str | None, typer.Option("--tuners", help="Comma-separated tuners (default: dp, heuristics, Optuna).")
    ] = None,
    granularities: Annotated[
        str | None, typer.Option("--granularities", help="Comma-separated, e.g. op,sublayer,layer,layers:4.")
    ] = None,
    budget: BudgetOpt = 300,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Every tuner at every granularity: best value, gap, wall time, evaluations, search-space size."""
    fields = dict(phase=phase, objective=objective, batch=batch, seq=seq, context=context)
    problem = problem_from_options(scenario, model, platform, fields, {"memory_gib": memory_gib}, command=granularity)
    options = {"tuners": _names(tuners, "--tuners"), "granularities": _names(granularities, "--granularities")}
    options = {k: v for k, v in options.items() if v}
    data = _run("granularity", problem, options, budget, seed, output, as_json)
    _finish(data, output, as_json)


@study_app.command("static-vs-runtime")
@user_errors
def static_vs_runtime(
    output: OutOpt,
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="Shipped workload (paratune study workloads) or a CSV trace.")
    ],
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    phase: PhaseOpt = "decode",
    objective: ObjectiveOpt = "",
    memory_gib: MemoryOpt = None,
    scenario: ScenarioOpt = None,
    ks: Annotated[str, typer.Option("--ks", help="Numbers of precompiled plans to compare.")] = "1,2,4,8",
    max_buckets: Annotated[int, typer.Option("--max-buckets", min=1, help="Shape buckets at most.")] = 12,
    budget: BudgetOpt = 300,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """One static plan vs per-shape optima vs K precompiled plans over a workload of request shapes."""
    fields = dict(phase=phase, objective=objective)
    problem = problem_from_options(
        scenario, model, platform, fields, {"memory_gib": memory_gib}, command=static_vs_runtime
    )
    try:
        k_values = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--ks must be comma-separated integers, got {ks!r}") from None
    options = {"workload": workload, "ks": k_values, "max_buckets": max_buckets}
    data = _run("static-vs-runtime", problem, options, budget, seed, output, as_json)
    _finish(data, output, as_json)


@study_app.command("serving-load")
@user_errors
def serving_load(
    output: OutOpt,
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    gpus: Annotated[int | None, typer.Option("--gpus", min=1, help="Cluster size (default: the platform's).")] = None,
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="chat | long-context | PROMPT/OUTPUT lengths (see serve-tune).")
    ] = "chat",
    ttft_ms: Annotated[float | None, typer.Option("--ttft-ms", callback=positive_number, help="TTFT SLO, ms.")] = None,
    tpot_ms: Annotated[float | None, typer.Option("--tpot-ms", callback=positive_number, help="TPOT SLO, ms.")] = None,
    loads: Annotated[str, typer.Option("--loads", help="Loads as fractions of the peak, comma-separated.")] = (
        "0.1,0.25,0.5,0.75,0.95"
    ),
    engine: Annotated[str, typer.Option("--engine", help="vllm | sglang | trtllm.")] = "vllm",
    as_json: JsonOpt = False,
) -> None:
    """Serving under a changing load: the best deployment per load against one static deployment, per decision."""
    from ..costmodel import get_platform
    from ..search._serve import ServingProblem
    from ..serving import ENGINES, Slo, traffic_from_spec
    from ..study._serving_load import run_serving_load_study

    if not model or not platform:
        raise ValueError("--model and --platform are required")
    if engine not in ENGINES:
        raise ValueError(f"--engine is {engine!r}; allowed: {', '.join(ENGINES)}")
    try:
        fractions = tuple(float(x) for x in loads.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--loads must be comma-separated fractions, got {loads!r}") from None
    if not fractions or any(not (0 < f <= 1) for f in fractions):
        raise ValueError(f"--loads are fractions of the peak in (0, 1], got {loads!r}")
    plat = get_platform(platform)
    budget = gpus if gpus is not None else plat.num_devices
    if budget > plat.num_devices:
        raise ValueError(f"--gpus is {budget} but platform {platform!r} has {plat.num_devices} GPUs")
    slo = Slo(ttft_ms=ttft_ms, tpot_ms=tpot_ms) if (ttft_ms or tpot_ms) else None
    problem = ServingProblem(model, platform, traffic_from_spec(workload, rate=1.0), slo, budget, engine)
    output_folder(output)
    data = run_serving_load_study(problem, loads=fractions, out_dir=output, say=_say(as_json))
    _finish(data, output, as_json)


@study_app.command("show")
@user_errors
def show(
    folder: Annotated[Path, typer.Argument(help="A study folder (it holds study.json).")],
    as_json: JsonOpt = False,
) -> None:
    """Print a finished study's tables and summary."""
    from ..study import load_study

    _finish(load_study(folder), folder, as_json)


@study_app.command("workloads")
@user_errors
def workloads(as_json: JsonOpt = False) -> None:
    """The shipped synthetic workloads (request-shape traces) for static-vs-runtime."""
    from ..study._workload import shipped_workloads

    rows = shipped_workloads()
    if as_json:
        print_json(rows)
        return
    table = Table(title="workloads (paratune study static-vs-runtime --workload NAME)")
    for col in rows[0] if rows else ("name",):
        table.add_column(col)
    for r in rows:
        table.add_row(*(escape(str(v)) for v in r.values()))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``study`` and its subcommands to ``app``."""
    app.add_typer(study_app, name="study")
