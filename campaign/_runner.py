"""Running campaigns: the launcher (``run``/``resume``), the worker loop, and status.

``run`` stores the spec and its jobs, then starts ``--workers`` worker processes
(``python -m paratune.campaign worker``) and shows progress read from the
database; ``paratune campaign worker`` runs the same loop on any machine that
reaches a shared database. A worker claims a job, heartbeats while it runs, writes
one log file per job in the run folder's ``logs/``, and records the result (or the
error) in the transaction that finishes the job. Ctrl-C (SIGINT) or SIGTERM stops
a worker cleanly: its current job goes back to the queue. A worker killed with
SIGKILL leaves a ``running`` job whose pid is gone (or whose heartbeat goes stale):
``resume``, and any worker that finds the queue empty, puts it back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform as platform_module
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from .._provenance import library_versions
from ._records import CampaignRecord, JobRecord
from ._runfile import read_run_file
from ._secrets import STORAGE_ENV, run_file_entry, run_file_storage
from ._spec import CampaignSpec
from ._states import AttemptOutcome, JobState, Role
from ._store import Claim, JobLost, Store, Worker

RUN_FILE = "campaign.json"
DEFAULT_STALE_AFTER_S = 120.0
DEFAULT_HEARTBEAT_S = 5.0
Say = Callable[[str], None]


@dataclass(frozen=True)
class Located:
    """Where a campaign lives: its name, its storage URL and its run folder."""

    name: str
    storage: str
    output: Path


@dataclass
class Outcome:
    """How a ``run`` or ``resume`` ended: jobs per state, whether it was interrupted, wall time."""

    located: Located
    counts: dict[str, int]
    interrupted: bool = False
    wall_s: float = 0.0
    skipped: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Every job is done or failed (none waiting or running)."""
        return self.counts[JobState.WAITING] == 0 and self.counts[JobState.RUNNING] == 0


# -- launching -----------------------------------------------------------------------


def run_campaign(
    spec_path: str | Path,
    *,
    workers: int = 1,
    storage: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    show: Any = None,
) -> Outcome:
    """Create the campaign of ``spec_path`` (or find the same one already stored) and run it with ``workers``.

    ``show`` is a rich Console for progress, or None for none.

    Raises:
        ValueError: a spec error (naming file and field), a storage that cannot be
            opened, or a campaign of the same name but another spec in the store.
    """
    spec = CampaignSpec.load(spec_path, storage=storage)
    located = create_campaign(spec, spec_path, show=show)
    outcome = _drive(located, workers, stale_after_s, heartbeat_s, show)
    outcome.skipped = spec.skipped
    return outcome


def create_campaign(spec: CampaignSpec, spec_path: str | Path | None = None, *, show: Any = None) -> Located:
    """Store ``spec`` and its jobs (unless the same campaign is already there) and write the run folder's
    ``campaign.json``, which ``status``/``resume`` read; nothing is run."""
    output = spec.output.resolve()
    _require_writable(output, "campaign run")
    store = Store(spec.storage)  # first: a store that cannot be opened leaves no run folder behind
    try:
        output.mkdir(parents=True, exist_ok=True)
        created = store.create_campaign(spec, str(output))
        if not created and show is not None:
            show.print(f"campaign {spec.name!r} already exists in {store.safe_url}: continuing it")
        _write_run_file(output, spec.name, store, spec_path or spec.where)
    finally:
        store.close()
    if show is not None:
        for note in spec.skipped:
            show.print(f"[yellow]note[/yellow]: {_escape(note)}")
    return Located(spec.name, spec.storage, output)


def resume_campaign(
    target: str,
    *,
    workers: int = 1,
    storage: str | None = None,
    retry_failed: bool = False,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    show: Any = None,
) -> Outcome:
    """Continue a campaign: requeue jobs of dead workers (and failed ones with ``retry_failed``), run the rest."""
    located = locate(target, storage)
    _require_writable(located.output, "resume")
    store = Store.existing(located.storage)
    try:
        _require(store, located.name)
        lost = store.requeue_stale(located.name, stale_after_s=stale_after_s)
        retried = store.retry_failed(located.name) if retry_failed else 0
        live = [j for j in store.jobs(located.name) if j.state == JobState.RUNNING]
        running, holders = len(live), sorted({str(j.worker) for j in live})
    finally:
        store.close()
    if show is not None and (lost or retried):
        show.print(f"requeued {len(lost)} interrupted job(s) {lost}" + (f" and {retried} failed" if retried else ""))
    if show is not None and running:  # live workers elsewhere (fresh heartbeats): adopted, not doubled
        show.print(f"{running} job(s) still running on live workers ({_escape(', '.join(holders))}): "
                   "left to them; this launcher waits for them")  # fmt: skip
    return _drive(located, workers, stale_after_s, heartbeat_s, show)


def _drive(located: Located, workers: int, stale_after_s: float, heartbeat_s: float, show: Any) -> Outcome:
    """Start the worker processes and follow the campaign to its end (or until Ctrl-C / SIGTERM / SIGHUP stops it).

    The end is the campaign's, not only our workers': jobs that other workers (another launcher, another
    host) still run are waited for, so the outcome, hence the exit code, tells the truth about the campaign.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    (located.output / "logs").mkdir(parents=True, exist_ok=True)
    store = Store(located.storage)
    fleet = _Fleet(located, workers, stale_after_s, heartbeat_s)
    start = time.time()
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            fleet.spawn()
            _follow(store, located.name, fleet, stale_after_s, show)
    except KeyboardInterrupt:
        interrupted = True
        _stop(fleet.procs)
        store.requeue_stale(located.name, stale_after_s=stale_after_s)
    finally:
        fleet.close()  # after _stop: closing the pipe's write end tells any worker still alive to stop
    counts = store.counts(located.name)
    store.close()
    return Outcome(located, counts, interrupted, time.time() - start)


class _Fleet:
    """The launcher's worker processes, tied to it by a pipe.

    Each worker holds the read end of a pipe whose write end only the launcher holds. When the
    launcher dies, however it dies (SIGKILL and SIGHUP included), the kernel closes the write end;
    the worker sees end-of-file, puts its job back in the queue and exits. So no worker outlives
    its launcher unsupervised, and a later ``resume`` never starts workers beside orphans. (A
    pipe rather than Linux's ``PR_SET_PDEATHSIG``: it works on every POSIX system and does not
    depend on which thread started the child.) The storage URL reaches the workers through their
    environment, never their command line, which ``ps`` shows to every user of the machine.
    """

    def __init__(self, located: Located, size: int, stale_after_s: float, heartbeat_s: float) -> None:
        self.size, self.logs = size, located.output / "logs"
        self.read_fd, self.write_fd = os.pipe()  # not inheritable: only the workers get the read end (pass_fds)
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", "1")  # one core per worker: BLAS and torch threads oversubscribe
        self.env[STORAGE_ENV] = located.storage
        self.cmd = [sys.executable, "-m", "paratune.campaign", "worker", "--output", str(located.output),
                    "--stale-after", str(stale_after_s), "--heartbeat", str(heartbeat_s),
                    "--watch-fd", str(self.read_fd), located.name]  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []
        self.failed = 0  # workers that exited non-zero (killed, crashed, interrupted)
        self._seen: set[int] = set()

    def spawn(self) -> None:
        """Start ``size`` workers (from the calling thread, the main one in the CLI)."""
        for i in range(self.size):
            with open(self.logs / f"worker-{i}.log", "ab") as log:
                # A session of their own: a terminal's Ctrl-C reaches the launcher only, which forwards one
                # SIGINT to each worker, so none is hit twice while it puts its job back.
                self.procs.append(subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                   start_new_session=True, pass_fds=(self.read_fd,)))  # fmt: skip

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def exited(self) -> list[subprocess.Popen[bytes]]:
        """Workers that exited since the last call (each reported once)."""
        out = [p for p in self.procs if p.poll() is not None and p.pid not in self._seen]
        self._seen.update(p.pid for p in out)
        self.failed += sum(p.returncode != 0 for p in out)
        return out

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _follow(store: Store, name: str, fleet: _Fleet, stale_after_s: float, show: Any) -> None:
    """Poll the queue until the campaign ends; requeue a dead worker's job at once; show progress on ``show``."""
    say = _Say(show)
    waiting_for_others = False
    with _progress(show, name, store.counts(name)) as update:
        while True:
            for p in fleet.exited():
                if p.returncode != 0:  # it cannot put its job back itself: do it now, not after --stale-after
                    lost = store.requeue_stale(name, stale_after_s=stale_after_s)
                    say(f"worker {p.pid} {_how(p.returncode)}" + (f": requeued job(s) {lost}" if lost else ""))
            counts = store.counts(name)
            update(counts)
            if fleet.alive():
                time.sleep(0.5)
                continue
            if counts[JobState.WAITING] == 0 and counts[JobState.RUNNING] == 0:
                return
            if counts[JobState.WAITING] == 0:  # other workers (another launcher, another host) run the rest
                if not waiting_for_others:
                    say(f"our workers are done; waiting for {counts[JobState.RUNNING]} job(s) that other workers run "
                        "(Ctrl-C leaves them to those workers)")  # fmt: skip
                    waiting_for_others = True
                if not store.requeue_stale(name, stale_after_s=stale_after_s):
                    time.sleep(1.0)
                continue
            if fleet.failed:  # jobs wait but our workers died or failed: stop and say so (see their logs)
                return
            fleet.spawn()  # jobs came back to the queue after our workers found it empty (another launcher's)
            waiting_for_others = False


class _Say:
    """Print a line on the progress console, or nowhere."""

    def __init__(self, show: Any) -> None:
        self.show = show

    def __call__(self, line: str) -> None:
        if self.show is not None:
            self.show.print(_escape(line))


@contextmanager
def _progress(show: Any, name: str, counts: dict[str, int]) -> Iterator[Callable[[dict[str, int]], None]]:
    """A progress bar on ``show`` (a rich Console), or a no-op; yields the function that updates it."""
    if show is None:
        yield lambda _counts: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("running {task.fields[running]}, failed {task.fields[failed]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=show) as bar:
        task = bar.add_task(f"campaign {_escape(name)}", total=sum(counts.values()), running=0, failed=0)

        def update(c: dict[str, int]) -> None:
            bar.update(task, completed=c[JobState.DONE] + c[JobState.FAILED], running=c[JobState.RUNNING],
                       failed=c[JobState.FAILED])  # fmt: skip

        yield update


def _how(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed ({signal.Signals(-returncode).name})"
        return f"was killed (signal {-returncode})"
    return f"exited with code {returncode}"


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """One SIGINT to each worker (it puts its job back and exits), then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) behave like Ctrl-C (clean stop) while inside; a no-op outside
    the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    hup = getattr(signal, "SIGHUP", None)  # not under nohup (ignored): the user asked to survive the hangup
    sigs = [signal.SIGTERM] + ([hup] if hup is not None and signal.getsignal(hup) is not signal.SIG_IGN else [])
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- finding a campaign -----------------------------------------------------------------


def locate(target: str | Path, storage: str | None = None) -> Located:
    """A campaign from a run folder, a spec file, a name under ``runs/``, or a name in ``storage``.

    Raises:
        ValueError: nothing found, saying where it looked.
    """
    path = Path(target)
    candidates = [path, Path("runs") / str(target)]
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        spec = CampaignSpec.load(path, storage=storage, check=False)
        if (spec.output / RUN_FILE).is_file():
            candidates.insert(0, spec.output)
        else:
            return Located(spec.name, spec.storage, spec.output.resolve())
    for folder in candidates:
        run_file = folder / RUN_FILE
        if run_file.is_file():
            info = read_run_file(run_file)
            url = storage or (
                f"sqlite:///{folder.resolve() / info['storage_file']}"
                if info.get("storage_file")
                else run_file_storage(info, run_file)
            )
            return Located(info["name"], url, folder.resolve())
    if storage is not None:
        store = Store.reader(storage)
        try:
            row = _require(store, str(target))
        finally:
            store.close()
        return Located(str(target), storage, Path(row.output))
    raise ValueError(
        f"no campaign {str(target)!r}: no {RUN_FILE} in {' or '.join(str(c) for c in candidates)}; "
        "give a run folder, a spec file, or --storage URL for a campaign in a shared database"
    )


def _require_writable(folder: Path, command: str) -> None:
    """Refuse before writing anything when ``folder`` (or, if new, its nearest existing parent) is read-only.

    Raises:
        ValueError: naming the folder and what the command needs to write there.
    """
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK):
        raise ValueError(
            f"{existing} is read-only: {command} needs to write the store, campaign.json and job logs there "
            "(status and report only read; copy the run folder somewhere writable to continue it)"
        )


def _require(store: Store, name: str) -> CampaignRecord:
    row = store.campaign(name)
    if row is None:
        known = store.campaign_names()
        raise ValueError(
            f"no campaign {name!r} in {store.safe_url}; campaigns there: {', '.join(known) if known else 'none'}"
        )
    return row


def _write_run_file(output: Path, name: str, store: Store, spec_path: str | Path) -> None:
    # the URL without its password, and the variable that supplies it (never a masked copy: resume must connect)
    info: dict[str, Any] = {"format": 1, "name": name, **run_file_entry(store.url), "spec": str(Path(spec_path))}
    database = store.engine.url.database if store.dialect == "sqlite" else None
    if database and Path(database).resolve().parent == output.resolve():
        info["storage_file"] = Path(database).name  # relative: the run folder can be moved or copied
    (output / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")


# -- the worker ---------------------------------------------------------------------------


class _Heartbeat(threading.Thread):
    """Refreshes the current job's heartbeat every ``interval`` seconds; flags ``lost`` if it was requeued."""

    def __init__(self, store: Store, worker: Worker, interval: float) -> None:
        super().__init__(name="paratune-heartbeat", daemon=True)
        self.store, self.worker, self.interval = store, worker, interval
        self.claim: Claim | None = None
        self.lost = False
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def hold(self, claim: Claim | None) -> None:
        with self.lock:  # waits for a heartbeat in flight, so none lands after the job is finished
            self.claim, self.lost = claim, False

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            with self.lock:
                if self.claim is None:
                    continue
                try:
                    if not self.store.heartbeat(self.claim, self.worker):
                        self.lost = True
                except Exception as exc:  # a database hiccup: try again at the next beat
                    logging.getLogger(__name__).warning("heartbeat failed: %s", exc)


def work(
    storage: str,
    name: str,
    *,
    output: str | Path | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    max_jobs: int | None = None,
    say: Say = print,
) -> int:
    """Claim and run jobs of campaign ``name`` until none waits; returns the number of jobs run.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM in the ``worker`` command) puts the
    current job back in the queue and propagates.
    """
    store = Store.existing(storage)  # a mistyped URL is an error, never a new empty database
    row = _require(store, name)
    folder = Path(output) if output is not None else Path(row.output)
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker = Worker.here()
    beat = _Heartbeat(store, worker, heartbeat_s)
    beat.start()
    problems: dict[str, Any] = {}
    ran = 0
    say(f"worker {worker.id} on campaign {name!r} ({store.safe_url})")
    try:
        while max_jobs is None or ran < max_jobs:
            claim = store.claim(name, worker)
            if claim is None:
                if store.requeue_stale(name, stale_after_s=stale_after_s, host=worker.host):
                    continue
                break
            try:  # from the claim on: an interrupt anywhere (even before the job's log exists) puts the job back
                beat.hold(claim)
                state = _run_job(store, worker, claim, beat, problems, logs)
            except KeyboardInterrupt:
                store.release(claim, worker)
                raise
            finally:
                beat.hold(None)
            say(f"job {claim.id} ({claim.job.tuner} on {claim.job.scenario}, seed {claim.job.seed}): {state}")
            ran += 1
    finally:
        beat.halt.set()
        store.close()
    say(f"worker {worker.id}: {ran} job(s) run, queue empty" if max_jobs is None or ran < max_jobs else
        f"worker {worker.id}: {ran} job(s) run (--max-jobs)")  # fmt: skip
    return ran


def _during_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled: the job was stopped, it did not fail."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__context__
    return False


def _run_job(store: Store, worker: Worker, claim: Claim, beat: _Heartbeat, problems: dict[str, Any], logs: Path) -> str:
    """Run one claimed job, log it, and record its outcome; returns the job's new state."""
    from .. import __version__
    from ..problem import Problem
    from ..search import make_tuner

    job = claim.job
    log_path = logs / f"job-{claim.id:05d}-{_slug(job.tuner)}-{_slug(job.scenario)}-s{job.seed}.log"
    store.set_log(claim, str(log_path))
    log = logging.getLogger(f"paratune.campaign.job{claim.id}")
    handler = logging.FileHandler(log_path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    started = time.time()
    options = dict(job.options)
    log.info("job %s attempt %s: tuner %s (%s) on %s, seed %s, budget %s, options %s; worker %s",
             claim.id, job.attempts, job.tuner, job.tuner_name, job.scenario, job.seed,
             job.budget, options, worker.id)  # fmt: skip
    try:
        try:
            scenario = problems.get(job.scenario)
            if scenario is None:
                data = store.scenarios(job.campaign)[job.scenario].problem
                scenario = problems[job.scenario] = Problem.from_dict(data, where=f"scenario {job.scenario}")
                scenario.evaluator()  # the graph and pricer are built once per worker, outside any tuner's wall time
            if job.role == Role.STUDY:
                return _run_study_job(store, worker, claim, beat, scenario, options, logs.parent, log, started)
            if job.tuner_name.startswith("optuna-") and "storage" not in options:
                # each Optuna job keeps its study in a journal file: `optuna-dashboard FILE` opens it
                journal = logs.parent / "optuna" / f"job-{claim.id:05d}.journal"
                journal.parent.mkdir(exist_ok=True)  # the storage option names a file in an existing folder
                journal.unlink(missing_ok=True)  # a re-run starts its study afresh
                study = f"{job.tuner}:{job.scenario}:seed{job.seed}"
                options = {**options, "storage": f"journal:{journal}", "study_name": study}
            tuner = make_tuner(job.tuner_name, **options)
            result = tuner.tune(scenario, budget=job.budget, seed=job.seed, callback=_progress_logger(log, beat))
        except KeyboardInterrupt:
            log.warning("interrupted: the job goes back to the queue")  # work() puts it back
            raise
        except JobLost:
            log.warning("job %s was requeued by another process (stale heartbeat): result dropped", claim.id)
            return AttemptOutcome.LOST
        except Exception as exc:
            if _during_interrupt(exc):  # e.g. a library's clean-up failed because Ctrl-C/SIGTERM cut it short
                log.warning("interrupted (%s while stopping): the job goes back to the queue", type(exc).__name__)
                raise KeyboardInterrupt from exc
            log.error("failed: %s\n%s", exc, traceback.format_exc())
            return _finish(store, worker, claim, log, JobState.FAILED, f"{type(exc).__name__}: {exc}", None)
        data = result.to_dict()
        data["problem"] = scenario.to_dict()
        record = {
            "found": result.found,
            "objective_value": result.objective_value,
            "optimal": result.optimal,
            "evaluations": result.evaluations,
            "wall_s": result.wall_s,
            "result": json.dumps(data, default=_json_default),
            "provenance": json.dumps(_provenance(__version__, scenario, job, worker, started)),
        }
        for note in result.notes:
            log.info("note: %s", note)
        if not result.found:
            error = "no feasible plan found" + (": " + "; ".join(result.notes) if result.notes else "")
            log.error("%s (%s evaluations)", error, result.evaluations)
            return _finish(store, worker, claim, log, JobState.FAILED, error, record)
        log.info("best %s = %.6g after %s evaluations in %.2f s%s; plan %s", result.objective, result.objective_value,
                 result.evaluations, result.wall_s, " (certified optimal)" if result.optimal else "",
                 json.dumps(data["best_plan"]))  # fmt: skip
        return _finish(store, worker, claim, log, JobState.DONE, None, record)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _run_study_job(
    store: Store,
    worker: Worker,
    claim: Claim,
    beat: _Heartbeat,
    scenario: Any,
    options: dict[str, Any],
    output: Path,
    log: logging.Logger,
    started: float,
) -> str:
    """Run a study job: its files go to ``output/studies/<label>-<scenario>/`` (checkpoints there make a re-run
    after a kill resume), its study.json into the store. Exceptions propagate to :func:`_run_job`."""
    from .. import __version__
    from ..study import run_study

    job = claim.job

    def say(line: str) -> None:
        if beat.lost:
            raise JobLost("the job was requeued while running")
        log.info("%s", line)

    folder = output / "studies" / f"{_slug(job.tuner)}-{_slug(job.scenario)}"
    kind = job.tuner_name.split(":", 1)[1]
    data = run_study(kind, scenario, options=options, budget=job.budget, seed=job.seed, out_dir=folder, say=say)
    data = {**data, "out_dir": str(folder)}
    headline = data.get("best", {}).get("value") if kind == "granularity" else data.get("static", {}).get("regret")
    record = {
        "found": True,
        "objective_value": headline,
        "optimal": False,
        "evaluations": sum(int(r.get("evaluations") or 0) for r in data.get("rows", [])),
        "wall_s": time.time() - started,
        "result": json.dumps(data, default=_json_default),
        "provenance": json.dumps(_provenance(__version__, scenario, job, worker, started)),
    }
    log.info("study written to %s", folder)
    return _finish(store, worker, claim, log, JobState.DONE, None, record)


def _finish(
    store: Store, worker: Worker, claim: Claim, log: logging.Logger, state: str, error: str | None, record: Any
) -> str:
    try:
        store.finish(claim, worker, state=state, error=error, result=record)
    except JobLost:
        log.warning("job %s was requeued by another process (stale heartbeat): result dropped", claim.id)
        return AttemptOutcome.LOST
    log.info("recorded: %s", state)
    return state


def _progress_logger(log: logging.Logger, beat: _Heartbeat) -> Callable[[Any], bool | None]:
    """A tuner callback: a log line on improvements (at most one per second) and abort if the job was lost."""
    last_time, last_best = 0.0, None

    def callback(p: Any) -> bool | None:
        nonlocal last_time, last_best
        if beat.lost:
            raise JobLost("the job was requeued while running")
        now = time.monotonic()
        if p.best is not None and p.best != last_best and now - last_time >= 1.0:
            log.info("evaluation %s: best %.6g (%.1f s)", p.evaluations, p.best, p.wall_s)
            last_time, last_best = now, p.best
        return None

    return callback


def _provenance(version: str, problem: Any, job: JobRecord, worker: Worker, started: float) -> dict[str, Any]:
    """Everything needed to say where a result came from and to reproduce it.

    ``libraries`` lists versions of the numeric stack, plus torch and stable-baselines3
    when they are loaded in the worker (an RL job loaded them, here or earlier).
    """
    libraries = library_versions()
    return {
        "paratune": version,
        "python": platform_module.python_version(),
        "libraries": libraries,
        "tuner": job.tuner_name,
        "label": job.tuner,
        "budget": job.budget,
        "options": job.options,
        "seed": job.seed,
        "platform": problem.resolved_platform.name,
        "profile": problem.resolved_platform.profile.name,
        "host": worker.host,
        "pid": worker.pid,
        "worker": worker.id,
        "attempt": job.attempts,
        "started_at": started,
        "finished_at": time.time(),
        "os": platform_module.platform(),
    }


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _slug(text: str, limit: int = 60) -> str:
    out = "".join(c if c.isalnum() or c in "._=-" else "_" for c in str(text))
    return out[:limit].strip("_") or "x"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


# -- status --------------------------------------------------------------------------------


def campaign_status(target: str | Path, storage: str | None = None) -> dict[str, Any]:
    """Counts, every job with its outcome, and the gap of each tuner's result to its scenario's optimum.

    The mapping is the ``status --json`` contract: keys are only ever added. A study's job
    (``role`` ``study``, ``study`` its kind) has no gap: its value is the study's headline.
    """
    from ..problem import get_objective

    located = locate(target, storage)
    store = Store.reader(located.storage)  # no write lock: status never waits for (nor blocks) the workers
    try:
        row = _require(store, located.name)
        counts = store.counts(located.name)
        jobs = store.jobs(located.name)
        problems = store.scenarios(located.name)
        safe = store.safe_url
    finally:
        store.close()
    by_id = {j.id: j for j in jobs}
    now = time.time()
    out_jobs = []
    for j in jobs:
        problem = problems[j.scenario].problem if j.scenario in problems else {}
        optimum = by_id.get(j.optimum_job) if j.optimum_job is not None else None
        optimum_value = optimum.objective_value if optimum and optimum.optimal else None
        gap = None
        if j.is_study:  # a study's headline (a regret, a granularity's best) is not a plan's value: no gap
            optimum_value = None
        elif optimum_value is not None and j.objective_value is not None:
            gap = get_objective(problem["objective"], problem["phase"]).gap(j.objective_value, optimum_value)
        out_jobs.append({
            "id": j.id, "scenario": j.scenario, "tuner": j.tuner, "tuner_name": j.tuner_name,
            "seed": j.seed, "role": j.role, "state": j.state, "attempts": j.attempts,
            "worker": j.worker, "error": j.error, "log": j.log,
            "heartbeat_age_s": now - j.heartbeat_at if j.state == JobState.RUNNING and j.heartbeat_at else None,
            "objective": problem.get("objective"), "objective_value": j.objective_value,
            "optimal": j.optimal, "optimum_value": optimum_value, "gap": gap,
            "evaluations": j.evaluations, "wall_s": j.wall_s,
            "study": j.tuner_name.split(":", 1)[-1] if j.is_study else None,
        })  # fmt: skip
    return {
        "name": located.name,
        "description": row.description,
        "storage": safe,
        "output": str(located.output),
        "created_at": row.created_at,
        "counts": counts,
        "total": sum(counts.values()),
        "finished": counts[JobState.WAITING] == 0 and counts[JobState.RUNNING] == 0,
        "jobs": out_jobs,
    }
