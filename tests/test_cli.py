"""The command line: JSON contracts, and user mistakes exit 2 with one line and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paratune.cli import app

runner = CliRunner()


def run_json(*args: str) -> object:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_models_and_platforms_json() -> None:
    rows = run_json("models", "list")
    assert {r["name"] for r in rows} >= {"llama2-70b", "mixtral-8x7b", "gpt3-175b"}  # type: ignore[union-attr]
    show = run_json("models", "show", "mixtral-8x7b")
    assert show["params"] > show["active_params"] > 0  # type: ignore[index]
    assert show["layers"] == 32  # type: ignore[index]
    plat = run_json("platforms", "show", "dgx-h100x2")
    assert plat["devices"] == 16 and plat["profile"]["name"] == "h100-aic"  # type: ignore[index]


def test_graph_build_json_and_file(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    summary = run_json(
        "graph",
        "build",
        "--model",
        "llama2-7b:layers=2",
        "--phase",
        "decode",
        "--batch",
        "2",
        "--context",
        "64",
        "--granularity",
        "sublayer",
        "-o",
        str(out),
    )
    assert {"tasks", "edges", "flops", "param_bytes"} <= set(summary)  # type: ignore[arg-type]
    assert summary["tasks"] == 2 * 2 + 2  # type: ignore[index]
    assert json.loads(out.read_text())["meta"]["granularity"] == "sublayer"


EVAL = ["evaluate", "--model", "llama2-70b", "--platform", "dgx-h100x2"]


@pytest.mark.parametrize(
    ("phase", "extra", "key"),
    [
        ("prefill", ["--seq", "1024", "--tp", "8", "--pp", "2", "--micro-batches", "2", "--batch", "4"], "ttft_s"),
        ("decode", ["--context", "2048", "--tp", "8", "--batch", "16"], "tbt_s"),
        ("train", ["--seq", "2048", "--tp", "8", "--pp", "2", "--micro-batches", "8", "--batch", "8"], "step_s"),
    ],
)
def test_evaluate_json_contract(phase: str, extra: list[str], key: str) -> None:
    data = run_json(*EVAL, "--phase", phase, *extra)
    assert isinstance(data, dict)
    for field in ("feasible", "reason", "tokens_per_s", "peak_memory_bytes", "lower_bound_s", "breakdown", key):
        assert field in data, field
    assert data[key] > data["lower_bound_s"] > 0
    assert len(data["peak_memory_bytes"]) == 16
    assert set(data["breakdown"]) >= {"compute_s", "communication_s", "idle_s"}
    if phase == "train":
        assert 0 < data["mfu"] < 1


def test_evaluate_technique_flags_reach_the_plan_and_its_json() -> None:
    """Each training-technique flag sets its plan field; ``--json`` shows the plan keys and the memory terms."""
    train = [*EVAL, "--phase", "train", "--seq", "2048", "--batch", "8", "--tp", "4", "--pp", "2"]
    data = run_json(*train, "--micro-batches", "4", "--zero", "1", "--shard-group", "2", "--sequence-parallel",
                    "--virtual-stages", "2", "--cp", "2", "--overlap", "--tp-overlap",
                    "--recompute-granularity", "selective")  # fmt: skip
    assert isinstance(data, dict) and "memory_breakdown" in data
    plan = data["plan"]
    assert {k: plan.get(k) for k in ("zero", "shard_group", "sequence_parallel", "selective_recompute")} == {
        "zero": 1, "shard_group": 2, "sequence_parallel": True, "selective_recompute": True}  # fmt: skip
    assert (plan["virtual_stages"], plan["cp"], plan["overlap"], plan["tp_overlap"]) == (2, 2, True, True)
    stages = plan["stages"]  # p x v = 4 chunks of 20 layers; chunk k on the tp x cp = 8 devices of chunk k mod 2
    assert [s["layers"] for s in stages] == [[0, 19], [20, 39], [40, 59], [60, 79]]
    assert stages[2]["devices"] == stages[0]["devices"] == list(range(8)) and stages[1]["devices"] == list(range(8, 16))
    assert not any(s.get("recompute") for s in stages)
    full = run_json(*train, "--recompute-granularity", "full", "--no-overlap")
    assert isinstance(full, dict) and all(s["recompute"] for s in full["plan"]["stages"])
    assert not {"selective_recompute", "overlap", "zero", "cp"} & set(full["plan"])  # defaults stay out of the file


def test_evaluate_plan_file_and_simulator_agree(tmp_path: Path) -> None:
    plan = {
        "granularity": "layer",
        "micro_batches": 1,
        "replicas": 1,
        "stages": [
            {"tp": 4, "devices": [0, 1, 2, 3], "layers": [0, 39]},
            {"tp": 8, "devices": [8, 9, 10, 11, 12, 13, 14, 15], "layers": [40, 79]},
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    args = [*EVAL, "--phase", "decode", "--batch", "8", "--context", "1024", "--plan", str(path)]
    analytic = run_json(*args)
    simulated = run_json(*args, "--simulate")
    assert analytic["plan"]["stages"][1]["tp"] == 8  # type: ignore[index]
    assert simulated["tbt_s"] == pytest.approx(analytic["tbt_s"], rel=0.01)  # type: ignore[index]


def test_infeasible_plan_reports_memory() -> None:
    data = run_json("evaluate", "--model", "llama2-70b", "--platform", "dgx-h100", "--phase", "decode", "--tp", "1")
    assert data["feasible"] is False  # type: ignore[index]
    assert "GiB" in data["reason"] and "device 0" in data["reason"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "show", "llama9"], "unknown model 'llama9'"),
        (["graph", "build", "--model", "llama2-7b:layrs=2"], "unknown field(s) layrs"),
        ([*EVAL, "--tp", "3"], "TP degree 3 does not divide the 64 attention heads"),
        (["evaluate", "--model", "llama2-7b", "--platform", "dgx-a100", "--tp", "8", "--pp", "2"], "needs 16 devices"),
        (["evaluate", "--model", "llama2-7b", "--platform", "tpu-v9"], "unknown platform 'tpu-v9'"),
        (["graph", "build", "--model", "gpt2", "--phase", "inference"], "allowed: prefill, decode, train"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "paratune.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_evaluate_says_how_far_to_trust_the_prediction() -> None:
    args = ["evaluate", "--model", "llama2-70b", "--phase", "decode", "--batch", "16", "--context", "2048"]
    inside = run_json(*args, "--platform", "dgx-h100", "--tp", "8")
    assert inside["calibrated"] is True and 0 < inside["expected_error_pct"] < 30  # type: ignore[index]
    beyond = run_json(*args, "--platform", "dgx-h100x2", "--tp", "16")  # TP 16 was never measured
    assert beyond["calibrated"] is False and beyond["expected_error_pct"] is not None  # type: ignore[index]
    hand_set = run_json(*args, "--platform", "dgx-h100:profile=h100-default", "--tp", "8")
    assert hand_set["calibrated"] is False and hand_set["expected_error_pct"] is None  # type: ignore[index]
