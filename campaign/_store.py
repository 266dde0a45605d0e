"""The results store and job queue of campaigns, on any SQLAlchemy database (SQLite by default, PostgreSQL to share).

Tables (prefixed ``paratune_`` so a database shared with Optuna's studies stays tidy):

* ``paratune_campaigns``: name, the expanded spec (JSON), its fingerprint, run folder.
* ``paratune_scenarios``: each scenario of a campaign as a full problem mapping.
* ``paratune_jobs``: one row per (campaign, scenario, tuner label, seed), the queue itself:
  ``state`` is ``waiting`` -> ``running`` -> ``done`` | ``failed``; the claiming worker's
  id, host and pid, ``heartbeat_at``, ``attempts``, ``error``, the log file, and
  ``optimum_job`` (the scenario's dp job, for the gap to the optimum).
* ``paratune_attempts``: one row per claim (worker, start, end, outcome: ``running``,
  ``done``, ``failed``, ``interrupted``, ``lost``), the audit trail that shows no job ran twice.
* ``paratune_results``: one row per finished job (primary key = the job): plan,
  metrics, anytime history, Pareto front, notes (``TuneResult.to_dict``) and provenance.

Claiming is done by the database, never by file locks: on PostgreSQL one
``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING id``; on
SQLite a ``BEGIN IMMEDIATE`` transaction (the database's write lock) around the
select and the update; elsewhere a compare-and-set ``UPDATE ... WHERE id = :id AND
state = 'waiting'`` that exactly one claimer wins. A result is written in the same
transaction that moves its job from ``running`` to ``done``, and only if the job is
still held by the same worker, so a job requeued as stale can never be recorded twice.

Times are seconds since the epoch from the workers' clocks (keep hosts in NTP sync
when sharing a campaign across machines; the stale timeout is minutes).

Opening a store is one of three things, and only the first may create anything:
``Store(url)`` creates the tables if needed (``campaign run``); ``Store.existing(url)``
opens a store that must already hold a campaign store, to read and write it (``resume``,
workers); ``Store.reader(url)`` reads only (``status``, the dashboard, the report), and a
SQLite file in a read-only folder is read as it is on disk (``immutable``). A store that
cannot be used as asked (no such file, an empty or damaged file, another application's
database, a newer schema, a read-only file, a lock held too long, an unreachable server,
an unknown kind of URL) raises :class:`StoreError`, a ValueError whose one-line message
names the file or host and what is wrong.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ._records import AttemptRecord, CampaignRecord, JobRecord, ResultRecord, ScenarioRecord, record
from ._states import AttemptOutcome, JobState, Role

if TYPE_CHECKING:
    from ._spec import CampaignSpec

SCHEMA_VERSION = 1
STATES: tuple[str, ...] = tuple(s.value for s in JobState)
#: The kinds of database a campaign can live in: backend -> drivers (the first is SQLAlchemy's default).
DRIVERS: dict[str, tuple[str, ...]] = {"sqlite": ("pysqlite",), "postgresql": ("psycopg", "psycopg2")}
ALLOWED_URLS = "sqlite:///FILE, postgresql://USER@HOST:PORT/DB (drivers postgresql+psycopg, postgresql+psycopg2)"
#: Seconds a SQLite writer waits for another process's write lock, and a reader for a lock, before "busy".
BUSY_TIMEOUT_S = 60.0
READ_BUSY_TIMEOUT_S = 30.0
SQLITE_MAGIC = b"SQLite format 3\x00"

metadata = sa.MetaData()
meta_table = sa.Table(
    "paratune_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
campaigns = sa.Table(
    "paratune_campaigns",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("paratune_version", sa.String(40), nullable=False),
)
scenarios = sa.Table(
    "paratune_scenarios",
    metadata,
    sa.Column("campaign", sa.String(200), sa.ForeignKey("paratune_campaigns.name"), primary_key=True),
    sa.Column("name", sa.String(500), primary_key=True),
    sa.Column("problem", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False, default=""),
)
jobs = sa.Table(
    "paratune_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign", sa.String(200), sa.ForeignKey("paratune_campaigns.name"), nullable=False),
    sa.Column("scenario", sa.String(500), nullable=False),
    sa.Column("tuner", sa.String(200), nullable=False),
    sa.Column("tuner_name", sa.String(200), nullable=False),
    sa.Column("budget", sa.Integer),
    sa.Column("options", sa.Text, nullable=False, default="{}"),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("role", sa.String(20), nullable=False, default=Role.TUNE.value),
    sa.Column("optimum_job", sa.Integer),
    sa.Column("state", sa.String(20), nullable=False, default=JobState.WAITING.value),
    sa.Column("worker", sa.String(200)),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("claimed_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("log", sa.Text),
    sa.UniqueConstraint("campaign", "scenario", "tuner", "seed", name="uq_paratune_job"),
    sa.Index("ix_paratune_jobs_claim", "campaign", "state", "id"),
)
attempts = sa.Table(
    "paratune_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.Integer, sa.ForeignKey("paratune_jobs.id"), nullable=False, index=True),
    sa.Column("worker", sa.String(200), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("outcome", sa.String(20), nullable=False, default=AttemptOutcome.RUNNING.value),
)
results = sa.Table(
    "paratune_results",
    metadata,
    sa.Column("job", sa.Integer, sa.ForeignKey("paratune_jobs.id"), primary_key=True),
    sa.Column("campaign", sa.String(200), nullable=False, index=True),
    sa.Column("found", sa.Boolean, nullable=False),
    sa.Column("objective_value", sa.Float),
    sa.Column("optimal", sa.Boolean, nullable=False),
    sa.Column("evaluations", sa.Integer, nullable=False),
    sa.Column("wall_s", sa.Float, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("provenance", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


class StoreError(ValueError):
    """A campaign store that cannot be used as asked; the message (one line) names the file or host and the fault."""


class JobLost(RuntimeError):
    """The job is no longer held by this worker (requeued as stale): its result must not be written."""


@dataclass(frozen=True)
class Worker:
    """Who claims jobs: a unique id plus the host and pid used to spot dead workers on the same host."""

    id: str
    host: str
    pid: int

    @classmethod
    def here(cls) -> Worker:
        host, pid = socket.gethostname(), os.getpid()
        return cls(f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host, pid)


@dataclass(frozen=True)
class Claim:
    """A claimed job: its record and the attempt opened for it."""

    job: JobRecord
    attempt: int

    @property
    def id(self) -> int:
        return self.job.id


class Store:
    """A campaign database: create campaigns, claim and finish jobs, read progress and results.

    Example:
        >>> store = Store("sqlite:////tmp/x/campaign.db")  # doctest: +SKIP
        >>> claim = store.claim("demo", Worker.here())     # doctest: +SKIP
    """

    def __init__(self, url: str, *, read_only: bool = False, create: bool = True) -> None:
        self.url = url
        self.read_only = read_only
        parsed = check_storage_url(url)
        self.where = _where(parsed)
        if (read_only or not create) and parsed.get_backend_name() == "sqlite":
            self._precheck_sqlite(parsed)  # a damaged or foreign file is refused before anything touches it
        if read_only:
            self.engine = _read_engine(parsed, self.where)
        else:
            self.engine = _engine(parsed, self.where, create=create)
        self.dialect = self.engine.dialect.name
        if read_only or not create:
            self._check_tables()
        else:
            self._create_tables()

    @classmethod
    def reader(cls, url: str) -> Store:
        """Open an existing store to read it only: nothing is created and no write lock is ever taken.

        This is how the dashboard and the report read a campaign while its workers run. A SQLite
        file whose folder is read-only is read as it is on disk (SQLite's ``immutable``): status
        and reports work on a copied or archived run folder.

        Raises:
            StoreError: no such SQLite file, or the database holds no campaign store (a ValueError).
        """
        return cls(url, read_only=True)

    @classmethod
    def existing(cls, url: str) -> Store:
        """Open a store that must already exist, to read and write it (``resume``, workers): nothing is created.

        Raises:
            StoreError: no such SQLite file, an empty or foreign database, or one this paratune cannot write.
        """
        return cls(url, create=False)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (safe to print or write to the run folder)."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        if self.read_only:
            raise RuntimeError(f"{self.safe_url} was opened read-only (Store.reader)")
        with self._guard(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._guard(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the database's operational failures (damaged file, lock held too long, read-only file, server
        gone) into a :class:`StoreError` naming the store; integrity and programming errors pass unchanged."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise _store_error(self.where, exc, self.read_only) from exc
        except sa.exc.DatabaseError as exc:
            if type(exc) is not sa.exc.DatabaseError:  # IntegrityError, ProgrammingError...: callers or bugs
                raise
            raise _store_error(self.where, exc, self.read_only) from exc

    def _precheck_sqlite(self, parsed: sa.engine.URL) -> None:
        """Check an existing SQLite store through an ``immutable`` connection, which writes nothing (no ``-wal``
        or ``-shm`` beside it, no journal-mode pragma): a refused file is left exactly as it was."""
        path = str(_sqlite_path(parsed, self.where, must_exist=True))
        uri = _uri(path, mode="ro", immutable="1")
        if os.path.exists(path + "-wal") or os.path.exists(path + "-shm"):
            return  # open elsewhere: the file alone is not the whole database; the normal checks run after opening

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, check_same_thread=False)

        engine = sa.create_engine(parsed, creator=connect, poolclass=sa.pool.NullPool)
        try:
            self._check_tables(engine)
        finally:
            engine.dispose()

    def _check_tables(self, engine: Engine | None = None) -> None:
        """An existing store: every paratune table present and a schema this paratune reads."""
        with self._guard(), (engine or self.engine).connect() as c:
            names = set(sa.inspect(c).get_table_names())
            if campaigns.name not in names:
                others = sorted(n for n in names if not n.startswith("sqlite_"))
                has = f"; it has {len(others)} other table(s): {', '.join(others[:5])}" if others else ", no table"
                raise StoreError(f"{self.where}: not a campaign store (no {campaigns.name} table{has})")
            missing = [t for t in metadata.sorted_tables if t.name not in names]
            if missing:
                raise StoreError(
                    f"{self.where}: not a complete campaign store (missing table(s) "
                    f"{', '.join(t.name for t in missing)}); was it written by another program?"
                )
            found = c.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        self._check_version(found)

    def _check_version(self, found: str | None) -> None:
        if found is None:
            return
        if not str(found).isdigit():
            raise StoreError(f"{self.where}: schema_version {found!r} in {meta_table.name} is not a number")
        if int(found) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where} holds campaign schema {found}; this paratune reads up to {SCHEMA_VERSION} "
                "(upgrade paratune to read it)"
            )

    def _create_tables(self) -> None:
        with self._guard():
            try:
                metadata.create_all(self.engine)
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc) and "already exists" not in str(exc):
                    raise
                time.sleep(0.2)  # another process created them at the same moment
                metadata.create_all(self.engine)
            except (sa.exc.ProgrammingError, sa.exc.IntegrityError):
                metadata.create_all(self.engine)  # PostgreSQL: lost a CREATE race; the tables now exist
            with self._read() as c:
                found = c.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        if found is None:
            try:
                with self._tx() as c:
                    c.execute(sa.insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
            except sa.exc.IntegrityError:
                pass  # written by another process just now
        else:
            self._check_version(found)

    # -- campaigns ---------------------------------------------------------------
    def create_campaign(self, spec: CampaignSpec, output: str) -> bool:
        """Store ``spec`` and its jobs; False (nothing written) when the same campaign already exists.

        Raises:
            ValueError: a campaign of that name with a different spec is already in the store.
        """
        from .. import __version__

        fingerprint = spec.fingerprint()
        existing = self.campaign(spec.name)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise ValueError(
                    f"{spec.where}: campaign {spec.name!r} already exists in {self.safe_url} with another spec; "
                    "rename the campaign (field 'name') or remove its run folder / rows"
                )
            return False
        job_list = spec.jobs()
        try:
            with self._tx() as c:
                c.execute(
                    sa.insert(campaigns).values(
                        name=spec.name,
                        description=spec.description,
                        spec=json.dumps(spec.to_dict()),
                        fingerprint=fingerprint,
                        output=output,
                        created_at=time.time(),
                        paratune_version=__version__,
                    )
                )
                c.execute(
                    sa.insert(scenarios),
                    [
                        {
                            "campaign": spec.name,
                            "name": p.name,
                            "problem": json.dumps(p.to_dict()),
                            "source": spec.sources.get(p.name, ""),
                        }
                        for p in spec.scenarios
                    ],
                )
                optimum_ids: dict[str, int] = {}
                for j in job_list:
                    row = dict(
                        campaign=spec.name,
                        scenario=j.scenario,
                        tuner=j.tuner,
                        tuner_name=j.tuner_name,
                        budget=j.budget,
                        options=json.dumps(j.options, sort_keys=True),
                        seed=j.seed,
                        role=j.role,
                        optimum_job=optimum_ids.get(j.scenario),
                        state=JobState.WAITING.value,
                        attempts=0,
                    )
                    job_id = c.execute(sa.insert(jobs).values(**row).returning(jobs.c.id)).scalar_one()
                    if j.role == Role.OPTIMUM:
                        optimum_ids[j.scenario] = job_id
                        c.execute(sa.update(jobs).where(jobs.c.id == job_id).values(optimum_job=job_id))
        except sa.exc.IntegrityError:
            # another launcher created it between our check and our insert: same rules as above
            return self.create_campaign(spec, output)
        return True

    def campaign(self, name: str) -> CampaignRecord | None:
        with self._read() as c:
            row = c.execute(sa.select(campaigns).where(campaigns.c.name == name)).mappings().first()
        return None if row is None else record(CampaignRecord, row)

    def campaigns(self) -> list[CampaignRecord]:
        """Every campaign of the store, oldest first."""
        with self._read() as c:
            rows = c.execute(sa.select(campaigns).order_by(campaigns.c.created_at)).mappings().all()
        return [record(CampaignRecord, r) for r in rows]

    def campaign_names(self) -> list[str]:
        with self._read() as c:
            return list(c.execute(sa.select(campaigns.c.name).order_by(campaigns.c.created_at)).scalars())

    def scenarios(self, campaign: str) -> dict[str, ScenarioRecord]:
        """Scenario name -> its record (``Problem.from_dict(record.problem)`` reads the problem back)."""
        with self._read() as c:
            rows = c.execute(sa.select(scenarios).where(scenarios.c.campaign == campaign)).mappings().all()
        return {r["name"]: record(ScenarioRecord, r) for r in rows}

    # -- the queue ----------------------------------------------------------------
    def claim(self, campaign: str, worker: Worker) -> Claim | None:
        """Atomically move the first waiting job to ``running`` for ``worker``; None when none waits."""
        now = time.time()
        values = dict(
            state=JobState.RUNNING.value,
            worker=worker.id,
            host=worker.host,
            pid=worker.pid,
            claimed_at=now,
            heartbeat_at=now,
            attempts=jobs.c.attempts + 1,
            error=None,
        )
        waiting = sa.select(jobs.c.id).where(jobs.c.campaign == campaign, jobs.c.state == JobState.WAITING.value)
        with self._tx() as c:
            if self.dialect == "postgresql":
                pick = waiting.order_by(jobs.c.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
                stmt = sa.update(jobs).where(jobs.c.id == pick, jobs.c.state == JobState.WAITING.value).values(**values)
                job_id = c.execute(stmt.returning(jobs.c.id)).scalar()
            elif self.dialect == "sqlite":  # the transaction began with BEGIN IMMEDIATE: we hold the write lock
                job_id = c.execute(waiting.order_by(jobs.c.id).limit(1)).scalar()
                if job_id is not None:
                    c.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))
            else:
                job_id = self._claim_cas(c, waiting, values)
            if job_id is None:
                return None
            attempt = c.execute(
                sa.insert(attempts)
                .values(job=job_id, worker=worker.id, host=worker.host, pid=worker.pid, started_at=now)
                .returning(attempts.c.id)
            ).scalar_one()
            row = c.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().one()
        return Claim(record(JobRecord, row), attempt)

    @staticmethod
    def _claim_cas(c: Connection, waiting: sa.Select[Any], values: dict[str, Any]) -> int | None:
        """Any other database: compare-and-set on the row's state; exactly one claimer's UPDATE matches."""
        for job_id in c.execute(waiting.order_by(jobs.c.id).limit(16)).scalars():
            waits = jobs.c.state == JobState.WAITING.value
            hit = c.execute(sa.update(jobs).where(jobs.c.id == job_id, waits).values(**values))
            if hit.rowcount == 1:
                return int(job_id)
        return None

    def heartbeat(self, claim: Claim, worker: Worker) -> bool:
        """Refresh the job's heartbeat; False when the job is no longer ours (it was requeued)."""
        with self._tx() as c:
            hit = c.execute(
                sa.update(jobs)
                .where(jobs.c.id == claim.id, jobs.c.worker == worker.id, jobs.c.state == JobState.RUNNING.value)
                .values(heartbeat_at=time.time())
            )
            return bool(hit.rowcount == 1)

    def set_log(self, claim: Claim, path: str) -> None:
        with self._tx() as c:
            c.execute(sa.update(jobs).where(jobs.c.id == claim.id).values(log=path))

    def finish(
        self,
        claim: Claim,
        worker: Worker,
        *,
        state: str,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Record the outcome (``done`` or ``failed``) and the result row, in one transaction.

        Raises:
            JobLost: the job was requeued meanwhile (its heartbeat went stale); nothing is written.
        """
        if state not in (JobState.DONE, JobState.FAILED):
            raise ValueError(f"a finished job is done or failed, not {state!r}")
        state = JobState(state).value
        now = time.time()
        with self._tx() as c:
            hit = c.execute(
                sa.update(jobs)
                .where(jobs.c.id == claim.id, jobs.c.worker == worker.id, jobs.c.state == JobState.RUNNING.value)
                .values(state=state, error=error, finished_at=now, heartbeat_at=now)
            )
            if hit.rowcount != 1:
                raise JobLost(f"job {claim.id} is no longer held by {worker.id}")
            c.execute(sa.delete(results).where(results.c.job == claim.id))  # a retried failure replaces its row
            if result is not None:
                c.execute(
                    sa.insert(results).values(job=claim.id, campaign=claim.job.campaign, created_at=now, **result)
                )
            c.execute(sa.update(attempts).where(attempts.c.id == claim.attempt).values(ended_at=now, outcome=state))

    def release(self, claim: Claim, worker: Worker) -> bool:
        """Give an interrupted job back to the queue (Ctrl-C): ``waiting`` again, attempt ``interrupted``."""
        with self._tx() as c:
            hit = c.execute(
                sa.update(jobs)
                .where(jobs.c.id == claim.id, jobs.c.worker == worker.id, jobs.c.state == JobState.RUNNING.value)
                .values(state=JobState.WAITING.value, worker=None, heartbeat_at=None)
            )
            c.execute(
                sa.update(attempts)
                .where(attempts.c.id == claim.attempt)
                .values(ended_at=time.time(), outcome=AttemptOutcome.INTERRUPTED.value)
            )
            return bool(hit.rowcount == 1)

    def requeue_stale(self, campaign: str, *, stale_after_s: float, host: str | None = None) -> list[int]:
        """Put ``running`` jobs whose worker is gone back to ``waiting``; returns their ids.

        A worker is gone when its heartbeat is older than ``stale_after_s``, or, on
        this ``host``, when its pid no longer exists (a SIGKILL is seen at once).
        """
        host = socket.gethostname() if host is None else host
        now = time.time()
        with self._read() as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.worker, jobs.c.host, jobs.c.pid, jobs.c.heartbeat_at).where(
                    jobs.c.campaign == campaign, jobs.c.state == JobState.RUNNING.value
                )
            ).all()
        gone = [
            r
            for r in rows
            if (r.heartbeat_at or 0.0) < now - stale_after_s or (r.host == host and not _pid_alive(r.pid))
        ]
        requeued = []
        for r in gone:
            with self._tx() as c:
                hit = c.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == r.id, jobs.c.worker == r.worker, jobs.c.state == JobState.RUNNING.value)
                    .values(state=JobState.WAITING.value, worker=None, heartbeat_at=None, error=None)
                )
                if hit.rowcount == 1:
                    c.execute(
                        sa.update(attempts)
                        .where(
                            attempts.c.job == r.id,
                            attempts.c.worker == r.worker,
                            attempts.c.outcome == AttemptOutcome.RUNNING.value,
                        )
                        .values(ended_at=now, outcome=AttemptOutcome.LOST.value)
                    )
                    requeued.append(int(r.id))
        return requeued

    def retry_failed(self, campaign: str) -> int:
        """Put every failed job back in the queue (their old result rows are replaced when they finish)."""
        with self._tx() as c:
            hit = c.execute(
                sa.update(jobs)
                .where(jobs.c.campaign == campaign, jobs.c.state == JobState.FAILED.value)
                .values(state=JobState.WAITING.value, worker=None, error=None)
            )
            return int(hit.rowcount)

    # -- reading ------------------------------------------------------------------
    def counts(self, campaign: str) -> dict[str, int]:
        """Jobs per state (every state present, zeros included)."""
        with self._read() as c:
            rows = c.execute(
                sa.select(jobs.c.state, sa.func.count()).where(jobs.c.campaign == campaign).group_by(jobs.c.state)
            ).all()
        out = dict.fromkeys(STATES, 0)
        out.update({str(s): int(n) for s, n in rows})
        return out

    def jobs(self, campaign: str) -> list[JobRecord]:
        """Every job with its result's summary (None until finished), in queue order."""
        cols = [results.c.found, results.c.objective_value, results.c.optimal, results.c.evaluations, results.c.wall_s]
        stmt = (
            sa.select(jobs, *cols)
            .select_from(jobs.outerjoin(results, results.c.job == jobs.c.id))
            .where(jobs.c.campaign == campaign)
            .order_by(jobs.c.id)
        )
        with self._read() as c:
            return [record(JobRecord, r) for r in c.execute(stmt).mappings()]

    def result(self, job_id: int) -> ResultRecord | None:
        """One job's full result: ``result`` (TuneResult.to_dict) and ``provenance`` decoded."""
        with self._read() as c:
            row = c.execute(sa.select(results).where(results.c.job == job_id)).mappings().first()
        return None if row is None else record(ResultRecord, row)

    def results(self, campaign: str) -> dict[int, ResultRecord]:
        """Job id -> full result, for every finished job of ``campaign`` (one query)."""
        with self._read() as c:
            rows = c.execute(sa.select(results).where(results.c.campaign == campaign)).mappings().all()
        return {int(r["job"]): record(ResultRecord, r) for r in rows}

    def attempts(self, campaign: str) -> list[AttemptRecord]:
        stmt = (
            sa.select(attempts)
            .select_from(attempts.join(jobs, jobs.c.id == attempts.c.job))
            .where(jobs.c.campaign == campaign)
            .order_by(attempts.c.id)
        )
        with self._read() as c:
            return [record(AttemptRecord, r) for r in c.execute(stmt).mappings()]


def check_storage_url(url: str, where: str | None = None) -> sa.engine.URL:
    """Parse a storage URL and refuse the kinds of database campaigns cannot live in (before anything is written).

    ``where`` (a spec file and field) prefixes the message.

    Raises:
        StoreError: not a URL, an unknown database or driver, or an in-memory SQLite database.
    """
    prefix = f"{where}: " if where else ""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(f"{prefix}storage {url!r} is not a database URL; allowed: {ALLOWED_URLS}") from None
    shown = parsed.render_as_string(hide_password=True)
    head = f"{where} is {shown}" if where else f"storage {shown}"
    backend, _, driver = parsed.drivername.partition("+")  # not get_driver_name(): it imports the dialect
    drivers = DRIVERS.get(backend)
    if drivers is None:
        raise StoreError(f"{head}: unknown database kind {backend!r}; allowed: {ALLOWED_URLS}")
    if driver and driver not in drivers:
        raise StoreError(
            f"{head}: driver {driver!r} is not supported for {backend}; "
            f"use one of: {', '.join(f'{backend}+{d}' for d in drivers)}"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError(f"{prefix}storage {url!r}: an in-memory SQLite database cannot be shared by worker processes")
    return parsed


def _where(parsed: sa.engine.URL) -> str:
    """How messages name a store: the SQLite file, or the URL without its password (host:port and database)."""
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True)


def _store_error(where: str, exc: BaseException, read_only: bool) -> StoreError:
    """One line saying what is wrong with the store ``where``, from a driver's error."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())  # psycopg's messages span lines
    low = text.lower()
    if "file is not a database" in low:
        return StoreError(f"{where} is not a paratune campaign database (file is not a database)")
    if "malformed" in low or "disk image" in low:
        return StoreError(
            f"{where} is damaged ({text}): restore it from a copy, or move it away and run the campaign again"
        )
    if "locked" in low or "busy" in low:
        waited = READ_BUSY_TIMEOUT_S if read_only else BUSY_TIMEOUT_S
        return StoreError(
            f"{where} is busy: another process held its lock for over {waited:.0f} s ({text}); "
            "try again when it is done"
        )
    if "readonly" in low or "read-only" in low:
        return StoreError(
            f"{where} is read-only ({text}): this command writes to the store; it needs write access to the "
            "file and its folder (status and report only read)"
        )
    if "unable to open" in low:
        return StoreError(f"{where}: cannot open it ({text}); check the file and its folder's permissions")
    if "no such table" in low:
        return StoreError(f"{where}: not a complete campaign store ({text})")
    return StoreError(f"cannot use the campaign store {where}: {text}")


def _sqlite_path(parsed: sa.engine.URL, where: str, *, must_exist: bool) -> str | None:
    """The SQLite file's path after checks that open nothing: None when it does not exist (and may be created).

    Raises:
        StoreError: missing (``must_exist``), empty (``must_exist``), a folder, unreadable, or not SQLite.
    """
    path = str(parsed.database)
    try:
        st = os.stat(path)  # follows links: a loop or a dangling link fails here
    except FileNotFoundError:
        if os.path.lexists(path):
            raise StoreError(f"{where}: a symbolic link to nothing") from None
        if must_exist:
            raise StoreError(
                f"{where}: no such SQLite file (nothing is created: `paratune campaign run SPEC` creates a store)"
            ) from None
        return None
    except OSError as exc:
        raise StoreError(f"{where}: cannot open it ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{where} is a folder, not a campaign database")
    if st.st_size == 0:
        if must_exist:
            raise StoreError(f"{where} is empty: no campaign in it")
        return path  # SQLite's empty database: `campaign run` gives it its tables
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"{where}: cannot read it ({exc.strerror})") from None
    if head != SQLITE_MAGIC:
        raise StoreError(f"{where} is not a paratune campaign database (file is not a database)")
    return path


def _uri(path: str, **params: str) -> str:
    """A SQLite URI filename (``file:PATH?mode=rw``): unlike a plain name, ``mode=rw`` never creates the file."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?{query}"


def _read_engine(parsed: sa.engine.URL, where: str) -> Engine:
    """A plain engine for reading: no pragmas, no ``BEGIN IMMEDIATE``, and a SQLite file must exist already.

    A SQLite file whose folder cannot be written is opened ``immutable`` (a WAL database otherwise needs to
    create its ``-shm`` file beside it); with a non-empty ``-wal`` left there, read-only instead, to see it.
    """
    if parsed.get_backend_name() == "sqlite":
        path = str(_sqlite_path(parsed, where, must_exist=True))  # must_exist: never None
        folder = os.path.dirname(os.path.abspath(path))
        if os.access(folder, os.W_OK):
            uri = _uri(path, mode="rw")  # a read-write connection cleans up its -wal and -shm files on close
        elif os.path.isfile(path + "-wal") and os.path.getsize(path + "-wal") > 0:
            uri = _uri(path, mode="ro")
        else:
            uri = _uri(path, mode="ro", immutable="1")

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=READ_BUSY_TIMEOUT_S, check_same_thread=False)

        return sa.create_engine(parsed, creator=connect)
    return _server_engine(parsed, where, connect=False)


def _server_engine(parsed: sa.engine.URL, where: str, *, connect: bool) -> Engine:
    try:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
        if connect:
            with engine.connect():
                pass
    except ModuleNotFoundError as exc:
        hint = "for PostgreSQL install psycopg[binary] (or use postgresql+psycopg2:// with psycopg2-binary)"
        raise StoreError(f"storage {where}: driver missing ({exc}); {hint}") from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        text = " ".join(str(exc.orig).split())
        raise StoreError(f"cannot connect to {where}: {text}") from None
    return engine


def _engine(parsed: sa.engine.URL, where: str, *, create: bool) -> Engine:
    """An engine that writes; with ``create``, a missing SQLite file (and its folder) is created."""
    if parsed.get_backend_name() != "sqlite":
        return _server_engine(parsed, where, connect=True)
    path = _sqlite_path(parsed, where, must_exist=not create)
    if path is not None and not os.access(path, os.W_OK):
        raise StoreError(f"{where} is read-only: this command writes to the store (status and report only read)")
    if path is None:  # create: the folder may be new too
        folder = os.path.dirname(os.path.abspath(str(parsed.database)))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{where}: cannot create its folder {folder} ({exc.strerror})") from None
        target = os.path.abspath(str(parsed.database))
    else:
        target = _uri(path, mode="rw")  # exists: opened, never created (a store moved away stays an error)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(target, uri=path is not None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)

    engine = sa.create_engine(parsed, creator=connect)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transactions out of pysqlite's hands so that ours begin with BEGIN IMMEDIATE (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")  # readers (status, progress) never block the workers
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # The write lock at the start of every transaction: a claim's select and update cannot interleave
        # with another process's, and busy_timeout queues writers instead of failing them mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
