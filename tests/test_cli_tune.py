"""``paratune tune`` and ``paratune tuners list``: the JSON contract, the table, the plan file, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paratune.cli import app

runner = CliRunner()
SMALL = ["--model", "llama2-7b:layers=8", "--platform", "dgx-a100", "--phase", "decode", "--batch", "8"]


def test_tuners_list_names_every_family() -> None:
    result = runner.invoke(app, ["tuners", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    families = {r["family"] for r in rows}
    assert {"heuristic", "exact", "optuna"} <= families
    assert {"dp", "enumerate", "optuna-tpe", "optuna-nsga2", "megatron"} <= {r["name"] for r in rows}


def test_tune_json_contract_and_plan_round_trip(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    result = runner.invoke(
        app, ["tune", "--tuner", "optuna-random", *SMALL, "--budget", "20", "-o", str(plan_file), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("best_plan", "best_metrics", "objective_value", "evaluations", "wall_s", "optimum_value", "gap"):
        assert key in data
    assert data["evaluations"] == 20 and data["optimum_source"] == "dp"
    assert data["gap"] >= -1e-9  # no tuner beats the certified optimum
    assert data["launch"]["megatron-lm"]["command"] is None  # inference plan
    again = runner.invoke(app, ["evaluate", *SMALL, "--plan", str(plan_file), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["latency_s"] == data["objective_value"]


def test_tune_dp_is_its_own_optimum() -> None:
    result = runner.invoke(app, ["tune", *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["tuner"] == "dp" and data["optimal"] and data["gap"] == 0.0


def test_tune_user_errors_exit_2() -> None:
    cases = [
        (["tune", "--tuner", "nope", *SMALL], "unknown tuner 'nope'; allowed: megatron"),
        (["tune", *SMALL, "--objective", "ttft"], "does not apply to phase 'decode'"),
        (["tune", "--platform", "dgx-a100"], "--model and --platform are required"),
        (["tune", "--tuner", "dp", *SMALL, "--storage", "sqlite:///x.db"], "--storage applies to the optuna-*"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_tune_reports_no_feasible_plan_with_exit_1() -> None:
    args = ["tune", *SMALL, "--memory-gib", "0.01", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["best_plan"] is None and data["notes"]


TRAIN = ["--model", "llama2-7b:layers=8", "--platform", "dgx-a100", "--phase", "train", "--batch", "8", "--seq", "512"]


def _row(output: str, label: str) -> str:
    """The text of the table row named ``label`` ('' when the table has none)."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    return ""


def test_tune_table_shows_the_plan_techniques_and_its_memory_by_term() -> None:
    args = ["tune", "--tuner", "megatron", *TRAIN, "--no-optimum"]
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    plan, metrics = data["best_plan"], data["best_metrics"]
    assert (plan["zero"], plan["sequence_parallel"], plan["overlap"]) == (1, True, True)  # Megatron's defaults
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _row(result.output, "techniques") == "zero 1, sequence_parallel True, overlap True"
    terms = _row(result.output, "memory by term")
    assert terms.endswith("GiB (busiest device)"), result.output
    shown = dict(part.split(" ") for part in terms.removesuffix(" GiB (busiest device)").split(", "))
    expected = {k: v / 2**30 for k, v in metrics["memory_breakdown"].items() if v}
    assert shown.keys() == expected.keys()
    for key, value in expected.items():
        assert float(shown[key]) == pytest.approx(value, abs=0.006), key
    assert sum(expected.values()) == pytest.approx(max(metrics["peak_memory_bytes"]) / 2**30, rel=1e-9)


def test_tune_table_shows_no_techniques_row_for_a_plan_without_them() -> None:
    result = runner.invoke(app, ["tune", *SMALL])
    assert result.exit_code == 0, result.output
    assert _row(result.output, "techniques") == ""
    assert "kv_cache" in _row(result.output, "memory by term")  # a decode plan's memory: weights and the KV cache
