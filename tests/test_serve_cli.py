"""``paratune serve-tune``: the --json contract, the simulator's check, the study folder, and user mistakes."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from paratune.cli import app
from paratune.serving import Deployment

runner = CliRunner()
BASE = ["serve-tune", "-m", "llama3-8b", "-p", "dgx-h100", "--gpus", "4", "--workload", "fixed:1024/fixed:128"]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("serve") / "study"
    r = runner.invoke(app, [*BASE, "--ttft-ms", "500", "--tpot-ms", "20", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    data["_out"] = out
    return data


def test_json_contract(result) -> None:
    dep = result["deployment"]
    assert Deployment.from_dict(dep).gpus <= 4
    for pool in dep["pools"]:
        assert {"role", "tp", "pp", "replicas", "max_num_seqs", "max_batched_tokens"} <= set(pool)
    for key in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "load"):
        assert result[key] > 0
    for key in ("ttft_ms", "tpot_ms"):
        assert {"p50", "p90", "p99"} <= set(result[key])
    assert result["meets_slo"] is True and result["source"] == "simulated"
    assert result["tpot_ms"]["p90"] <= 20.0 and result["ttft_ms"]["p90"] <= 500.0
    assert result["pareto_front"] and {"tokens_per_s_per_gpu", "tokens_per_s_per_user"} <= set(
        result["pareto_front"][0]
    )
    assert [x["engine"] for x in result["launch"]] == ["vllm", "sglang", "trtllm"]
    assert result["versions"] and result["seed"] == 0 and result["profile"]
    cdf = result["simulated"]["cdf"]["ttft_ms"]
    assert len(cdf) == 101 and all(a <= b for a, b in itertools.pairwise(cdf))


def test_the_default_margin_is_zero_and_the_json_says_so(result) -> None:
    m = result["slo_margin"]
    assert m["requested"] == 0.0 and m["source"] == "fixed" and m["load_factor"] == 1.0
    assert m["planning_slo"] == {"ttft_ms": 500.0, "tpot_ms": 20.0, "percentile": 90.0}
    assert result["problem"]["slo_margin"] == 0.0


def test_auto_margin_records_both_targets_and_pays_in_load() -> None:
    args = [*BASE, "--ttft-ms", "500", "--tpot-ms", "20", "--no-simulate", "--json"]
    zero = json.loads(runner.invoke(app, [*args, "--slo-margin", "0"]).stdout)
    r = runner.invoke(app, [*args, "--slo-margin", "auto"])
    assert r.exit_code == 0, r.output
    auto = json.loads(r.stdout)
    m = auto["slo_margin"]
    assert m["requested"] == "auto" and m["source"] == "auto"
    assert 1.0 < m["ttft_pct"] < 20.0 and 1.0 < m["tpot_pct"] < 20.0
    assert m["load_factor"] == pytest.approx(1 + max(m["ttft_pct"], m["tpot_pct"]) / 100, rel=1e-12)
    assert auto["slo"]["tpot_ms"] == 20.0 and auto["slo"]["ttft_ms"] == 500.0  # the user's, unchanged
    plan = m["planning_slo"]
    assert plan["tpot_ms"] == pytest.approx(20.0 / (1 + m["tpot_pct"] / 100), rel=1e-12)
    assert plan["ttft_ms"] == pytest.approx(500.0 / (1 + m["ttft_pct"] / 100), rel=1e-12)
    assert auto["tpot_ms"]["p90"] <= plan["tpot_ms"] and auto["ttft_ms"]["p90"] <= plan["ttft_ms"]
    assert auto["problem"]["slo_margin"] == "auto"
    assert auto["tokens_per_s_per_gpu"] < zero["tokens_per_s_per_gpu"]  # the headroom is paid in load


def test_the_study_folder_reads_back(result) -> None:
    r = runner.invoke(app, ["study", "show", str(result["_out"]), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kind"] == "serve-tune"
    assert (result["_out"] / "pareto_front.csv").exists() and (result["_out"] / "plots.html").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "tgi"], "--engine"),
        (["--modes", "both"], "--modes"),
        (["--rate", "2", "--concurrency", "4"], "not both"),
        (["--gpus", "99"], "--gpus"),
        (["--workload", "fixed:0/fixed:1"], "fixed"),
        (["--kv-dtype", "int4"], "--kv-dtype"),
        (["--tuner", "dp"], "--tuner"),
        (["--slo-margin", "lots"], "--slo-margin"),
        (["--slo-margin", "-5"], "--slo-margin"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(extra: list[str], message: str) -> None:
    r = runner.invoke(app, [*BASE, *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_an_unreachable_slo_exits_1_and_says_why() -> None:
    r = runner.invoke(app, [*BASE, "--tpot-ms", "0.01", "--no-simulate", "--json"])
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["deployment"] is None and "SLO" in data["reason"]


def test_the_dashboard_and_report_show_the_serving_study(result) -> None:
    from paratune.dashboard._data import load_runs
    from paratune.dashboard._report import build_report

    results = load_runs(result["_out"].parent)
    (study,) = [s for s in results.studies if s.kind == "serve-tune"]
    assert study.title == "serve-tune study: llama3-8b on dgx-h100"
    page = build_report(results)
    assert "serve-tune study" in page and "tokens/s per GPU against tokens/s per user" in page
    assert "TPOT target" in page  # the SLO line on the front


@pytest.mark.parametrize("tuner", ["optuna-tpe", "rl", "vllm-default"])
def test_every_serving_tuner_runs_from_the_command_line(tuner: str) -> None:
    r = runner.invoke(app, [*BASE, "--tpot-ms", "30", "--tuner", tuner, "--budget", "12", "--no-simulate", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["tuner"] == tuner and data["meets_slo"] is True and data["deployment"]["gpus"] <= 4
