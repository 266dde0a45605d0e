"""Pipeline hops under sequence parallelism: each TP rank pair sends its shard, the pairs in parallel.

Megatron-Core shrinks the pipeline tensor's sequence by the TP size when SP is on
(``get_tensor_shapes``), so a hop moves 1/t of the boundary tensor per pair; between
stages of different TP degrees the smaller degree sets the shards. Both evaluators price
it so and still agree on the step.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, Stage, _analytic_train, get_platform
from paratune.costmodel._pricing import p2p_time, pair_link
from paratune.costmodel._simbuild import build_input
from paratune.graphs import build_graph, coarsen

PLATFORM = get_platform("dgx-h100x2")  # two nodes of 8: a stage per node puts the hop on the network


@cache
def _evaluators() -> tuple[AnalyticEvaluator, Simulator]:
    g = coarsen(build_graph("llama2-7b:layers=4", phase="train", batch=16, seq=256), "layer")
    return AnalyticEvaluator(g, PLATFORM), Simulator(g, PLATFORM)


def _analytic_hops(ev: AnalyticEvaluator, plan: Plan, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The hops the analytic evaluator's training path hands to the pipeline makespan.

    A plan without techniques takes the fast path, which gives the same numbers
    (tests/test_training_techniques.py); the general path is called directly to see its hops.
    """
    seen: list[list[float]] = []
    real = _analytic_train.training_makespan

    def spy(fwds: Any, backs: Any, hops: list[float], *args: Any, **kwargs: Any) -> Any:
        seen.append(list(hops))
        return real(fwds, backs, hops, *args, **kwargs)

    monkeypatch.setattr(_analytic_train, "training_makespan", spy)
    _analytic_train.evaluate_techniques(ev, plan)
    monkeypatch.undo()
    assert len(seen) == 1
    return seen[0]


def _sim_hops(sim: Simulator, plan: Plan) -> list[float]:
    """Seconds of each forward transfer (stage k -> k + 1) in the simulator's input."""
    chunk_of = sim.placement(plan)
    inp = build_input(sim, plan, chunk_of, 1.0 / (plan.replicas * plan.micro_batches * plan.cp)).inp
    hops = [0.0] * (len(plan.stages) - 1)
    for x, srcs in enumerate(inp.x_src):
        a, b = chunk_of[srcs[0]], chunk_of[inp.x_dst[x][0]]
        if b == a + 1:
            hops[a] += inp.x_dur[x]
    return hops


def _two_stages(tp0: int, tp1: int, **techniques: Any) -> Plan:
    """Layers 0-1 on the first node's first ``tp0`` devices, 2-3 on the second node's first ``tp1``."""
    stages = (Stage(tp0, tuple(range(tp0)), layers=(0, 1)), Stage(tp1, tuple(range(8, 8 + tp1)), layers=(2, 3)))
    return Plan(stages, micro_batches=2, **techniques)


@pytest.mark.parametrize(("tp0", "tp1"), [(8, 8), (2, 2), (4, 2), (2, 8)])
def test_sequence_parallel_hop_moves_one_shard_per_pair(tp0: int, tp1: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ev, sim = _evaluators()
    plain, sp = _two_stages(tp0, tp1), _two_stages(tp0, tp1, sequence_parallel=True)
    alpha, bw = pair_link(PLATFORM, plain.stages[0].devices, plain.stages[1].devices)
    whole = ev.cut[2] / plain.micro_batches  # the boundary tensor of one micro-batch
    shards = min(tp0, tp1)
    for hops in (_analytic_hops(ev, plain, monkeypatch), _sim_hops(sim, plain)):
        assert hops == pytest.approx([p2p_time(whole, alpha, bw)], rel=1e-12)
    for hops in (_analytic_hops(ev, sp, monkeypatch), _sim_hops(sim, sp)):
        assert hops == pytest.approx([p2p_time(whole / shards, alpha, bw)], rel=1e-12)
    # the bandwidth term shrinks by the shard count, the latency term stays
    assert (p2p_time(whole, alpha, bw) - alpha) / (_sim_hops(sim, sp)[0] - alpha) == pytest.approx(shards, rel=1e-9)


@pytest.mark.parametrize(("tp0", "tp1"), [(8, 8), (4, 2)])
@pytest.mark.parametrize("sp", [False, True])
def test_evaluators_agree_on_the_step_with_sharded_hops(tp0: int, tp1: int, sp: bool) -> None:
    ev, sim = _evaluators()
    for extra in ({}, {"virtual_stages": 2, "micro_batches": 4}):
        plan = _two_stages(tp0, tp1, sequence_parallel=sp)
        if extra:
            n = plan.stages
            plan = Plan(
                (
                    Stage(n[0].tp, n[0].devices, layers=(0, 0)), Stage(n[1].tp, n[1].devices, layers=(1, 1)),
                    Stage(n[0].tp, n[0].devices, layers=(2, 2)), Stage(n[1].tp, n[1].devices, layers=(3, 3)),
                ),
                sequence_parallel=sp, **extra,
            )  # fmt: skip
        a, s = ev.evaluate(plan), sim.evaluate(plan)
        assert a.feasible and s.feasible, (a.reason, s.reason)
        assert s.step_s == pytest.approx(a.step_s, rel=1e-6)


def test_sequence_parallel_shortens_a_hop_bound_step() -> None:
    """Across nodes at TP 8 the hop is a network transfer: sharding it makes the step shorter in both evaluators."""
    ev, sim = _evaluators()
    plain, sp = _two_stages(8, 8), _two_stages(8, 8, sequence_parallel=True)
    for evaluate in (ev.evaluate, sim.evaluate):
        a, b = evaluate(plain), evaluate(sp)
        assert b.breakdown["communication_s"] < a.breakdown["communication_s"]
        assert b.step_s < a.step_s
