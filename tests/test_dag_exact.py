"""dag-exact: the branch and bound equals brute force over the same placement space, and certifies it.

The brute force here is written independently of the solver: every ordered tuple of
TP degrees packed from device 0 with no group across a node, every surjective
task -> group map, each plan priced by ``Problem.score`` (the simulator).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from paratune.costmodel import Plan, Stage, get_platform
from paratune.graphs import GraphMeta, Op, Task, TaskGraph
from paratune.search import Limits, Problem, make_tuner
from paratune.search._dag_exact import placement_layouts

RTOL = 1e-9


def _layouts(problem: Problem, n_tasks: int) -> list[tuple[int, ...]]:
    tps, n = problem.tp_degrees(), problem.max_devices
    per_node = problem.resolved_platform.devices_per_node
    out = []
    for k in range(1, min(n_tasks, n) + 1):
        for tps_k in itertools.product(tps, repeat=k):
            firsts = np.cumsum((0, *tps_k))
            if firsts[-1] > n:
                continue
            if all(f // per_node == (f + t - 1) // per_node for f, t in zip(firsts, tps_k, strict=False)):
                out.append(tps_k)
    return out


def _brute(problem: Problem) -> tuple[float | None, set[tuple[float, ...]]]:
    """Best feasible value and the Pareto front's values over every plan of the space."""
    graph = problem.graph()
    ids = [t.id for t in graph.tasks]
    obj = problem.resolved_objective
    best: float | None = None
    feasible: list[tuple[float, ...]] = []
    for tps in _layouts(problem, len(ids)):
        devs, first = [], 0
        for t in tps:
            devs.append(tuple(range(first, first + t)))
            first += t
        for assign in itertools.product(range(len(tps)), repeat=len(ids)):
            if len(set(assign)) < len(tps):
                continue
            stages = tuple(
                Stage(t, d, tasks=tuple(i for i, a in zip(ids, assign, strict=True) if a == g))
                for g, (t, d) in enumerate(zip(tps, devs, strict=True))
            )
            ev = problem.score(Plan(stages, granularity=problem.granularity))
            if not ev.feasible:
                continue
            feasible.append(ev.values)
            if best is None or obj.better(ev.value, best):
                best = ev.value
    front = {v for v in feasible if not any(_dominates(w, v) for w in feasible)} if obj.multi else set()
    return best, front


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def _random_graph(rng: np.random.Generator, n: int, phase: str) -> TaskGraph:
    """A random DAG of ``n`` one-op tasks: matmuls of random sizes, sharded by column, row or not at all."""
    decode = phase == "decode"
    meta = GraphMeta(
        model="random-dag", phase=phase, batch=2, seq=1 if decode else 64, context=64 if decode else 0,
        heads=4, hidden=1, source="toy",
    )  # fmt: skip
    graph = TaskGraph(meta)
    outs = []
    for i in range(n):
        shard = str(rng.choice(["column", "row", "replicated"]))
        out = float(10 ** rng.uniform(5, 7.5))
        nbytes = float(10 ** rng.uniform(6, 8.5))
        op = Op(
            name=f"t{i}", kind="matmul", flops=float(10 ** rng.uniform(9, 12)), bytes=nbytes,
            weight_bytes=nbytes / 2, param_bytes=nbytes / 2, output_bytes=out,
            allreduce_bytes=out if shard == "row" else 0.0, shard=shard,
            kv_bytes_per_token=float(10 ** rng.uniform(3, 5)) if decode else 0.0,
        )  # fmt: skip
        graph.add_task(Task.from_op(op, layer=0, block="toy", scope=op.name))
        outs.append(out)
    for v in range(1, n):
        preds = [u for u in range(v) if rng.random() < 0.4]
        if not preds and rng.random() < 0.8:
            preds = [int(rng.integers(v))]
        for u in preds:
            graph.add_edge(f"t{u}", f"t{v}", outs[u] * float(rng.uniform(0.5, 1.0)))
    return graph


PLATFORMS = (
    "dgx-a100:devices_per_node=2",
    "dgx-a100:devices_per_node=4",
    "dgx-a100:nodes=2,devices_per_node=2",
    "mesh:rows=2,cols=2",
)
OBJECTIVES = {"prefill": ("ttft", "throughput", "ttft+memory"), "decode": ("tbt", "throughput", "tbt+memory")}


def _check(problem: Problem) -> None:
    result = make_tuner("dag-exact").tune(problem)
    best, front = _brute(problem)
    assert best is not None, "the instance should have a feasible plan"
    assert result.optimal, result.notes
    assert result.objective_value == pytest.approx(best, rel=RTOL)
    if problem.resolved_objective.multi:
        got = sorted(v for _, v in result.pareto)
        want = sorted(front)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, rel=RTOL)


@pytest.mark.parametrize("case", range(12))
def test_random_dags_match_brute_force(case: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(1000 + case)
    phase = ("prefill", "decode")[case % 2]
    graph = _random_graph(rng, int(rng.integers(3, 6)), phase)
    path = tmp_path / "g.json"
    graph.save(path)
    objective = OBJECTIVES[phase][(case // 2) % 3]
    platform = PLATFORMS[case % len(PLATFORMS)]
    cap = min(4, get_platform(platform).num_devices)  # a cap above the platform's devices is refused
    # Some cases get a memory cap below the graph's static memory, so placements must spread it.
    kv = sum(t.ops[0].kv_bytes_per_token for t in graph.tasks) * graph.meta.batch * (graph.meta.context + 1)
    memory = float(rng.uniform(0.3, 1.0)) * (graph.param_bytes + kv) / 1024**3 if case % 3 == 0 else None
    problem = Problem(
        str(path), platform, phase=phase, objective=objective, granularity="op",
        limits=Limits(memory_gib=memory, max_devices=cap),
    )  # fmt: skip
    if objective == "throughput":  # throughput under a latency SLO a little above one widest TP group's
        tp = max(problem.tp_degrees())
        one = Plan((Stage(tp, tuple(range(tp)), tasks=tuple(t.id for t in graph.tasks)),), granularity="op")
        ev = problem.score(one)
        if ev.feasible:
            slo = 1e3 * ev.metrics.latency_s * float(rng.uniform(1.0, 1.3))
            key = "tbt_ms" if phase == "decode" else "ttft_ms"
            problem = problem.with_(limits=Limits(memory_gib=memory, max_devices=cap, **{key: slo}))
    _check(problem)


@pytest.mark.parametrize(
    ("phase", "objective"), [("prefill", "ttft"), ("decode", "tbt"), ("prefill", "throughput"), ("train", "step")]
)
def test_zoo_graph_matches_brute_force(phase: str, objective: str) -> None:
    model = "mixtral-8x7b:layers=1,hidden=256,heads=4,kv_heads=4,ffn=512,vocab=1024"
    gran = "layer" if phase == "train" else "sublayer"
    platform = "dgx-a100:devices_per_node=2"
    problem = Problem(model, platform, phase=phase, objective=objective, batch=2, seq=64, granularity=gran)
    _check(problem)


def _diamond(shard: str) -> TaskGraph:
    """``a -> (b, c) -> d`` with two heavy middle branches of the given TP sharding (like two experts)."""
    graph = TaskGraph(GraphMeta(model="diamond", phase="prefill", batch=2, seq=64, heads=2, hidden=1, source="toy"))
    for name, flops in (("a", 1e10), ("b", 2e13), ("c", 2e13), ("d", 1e10)):
        op = Op(name=name, kind="matmul", flops=flops, bytes=4e6, weight_bytes=2e6, param_bytes=2e6,
                output_bytes=1e6, shard=shard)  # fmt: skip
        graph.add_task(Task.from_op(op, layer=0, block="toy", scope=name))
    for u, v in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")):
        graph.add_edge(u, v, 1e6)
    return graph


def test_branches_on_separate_groups_beat_one_group(tmp_path: Path) -> None:
    # Two heavy branches that TP cannot split (replicated ops): one group runs them one after the
    # other whatever its TP degree, two single-device groups run them at once.
    path = tmp_path / "diamond.json"
    _diamond("replicated").save(path)
    problem = Problem(str(path), "dgx-a100:devices_per_node=2", phase="prefill", granularity="op")
    result = make_tuner("dag-exact").tune(problem)
    assert result.optimal and result.best_plan is not None
    plan = result.best_plan
    owner = {t: s for s, st in enumerate(plan.stages) for t in st.tasks or ()}
    assert plan.pp == 2 and owner["b"] != owner["c"]
    for tp in (1, 2):
        one = problem.score(Plan((Stage(tp, tuple(range(tp)), tasks=("a", "b", "c", "d")),), granularity="op"))
        assert result.objective_value < one.value * 0.6


def test_too_large_instance_is_refused() -> None:
    problem = Problem("llama2-7b:layers=2", "dgx-a100", phase="prefill", granularity="op", batch=1, seq=64)
    with pytest.raises(ValueError, match=r"tasks, more than the limit of 16.*coarser granularity.*placement"):
        make_tuner("dag-exact").tune(problem)
    big = Problem("llama2-7b:layers=1", "dgx-a100x2", phase="prefill", granularity="sublayer", batch=1, seq=64)
    with pytest.raises(ValueError, match=r"16 devices, more than the limit of 8.*max_devices"):
        make_tuner("dag-exact").tune(big)


def test_callback_stop_is_not_certified(tmp_path: Path) -> None:
    graph = _random_graph(np.random.default_rng(7), 6, "prefill")
    path = tmp_path / "g.json"
    graph.save(path)
    problem = Problem(
        str(path), "dgx-a100:devices_per_node=4", phase="prefill", objective="ttft+memory", granularity="op"
    )
    result = make_tuner("dag-exact").tune(problem, callback=lambda progress: progress.evaluations < 2)
    assert not result.optimal and result.stopped_early
    assert any("not certified" in n for n in result.notes)


def test_layout_menu() -> None:
    # Two nodes of two: a TP-2 group may start on device 0 or 2, never on 1 (across the nodes).
    layouts = placement_layouts([1, 2], 4, 2, 4)
    assert (2, 2) in layouts and (1, 1, 2) in layouts
    assert (1, 2) not in layouts and (1, 2, 1) not in layouts
    assert all(sum(t) <= 4 for t in layouts)
