"""Only user mistakes become one line and exit 2; a bug keeps its traceback; PARATUNE_DEBUG shows it always."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import paratune.search
from paratune.cli import app
from paratune.costmodel import Plan, Stage
from paratune.search import Problem

SMALL = ["--model", "llama2-7b:layers=4", "--platform", "dgx-a100", "--batch", "8", "--context", "512"]


def test_a_user_mistake_is_one_line_and_exit_2() -> None:
    res = CliRunner().invoke(app, ["tune", "--tuner", "dp", "--phase", "serve", *SMALL])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output


def test_a_programming_error_is_not_turned_into_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[object]:
        raise KeyError("a slip in the code")

    monkeypatch.setattr(paratune.search, "tuner_entries", broken)
    res = CliRunner().invoke(app, ["tuners", "list"])
    assert res.exit_code != 2
    assert isinstance(res.exception, KeyError) and "a slip in the code" in str(res.exception)


def test_paratune_debug_shows_the_traceback_of_a_user_mistake() -> None:
    cmd = [sys.executable, "-m", "paratune.cli", "tune", "--tuner", "nope", *SMALL]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PARATUNE_DEBUG": "0"})
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert "error: unknown tuner 'nope'" in quiet.stderr
    loud = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PARATUNE_DEBUG": "1"})
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert "ValueError: unknown tuner 'nope'" in loud.stderr


def test_a_graph_file_missing_a_field_is_a_user_mistake(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"format": "paratune.taskgraph", "version": 1, "meta": {}}))
    from paratune.graphs import TaskGraph

    with pytest.raises(ValueError, match=r"g\.json: "):
        TaskGraph.load(path)


def test_a_malformed_plan_is_infeasible_with_reasons_but_a_bug_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = Problem("llama2-7b:layers=4", "dgx-a100", phase="decode", batch=8, context=512)
    bad = Plan((Stage(tp="2", devices=(0, 1), layers=(0, 3)),))  # type: ignore[arg-type]
    for metrics in (problem.evaluate(bad), problem.simulator().evaluate(bad)):
        assert not metrics.feasible and "stage 0: tp must be an integer, got '2'" in metrics.reason
    short = Plan((Stage(tp=2, devices=(0, 1), layers=(0,)),))  # type: ignore[arg-type]
    assert "layers must be a pair" in problem.evaluate(short).reason

    def broken(*args: object, **kwargs: object) -> list[str]:
        raise KeyError("a slip in the code")

    monkeypatch.setattr(Plan, "problems", broken)
    invalid = Plan.uniform(4, tp=2, micro_batches=3)  # 3 does not divide the batch: the evaluators check it
    with pytest.raises(KeyError, match="a slip in the code"):
        problem.evaluate(invalid)
    with pytest.raises(KeyError, match="a slip in the code"):
        problem.simulator().evaluate(invalid)


def test_a_study_file_missing_fields_is_a_user_mistake(tmp_path: Path) -> None:
    (tmp_path / "study.json").write_text(json.dumps({"kind": "granularity", "version": 1}))
    res = CliRunner().invoke(app, ["study", "show", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "a granularity study without field(s) objective" in res.output
