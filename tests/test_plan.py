"""Plans: JSON contract, round trip, validity checks that say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paratune.costmodel import Plan, Stage, get_platform
from paratune.graphs import build_graph, coarsen


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return build_graph("llama2-70b:layers=8", phase="decode", batch=8, seq=1, context=512)


def test_uniform_plan_and_json_contract(tmp_path: Path) -> None:
    plan = Plan.uniform(80, tp=4, pp=3, micro_batches=2, replicas=2)
    data = plan.to_dict()
    assert set(data) >= {"granularity", "micro_batches", "replicas", "stages"}
    assert [s["layers"] for s in data["stages"]] == [[0, 26], [27, 53], [54, 79]]
    assert data["stages"][1]["devices"] == [4, 5, 6, 7] and data["stages"][1]["tp"] == 4
    path = tmp_path / "plan.json"
    plan.save(path)
    assert json.loads(path.read_text()) == data
    assert Plan.load(path) == plan


def test_valid_plan_has_no_problems(graph) -> None:  # type: ignore[no-untyped-def]
    assert Plan.uniform(8, tp=8, pp=2).problems(graph, get_platform("dgx-h100x2")) == []


def test_problems_name_what_is_wrong(graph) -> None:  # type: ignore[no-untyped-def]
    one_node = get_platform("dgx-h100")
    assert any("does not divide the 64 attention heads" in p for p in Plan.uniform(8, tp=3).problems(graph, one_node))
    assert any("needs 16 devices" in p for p in Plan.uniform(8, tp=8, pp=2).problems(graph, one_node))
    reused = Plan((Stage(2, (0, 1), (0, 3)), Stage(2, (1, 2), (4, 7))))
    assert any("device 1 is already used by stage 0" in p for p in reused.problems(graph, one_node))
    gap = Plan((Stage(2, (0, 1), (0, 2)), Stage(2, (2, 3), (4, 7))))
    assert any("must start at 3" in p for p in gap.problems(graph, one_node))
    short = Plan((Stage(2, (0, 1), (0, 5)),))
    assert any("model has 8 layers" in p for p in short.problems(graph, one_node))
    assert any("must divide the batch" in p for p in Plan.uniform(8, micro_batches=3).problems(graph, one_node))
    with pytest.raises(ValueError, match="invalid plan: stage 0: TP degree 3"):
        Plan.uniform(8, tp=3).check(graph, one_node)


def test_task_plans(graph) -> None:  # type: ignore[no-untyped-def]
    coarse = coarsen(graph, "layer")
    ids = [t.id for t in coarse.tasks]
    plan = Plan((Stage(1, (0,), tasks=tuple(ids[:5])), Stage(1, (1,), tasks=tuple(ids[5:]))), granularity="layer")
    assert plan.problems(coarse, get_platform("dgx-h100")) == []
    missing = Plan((Stage(1, (0,), tasks=tuple(ids[:5])),), granularity="layer")
    assert any("not placed" in p for p in missing.problems(coarse, get_platform("dgx-h100")))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stages": []}, "field 'stages' must be a non-empty list"),
        ({"stages": [{"tp": 2, "devices": [0, 1]}]}, "exactly one of 'layers' and 'tasks'"),
        ({"stages": [{"tp": 2, "devices": "0,1", "layers": [0, 1]}]}, r"field 'stages\[0\].devices' must be a list"),
        ({"stages": [{"tp": 0, "devices": [], "layers": [0, 1]}]}, r"field 'stages\[0\].tp' must be >= 1"),
        ({"stages": [{"tp": 1, "devices": [0], "layers": [0, 1]}], "schedule": "zb"}, "allowed: 1f1b, gpipe"),
    ],
)
def test_plan_file_errors(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plan.from_dict(data, where="p.json")
