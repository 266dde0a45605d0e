"""TaskGraph IR: JSON round trip, coarsening conserves totals and cut bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from paratune.graphs import TaskGraph, build_graph, coarsen, parse_granularity

GRANULARITIES = ["sublayer", "layer", "layers:3", "layers:32"]


@pytest.fixture(scope="module", params=["prefill", "decode", "train"])
def graph(request: pytest.FixtureRequest) -> TaskGraph:
    return build_graph("mixtral-8x7b:layers=5", phase=request.param, batch=2, seq=64, context=64)


def test_json_round_trip_is_lossless(graph: TaskGraph, tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    graph.save(path)
    loaded = TaskGraph.load(path)
    assert loaded.to_dict() == graph.to_dict()
    assert [t.id for t in loaded.tasks] == [t.id for t in graph.tasks]
    assert loaded.tasks == graph.tasks


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_coarsening_conserves_totals_exactly(graph: TaskGraph, granularity: str) -> None:
    coarse = coarsen(graph, granularity)
    assert coarse.num_tasks < graph.num_tasks
    assert coarse.flops == pytest.approx(graph.flops, rel=1e-12)
    assert coarse.param_bytes == pytest.approx(graph.param_bytes, rel=1e-12)
    assert coarse.num_ops == graph.num_ops
    assert coarse.is_layered
    assert coarse.meta.granularity == granularity


def test_coarse_edges_carry_bytes_crossing_the_cut(graph: TaskGraph) -> None:
    coarse = coarsen(graph, "layer")
    owner = {op.name: task.id for task in coarse.tasks for op in task.ops}
    crossing: dict[tuple[str, str], float] = {}
    for u, v, b in graph.edges():
        cu, cv = owner[graph.task(u).ops[0].name], owner[graph.task(v).ops[0].name]
        if cu != cv:
            crossing[(cu, cv)] = crossing.get((cu, cv), 0.0) + b
    assert {(u, v): b for u, v, b in coarse.edges()} == pytest.approx(crossing)


def test_layer_granularity_counts() -> None:
    g = build_graph("llama2-7b", phase="prefill", batch=1, seq=128)
    assert coarsen(g, "layer").num_tasks == 32 + 2
    assert coarsen(g, "sublayer").num_tasks == 64 + 2
    assert coarsen(g, "layers:8").num_tasks == 4 + 2
    assert coarsen(g, "layers:5").num_tasks == 7 + 2  # the last group holds 2 layers


def test_bad_granularity_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"granularity 'layers:0'"):
        parse_granularity("layers:0")
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"x\.json: not a paratune task graph"):
        TaskGraph.load(path)
