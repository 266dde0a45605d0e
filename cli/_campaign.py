"""``paratune campaign run | status | resume | worker``: tuning campaigns over scenarios x tuners x seeds.

The work is done in :mod:`paratune.campaign`; this module parses arguments, shows
progress and prints where the results are (``status --json`` is a contract: keys
are only added). Exit codes: 0 when every job is finished (failed jobs included:
their errors are recorded), 1 when jobs are left unfinished, 130 on Ctrl-C, 2 on
a user error.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..campaign._states import JobState, Role
from ._common import MAX_PROCESSES, JsonOpt, console, print_json, print_text, user_errors

campaign_app = typer.Typer(
    help="Tuning campaigns: scenarios x tuners x seeds in a database, resumable, shared by workers.",
    no_args_is_help=True,
)

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="SQLAlchemy URL of the store (default: SQLite in the run folder), e.g. postgresql://user@host:5432/db.",
    ),
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", min=1, max=MAX_PROCESSES, help="Worker processes on this machine.")
]
StaleOpt = Annotated[
    float,
    typer.Option("--stale-after", min=1, help="Seconds without a heartbeat before a running job is re-run."),
]
Target = Annotated[str, typer.Argument(help="Run folder, campaign name (runs/NAME), spec file, or name in --storage.")]


@campaign_app.command("run")
@user_errors
def run(
    spec: Annotated[Path, typer.Argument(help="Campaign spec (YAML), e.g. configs/campaigns/demo.yaml.")],
    workers: WorkersOpt = 1,
    storage: StorageOpt = None,
    stale_after: StaleOpt = 120.0,
) -> None:
    """Run a campaign: store its jobs, run them on --workers processes, show progress; Ctrl-C stops cleanly."""
    from ..campaign import run_campaign

    outcome = run_campaign(spec, workers=workers, storage=storage, stale_after_s=stale_after, show=console)
    _closing(outcome)


@campaign_app.command("resume")
@user_errors
def resume(
    target: Target,
    workers: WorkersOpt = 1,
    storage: StorageOpt = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also re-run failed jobs.")] = False,
    stale_after: StaleOpt = 120.0,
) -> None:
    """Continue a campaign: re-run jobs of workers that died (SIGKILL, crash) and the jobs still waiting."""
    from ..campaign import resume_campaign

    outcome = resume_campaign(
        target, workers=workers, storage=storage, retry_failed=retry_failed, stale_after_s=stale_after, show=console
    )
    _closing(outcome)


@campaign_app.command("worker")
@user_errors
def worker(
    name: Annotated[str, typer.Argument(help="Campaign name in the shared store.")],
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            envvar="PARATUNE_STORAGE",
            help="SQLAlchemy URL of the shared store (or set PARATUNE_STORAGE: a password stays out of `ps`).",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", help="Folder for the job logs (default: the campaign's run folder).")
    ] = None,
    stale_after: StaleOpt = 120.0,
    max_jobs: Annotated[int | None, typer.Option("--max-jobs", min=1, help="Stop after this many jobs.")] = None,
) -> None:
    """Claim and run jobs of a campaign stored in --storage until none waits (start one per machine or core)."""
    from ..campaign import work

    try:
        work(storage, name, output=output, stale_after_s=stale_after, max_jobs=max_jobs, say=print_text)
    except KeyboardInterrupt:
        console.print("interrupted: the current job is back in the queue")
        raise typer.Exit(130) from None


@campaign_app.command("status")
@user_errors
def status(target: Target, storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs done / running / failed, each tuner's result per scenario with its gap to the optimum, and errors."""
    from ..campaign import campaign_status

    data = campaign_status(target, storage)
    if as_json:
        print_json(data)
        return
    _print_status(data)


# -- printing -----------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (shorter commands to copy)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _closing(outcome: Any) -> None:
    c, where = outcome.counts, outcome.located
    folder = escape(_shown(where.output))
    console.print(
        f"campaign {escape(where.name)}: {c['done']} done, {c['failed']} failed, {c['running']} running, "
        f"{c['waiting']} waiting ({outcome.wall_s:.1f} s)"
    )
    console.print(f"results: {folder}/ (store: {escape(_safe(where.storage))}; one log per job in {folder}/logs/)")
    console.print(f"see them: paratune campaign status {folder}")
    if outcome.interrupted:
        console.print(f"interrupted; finished results are kept. Continue: paratune campaign resume {folder}")
        raise typer.Exit(130)
    if not outcome.finished:
        console.print(f"[yellow]jobs left unfinished[/yellow] (see {folder}/logs/worker-*.log); "
                      f"continue: paratune campaign resume {folder}")  # fmt: skip
        raise typer.Exit(1)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_studies(jobs: list[dict[str, Any]]) -> None:
    """Study jobs in a table of their own: a study's headline figure is not a plan's value (no gap)."""
    if not jobs:
        return
    table = Table(title="studies (results: paratune report, or the dashboard's Studies page)")
    for col in ("scenario", "study", "label", "state", "headline", "evaluations"):
        table.add_column(col, justify="right" if col == "evaluations" else "left")
    for j in jobs:
        value, kind = j["objective_value"], j["study"] or ""
        if value is None:
            headline = "-"
        elif kind == "static-vs-runtime":
            headline = f"static plan's regret {100 * value:.2f}%"
        else:
            headline = f"best granularity's value {value:.4g}" if kind == "granularity" else f"{value:.4g}"
        evals = "-" if j["evaluations"] is None else str(j["evaluations"])
        table.add_row(escape(j["scenario"]), kind, escape(j["tuner"]), j["state"], headline, evals)
    console.print(table)


def _print_status(d: dict[str, Any]) -> None:
    c = d["counts"]
    console.print(
        f"campaign [bold]{escape(d['name'])}[/bold]: {c['done']}/{d['total']} done, {c['running']} running, "
        f"{c['failed']} failed, {c['waiting']} waiting  ({escape(str(d['output']))}, {escape(d['storage'])})"
    )
    table = Table(title="best value per tuner (median over seeds) and gap to the optimum")
    for col in ("scenario", "objective", "tuner", "jobs", "value", "gap", "evaluations"):
        table.add_column(col, justify="left" if col in ("scenario", "objective", "tuner") else "right")
    by_scenario: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for j in d["jobs"]:  # scenarios in queue order, the optimum first within each; studies apart (below)
        if j["role"] != Role.STUDY:
            by_scenario.setdefault(j["scenario"], {}).setdefault(j["tuner"], []).append(j)
    groups = [((s, t), rows) for s, tuners in by_scenario.items() for t, rows in tuners.items()]
    for (scenario, tuner), rows in groups:
        values = [r["objective_value"] for r in rows if r["objective_value"] is not None]
        gaps = [r["gap"] for r in rows if r["gap"] is not None]
        evals = [r["evaluations"] for r in rows if r["evaluations"] is not None]
        states = {
            s: sum(r["state"] == s for r in rows)
            for s in (JobState.DONE, JobState.FAILED, JobState.RUNNING, JobState.WAITING)
        }
        summary = ", ".join(f"{n} {s}" for s, n in states.items() if n)
        table.add_row(
            escape(scenario),
            rows[0]["objective"] or "",
            escape(tuner) + (" (optimum)" if rows[0]["role"] == Role.OPTIMUM else ""),
            summary,
            f"{statistics.median(values):.4g}" if values else "-",
            f"{100 * statistics.median(gaps):.2f}%" if gaps else "-",
            f"{statistics.median(evals):.0f}" if evals else "-",
        )
    if by_scenario:
        console.print(table)
    _print_studies([j for j in d["jobs"] if j["role"] == Role.STUDY])
    running = [j for j in d["jobs"] if j["state"] == JobState.RUNNING]
    for j in running:
        age = j["heartbeat_age_s"]
        line = f"running: job {j['id']} {j['tuner']} on {j['scenario']} seed {j['seed']} by {j['worker']}"
        console.print(escape(line + ("" if age is None else f" (heartbeat {age:.0f} s ago)")))  # fmt: skip
    failed = [j for j in d["jobs"] if j["state"] == JobState.FAILED]
    for j in failed:
        line = f"job {j['id']} {j['tuner']} on {j['scenario']} seed {j['seed']}: {j['error']}  (log {j['log']})"
        console.print("[red]failed[/red]: " + escape(line), highlight=False)  # fmt: skip
    if not d["finished"]:
        console.print(f"continue: paratune campaign resume {escape(str(d['output']))}")


def register(app: typer.Typer) -> None:
    """Add ``campaign`` and its subcommands to ``app``."""
    app.add_typer(campaign_app, name="campaign")
