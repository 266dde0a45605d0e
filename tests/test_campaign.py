"""Campaigns: the spec, the store and its guarantees on SQLite and on PostgreSQL.

The guarantee checks are functions of a storage URL, run by tests parametrised over
both backends (the ``storage`` fixture): several worker processes never run a job
twice nor lose one; a worker killed with SIGKILL mid-job leaves a resumable campaign;
a failing job is recorded and the others go on; Ctrl-C stops cleanly. PostgreSQL comes
from the ``pg_database`` fixture of conftest.py (a throwaway server on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from _campaigns import write_spec
from typer.testing import CliRunner

from paratune.campaign import CampaignSpec, Store, campaign_status, create_campaign, resume_campaign, run_campaign
from paratune.campaign._store import _pid_alive
from paratune.cli._campaign import campaign_app

TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "phase": "decode", "context": 512}
HEURISTICS = ["megatron", "serving-default", "min-tp-replicas", "balanced-pp"]


#: Trials of the job that is interrupted: long enough (seconds, even on a fast machine) to be caught running.
SLOW_BUDGET = 3000


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'run' / 'campaign.db'}"


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# -- the guarantees, for any storage ------------------------------------------------------


def check_workers_never_duplicate_nor_lose(folder: Path, storage: str | None) -> dict[str, Any]:
    """40 real jobs on 2 worker processes: every job done exactly once, one result each."""
    spec = write_spec(
        folder,
        "many",
        storage,
        scenarios=[{**TINY, "name": "tiny", "batch": [1, 2, 4, 8, 16]}],
        tuners=[*HEURISTICS, {"name": "optuna-random", "budget": 30}],
        seeds=3,
    )
    outcome = run_campaign(spec, workers=2)
    assert outcome.finished and not outcome.interrupted
    store = Store(outcome.located.storage)
    try:
        jobs = store.jobs("many")
        attempts = store.attempts("many")
    finally:
        store.close()
    # 5 scenarios x (dp optimum + 4 deterministic heuristics + optuna-random x 3 seeds)
    assert len(jobs) == 40
    assert [j.state for j in jobs] == ["done"] * 40, [(j.id, j.state, j.error) for j in jobs]
    runs = Counter(a.job for a in attempts)
    duplicates = [job for job, n in runs.items() if n > 1]
    lost = [j.id for j in jobs if runs[j.id] == 0 or j.objective_value is None]
    assert duplicates == [] and lost == []
    assert {a.outcome for a in attempts} == {"done"}
    workers = Counter(a.worker for a in attempts)
    assert len(workers) == 2, workers  # both processes took jobs from the same queue
    return {"jobs": len(jobs), "duplicates": len(duplicates), "lost": len(lost), "per_worker": sorted(workers.values())}


CLAIMER = """
import sys
from paratune.campaign import Store, Worker
store = Store(sys.argv[1]); me = Worker.here(); n = 0
print("ready", flush=True); sys.stdin.readline()  # start together
while (claim := store.claim(sys.argv[2], me)) is not None:
    store.finish(claim, me, state="done"); n += 1
print(n)
"""


def check_claims_are_atomic(folder: Path, storage: str, processes: int = 3, jobs: int = 150) -> dict[str, int]:
    """A race with no work in between: ``processes`` claimers empty a queue of ``jobs`` at full speed.

    (SQLite's lock is not fair: one claimer may win most races; PostgreSQL's row locks share them out.)
    """
    data = {"name": "race", "scenarios": [{**TINY, "name": "t", "batch": list(range(1, jobs + 1))}],
            "tuners": ["megatron"], "optimum": False}  # fmt: skip
    spec = CampaignSpec.from_dict(data, check=False, storage=storage)
    store = Store(storage)
    try:
        assert store.create_campaign(spec, str(folder))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, storage, "race"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        claimed = [int(p.communicate(timeout=60)[0]) for p in procs]
        attempts = store.attempts("race")
        counts = store.counts("race")
    finally:
        store.close()
    runs = Counter(a.job for a in attempts)
    assert sum(claimed) == jobs and counts["done"] == jobs
    assert len(runs) == jobs and max(runs.values()) == 1
    return {"jobs": jobs, "duplicates": sum(n > 1 for n in runs.values()), "lost": jobs - len(runs),
            "claimers_that_won": sum(n > 0 for n in claimed)}  # fmt: skip


def check_sigkill_then_resume(folder: Path, storage: str | None) -> dict[str, Any]:
    """SIGKILL a worker during a slow job: finished results are kept, the killed job is re-run by resume."""
    spec_path = write_spec(
        folder,
        "killed",
        storage,
        scenarios=[{**TINY, "name": "tiny", "batch": 8}],
        tuners=[
            "megatron",
            "balanced-pp",
            {"name": "optuna-random", "budget": 20},
            {"name": "optuna-random", "label": "slow", "budget": SLOW_BUDGET},
        ],
        seeds=1,
    )
    spec = CampaignSpec.load(spec_path)
    output = create_campaign(spec, spec_path).output
    store = Store(spec.storage)
    try:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "paratune.campaign",
                "worker",
                "--storage",
                spec.storage,
                "--heartbeat",
                "0.2",
                "killed",
            ],
            stdout=subprocess.DEVNULL,
        )

        def slow_running() -> bool:
            return any(j.tuner == "slow" and j.state == "running" for j in store.jobs("killed"))

        wait_for(slow_running)
        time.sleep(0.3)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        before = {j.id: j for j in store.jobs("killed")}
        kept = {i: store.result(i) for i, j in before.items() if j.state == "done"}
        slow_id = next(i for i, j in before.items() if j.tuner == "slow")
        assert before[slow_id].state == "running"  # as SIGKILL left it
        assert len(kept) == 4  # dp (the optimum), megatron, balanced-pp, optuna-random
        outcome = resume_campaign(str(output), storage=storage, workers=1)
        assert outcome.finished
        after = {j.id: j for j in store.jobs("killed")}
        attempts = store.attempts("killed")
        for i, result in kept.items():  # finished results untouched
            assert store.result(i) == result
        assert all(j.state == "done" for j in after.values())
        outcomes = [a.outcome for a in attempts if a.job == slow_id]
        assert outcomes == ["lost", "done"]
        assert Counter(a.job for a in attempts if a.job != slow_id) == dict.fromkeys(kept, 1)
        slow = store.result(slow_id)
        assert slow is not None and slow.result["evaluations"] == SLOW_BUDGET  # the full budget: ran again
    finally:
        store.close()
    return {"jobs": len(after), "kept": len(kept), "rerun": [slow_id]}


def check_failures_are_recorded(folder: Path, storage: str | None) -> None:
    """An infeasible scenario and a tuner that raises fail with their errors; every other job is done."""
    spec = write_spec(
        folder,
        "failing",
        storage,
        scenarios=[
            {**TINY, "name": "ok", "batch": 8},
            {**TINY, "name": "no-room", "batch": 8, "limits": {"memory_gib": 0.01}},
            {**TINY, "name": "two-objectives", "batch": 8, "objective": "tbt+memory"},
        ],
        tuners=["megatron", {"name": "optuna-cmaes", "budget": 10}],
        seeds=1,
    )
    outcome = run_campaign(spec, workers=2)
    assert outcome.finished
    status = campaign_status(str(outcome.located.output), storage)
    by = {(j["scenario"], j["tuner"]): j for j in status["jobs"]}
    assert {k for k, j in by.items() if j["state"] == "failed"} == {
        ("no-room", "dp"),
        ("no-room", "megatron"),
        ("no-room", "optuna-cmaes"),
        ("two-objectives", "optuna-cmaes"),
    }
    assert by[("no-room", "megatron")]["error"].startswith("no feasible plan found: megatron:")
    raised = by[("two-objectives", "optuna-cmaes")]
    assert raised["error"].startswith("ValueError: optuna-cmaes optimises one objective")
    assert "Traceback" in Path(raised["log"]).read_text()
    assert by[("ok", "optuna-cmaes")]["state"] == "done" and by[("two-objectives", "megatron")]["state"] == "done"
    assert by[("ok", "megatron")]["gap"] is not None and by[("ok", "dp")]["gap"] == 0.0
    assert ("two-objectives", "dp") not in by  # a Pareto front has no single optimum


# -- the guarantees, on both backends -------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest) -> str | None:
    """The backend under test: None (the campaign's own SQLite file) or a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_database"))


@pytest.mark.slow
def test_workers_never_duplicate_nor_lose(tmp_path: Path, storage: str | None) -> None:
    report = check_workers_never_duplicate_nor_lose(tmp_path, storage)
    assert report["duplicates"] == 0 and report["lost"] == 0


def test_claims_are_atomic(tmp_path: Path, storage: str | None) -> None:
    report = check_claims_are_atomic(tmp_path, storage or sqlite_url(tmp_path))
    assert report["duplicates"] == 0
    if storage is not None:  # PostgreSQL's row locks share the queue out; SQLite's lock is not fair
        assert report["claimers_that_won"] == 3


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path, storage: str | None) -> None:
    check_sigkill_then_resume(tmp_path, storage)


def test_failures_are_recorded(tmp_path: Path, storage: str | None) -> None:
    check_failures_are_recorded(tmp_path, storage)


def test_postgres_store_uses_skip_locked(pg_database: str) -> None:
    store = Store(pg_database)
    try:
        assert store.dialect == "postgresql"
        assert "paratune_jobs" in sa.inspect(store.engine).get_table_names()
    finally:
        store.close()


def test_postgres_status_by_name_with_storage(tmp_path: Path, pg_database: str) -> None:
    """A worker on another machine knows only the URL and the name: status works from those too."""
    spec = write_spec(tmp_path, "shared", pg_database, scenarios=[{**TINY, "name": "t"}], tuners=["megatron"])
    assert run_campaign(spec).finished
    status = campaign_status("shared", pg_database)
    assert status["counts"]["done"] == 2 and status["storage"].startswith("postgresql")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "interrupted",
        None,
        scenarios=[{**TINY, "name": "tiny", "batch": 8}],
        tuners=["megatron", {"name": "optuna-random", "label": "slow", "budget": SLOW_BUDGET}],
        seeds=1,
    )
    # SIGINT's default handler: a test run in the background (`pytest &`) would hand SIGINT on as ignored
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from paratune.cli._campaign import campaign_app; campaign_app(sys.argv[1:])"
    )
    output = tmp_path / "launcher.out"  # a file, not a pipe: a full pipe would block the launcher's progress bar
    with open(output, "w") as sink:
        launcher = subprocess.Popen([sys.executable, "-c", code, "run", str(spec), "--workers", "1"],
                                    stdout=sink, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    store = Store(sqlite_url(tmp_path))
    try:
        wait_for(lambda: any(j.tuner == "slow" and j.state == "running" for j in store.jobs("interrupted")))
        launcher.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to the launcher
        launcher.wait(timeout=60)
        out = output.read_text()
        assert launcher.returncode == 130, out
        assert "paratune campaign resume" in out
        counts = store.counts("interrupted")
        assert counts == {"waiting": 1, "running": 0, "done": 2, "failed": 0}
        slow = next(j for j in store.jobs("interrupted") if j.tuner == "slow")
        assert [a.outcome for a in store.attempts("interrupted") if a.job == slow.id] == ["interrupted"]
        assert resume_campaign(str(tmp_path / "run")).finished
        assert store.counts("interrupted")["done"] == 3
    finally:
        if launcher.poll() is None:
            launcher.kill()
        store.close()


# -- the spec --------------------------------------------------------------------------------


def test_spec_expands_lists_and_plans_jobs(tmp_path: Path) -> None:
    data = {
        "name": "x",
        "scenarios": [
            {**TINY, "name": "s", "batch": [1, 8], "limits": {"memory_gib": [10, 20]}},
            {**TINY, "name": "m", "objective": "tbt+memory"},
        ],
        "tuners": ["megatron", "dp", {"name": "optuna-tpe", "budget": 5}, {"name": "nope", "optional": True}],
        "seeds": [3, 7],
    }
    spec = CampaignSpec.from_dict(data, where="x.yaml", base=tmp_path)
    names = [p.name for p in spec.scenarios]
    assert names == [
        "s[batch=1,limits.memory_gib=10]",
        "s[batch=1,limits.memory_gib=20]",
        "s[batch=8,limits.memory_gib=10]",
        "s[batch=8,limits.memory_gib=20]",
        "m",
    ]
    assert spec.scenarios[1].batch == 1 and spec.scenarios[1].limits.memory_gib == 20
    assert spec.skipped and "nope" in spec.skipped[0]
    assert spec.output == Path("runs/x") and spec.storage.endswith("runs/x/campaign.db")
    jobs = spec.jobs()
    # the listed dp is each single-objective scenario's optimum job, first in the queue
    assert [(j.scenario, j.role) for j in jobs[:4]] == [(n, "optimum") for n in names[:4]]
    assert all(j.tuner == "dp" for j in jobs[:4])
    # deterministic tuners once (first seed), optuna-tpe per seed, dp on the multi-objective one as a tuner
    assert Counter(j.tuner for j in jobs) == {"megatron": 5, "dp": 5, "optuna-tpe": 10}
    assert {j.seed for j in jobs if j.tuner == "megatron"} == {3}
    assert spec.fingerprint() == CampaignSpec.from_dict(data, where="x.yaml").fingerprint()


def test_spec_scenario_files_and_globs(tmp_path: Path) -> None:
    (tmp_path / "sc").mkdir()
    for name in ("a", "b"):
        (tmp_path / "sc" / f"{name}.yaml").write_text(yaml.safe_dump({**TINY, "batch": 4}))
    spec_file = write_spec(tmp_path, "files", None, scenarios=["sc/*.yaml"], tuners=["megatron"])
    spec = CampaignSpec.load(spec_file)
    assert [p.name for p in spec.scenarios] == ["a", "b"]
    assert spec.sources["a"].endswith("sc/a.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "has space"}, "field 'name'"),
        ({"seeds": 0}, "field 'seeds' must be a count >= 1"),
        ({"seeds": [1, 1]}, "field 'seeds' lists a seed twice"),
        ({"tuners": ["megatorn"]}, "field 'tuners[0].name' is 'megatorn'; allowed: megatron"),
        ({"tuners": [{"name": "dp", "budget": 0}]}, "field 'tuners[0].budget' must be >= 1"),
        ({"tuners": [{"name": "dp", "bugdet": 3}]}, "unknown field(s) in 'tuners[0]': bugdet"),
        ({"tuners": ["dp", "dp"]}, "field 'tuners[1].label' 'dp' is already used by tuners[0]"),
        ({"tuners": [{"name": "nope", "optional": True}]}, "field 'tuners' has no tuner registered"),
        ({"scenarios": []}, "field 'scenarios' must be a non-empty list"),
        ({"scenarios": ["missing/*.yaml"]}, "scenarios[0]: no scenario file matches 'missing/*.yaml'"),
        ({"scenarios": [{**TINY, "batch": []}]}, "scenarios[0]: field 'batch' is an empty list"),
        ({"scenarios": [{**TINY, "batch": "big"}]}, "scenarios[0]: field 'batch' must be an integer"),
        ({"scenarios": [{**TINY, "platform": "dgx-z9"}]}, "scenarios[0]: field 'platform'"),
        ({"scenarios": [{**TINY, "name": "a"}, {**TINY, "name": "a"}]}, "scenario name 'a' is already used"),
        ({"optimum": "yes"}, "field 'optimum' must be true or false"),
        ({"worker": 3}, "unknown field(s): worker"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = {"name": "x", "scenarios": [TINY], "tuners": ["megatron"], **change}
    with pytest.raises(ValueError, match=r"^spec\.yaml: ") as err:
        CampaignSpec.from_dict(data, where="spec.yaml", base=tmp_path)
    assert message in str(err.value)


def test_demo_spec_is_valid() -> None:
    spec = CampaignSpec.load(Path(__file__).resolve().parent.parent / "configs" / "campaigns" / "demo.yaml")
    tuners = {t.name for t in spec.tuners}
    assert {*HEURISTICS, "dp", "optuna-tpe", "optuna-random"} <= tuners
    assert spec.seeds == [0, 1] and len(spec.scenarios) >= 3
    assert {st.kind for st in spec.studies} == {"granularity", "static-vs-runtime"}


# -- the store and the CLI ---------------------------------------------------------------------


def test_store_same_spec_continues_other_spec_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    data = {"name": "c", "scenarios": [TINY], "tuners": ["megatron"]}
    store = Store(url)
    try:
        assert store.create_campaign(CampaignSpec.from_dict(data, storage=url), str(tmp_path)) is True
        assert store.create_campaign(CampaignSpec.from_dict(data, storage=url), str(tmp_path)) is False
        assert store.counts("c") == {"waiting": 2, "running": 0, "done": 0, "failed": 0}
        with pytest.raises(ValueError, match=r"already exists .* with another spec"):
            store.create_campaign(CampaignSpec.from_dict({**data, "seeds": 2}, storage=url), str(tmp_path))
    finally:
        store.close()
    with pytest.raises(ValueError, match="in-memory SQLite"):
        Store("sqlite://")
    with pytest.raises(ValueError, match="not a database URL"):
        Store("not a url")


def test_pid_alive() -> None:
    assert _pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not _pid_alive(child.pid) and not _pid_alive(None)


def test_cli_run_status_json_and_errors(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "cli", None, scenarios=[{**TINY, "name": "<script>alert(1)</script>"}],
                      tuners=["megatron"])  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(campaign_app, ["run", str(spec)])
    assert res.exit_code == 0, res.output
    assert f"paratune campaign status {tmp_path / 'run'}" in res.output.replace("\n", "")
    res = runner.invoke(campaign_app, ["status", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["counts"]["done"] == 2 and data["finished"]
    assert {j["scenario"] for j in data["jobs"]} == {"<script>alert(1)</script>"}
    res = runner.invoke(campaign_app, ["status", str(spec)])  # the spec file finds its run folder
    assert res.exit_code == 0 and "<script>alert(1)</script>" in res.output
    res = runner.invoke(campaign_app, ["status", str(tmp_path / "nothing-here")])
    assert res.exit_code == 2 and "no campaign" in res.output
    bad = write_spec(tmp_path, "bad", None, scenarios=[TINY], tuners=["megatron"], seeds=-1)
    res = runner.invoke(campaign_app, ["run", str(bad)])
    assert res.exit_code == 2 and f"{bad}: field 'seeds'" in res.output


def test_stale_heartbeat_requeues_and_the_late_result_is_dropped(tmp_path: Path) -> None:
    """A worker on another host that stopped heartbeating loses its job; its late result is refused."""
    from paratune.campaign import JobLost, Worker

    url = sqlite_url(tmp_path)
    store = Store(url)
    try:
        store.create_campaign(CampaignSpec.from_dict({"name": "s", "scenarios": [TINY], "tuners": ["megatron"],
                                                      "optimum": False}, storage=url), str(tmp_path))  # fmt: skip
        far = Worker("elsewhere:1:abc", "elsewhere", 1)  # pid 1 is alive here, but it is another host's pid
        claim = store.claim("s", far)
        assert claim is not None and store.heartbeat(claim, far)
        assert store.requeue_stale("s", stale_after_s=60) == []  # fresh heartbeat: left alone
        time.sleep(0.05)
        assert store.requeue_stale("s", stale_after_s=0.01) == [claim.id]
        assert not store.heartbeat(claim, far)
        with pytest.raises(JobLost):
            store.finish(claim, far, state="done")
        here = Worker.here()
        again = store.claim("s", here)
        assert again is not None and again.id == claim.id and again.job.attempts == 2
        store.finish(again, here, state="done")
        assert [a.outcome for a in store.attempts("s")] == ["lost", "done"]
    finally:
        store.close()


def test_optuna_jobs_keep_their_study_for_optuna_dashboard(tmp_path: Path) -> None:
    """Each Optuna job writes its study to a journal file that Optuna (and optuna-dashboard) can open."""
    import optuna

    spec = write_spec(tmp_path, "studies", None, scenarios=[TINY], tuners=[{"name": "optuna-random", "budget": 12}],
                      seeds=1)  # fmt: skip
    res = CliRunner().invoke(campaign_app, ["run", str(spec)])
    assert res.exit_code == 0, res.output
    journals = sorted((tmp_path / "run" / "optuna").glob("*.journal"))
    assert len(journals) == 1
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journals[0])))
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name.startswith("optuna-random:") and summary.n_trials == 12
