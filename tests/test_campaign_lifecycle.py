"""A campaign's launcher and its workers under hostile conditions, and the store's secrets (issue 15, items 8-9).

* Workers die with their launcher, however it dies (SIGKILL, SIGHUP): each puts its job back and exits;
  nothing runs unsupervised, so a later ``resume`` never starts workers beside orphans.
* A worker killed under a live launcher has its job requeued at once, not after ``--stale-after``.
* The exit code tells the truth about the campaign: two launchers resuming the same campaign both exit 0
  when it ends done, whoever ran which job.
* A store's password is never on a worker's command line (``ps``), never in ``campaign.json`` (not even
  masked as ``***``); ``status`` / ``resume`` take it from the variable the file names.
* The dashboard answers only to Host headers naming it (DNS rebinding).

Tests that start launchers are marked slow; each waits with generous liveness timeouts, never a speed target.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _campaigns import write_spec
from _hostile import assert_refused, run_paratune

from paratune.campaign import Store, run_file_storage

TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "phase": "decode", "context": 512}
#: a job that runs far longer than any test waits: it is interrupted, never finished
ENDLESS = {"name": "optuna-random", "label": "endless", "budget": 10_000_000}
#: seconds a worker may take to notice its launcher is gone and exit (liveness, not speed)
EXIT_WITHIN_S = 30.0
PASSWORD = "s3cret-Pw"
#: the launcher as `paratune campaign ...`, with SIGINT's default handler even when pytest runs in the background
# As from a terminal: SIGINT raises, SIGHUP is not ignored (a CI runner under nohup passes SIG_IGN down).
LAUNCHER = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
    "from paratune.cli._campaign import campaign_app; campaign_app(sys.argv[1:])"
)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "a condition") -> Any:
    end = time.time() + timeout
    while not (value := predicate()):
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest) -> str | None:
    """None (the campaign's own SQLite file) or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))


class Launcher:
    """``paratune campaign ARGS`` in a child process, its output in a file (a full pipe would block it)."""

    def __init__(self, folder: Path, args: list[str], env: dict[str, str] | None = None, tag: str = "") -> None:
        self.out = folder / f"launcher{tag}.out"
        with open(self.out, "w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stdout=sink,
                                         stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})  # fmt: skip

    def text(self) -> str:
        return self.out.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    """Launchers a test starts; killed (and any worker left behind, reported) at the end."""
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.stop()


def running_jobs(store: Store, name: str) -> list[Any]:
    return [j for j in store.jobs(name) if j.state == "running"]


# -- workers die with their launcher -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_workers_stop_when_their_launcher_dies(
    tmp_path: Path, storage: str | None, launchers: list[Launcher], how: signal.Signals
) -> None:
    """SIGKILL (no clean-up possible) or SIGHUP of the launcher: every worker puts its job back and exits."""
    spec = write_spec(tmp_path, "orphans", storage, scenarios=[{**TINY, "name": "t", "batch": 8}],
                      tuners=[ENDLESS, {**ENDLESS, "label": "endless2"}], optimum=False)  # fmt: skip
    launcher = Launcher(tmp_path, ["run", str(spec), "--workers", "2"])
    launchers.append(launcher)
    url = storage or f"sqlite:///{tmp_path / 'run' / 'campaign.db'}"
    wait_for(lambda: (tmp_path / "run" / "campaign.db").exists() or storage, what="the store")
    store = Store(url)
    try:
        wait_for(lambda: len(running_jobs(store, "orphans")) == 2, what="both jobs running")
        workers = children(launcher.proc.pid)
        assert len(workers) == 2, workers
        launcher.proc.send_signal(how)
        launcher.proc.wait(timeout=EXIT_WITHIN_S)
        wait_for(lambda: all(gone(w) for w in workers), EXIT_WITHIN_S, "the workers to exit")
        assert store.counts("orphans") == {"waiting": 2, "running": 0, "done": 0, "failed": 0}
        assert [a.outcome for a in store.attempts("orphans")] == ["interrupted", "interrupted"]
    finally:
        store.close()
    if how == signal.SIGHUP:  # a hang-up is a clean stop: the launcher says how to continue
        assert launcher.proc.returncode == 130, launcher.text()
        assert "paratune campaign resume" in launcher.text()
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "logs").glob("worker-*.log"))
    expected = "its launcher is gone" if how == signal.SIGKILL else "interrupted"
    assert logs.count(f"worker stopped ({expected})") == 2, logs


# -- a dead worker's job is requeued at once --------------------------------------------------------


@pytest.mark.slow
def test_killed_workers_job_is_requeued_at_once(tmp_path: Path, launchers: list[Launcher]) -> None:
    """SIGKILL of the only worker: its launcher requeues the job now (not after --stale-after) and exits 1."""
    spec = write_spec(tmp_path, "dead", None, scenarios=[{**TINY, "name": "t", "batch": 8}], tuners=[ENDLESS],
                      optimum=False)  # fmt: skip
    launcher = Launcher(tmp_path, ["run", str(spec), "--workers", "1", "--stale-after", "3600"])
    launchers.append(launcher)
    wait_for(lambda: (tmp_path / "run" / "campaign.db").exists(), what="the store")
    store = Store(f"sqlite:///{tmp_path / 'run' / 'campaign.db'}")
    try:
        job = wait_for(lambda: running_jobs(store, "dead"), what="the job running")[0]
        os.kill(job.pid, signal.SIGKILL)
        launcher.proc.wait(timeout=EXIT_WITHIN_S)  # not 3600 s: the launcher saw its worker die
        assert launcher.proc.returncode == 1, launcher.text()
        assert store.counts("dead") == {"waiting": 1, "running": 0, "done": 0, "failed": 0}
        assert [a.outcome for a in store.attempts("dead")] == ["lost"]
    finally:
        store.close()
    text = launcher.text()
    assert f"worker {job.pid} was killed (SIGKILL): requeued job(s) [{job.id}]" in text, text
    assert "jobs left unfinished" in text


# -- the exit code tells the truth about the campaign ----------------------------------------------------


@pytest.mark.slow
def test_two_launchers_resuming_both_exit_0_when_the_campaign_is_done(
    tmp_path: Path, storage: str | None, launchers: list[Launcher]
) -> None:
    """Two ``resume`` launchers share the queue; whichever's workers finish first waits for the other's jobs."""
    spec = write_spec(tmp_path, "pair", storage, scenarios=[{**TINY, "name": "t", "batch": [1, 2, 4, 8]}],
                      tuners=["megatron", "balanced-pp", {"name": "optuna-random", "budget": 150}])  # fmt: skip
    from paratune.campaign import CampaignSpec, create_campaign

    located = create_campaign(CampaignSpec.load(spec), spec)
    pair = [Launcher(tmp_path, ["resume", str(located.output), "--workers", "1"], tag=str(i)) for i in range(2)]
    launchers.extend(pair)
    for launcher in pair:
        launcher.proc.wait(timeout=600)
    assert [p.proc.returncode for p in pair] == [0, 0], [p.text() for p in pair]
    store = Store(located.storage)
    try:
        assert store.counts("pair") == {"waiting": 0, "running": 0, "done": 16, "failed": 0}
        attempts = store.attempts("pair")
    finally:
        store.close()
    assert Counter(a.outcome for a in attempts) == {"done": 16}  # each job ran once
    assert len({a.pid for a in attempts}) == 2  # both launchers' workers took jobs


# -- secrets: the password stays out of argv and out of campaign.json ---------------------------------------


def _with_password(url: str) -> str:
    return sa.engine.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


@pytest.mark.slow
def test_password_never_on_a_command_line_nor_in_campaign_json(
    tmp_path: Path, pg_database: str, launchers: list[Launcher]
) -> None:
    """A URL with a password: workers get it by environment; campaign.json names PGPASSWORD; status uses it."""
    url = _with_password(pg_database)  # the test server trusts loopback: any password is accepted
    spec = write_spec(tmp_path, "secret", None, scenarios=[{**TINY, "name": "t", "batch": 8}],
                      tuners=["megatron", ENDLESS], optimum=False)  # fmt: skip
    launcher = Launcher(tmp_path, ["run", str(spec), "--workers", "1", "--storage", url])
    launchers.append(launcher)
    store = Store(pg_database)
    try:
        wait_for(lambda: store.campaign("secret") is not None and running_jobs(store, "secret"), what="a job")
        job = wait_for(lambda: [j for j in running_jobs(store, "secret") if j.tuner == "endless"], what="endless")[0]
        argv = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
        assert b"paratune.campaign" in argv and not any(PASSWORD.encode() in a for a in argv), argv
        launcher.proc.send_signal(signal.SIGTERM)  # a clean stop
        launcher.proc.wait(timeout=EXIT_WITHIN_S)
        assert launcher.proc.returncode == 130, launcher.text()
        assert store.counts("secret")["running"] == 0
    finally:
        store.close()
    run_file = (tmp_path / "run" / "campaign.json").read_text()
    assert PASSWORD not in run_file and "***" not in run_file, run_file
    info = json.loads(run_file)
    assert info["password_env"] == "PGPASSWORD" and info["storage"] == pg_database
    assert PASSWORD not in launcher.text()

    no_secret = {"PGPASSWORD": "", "PGPASSFILE": str(tmp_path / "no-pgpass")}
    status = run_paratune(["campaign", "status", "run", "--json"], tmp_path, env={**no_secret, "PGPASSWORD": PASSWORD})
    assert status.returncode == 0, status.describe()
    assert json.loads(status.stdout)["counts"] == {"waiting": 1, "running": 0, "done": 1, "failed": 0}
    assert_refused(run_paratune(["campaign", "status", "run"], tmp_path, env=no_secret),
                   mentions=["campaign.json", "PGPASSWORD"])  # fmt: skip
    assert_refused(run_paratune(["campaign", "resume", "run"], tmp_path, env=no_secret),
                   mentions=["campaign.json", "PGPASSWORD"])  # fmt: skip


def test_run_file_keeps_no_password() -> None:
    from paratune.campaign._secrets import run_file_entry

    assert run_file_entry("postgresql://u:pw@db:5432/c") == {
        "storage": "postgresql://u@db:5432/c",
        "password_env": "PGPASSWORD",
    }
    assert run_file_entry("postgresql+psycopg://u@db/c") == {"storage": "postgresql+psycopg://u@db/c"}
    mysql = {"storage": "mysql://u@db/c", "password_env": "PARATUNE_STORAGE_PASSWORD"}
    assert run_file_entry("mysql://u:pw@db/c") == mysql
    assert run_file_entry("sqlite:////tmp/x.db") == {"storage": "sqlite:////tmp/x.db"}


def test_run_file_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    info = {"storage": "postgresql://u@db:5432/c", "password_env": "PGPASSWORD"}
    monkeypatch.setenv("PGPASSWORD", "p@ss:w/rd")
    assert sa.engine.make_url(run_file_storage(info, "x/campaign.json")).password == "p@ss:w/rd"
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(ValueError, match=r"x/campaign.json: .*set the environment variable PGPASSWORD"):
        run_file_storage(info, "x/campaign.json")
    (tmp_path / "none").write_text("db:5432:c:u:secret\n")  # ~/.pgpass: libpq reads it itself
    assert run_file_storage(info, "x/campaign.json") == "postgresql://u@db:5432/c"
    assert run_file_storage({"storage": "postgresql://u@db/c"}, "f") == "postgresql://u@db/c"


def test_old_masked_run_file_asks_for_the_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An older paratune wrote ``***`` in place of the password: never connect with it."""
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    info = {"storage": "postgresql://u:***@db/c"}
    with pytest.raises(ValueError, match="PGPASSWORD"):
        run_file_storage(info, "campaign.json")
    monkeypatch.setenv("PGPASSWORD", "real")
    assert sa.engine.make_url(run_file_storage(info, "campaign.json")).password == "real"


@pytest.mark.parametrize(
    ("info", "words"),
    [
        ({"name": "x", "storage": "postgresql://u@db/c", "password_env": "PARATUNE_TEST_UNSET_PW"},
         ["campaign.json", "PARATUNE_TEST_UNSET_PW"]),
        ({"name": "x", "storage": "mysql://u:***@db/c"}, ["campaign.json", "PARATUNE_STORAGE_PASSWORD"]),
        ({"name": "x", "storage": "postgresql://u@db/c", "password_env": 7}, ["campaign.json", "password_env"]),
        ({"name": "x", "storage": 12}, ["campaign.json", "storage"]),
    ],
)  # fmt: skip
def test_status_with_a_missing_secret_is_refused(tmp_path: Path, info: dict[str, Any], words: list[str]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "campaign.json").write_text(json.dumps(info))
    env = {"PGPASSWORD": "", "PARATUNE_STORAGE_PASSWORD": "", "PGPASSFILE": str(tmp_path / "none")}
    assert_refused(run_paratune(["campaign", "status", "run"], tmp_path, env=env), mentions=words)


@pytest.mark.parametrize(
    "command", [["campaign", "resume", "run"], ["report", "run", "-o", "r.html"], ["dashboard", "run"]]
)
def test_every_reader_asks_for_the_missing_secret(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "run").mkdir()
    info = {"name": "x", "storage": "postgresql://u@127.0.0.1:1/c", "password_env": "PGPASSWORD"}
    (tmp_path / "run" / "campaign.json").write_text(json.dumps(info))
    env = {"PGPASSWORD": "", "PGPASSFILE": str(tmp_path / "none")}
    assert_refused(
        run_paratune(command, tmp_path, env=env), mentions=["campaign.json", "set the environment variable PGPASSWORD"]
    )


def test_worker_takes_its_storage_from_the_environment(tmp_path: Path) -> None:
    """``python -m paratune.campaign worker`` without --storage reads PARATUNE_STORAGE, or says to set it."""
    env = {k: v for k, v in os.environ.items() if k != "PARATUNE_STORAGE"}
    missing = subprocess.run([sys.executable, "-m", "paratune.campaign", "worker", "x"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.strip() == "error: give --storage URL or set PARATUNE_STORAGE"
    url = f"sqlite:///{tmp_path / 'none.db'}"
    absent = subprocess.run([sys.executable, "-m", "paratune.campaign", "worker", "x"], capture_output=True,
                            env={**env, "PARATUNE_STORAGE": url}, text=True, timeout=60)  # fmt: skip
    assert absent.returncode == 2 and "no such SQLite file" in absent.stderr, absent.stderr


# -- the dashboard's Host check ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard(dashboard_run: Path) -> Any:
    from paratune.dashboard import create_app

    return create_app(dashboard_run)


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8050", 200),
        ("localhost:8050", 200),
        ("LOCALHOST.", 200),
        ("[::1]:8050", 200),
        ("10.1.2.3:8050", 200),  # an address cannot be rebound: only names can
        ("evil.example:8050", 400),
        ("evil.example", 400),
        ("localhost.evil.example", 400),
        ("127.0.0.1.nip.io:8050", 400),
        ("my-workstation:8050", 400),  # not named at start-up (serve's host): refused
    ],
)
def test_dashboard_refuses_foreign_host_headers(dashboard: Any, host: str, status: int) -> None:
    client = dashboard.server.test_client()
    for path in ("/", "/_dash-layout"):
        answer = client.get(path, headers={"Host": host})
        assert answer.status_code == status, (path, answer.status_code, answer.data[:200])
    if status == 400:
        assert b"PARATUNE_DASHBOARD_HOSTS" in answer.data


def test_dashboard_accepts_the_name_it_was_bound_to(dashboard_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paratune.dashboard import create_app
    from paratune.dashboard._app import allow_host

    monkeypatch.setenv("PARATUNE_DASHBOARD_HOSTS", "dash.example.org, Proxy.Example:443")
    app = create_app(dashboard_run)
    allow_host(app, "my-workstation")
    client = app.server.test_client()
    for host in ("my-workstation:8050", "dash.example.org", "proxy.example"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    assert client.get("/", headers={"Host": "other.example"}).status_code == 400
