"""Practitioners' heuristics: each gives the structure its docstring promises, and none crashes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from paratune.costmodel import Plan
from paratune.search import Limits, Problem, make_tuner, tune, tuner_entries
from paratune.search._heuristics import balanced_cuts, layer_flops

SMALL = "llama2-7b:layers=4"
HEURISTICS = ("megatron", "serving-default", "min-tp-replicas", "balanced-pp")


def _tps(plan: Plan) -> set[int]:
    return {s.tp for s in plan.stages}


def _peak(problem: Problem, plan: Plan) -> float:
    return problem.score(plan).metrics.max_memory_bytes


def test_heuristics_are_registered_deterministic_heuristics() -> None:
    entries = {e.name: e for e in tuner_entries()}
    for name in HEURISTICS:
        assert entries[name].family == "heuristic"
        tuner = make_tuner(name)
        assert tuner.family == "heuristic" and not tuner.stochastic and not tuner.exact
        assert tuner.__doc__ and "Source" in tuner.__doc__


def test_megatron_training_tp_per_node_pp_nodes_4pp_micro_batches() -> None:
    p = Problem(SMALL, "dgx-a100x2", phase="train", batch=16, seq=256)
    r = tune(p, "megatron")
    assert r.best_plan is not None and r.evaluations == 1
    plan = r.best_plan
    assert _tps(plan) == {8} and plan.pp == 2 and plan.micro_batches == 8 and plan.replicas == 1
    assert [s.layers for s in plan.stages] == [(0, 1), (2, 3)]


def test_megatron_reduces_tp_to_divide_heads_and_replicates_leftover_when_training() -> None:
    # 12 heads: TP 6 is the largest degree <= 8 GPUs per node that divides them; 12 of 16 GPUs used, no room
    # for a second replica.
    p = Problem("gpt2:layers=4", "dgx-a100x2", phase="train", batch=8, seq=128)
    plan = tune(p, "megatron").best_plan
    assert plan is not None and _tps(plan) == {6} and plan.pp == 2 and plan.micro_batches == 8
    p1 = Problem("llama2-7b:layers=4,heads=4,kv_heads=4,hidden=512", "dgx-a100x2", phase="train", batch=8, seq=128)
    plan = tune(p1, "megatron").best_plan  # 4 heads: TP 4 x PP 2 = 8 GPUs, so two data-parallel replicas
    assert plan is not None and _tps(plan) == {4} and plan.pp == 2 and plan.replicas == 2
    assert plan.micro_batches == 4  # 4 x PP = 8 clipped to the per-replica batch of 4


def test_megatron_inference_is_one_replica_pp_nodes() -> None:
    p = Problem(SMALL, "dgx-h100x2", phase="decode", batch=8, context=512)
    plan = tune(p, "megatron").best_plan
    assert plan is not None and _tps(plan) == {8} and plan.pp == 2 and plan.replicas == 1


def test_serving_default_largest_tp_and_pp_only_when_one_node_is_not_enough() -> None:
    p = Problem("llama2-7b", "dgx-a100x2", phase="decode", batch=8, context=1024)
    plan = tune(p, "serving-default").best_plan
    assert plan is not None and _tps(plan) == {8} and plan.pp == 1 and plan.replicas == 1
    # Half the one-node peak as the memory limit: one node no longer holds it, two do.
    one_node = _peak(p, plan)
    tight = p.with_(limits=Limits(memory_gib=0.6 * one_node / 1024**3))
    r = tune(tight, "serving-default")
    assert r.best_plan is not None and _tps(r.best_plan) == {8} and r.best_plan.pp == 2
    assert r.evaluations == 2  # the one-node probe, then two nodes


def test_min_tp_replicas_smallest_tp_that_fits_then_replicas() -> None:
    p = Problem("llama2-7b", "dgx-a100", phase="decode", batch=16, context=1024, objective="throughput")
    plan = tune(p, "min-tp-replicas").best_plan
    assert plan is not None and _tps(plan) == {1} and plan.pp == 1 and plan.replicas == 8
    # A limit between the TP-1 and TP-2 peaks: TP 2 is the smallest that fits, four copies fill the node.
    tp1 = _peak(p, plan)
    tp2 = _peak(p, Plan.uniform(32, tp=2, replicas=4))
    tight = p.with_(limits=Limits(memory_gib=(tp1 + tp2) / 2 / 1024**3))
    r = tune(tight, "min-tp-replicas")
    assert r.best_plan is not None and _tps(r.best_plan) == {2} and r.best_plan.pp == 1
    assert r.best_plan.replicas == 4


def test_min_tp_replicas_replicas_divide_the_batch() -> None:
    p = Problem(SMALL, "dgx-a100", phase="decode", batch=6, context=256)
    plan = tune(p, "min-tp-replicas").best_plan
    assert plan is not None and plan.replicas == 6 and _tps(plan) == {1}


def test_balanced_cuts_is_the_exact_min_max_partition() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(1, 8))
        flops = [float(x) for x in rng.integers(1, 20, size=n)]
        for pp in range(1, n + 1):
            cuts = balanced_cuts(flops, pp)
            assert cuts[0][0] == 0 and cuts[-1][1] == n - 1 and len(cuts) == pp
            got = max(sum(flops[a : b + 1]) for a, b in cuts)
            best = min(
                max(sum(flops[a:b]) for a, b in itertools.pairwise((0, *c, n)))
                for c in itertools.combinations(range(1, n), pp - 1)
            )
            assert got == best
    with pytest.raises(ValueError, match=r"pp must be in 1\.\.3"):
        balanced_cuts([1.0, 2.0, 3.0], 4)


def test_balanced_pp_stages_balanced_within_one_layer_and_best_of_pairs() -> None:
    p = Problem("llama2-7b:layers=8", "dgx-a100", phase="prefill", batch=4, seq=512)
    r = tune(p, "balanced-pp")
    assert r.best_plan is not None and len(_tps(r.best_plan)) == 1
    # every (tp, pp) pair with tp x pp <= 8 was evaluated: 8 + 4 + 2 + 1 (pp capped at 8 layers)
    assert r.evaluations == 15
    flops = layer_flops(p)
    assert sum(flops) == pytest.approx(p.graph("layer").flops)
    for pp in range(1, 9):
        loads = [sum(flops[a : b + 1]) for a, b in balanced_cuts(flops, pp)]
        assert max(loads) <= sum(flops) / pp + max(flops) + 1e-6 * sum(flops)
        assert max(loads) - min(loads) <= max(flops) + 1e-6 * sum(flops)
    # the answer is the best feasible of what it evaluated (nothing else it tried is better)
    assert r.history[-1].best == r.objective_value


@pytest.mark.parametrize("name", HEURISTICS)
def test_heuristics_never_crash_on_infeasible_problems(name: str) -> None:
    p = Problem(SMALL, "dgx-a100x2", phase="train", batch=8, seq=256, limits=Limits(memory_gib=0.01))
    r = tune(p, name)
    assert r.best_plan is None and r.objective_value is None and r.evaluations >= 1
    assert r.notes and "does not fit" in r.notes[0] and "GiB" in r.notes[0]


@pytest.mark.parametrize("name", HEURISTICS)
def test_heuristics_report_a_missed_slo(name: str) -> None:
    p = Problem(SMALL, "dgx-a100", phase="decode", batch=8, context=256, limits=Limits(tbt_ms=1e-6))
    r = tune(p, name)
    assert r.best_plan is None and r.notes
    assert "TBT" in r.notes[0] or "meets the limits" in r.notes[0]


def test_heuristics_respect_the_budget_and_are_deterministic() -> None:
    p = Problem(SMALL, "dgx-a100", phase="decode", batch=8, context=256)
    r = tune(p, "balanced-pp", budget=3)
    assert r.evaluations == 3 and any("budget" in n for n in r.notes)
    for name in HEURISTICS:
        a, b = tune(p, name, seed=1), tune(p, name, seed=2)
        assert a.best_plan == b.best_plan and a.objective_value == b.objective_value
