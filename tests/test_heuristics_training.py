"""The training heuristics of issue 18: Megatron-Core's defaults, torchtitan's FSDP2 and DeepSpeed ZeRO-3.

The rules are checked by the plans they try, in order (a callback records each), so the tests hold
whatever the cost model predicts: a memory limit no plan meets makes a rule walk all its fallbacks.
"""

from __future__ import annotations

import pytest

from paratune.costmodel import Plan
from paratune.search import Limits, Problem, Progress, make_tuner, tune, tuner_entries
from paratune.search._heuristics import interleave_degree

NEW = ("fsdp", "deepspeed-zero3")
NOTHING_FITS = Limits(memory_gib=1e-6)


def _tried(problem: Problem, name: str) -> tuple[list[Plan], list[str]]:
    """The plans the rule evaluated, in order, and its notes."""
    plans: list[Plan] = []

    def record(progress: Progress) -> None:
        plans.append(progress.last.plan)

    result = tune(problem, name, callback=record)
    return plans, result.notes


def _ac(plan: Plan) -> str:
    """The activation checkpointing of a plan: none, selective or full (every stage alike here)."""
    if all(s.recompute for s in plan.stages):
        return "full"
    assert not any(s.recompute for s in plan.stages)
    return "selective" if plan.selective_recompute else "none"


def test_new_heuristics_are_registered_deterministic_and_cite_their_source() -> None:
    entries = {e.name: e for e in tuner_entries()}
    for name in NEW:
        assert entries[name].family == "heuristic"
        tuner = make_tuner(name)
        assert not tuner.stochastic and not tuner.exact
        assert tuner.__doc__ and "Source" in tuner.__doc__ and "Rule" in tuner.__doc__


@pytest.mark.parametrize(
    ("layers", "pp", "micro_batches", "expected"),
    [
        (80, 4, 16, 5),  # NeMo's Llama-3 70B: 20 layers per stage, 5 chunks of 4
        (96, 8, 32, 3),  # 12 per stage: 3 chunks of 4
        (8, 2, 8, 2),  # 4 per stage: no chunk of 4 with 2 chunks, so 2 chunks of 2
        (4, 2, 8, 1),  # 2 per stage: chunks of 1 layer are not worth it
        (80, 4, 6, 1),  # Megatron-Core: micro-batches must be a multiple of PP
        (81, 4, 16, 1),  # layers do not split evenly over the stages
        (80, 1, 16, 1),  # no pipeline
    ],
)
def test_interleave_degree(layers: int, pp: int, micro_batches: int, expected: int) -> None:
    assert interleave_degree(layers, pp, micro_batches) == expected


def test_megatron_training_uses_megatron_core_defaults() -> None:
    p = Problem("llama2-7b:layers=16", "dgx-a100x2", phase="train", batch=16, seq=256)
    plans, _ = _tried(p, "megatron")
    plan = plans[0]
    assert (plan.stages[0].tp, plan.pp, plan.replicas, plan.micro_batches) == (8, 2, 1, 8)
    assert (plan.zero, plan.sequence_parallel, plan.overlap, plan.tp_overlap) == (1, True, True, False)
    assert plan.virtual_stages == 2 and len(plan.stages) == 4  # 8 layers per stage: 2 chunks of 4
    assert [s.layers for s in plan.stages] == [(0, 3), (4, 7), (8, 11), (12, 15)]
    assert plan.stages[2].devices == plan.stages[0].devices == tuple(range(8))
    assert _ac(plan) == "none" and not plan.problems(p.graph("layer"), p.resolved_platform)
    assert tune(p, "megatron").best_plan == plan  # it fits: the rule's first plan is its answer
    bare = Plan.uniform(16, tp=8, pp=2, micro_batches=8)  # the 2021 recipe: same layout, no techniques
    assert p.score(plan).metrics.max_memory_bytes < 0.98 * p.score(bare).metrics.max_memory_bytes  # SP's split


def test_megatron_training_falls_back_selective_then_full_then_more_stages() -> None:
    p = Problem("llama2-7b:layers=8,heads=4,kv_heads=4,hidden=512", "dgx-a100x2", phase="train", batch=16, seq=128)
    plans, notes = _tried(p.with_(limits=NOTHING_FITS), "megatron")
    # TP 4 (the heads) x PP 2 (the nodes), then PP 3 and 4 while 4 x PP <= 16 devices; three fallbacks each.
    assert [(pl.pp, _ac(pl)) for pl in plans] == [(pp, ac) for pp in (2, 3, 4) for ac in ("none", "selective", "full")]
    assert all(pl.zero == 1 and pl.sequence_parallel and pl.overlap for pl in plans)
    assert [pl.replicas for pl in plans[::3]] == [2, 1, 1]  # 8 of 16 devices at PP 2: a second replica
    assert [pl.virtual_stages for pl in plans[::3]] == [2, 1, 1]  # 8 layers: 2 chunks of 2 at PP 2; none at 3, 4
    assert len(notes) == 1 and notes[0].startswith("megatron: ") and "full recomputation" in notes[0]


def test_megatron_without_tp_leaves_sequence_parallel_off_and_inference_untouched() -> None:
    train = Problem("llama2-7b:layers=4,heads=1,kv_heads=1,hidden=256", "dgx-a100", phase="train", batch=8, seq=128)
    plan = _tried(train, "megatron")[0][0]
    assert plan.stages[0].tp == 1 and not plan.sequence_parallel and plan.zero == 1 and plan.replicas == 8
    decode = Problem("llama2-7b:layers=4", "dgx-a100x2", phase="decode", batch=8, context=256)
    plans, _ = _tried(decode, "megatron")
    assert all(pl.techniques() == {} and not any(s.recompute for s in pl.stages) for pl in plans)


def test_fsdp_shards_everything_hybrid_across_nodes_first_tp_only_when_needed() -> None:
    p = Problem("llama2-7b:layers=4", "dgx-a100x2", phase="train", batch=64, seq=256)
    first = _tried(p, "fsdp")[0][0]
    assert (first.stages[0].tp, first.pp, first.replicas, first.micro_batches) == (1, 1, 16, 1)
    assert (first.zero, first.shard_group, first.overlap, first.sequence_parallel) == (3, 8, True, False)
    plans, notes = _tried(p.with_(limits=NOTHING_FITS), "fsdp")
    steps = [(pl.stages[0].tp, pl.shard_group, _ac(pl), pl.micro_batches) for pl in plans]
    fallbacks = [("none", 1), ("selective", 1), ("full", 1), ("full", 4)]  # 4 sequences per rank at TP 1
    assert steps[:8] == [(1, g, ac, m) for ac, m in fallbacks for g in (8, 0)]  # hybrid, then over all ranks
    assert steps[8] == (2, 4, "none", 1) and plans[8].sequence_parallel  # TP 2: 8 ranks, hybrid over 4
    assert {pl.stages[0].tp for pl in plans} == {1, 2, 4, 8} and all(pl.pp == 1 and pl.zero == 3 for pl in plans)
    assert notes and notes[0].startswith("fsdp: ")
    one_node = Problem("llama2-7b:layers=4", "dgx-a100", phase="train", batch=64, seq=256)
    assert _tried(one_node, "fsdp")[0][0].shard_group == 0  # one node: nothing to replicate across


def test_deepspeed_zero3_is_pure_data_parallel_with_full_checkpointing_only() -> None:
    p = Problem("llama2-7b:layers=4", "dgx-a100x2", phase="train", batch=32, seq=256)
    plans, notes = _tried(p.with_(limits=NOTHING_FITS), "deepspeed-zero3")
    assert [(_ac(pl), pl.micro_batches) for pl in plans] == [("none", 1), ("full", 1), ("full", 2)]
    for pl in plans:
        assert (pl.stages[0].tp, pl.pp, pl.replicas, pl.zero, pl.shard_group, pl.overlap) == (1, 1, 16, 3, 0, True)
    assert notes and "deepspeed-zero3" in notes[0] and "zero 3" in notes[0]


@pytest.mark.parametrize("name", NEW)
def test_training_recipes_say_so_on_an_inference_problem(name: str) -> None:
    p = Problem("llama2-7b:layers=4", "dgx-a100", phase="decode", batch=8, context=256)
    plans, notes = _tried(p, name)
    assert plans == [] and len(notes) == 1 and "training recipe" in notes[0] and "decode" in notes[0]
