"""``paratune tune`` and ``paratune tuners list``: run one tuner on one problem, list the tuners.

The work is done in :mod:`paratune.search`; this module parses arguments, shows
progress and prints the result (``--json`` is a contract: keys are only added).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._limits import MAX_BUDGET, MAX_DEVICES
from ._common import (
    BatchOpt,
    ContextOpt,
    GranOpt,
    JsonOpt,
    MemoryOpt,
    ModelOpt,
    ObjectiveOpt,
    PhaseOpt,
    PlatformOpt,
    ScenarioOpt,
    SeedOpt,
    SeqOpt,
    at_most,
    console,
    flag_named,
    output_file,
    positive_number,
    print_json,
    problem_from_options,
    user_errors,
)

tuners_app = typer.Typer(
    help="The tuners: heuristics, exact solvers, Optuna searches, RL policies.", no_args_is_help=True
)


@tuners_app.command("list")
@user_errors
def tuners_list(as_json: JsonOpt = False) -> None:
    """List every tuner by name with its family, what it does and its options (--option of a campaign's tuner)."""
    from ..search import tuner_entries

    rows: list[dict[str, Any]] = [
        {
            "name": e.name,
            "family": str(e.family),
            "description": e.description,
            "options": [o.to_dict() for o in e.options],
        }
        for e in tuner_entries()
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title="tuners (paratune tune --tuner NAME; paratune tuners show NAME for the options' help)")
    for col in ("name", "family", "description", "options"):
        table.add_column(col)
    for r in rows:
        options = ", ".join(o["name"] for o in r["options"])
        table.add_row(escape(r["name"]), r["family"], escape(r["description"]), escape(options) or "-")
    console.print(table)


@tuners_app.command("show")
@user_errors
def tuners_show(
    name: Annotated[str, typer.Argument(help="Tuner name (paratune tuners list).")], as_json: JsonOpt = False
) -> None:
    """One tuner's options: type, default and help (campaign YAML: {name: NAME, options: {OPTION: value}})."""
    from ..search import tuner_class

    cls = tuner_class(name)
    options = [o.to_dict() for o in cls.Options.describe()]
    if as_json:
        print_json({"name": name, "family": str(cls.family), "description": cls.description, "options": options})
        return
    table = Table(title=escape(f"{name} ({cls.family}): {cls.description}"))
    for col in ("option", "type", "default", "what it does"):
        table.add_column(col)
    for o in options:
        table.add_row(escape(o["name"]), escape(o["type"]), escape(repr(o["default"])), escape(o["help"]))
    if not options:
        table.add_row("-", "-", "-", "this tuner takes no options")
    console.print(table)


def tune(
    tuner: Annotated[str, typer.Option("--tuner", "-t", help="Tuner name (paratune tuners list).")] = "dp",
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    phase: PhaseOpt = "decode",
    objective: ObjectiveOpt = "",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    context: ContextOpt = 0,
    granularity: GranOpt = "layer",
    memory_gib: MemoryOpt = None,
    tbt_ms: Annotated[float | None, typer.Option("--tbt-ms", callback=positive_number, help="TBT SLO, ms.")] = None,
    ttft_ms: Annotated[float | None, typer.Option("--ttft-ms", callback=positive_number, help="TTFT SLO, ms.")] = None,
    max_devices: Annotated[
        int | None,
        typer.Option("--max-devices", min=1, callback=at_most(MAX_DEVICES), help="Use at most this many devices."),
    ] = None,
    calibrated_only: Annotated[
        bool, typer.Option("--calibrated-only", help="Only plans inside the calibration profile's fitted range.")
    ] = False,
    scenario: ScenarioOpt = None,
    budget: Annotated[
        int | None, typer.Option("--budget", "-n", min=1, max=MAX_BUDGET, help="Evaluations (default: the tuner's).")
    ] = None,
    seed: SeedOpt = 0,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL (optuna-* tuners), e.g. sqlite:///study.db.")
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy file for --tuner rl (default: the shipped policy).")
    ] = None,
    techniques: Annotated[
        str | None,
        typer.Option(
            "--techniques",
            help="Training: 'search' adds ZeRO, SP, selective recomputation, overlap and interleaving to the "
            "search (enumerate, optuna-*, rl); 'off' plans without them (the tuner's default).",
        ),
    ] = None,
    optimum: Annotated[
        bool, typer.Option("--optimum/--no-optimum", help="Also run dp for the gap to the optimum.")
    ] = True,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the best plan (JSON, for evaluate --plan).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tune a model's mapping on a platform with one tuner; print the plan, its metrics and the gap to the optimum."""
    from ..search import make_tuner

    if output is not None:
        output_file(output)
    limits = dict(
        memory_gib=memory_gib, tbt_ms=tbt_ms, ttft_ms=ttft_ms, max_devices=max_devices, calibrated_only=calibrated_only
    )
    fields = dict(phase=phase, objective=objective, batch=batch, seq=seq, context=context, granularity=granularity)
    problem = problem_from_options(scenario, model, platform, fields, limits, command=tune)
    options: dict[str, Any] = {"storage": storage} if storage else {}
    if storage and not tuner.startswith("optuna-"):
        raise ValueError(f"--storage applies to the optuna-* tuners, not {tuner!r}")
    if policy is not None:
        if tuner != "rl":
            raise ValueError(f"--policy applies to --tuner rl, not {tuner!r}")
        options["policy"] = str(policy)
    if techniques is not None:
        from ..search import tuner_entries

        takes = sorted(e.name for e in tuner_entries() if any(o.name == "techniques" for o in e.options))
        if tuner not in takes:
            raise ValueError(
                f"--techniques applies to {', '.join(takes)}, not {tuner!r} (it plans without training techniques)"
            )
        options["techniques"] = techniques
    try:
        runner = make_tuner(tuner, **options)  # checks --storage and --policy (the files, the URL) now
    except ValueError as exc:
        raise flag_named(exc, options) from None
    try:
        result = _run_with_progress(runner, problem, budget, seed, quiet=as_json)
    except ValueError as exc:  # e.g. a --storage that cannot be opened
        raise flag_named(exc, options) from None
    optimum_value, optimal_note = _optimum(problem, result, enabled=optimum)
    if output is not None and result.best_plan is not None:
        result.best_plan.save(output)
    data = _result_data(problem, result, optimum_value, optimal_note, output)
    if as_json:
        print_json(data)
    else:
        _print_result(data)
    if result.best_plan is None:
        raise typer.Exit(1)


def _run_with_progress(runner: Any, problem: Any, budget: int | None, seed: int, *, quiet: bool) -> Any:
    if quiet:
        return runner.tune(problem, budget=budget, seed=seed)
    total = budget if budget is not None else runner.default_budget
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("best {task.fields[best]}")]  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(escape(f"{runner.name} on {problem.name}"), total=total, best="-")

        def show(p: Any) -> None:
            best = "-" if p.best is None else f"{p.best:.6g}"
            bar.update(task, completed=p.evaluations, best=best)

        return runner.tune(problem, budget=budget, seed=seed, callback=show)


def _optimum(problem: Any, result: Any, *, enabled: bool) -> tuple[float | None, str]:
    """The dp optimum when it applies (layered graph, single objective); else None and why."""
    if result.optimal:
        return result.objective_value, "this tuner certifies the optimum"
    if not enabled:
        return None, "not computed (--no-optimum)"
    if problem.resolved_objective.multi:
        return None, "multi-objective: see the Pareto front"
    if not problem.graph().is_layered:
        return None, "dp needs a layered graph (try tuner dag-exact on small DAGs)"
    if result.tuner == "dp":  # dp with its default options did not certify: running it again would not either
        return None, "dp could not certify the optimum: " + "; ".join(result.notes)
    from ..search import make_tuner

    best = make_tuner("dp").tune(problem)
    if not best.optimal:
        return None, "dp could not certify the optimum: " + "; ".join(best.notes)
    return best.objective_value, "dp"


def _result_data(
    problem: Any, result: Any, optimum_value: float | None, note: str, output: Path | None
) -> dict[str, Any]:
    from .. import __version__
    from ..search._launch import launch_lines

    gap = None
    if optimum_value is not None and result.objective_value is not None:
        gap = problem.resolved_objective.gap(result.objective_value, optimum_value)
    data = result.to_dict()
    data.update(
        problem=problem.to_dict(),
        objective_value=result.objective_value,
        optimum_value=optimum_value,
        optimum_source=note,
        gap=gap,
        paratune_version=__version__,
        platform=problem.resolved_platform.name,
        profile=problem.resolved_platform.profile.name,
        launch={}
        if result.best_plan is None
        else {x.engine: {"command": x.command, "reason": x.reason} for x in launch_lines(result.best_plan, problem)},
        plan_file=str(output) if output is not None and result.best_plan is not None else None,
    )
    return data


def _print_result(d: dict[str, Any]) -> None:
    title = f"{d['tuner']} on {d['problem']['name']} ({d['platform']}, profile {d['profile']})"
    table = Table(title=escape(title), show_header=False)
    if d["best_plan"] is None:
        table.add_row("[red]result[/red]", "no feasible plan found")
        for n in d["notes"]:
            table.add_row("note", escape(n))
        console.print(table)
        return
    plan, m = d["best_plan"], d["best_metrics"]
    unit = "tokens/s" if d["direction"] == "maximize" else "s"
    table.add_row(d["objective"], f"{d['objective_value']:.6g} {unit}")
    if d["optimum_value"] is not None:
        source = escape(d["optimum_source"])
        table.add_row("optimum", f"{d['optimum_value']:.6g} {unit} ({source}); gap {100 * d['gap']:.2f}%")
    else:
        table.add_row("optimum", f"unknown: {escape(d['optimum_source'])}")
    stages = ", ".join(
        f"TP{s['tp']} layers {s['layers'][0]}-{s['layers'][1]}"
        if "layers" in s
        else f"TP{s['tp']} {len(s['tasks'])} tasks"
        for s in plan["stages"]
    )
    table.add_row("plan", f"{len(plan['stages'])} stage(s): {stages}")
    table.add_row(
        "", f"micro-batches {plan['micro_batches']}, replicas {plan['replicas']}, {m['devices_used']} devices"
    )
    techniques = _techniques(plan)
    if techniques:
        table.add_row("techniques", escape(techniques))
    table.add_row("peak memory", f"{max(m['peak_memory_bytes'], default=0) / 2**30:.1f} GiB per device")
    terms = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in (m.get("memory_breakdown") or {}).items() if v)
    if terms:
        table.add_row("memory by term", escape(f"{terms} GiB (busiest device)"))
    table.add_row("evaluations", f"{d['evaluations']} in {d['wall_s']:.2f} s")
    if d["pareto"] and len(d["pareto"]) > 1:
        front = "; ".join(f"{v[0]:.4g} s / {v[1] / 2**30:.1f} GiB" for v in (p["values"] for p in d["pareto"]))
        table.add_row("Pareto front", front)
    for engine, line in d["launch"].items():
        shown = escape(line["command"]) if line["command"] else ""
        table.add_row(engine, shown or f"[yellow]not expressible[/yellow]: {escape(line['reason'])}")
    for n in d["notes"]:
        table.add_row("note", escape(n))
    if d["plan_file"]:
        table.add_row("plan file", escape(f"{d['plan_file']} (paratune evaluate --plan {d['plan_file']} ...)"))
    console.print(table)


def _techniques(plan: dict[str, Any]) -> str:
    """The plan's training techniques as ``evaluate`` shows them (``zero 1, sequence_parallel True``); '' for none.

    A plan dict carries only the techniques that differ from their defaults, in
    :data:`TECHNIQUE_DEFAULTS`' order.
    """
    from ..costmodel import TECHNIQUE_DEFAULTS

    return ", ".join(f"{k} {plan[k]}" for k in TECHNIQUE_DEFAULTS if k in plan)


def register(app: typer.Typer) -> None:
    """Add ``tune`` and ``tuners list | show`` to ``app``."""
    app.add_typer(tuners_app, name="tuners")
    app.command("tune")(user_errors(tune))
