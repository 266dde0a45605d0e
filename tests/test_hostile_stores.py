"""Hostile stores (issue 15, item 5): corrupt, empty, foreign, missing, locked or read-only campaign stores,
garbage run files and unknown storage URLs each get one line and exit 2, and nothing is written.

The cases run the CLI in a child process (``tests/_hostile.py``); a finished one-job campaign is built once per
module and copied into each case's folder, then damaged.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from _hostile import Run, _limit_memory, _snapshot, assert_refused, run_paratune

TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "phase": "decode", "context": 512}
DB = "run/campaign.db"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``c.yaml`` and its finished run folder ``run/``."""
    from paratune.campaign import run_campaign

    folder = tmp_path_factory.mktemp("finished")
    spec = folder / "c.yaml"
    data = {"name": "tiny", "output": "run", "scenarios": [TINY], "tuners": ["megatron"], "optimum": False}
    spec.write_text(yaml.safe_dump(data))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert run_campaign(spec).finished
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def case(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished campaign to damage."""
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _truncate(folder: Path) -> None:
    db = folder / DB
    db.write_bytes(db.read_bytes()[:20000])


def _garbage(folder: Path) -> None:
    (folder / DB).write_bytes(bytes(range(256)) * 12)


def _empty(folder: Path) -> None:
    (folder / DB).write_bytes(b"")


def _other_app(folder: Path) -> None:
    (folder / DB).unlink()
    conn = sqlite3.connect(folder / DB)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()


def _newer_schema(folder: Path) -> None:
    conn = sqlite3.connect(folder / DB)
    conn.execute("UPDATE paratune_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def _missing_table(folder: Path) -> None:
    conn = sqlite3.connect(folder / DB)
    conn.execute("DROP TABLE paratune_attempts")
    conn.commit()
    conn.close()


def _missing_db(folder: Path) -> None:
    (folder / DB).unlink()


def _db_loop(folder: Path) -> None:
    (folder / DB).unlink()
    (folder / DB).symlink_to(folder / DB)


def _db_folder(folder: Path) -> None:
    (folder / DB).unlink()
    (folder / DB).mkdir()


def _run_file(text: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / "run" / "campaign.json").write_text(text)

    return damage


DAMAGES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "truncated": (_truncate, ["campaign.db", "damaged"]),
    "garbage": (_garbage, ["campaign.db", "not a paratune campaign database"]),
    "empty": (_empty, ["campaign.db", "is empty"]),
    "other-application": (_other_app, ["campaign.db", "not a campaign store", "invoices"]),
    "newer-schema": (_newer_schema, ["campaign.db", "schema 99"]),
    "missing-table": (_missing_table, ["campaign.db", "paratune_attempts"]),
    "missing-db": (_missing_db, ["campaign.db", "no such sqlite file"]),
    "db-symlink-loop": (_db_loop, ["campaign.db", "symbolic links"]),
    "db-is-a-folder": (_db_folder, ["campaign.db", "folder"]),
    "run-file-garbage": (_run_file("{not json"), ["campaign.json", "invalid json"]),
    "run-file-list": (_run_file("[1, 2]"), ["campaign.json", "json object"]),
    "run-file-no-name": (_run_file('{"storage_file": "campaign.db"}'), ["campaign.json", "'name'"]),
    "run-file-name-type": (_run_file('{"name": 3, "storage_file": "campaign.db"}'), ["campaign.json", "'name'"]),
    "run-file-no-storage": (_run_file('{"name": "tiny"}'), ["campaign.json", "'storage'"]),
    "run-file-storage-path": (
        _run_file('{"name": "tiny", "storage_file": "../../etc/passwd"}'),
        ["campaign.json", "storage_file"],
    ),
    "run-file-bad-url": (_run_file('{"name": "tiny", "storage": "notaurl://x"}'), ["notaurl", "allowed", "sqlite"]),
    "run-file-binary": (lambda f: (f / "run" / "campaign.json").write_bytes(b"\xff\xfe\x00"), ["campaign.json"]),
}
COMMANDS = {
    "status": ["campaign", "status", "run"],
    "status-json": ["campaign", "status", "run", "--json"],
    "resume": ["campaign", "resume", "run"],
    "report": ["report", "run", "-o", "r.html"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_store_or_run_file_is_refused(case: Path, damage: str, command: str) -> None:
    hurt, mentions = DAMAGES[damage]
    if command in ("status-json", "resume") and damage.startswith("run-file-") and damage != "run-file-garbage":
        pytest.skip("the run file is read the same way by every command: status and report cover it")
    hurt(case)
    assert_refused(run_paratune(COMMANDS[command], case), mentions=mentions)


def test_the_undamaged_copy_works(case: Path) -> None:
    """The control: the same commands on the copy before any damage succeed."""
    run = run_paratune(COMMANDS["status-json"], case)
    assert run.returncode == 0, run.describe()


STORAGE_CASES = {
    "worker-mistyped-path": (["campaign", "worker", "tiny", "--storage", "sqlite:///mistyped/path.db"],
                             ["mistyped/path.db", "no such sqlite file"]),
    "worker-unknown-scheme": (["campaign", "worker", "tiny", "--storage", "notaurl://x"], ["notaurl", "allowed"]),
    "worker-mysql": (["campaign", "worker", "tiny", "--storage", "mysql://u@h/db"], ["mysql", "allowed"]),
    "worker-bad-driver": (["campaign", "worker", "tiny", "--storage", "postgresql+asyncpg://u@h/db"],
                          ["asyncpg", "psycopg"]),
    "worker-not-a-url": (["campaign", "worker", "tiny", "--storage", "not a url"], ["not a database url"]),
    "worker-in-memory": (["campaign", "worker", "tiny", "--storage", "sqlite://"], ["in-memory"]),
    "status-unknown-scheme": (["campaign", "status", "run", "--storage", "notaurl://x"], ["notaurl", "allowed"]),
    "status-name-in-missing-db": (["campaign", "status", "tiny", "--storage", "sqlite:///new.db"],
                                  ["new.db", "no such sqlite file"]),
    "resume-name-in-missing-db": (["campaign", "resume", "tiny", "--storage", "sqlite:///new.db"],
                                  ["new.db", "no such sqlite file"]),
    "resume-unknown-scheme": (["campaign", "resume", "run", "--storage", "notaurl://x"], ["notaurl"]),
    "run-unknown-scheme": (["campaign", "run", "other.yaml", "--storage", "notaurl://x"], ["notaurl", "allowed"]),
    "report-unknown-scheme": (["report", "notaurl://x", "-o", "r.html"], ["notaurl", "allowed"]),
    "report-missing-db": (["report", "sqlite:///new.db", "-o", "r.html"], ["new.db", "no such sqlite file"]),
    "pg-unreachable-status": (["campaign", "status", "tiny", "--storage", "postgresql://u:s3cr3tpw@127.0.0.1:1/db"],
                              ["127.0.0.1:1"]),
    "pg-unreachable-worker": (["campaign", "worker", "tiny", "--storage", "postgresql://u:s3cr3tpw@127.0.0.1:1/db"],
                              ["127.0.0.1:1"]),
    "pg-unreachable-report": (["report", "postgresql://u:s3cr3tpw@127.0.0.1:1/db", "-o", "r.html"], ["127.0.0.1:1"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STORAGE_CASES))
def test_storage_urls_are_checked_and_nothing_is_created(case: Path, name: str) -> None:
    args, mentions = STORAGE_CASES[name]
    spec = yaml.safe_load((case / "c.yaml").read_text())
    (case / "other.yaml").write_text(yaml.safe_dump({**spec, "output": "run2"}))
    run = run_paratune(args, case)
    assert_refused(run, mentions=mentions)
    assert "s3cr3tpw" not in run.stderr  # the password is never printed


def test_spec_storage_field_is_checked_before_the_run_folder_is_made(case: Path) -> None:
    spec = yaml.safe_load((case / "c.yaml").read_text())
    (case / "bad.yaml").write_text(yaml.safe_dump({**spec, "output": "run2", "storage": "notaurl://x"}))
    assert_refused(run_paratune(["campaign", "run", "bad.yaml"], case), mentions=["bad.yaml", "'storage'", "notaurl"])


def test_a_lock_held_too_long_says_busy(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the write lock past the timeout: a StoreError that says busy, not a traceback."""
    from paratune.campaign import Store, StoreError, _store

    monkeypatch.setattr(_store, "BUSY_TIMEOUT_S", 0.3)
    store = Store.existing(f"sqlite:///{case / DB}")  # opened first: the lock meets the write, not the open
    holder = sqlite3.connect(case / DB, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match=r"campaign.db is busy"):
            store.retry_failed("tiny")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


# -- a read-only run folder -----------------------------------------------------------------------


def _read_only_runner(folder: Path) -> list[str]:
    """The command prefix that runs a child with ``folder`` read-only: chmod for a user; for root (who ignores
    permissions) a read-only bind mount in a mount namespace of the child's own. Skips when neither works."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        pytest.skip("running as root, and no unshare(1) to make a read-only mount: permissions cannot be tested")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, and unshare --mount fails here: {probe.stderr.decode().strip()}")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(folder)]


def _run_read_only(args: list[str], cwd: Path, folder: Path) -> Run:
    prefix = _read_only_runner(folder)
    mode = folder.stat().st_mode
    if not prefix:
        folder.chmod(0o555)
    before = _snapshot(cwd)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "paratune.cli", *args],
            cwd=cwd,
            env={**os.environ, "PARATUNE_DEBUG": "0", "COLUMNS": "160"},
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_limit_memory,
        )
    finally:
        folder.chmod(mode)
    after = _snapshot(cwd)
    written = tuple(sorted(p for p, stamp in after.items() if before.get(p) != stamp))
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr, written)


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["campaign", "resume", "run"], ["run", "read-only", "resume"]),
        (["campaign", "run", "c.yaml"], ["run", "read-only", "campaign run"]),
    ],
)
def test_read_only_run_folder_refuses_writers(case: Path, args: list[str], mentions: list[str]) -> None:
    assert_refused(_run_read_only(args, case, case / "run"), mentions=mentions)


def test_read_only_run_folder_still_reads(case: Path) -> None:
    """status and report only read: on a read-only folder they read the database as it is on disk."""
    run = _run_read_only(["campaign", "status", "run", "--json"], case, case / "run")
    assert run.returncode == 0 and '"done": 1' in run.stdout, run.describe()
    assert not [p for p in run.written if p.startswith("run")], run.describe()
    run = _run_read_only(["report", "run", "-o", "r.html"], case, case / "run")
    assert run.returncode == 0 and (case / "r.html").stat().st_size > 1000, run.describe()
