"""Campaign guarantees on a real PostgreSQL server (the same checks as on SQLite, see test_campaign.py).

The server comes from ``scripts/postgres.sh`` (Debian's postgresql, 127.0.0.1 only):
``$PARATUNE_PG_URL`` when CI started it already, else a private server started here
and stopped at the end. Each test gets a fresh database. Skipped, with the reason,
only when PostgreSQL cannot be installed, and never under CI (``CI=true``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_campaign import (
    TINY,
    check_claims_are_atomic,
    check_failures_are_recorded,
    check_sigkill_then_resume,
    check_workers_never_duplicate_nor_lose,
    write_spec,
)

from paratune.campaign import Store, campaign_status, run_campaign

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The URL of a PostgreSQL server: CI's, or one started (and stopped) for this module."""
    url = os.environ.get("PARATUNE_PG_URL")
    if url:
        yield url
        return
    env = {**os.environ, "PARATUNE_PG_DIR": f"/tmp/paratune-pg-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"}
    started = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    if started.returncode != 0:
        reason = f"no PostgreSQL server: scripts/postgres.sh exited {started.returncode}: {started.stderr.strip()}"
        if os.environ.get("CI") or started.returncode != 3:  # 3: it cannot be installed here
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def database(server: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards."""
    name = f"paratune_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_postgres_store_uses_skip_locked(database: str) -> None:
    store = Store(database)
    try:
        assert store.dialect == "postgresql"
        assert "paratune_jobs" in sa.inspect(store.engine).get_table_names()
    finally:
        store.close()


def test_postgres_workers_never_duplicate_nor_lose(tmp_path: Path, database: str) -> None:
    report = check_workers_never_duplicate_nor_lose(tmp_path, database)
    assert report["duplicates"] == 0 and report["lost"] == 0


def test_postgres_claims_are_atomic(tmp_path: Path, database: str) -> None:
    report = check_claims_are_atomic(tmp_path, database, processes=3)
    assert report["duplicates"] == 0 and report["claimers_that_won"] == 3


def test_postgres_sigkill_then_resume(tmp_path: Path, database: str) -> None:
    check_sigkill_then_resume(tmp_path, database)


def test_postgres_failures_are_recorded(tmp_path: Path, database: str) -> None:
    check_failures_are_recorded(tmp_path, database)


def test_postgres_status_by_name_with_storage(tmp_path: Path, database: str) -> None:
    """A worker on another machine knows only the URL and the name: status works from those too."""
    spec = write_spec(tmp_path, "shared", database, scenarios=[{**TINY, "name": "t"}], tuners=["megatron"])
    assert run_campaign(spec).finished
    status = campaign_status("shared", database)
    assert status["counts"]["done"] == 2 and status["storage"].startswith("postgresql")
