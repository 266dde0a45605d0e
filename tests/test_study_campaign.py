"""Studies in a campaign, on the dashboard and in the report; the `paratune study` command line.

A tiny campaign (a 4-layer Llama on one DGX A100) runs both studies in-process:
the study jobs write their folders under the run folder and their study.json
into the store; the dashboard shows them on the Studies page (not on the
leaderboard), and the report includes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from paratune.campaign import CampaignSpec, create_campaign, work
from paratune.cli import app

TINY = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "phase": "decode", "objective": "tbt"}
TRACE = "prompt_tokens,output_tokens,batch\n200,100,4\n300,120,4\n1500,80,2\n3000,60,1\n"


def _spec(folder: Path, **fields: object) -> Path:
    (folder / "trace.csv").write_text(TRACE)
    data = {
        "name": "studies",
        "output": str(folder / "run"),
        "scenarios": [{**TINY, "name": "tiny", "batch": 8, "context": 512}],
        "optimum": False,
        "studies": [
            {"kind": "granularity", "budget": 10, "tuners": ["dp", "balanced-pp"],
             "granularities": ["layer", "layers:2"]},
            {"kind": "static-vs-runtime", "budget": 10, "workload": str(folder / "trace.csv"), "ks": [1, 2]},
        ],
        **fields,
    }  # fmt: skip
    path = folder / "studies.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study-campaign")
    spec_path = _spec(folder)
    spec = CampaignSpec.load(spec_path)
    assert [j.role for j in spec.jobs()] == ["study", "study"]  # no tuners listed: only the studies
    located = create_campaign(spec, spec_path)
    work(located.storage, located.name, output=located.output, say=lambda _line: None)
    return located.output


def test_campaign_runs_both_studies_and_writes_their_folders(run_folder: Path) -> None:
    from paratune.campaign import Store

    store = Store(f"sqlite:///{run_folder / 'campaign.db'}")
    try:
        jobs = store.jobs("studies")
    finally:
        store.close()
    assert [(j.tuner, j.state) for j in jobs] == [
        ("study-granularity", "done"),
        ("study-static-vs-runtime", "done"),
    ], [j.error for j in jobs]
    for label in ("study-granularity", "study-static-vs-runtime"):
        data = json.loads((run_folder / "studies" / f"{label}-tiny" / "study.json").read_text())
        assert data["kind"] == label.removeprefix("study-")
        assert data["provenance"]["seed"] == 0 and data["provenance"]["profile"]


def test_dashboard_shows_studies_not_on_the_leaderboard(run_folder: Path) -> None:
    from paratune.dashboard import load_runs

    results = load_runs(run_folder)
    assert sorted(s.kind for s in results.studies) == ["granularity", "static-vs-runtime"]
    assert all(s.campaign == "studies" and s.scenario == "tiny" for s in results.studies)
    assert results.scenarios == {} and results.jobs == []  # study jobs are not tuner results
    assert results.campaigns[0].counts["done"] == 2
    assert len(results.select(phase="decode").studies) == 2
    assert results.select(phase="prefill").studies == []


def test_a_study_folder_alone_loads_and_reports(run_folder: Path, tmp_path: Path) -> None:
    from paratune.dashboard import load_runs, write_report

    alone = load_runs(run_folder / "studies")  # no campaign.json there: the studies found on disk
    assert sorted(s.kind for s in alone.studies) == ["granularity", "static-vs-runtime"]
    both = load_runs([run_folder, run_folder / "studies"])
    assert len(both.studies) == 2  # the same folders through the store and on disk count once
    html_text = write_report(run_folder, tmp_path / "report.html").read_text()
    assert 'id="studies"' in html_text and "granularity study: llama2-7b:layers=4" in html_text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "astrology"}, "studies[0].kind"),
        ({"scenarios": ["nope"]}, "not in this campaign"),
        ({"tuners": ["dp", "magic"]}, "'magic' is not a tuner"),
        ({"granularities": ["half-layer"]}, "granularity 'half-layer'"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_study_entries_name_the_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    path = _spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["studies"][0].update(change)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CampaignSpec.load(path)


def test_missing_workload_is_a_spec_error(tmp_path: Path) -> None:
    path = _spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["studies"][1]["workload"] = str(tmp_path / "missing.csv")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"studies\[1\].*missing.csv"):
        CampaignSpec.load(path)


def test_cli_study_runs_shows_and_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "g"
    problem = ["-m", "llama2-7b:layers=4", "-p", "dgx-a100", "--phase", "decode", "-b", "8", "-c", "512"]
    args = ["study", "granularity", *problem, "--tuners", "dp,megatron", "--granularities", "layer,layers:2", "-n", "5"]
    args += ["-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "summary" in result.output and (out / "study.json").is_file() and (out / "plots.html").is_file()
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0
    assert json.loads(again.output)["rows"] == json.loads((out / "study.json").read_text())["rows"]
    shown = runner.invoke(app, ["study", "show", str(out)])
    assert shown.exit_code == 0 and "summary" in shown.output
    bad = runner.invoke(app, [*args[:-2], "--granularities", "layer,quarks", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "quarks" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad" / "study.json").exists()
    missing = runner.invoke(app, ["study", "static-vs-runtime", "-m", "llama2-7b:layers=4", "-p", "dgx-a100",
                                  "-w", str(tmp_path / "none.csv"), "-o", str(tmp_path / "r")])  # fmt: skip
    assert missing.exit_code == 2 and "none.csv" in missing.output


def test_ctrl_c_keeps_finished_cells_and_the_same_command_resumes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "g"
    args = ["study", "granularity", "-m", "llama2-7b:layers=4", "-p", "dgx-a100", "--phase", "train", "-b", "8",
            "-s", "512", "--tuners", "dp,optuna-random", "--granularities", "layer,layers:2", "-n", "3000",
            "-o", str(out)]  # fmt: skip
    # SIGINT's default handler: a test run in the background (`pytest &`) would hand SIGINT on as ignored
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from paratune.cli import app; app(sys.argv[1:])"
    )
    log = tmp_path / "study.out"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=sink, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 120
        while not list((out / "cells").glob("*.json")) and time.time() < end and proc.poll() is None:
            time.sleep(0.05)
        finished = len(list((out / "cells").glob("*.json")))
        assert finished >= 1, log.read_text()
        proc.send_signal(signal.SIGINT)  # during the 3000-trial optuna-random cell
        for _ in range(60):
            try:
                proc.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                # Python drops a KeyboardInterrupt raised inside an import-lock callback ("Exception ignored"):
                # press Ctrl-C again, as a user would
                proc.send_signal(signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 130, text
    assert "run the same command again to resume" in text and "Traceback" not in text
    assert not (out / "study.json").exists()  # nothing half-written
    resumed = CliRunner().invoke(app, [*args[:-4], "-n", "30", "-o", str(out)])  # a smaller budget: new cells
    assert resumed.exit_code == 0, resumed.output
    # dp's cell at layer was finished before Ctrl-C, and its answer does not depend on the budget
    assert resumed.output.count("reused") == 1 and "layer x dp" in resumed.output.split("reused")[0]
    data = json.loads((out / "study.json").read_text())
    assert len(data["rows"]) == 4 and all(r["status"] == "ok" for r in data["rows"])
