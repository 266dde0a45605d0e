"""The analytic evaluator prices each training technique as the shared conventions say (issue 18)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from paratune.costmodel import AnalyticEvaluator, Plan, PlanBatch, Stage, get_platform
from paratune.costmodel._analytic_eval import evaluate_plan
from paratune.costmodel._analytic_train import evaluate_techniques
from paratune.costmodel._pricing import allgather_time, allreduce_time, alltoall_time, p2p_time
from paratune.costmodel._techniques import gradient_sync, interleaved_in_flight, model_state, zero3_slot_traffic
from paratune.graphs import DTYPE_BYTES, build_graph, coarsen

TERMS = ("weights", "gradients", "optimizer_state", "activations", "kv_cache", "buffers")


@cache
def _ev(model: str = "llama2-7b", platform: str = "dgx-h100x2", batch: int = 16, seq: int = 1024) -> AnalyticEvaluator:
    return AnalyticEvaluator(
        coarsen(build_graph(model, phase="train", batch=batch, seq=seq), "layer"), get_platform(platform)
    )


def _params(ev: AnalyticEvaluator) -> float:
    """Parameters of the whole model, from the graph (not from the evaluator's tables)."""
    ops = [op for task in ev.graph.tasks if task.step == "forward" for op in task.ops]
    return sum(op.param_bytes for op in ops) / DTYPE_BYTES[ev.graph.meta.dtype]


# -- defaults: exactly today's numbers ---------------------------------------------------


@pytest.mark.parametrize("model", ["llama2-7b", "mixtral-8x7b"])
def test_general_path_gives_the_fast_path_numbers_for_plain_plans(model: str) -> None:
    ev = _ev(model)
    sample = ev.random_plans(60, np.random.default_rng(3))
    for i in range(len(sample)):
        plan = sample.to_plan(i)
        fast, general = evaluate_plan(ev, plan), evaluate_techniques(ev, plan)
        assert general.step_s == pytest.approx(fast.step_s, rel=1e-12)
        assert general.max_memory_bytes == pytest.approx(fast.max_memory_bytes, rel=1e-12)
        for key in ("compute_s", "communication_s", "idle_s"):
            assert general.breakdown[key] == pytest.approx(fast.breakdown[key], rel=1e-9, abs=1e-12)
        for key in TERMS:
            assert general.memory_breakdown[key] == pytest.approx(fast.memory_breakdown[key], rel=1e-9, abs=1.0)


@pytest.mark.parametrize("phase", ["train", "prefill", "decode"])
def test_memory_breakdown_sums_to_the_most_loaded_device(phase: str) -> None:
    g = coarsen(
        build_graph("llama2-7b", phase=phase, batch=8, seq=512 if phase != "decode" else 1, context=512), "layer"
    )
    ev = AnalyticEvaluator(g, get_platform("dgx-h100"))
    m = ev.evaluate(Plan.uniform(32, tp=2, pp=2, micro_batches=2))
    assert set(m.memory_breakdown) == set(TERMS)
    assert sum(m.memory_breakdown.values()) == pytest.approx(m.max_memory_bytes, rel=1e-9)
    if phase == "train":
        assert m.memory_breakdown["optimizer_state"] == pytest.approx(6 * m.memory_breakdown["weights"], rel=1e-9)
        assert m.memory_breakdown["kv_cache"] == 0.0
    else:
        assert m.memory_breakdown["gradients"] == 0.0 and m.memory_breakdown["kv_cache"] > 0.0


# -- ZeRO --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zero", "expected"),
    [(0, lambda n: 16.0), (1, lambda n: 4.0 + 12.0 / n), (2, lambda n: 2.0 + 14.0 / n), (3, lambda n: 16.0 / n)],
)
def test_zero_model_state_per_device_matches_the_zero_paper(zero: int, expected: object) -> None:
    ev = _ev()
    psi = _params(ev)
    m = ev.evaluate(Plan.uniform(32, replicas=8, micro_batches=2, zero=zero))
    mb = m.memory_breakdown
    state = mb["weights"] + mb["gradients"] + mb["optimizer_state"]
    assert state == pytest.approx(expected(8) * psi, rel=0.01)  # type: ignore[operator]
    if zero == 3:  # one layer's gathered weights as a buffer: 2 bytes x a layer's parameters
        layer = 2.0 * psi / 32
        plain = evaluate_plan(ev, Plan.uniform(32, replicas=8, micro_batches=2)).memory_breakdown["buffers"]
        assert layer * 0.8 < mb["buffers"] - plain < layer * 1.5


def test_hybrid_sharding_shards_inside_the_group_only() -> None:
    ev = _ev()
    psi = _params(ev)
    m = ev.evaluate(Plan.uniform(32, replicas=16, zero=1, shard_group=8))
    mb = m.memory_breakdown
    assert mb["optimizer_state"] == pytest.approx(12.0 * psi / 8, rel=0.01)
    full = ev.evaluate(Plan.uniform(32, replicas=16, zero=1))
    assert full.memory_breakdown["optimizer_state"] == pytest.approx(12.0 * psi / 16, rel=0.01)
    # the all-reduce across the two nodes moves 1/8 of the gradients: less time where the network is slow even
    # for a full-node group's 8 rails (dgx-h100's 8 NDR rails give the full group's rings 320 GB/s: no saving)
    slow = _ev(platform="dgx-h100x2:links.inter.bandwidth_gbs=5")
    hybrid = slow.evaluate(Plan.uniform(32, replicas=16, zero=1, shard_group=8)).breakdown["communication_s"]
    assert hybrid < slow.evaluate(Plan.uniform(32, replicas=16, zero=1)).breakdown["communication_s"]


def test_zero_traffic_zero1_equals_allreduce_zero3_is_one_and_a_half_times() -> None:
    ev = _ev()
    comm = {z: ev.evaluate(Plan.uniform(32, replicas=8, zero=z)).breakdown["communication_s"] for z in (0, 1, 2, 3)}
    assert comm[0] > 0.0
    assert comm[1] == pytest.approx(comm[0], rel=1e-9)
    assert comm[2] == pytest.approx(comm[0], rel=1e-9)
    assert comm[3] == pytest.approx(1.5 * comm[0], rel=0.03)
    # the formulas themselves, in the ring model
    link = (1e-5, 1e11)
    assert sum(gradient_sync(1e9, 8, 1, 8, link, link)) == pytest.approx(allreduce_time(1e9, 8, *link), rel=1e-12)
    fwd, bwd = zero3_slot_traffic(1e9, 8, 1, link)
    assert fwd + bwd == pytest.approx(1.5 * allreduce_time(1e9, 8, *link), rel=1e-12)
    assert fwd == pytest.approx(allgather_time(1e9, 8, *link), rel=1e-12)


def test_zero3_gathers_again_for_every_micro_batch() -> None:
    ev = _ev()
    one = ev.evaluate(Plan.uniform(32, replicas=8, zero=3, micro_batches=1)).breakdown["communication_s"]
    two = ev.evaluate(Plan.uniform(32, replicas=8, zero=3, micro_batches=2)).breakdown["communication_s"]
    assert two == pytest.approx(2.0 * one, rel=0.05)


def test_model_state_formula() -> None:
    w, g, o = model_state(100.0, 60.0, 6.0, zero=3, shard=4, expert_shard=2)
    assert (w, g, o) == pytest.approx((55.0, 55.0, 330.0))
    assert model_state(100.0, 0.0, 6.0, zero=0, shard=4, expert_shard=4) == pytest.approx((100.0, 100.0, 600.0))


# -- overlap -----------------------------------------------------------------------------


@pytest.mark.parametrize("zero", [0, 1, 3])
def test_overlap_hides_gradient_reduction_behind_backward(zero: int) -> None:
    ev = _ev()
    plain = ev.evaluate(Plan.uniform(32, replicas=8, micro_batches=2, zero=zero))
    over = ev.evaluate(Plan.uniform(32, replicas=8, micro_batches=2, zero=zero, overlap=True))
    saved = plain.step_s - over.step_s
    assert saved > 0.0
    assert saved < plain.breakdown["communication_s"]  # only communication can hide, never compute
    assert over.breakdown["compute_s"] == pytest.approx(plain.breakdown["compute_s"], rel=1e-9)
    if zero == 3:  # prefetch holds a second layer's weights
        assert over.memory_breakdown["buffers"] > plain.memory_breakdown["buffers"]


def test_overlap_leaves_at_least_one_bucket_exposed() -> None:
    ev = _ev("llama2-7b", "dgx-h100x4", batch=32)
    plain = ev.evaluate(Plan.uniform(32, replicas=32))
    over = ev.evaluate(Plan.uniform(32, replicas=32, overlap=True))
    dp_time = plain.breakdown["communication_s"]  # one stage, TP 1: the gradient all-reduce only
    compute = plain.step_s - dp_time
    assert dp_time > 0.0
    assert over.step_s < plain.step_s
    assert over.step_s - compute >= dp_time / 34 * 0.9  # one layer's bucket of 32 layers + embeddings


# -- refusals ------------------------------------------------------------------------------


def test_unpriced_combination_is_refused_by_name() -> None:
    ev = _ev("mixtral-8x7b")
    m = ev.evaluate(Plan.uniform(32, tp=1, replicas=8, zero=3, ep=4))
    assert not m.feasible and "zero 3" in m.reason and "ep" in m.reason
    m = ev.evaluate(Plan.uniform(32, tp=1, replicas=8, zero=3, ep=4), check=False)
    assert not m.feasible and "zero 3" in m.reason


def test_plan_batch_refuses_plans_with_techniques() -> None:
    plain = Plan.uniform(32, tp=2, pp=2)
    with pytest.raises(ValueError, match="zero=1"):
        PlanBatch.from_plans([plain, Plan.uniform(32, tp=2, pp=2, zero=1)])
    assert len(PlanBatch.from_plans([plain])) == 1


def test_alltoall_and_in_flight_formulas() -> None:
    assert alltoall_time(8e9, 8, 1e-5, 1e11) == pytest.approx(7 * 1e-5 + 7 / 8 * 8e9 / 1e11)
    assert alltoall_time(8e9, 1, 1e-5, 1e11) == 0.0
    # Korthikanti et al.: the first stage of an interleaved pipeline holds p (1 + (p-1)/(p v)) micro-batches' worth
    p, v = 4, 2
    assert interleaved_in_flight(p, 16, v, 0) / v == pytest.approx(p * (1 + (p - 1) / (p * v)))


# -- sequence parallelism, selective recomputation, TP overlap ------------------------------


def test_sequence_parallel_splits_activations_and_replicated_kernels_keeps_tp_traffic() -> None:
    ev = _ev()
    plain = ev.evaluate(Plan.uniform(32, tp=4, micro_batches=4))
    sp = ev.evaluate(Plan.uniform(32, tp=4, micro_batches=4, sequence_parallel=True))
    assert sp.memory_breakdown["activations"] < plain.memory_breakdown["activations"]
    tl = ev.tp_tables(4).lists
    ratio = tl["stash_sp"][-1] / tl["stash"][-1]
    assert sp.memory_breakdown["activations"] / plain.memory_breakdown["activations"] == pytest.approx(ratio, rel=1e-9)
    assert sp.breakdown["communication_s"] == pytest.approx(plain.breakdown["communication_s"], rel=1e-9)
    assert sp.breakdown["compute_s"] < plain.breakdown["compute_s"]
    assert sp.memory_breakdown["weights"] == pytest.approx(plain.memory_breakdown["weights"], rel=1e-12)


def test_selective_recompute_reruns_the_attention_core_forward() -> None:
    ev = _ev()
    m = 4
    plain = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=m))
    sel = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=m, selective_recompute=True))
    full = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=m, recompute=True))
    attention = ev.scaled_tables(2, m).attn_fwd_l[-1]  # the attention core's forward kernels, one micro-batch
    assert attention > 0.0
    # one stage: the step is m x (forward + backward)
    assert sel.breakdown["compute_s"] - plain.breakdown["compute_s"] == pytest.approx(m * attention, rel=1e-6)
    acts = [x.memory_breakdown["activations"] for x in (full, sel, plain)]
    assert acts[0] < acts[1] <= acts[2]
    assert plain.step_s < sel.step_s < full.step_s


def test_full_recompute_wins_over_selective_on_the_same_stage() -> None:
    ev = _ev()
    both = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=4, recompute=True, selective_recompute=True))
    full = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=4, recompute=True))
    assert both.step_s == pytest.approx(full.step_s, rel=1e-12)
    assert both.max_memory_bytes == pytest.approx(full.max_memory_bytes, rel=1e-12)


def test_tp_overlap_hides_tp_collectives_behind_gemms() -> None:
    ev = _ev()
    plain = ev.evaluate(Plan.uniform(32, tp=8, micro_batches=2))
    over = ev.evaluate(Plan.uniform(32, tp=8, micro_batches=2, tp_overlap=True))
    assert plain.breakdown["communication_s"] > 0.0
    assert over.breakdown["communication_s"] < plain.breakdown["communication_s"]
    assert over.breakdown["compute_s"] == pytest.approx(plain.breakdown["compute_s"], rel=1e-9)


# -- interleaved 1F1B ---------------------------------------------------------------------------


def test_interleaving_shrinks_the_bubble_and_costs_korthikanti_memory() -> None:
    ev = _ev(batch=32)
    p, m = 4, 8
    one = ev.evaluate(Plan.uniform(32, pp=p, micro_batches=m))
    two = ev.evaluate(Plan.uniform(32, pp=p, micro_batches=m, virtual_stages=2))
    assert two.feasible == one.feasible
    assert two.step_s < one.step_s
    assert two.breakdown["compute_s"] < one.breakdown["compute_s"]  # the bubble is on the compute path
    bubble = one.step_s - two.step_s  # (p - 1)/m - (p - 1)/(v m) of the ideal step, within hops
    ideal = one.step_s / (1 + (p - 1) / m)
    assert bubble == pytest.approx(ideal * ((p - 1) / m - (p - 1) / (2 * m)), rel=0.2)
    # stage 0 holds p (1 + (p - 1)/(p v)) micro-batches' worth instead of p
    ratio = two.memory_breakdown["activations"] / one.memory_breakdown["activations"]
    assert ratio == pytest.approx(1 + (p - 1) / (p * 2), rel=0.05)
    # a device holds all its chunks' weights: the same model state as without interleaving
    assert two.memory_breakdown["weights"] == pytest.approx(one.memory_breakdown["weights"], rel=0.02)


# -- context parallelism ----------------------------------------------------------------------


def test_context_parallel_halves_activations_and_spreads_the_kernels() -> None:
    ev = _ev(seq=4096, batch=4)
    one = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=2))
    two = ev.evaluate(Plan.uniform(32, tp=2, micro_batches=2, cp=2))
    assert two.devices_used == 2 * one.devices_used
    assert two.memory_breakdown["activations"] == pytest.approx(one.memory_breakdown["activations"] / 2, rel=1e-9)
    assert two.memory_breakdown["weights"] == pytest.approx(one.memory_breakdown["weights"], rel=1e-12)
    assert two.breakdown["compute_s"] < 0.6 * one.breakdown["compute_s"]
    # gradients are reduced over the cp ranks too: communication beyond the TP all-reduces
    assert two.breakdown["communication_s"] > 0.5 * one.breakdown["communication_s"]


def test_ring_attention_is_exposed_beyond_the_attention_kernels() -> None:
    ev = _ev("llama2-7b", "dgx-h100x2", seq=512, batch=4)
    m = 2
    # TP 1, the two CP ranks on two nodes (devices 0 and 8): the ring crosses the network
    plan = Plan((Stage(tp=1, devices=(0, 8), layers=(0, 31)),), micro_batches=m, cp=2, zero=1)
    got = ev.evaluate(plan)
    assert got.feasible, got.reason
    meta = ev.graph.meta
    kv_dim = meta.hidden // meta.heads * meta.kv_heads
    tokens = meta.batch * meta.seq / (m * 2)  # one rank's half of a micro-batch
    ring = 32 * p2p_time(2 * kv_dim * 2 * tokens, *ev.group((0, 8)))
    attention = ev.tech_scaled(1, m * 2).attn_f_l[-1]
    assert ring > attention  # short sequences: the ring is longer than the attention it hides behind
    assert got.breakdown["communication_s"] >= m * 3 * (ring - attention) * 0.999


# -- expert parallelism ------------------------------------------------------------------------


def test_expert_parallel_divides_expert_weights_and_adds_all_to_alls() -> None:
    ev = _ev("mixtral-8x7b", batch=16)
    ops = [op for task in ev.graph.tasks if task.step == "forward" for op in task.ops]
    expert = sum(op.param_bytes for op in ops if op.shard == "experts")
    dense = sum(op.param_bytes for op in ops) - expert
    one = ev.evaluate(Plan.uniform(32, tp=1, pp=2, replicas=8, micro_batches=2))
    four = ev.evaluate(Plan.uniform(32, tp=1, pp=2, replicas=8, micro_batches=2, ep=4))
    w1, w4 = one.memory_breakdown["weights"], four.memory_breakdown["weights"]
    share = w1 / (dense + expert)  # this stage's part of the model
    assert w4 == pytest.approx(share * (dense + expert / 4), rel=0.05)
    assert four.step_s > 0.0


def test_expert_parallel_communication_is_all_to_alls_plus_smaller_expert_reductions() -> None:
    ev = _ev("mixtral-8x7b", batch=16)
    meta, m = ev.graph.meta, 2
    one = ev.evaluate(Plan.uniform(32, replicas=8, micro_batches=m))
    four = ev.evaluate(Plan.uniform(32, replicas=8, micro_batches=m, ep=4))
    ops = [op for task in ev.graph.tasks if task.step == "forward" for op in task.ops]
    expert = sum(op.param_bytes for op in ops if op.shard == "experts")
    total = one.memory_breakdown["weights"]
    everyone = ev.group(tuple(range(8)))
    tokens = meta.batch * meta.seq / (8 * m)
    a2a = alltoall_time(tokens * meta.spec["top_k"] * meta.hidden * 2, 4, *ev.group((0, 1, 2, 3)))
    dp_one = allreduce_time(total, 8, *everyone)
    dp_four = allreduce_time(total - expert, 8, *everyone) + allreduce_time(expert / 4, 2, *ev.group((0, 4)))
    expected = m * 4 * 32 * a2a + dp_four - dp_one  # 4 all-to-alls per MoE layer and micro-batch
    got = four.breakdown["communication_s"] - one.breakdown["communication_s"]
    assert got == pytest.approx(expected, rel=1e-6)


def test_fast_validity_check_never_passes_a_plan_that_problems_refuses() -> None:
    ev = _ev("mixtral-8x7b", batch=16)
    rng = np.random.default_rng(5)
    fields = {
        "zero": [0, 1, 2, 3, 4],
        "shard_group": [0, 2, 3],
        "sequence_parallel": [False, True],
        "virtual_stages": [1, 2, 3],
        "cp": [1, 2],
        "ep": [1, 2, 3],
        "overlap": [False, True],
    }
    passed = 0
    for _ in range(300):
        kw = {k: v[rng.integers(len(v))] for k, v in fields.items()}
        tp, pp = int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 4]))
        try:
            plan = Plan.uniform(32, tp=tp, pp=pp, replicas=int(rng.choice([1, 2])), micro_batches=4, **kw)
        except ValueError:
            continue
        fast = ev._valid_fast(plan)
        if fast:
            passed += 1
            assert ev.problems(plan) == [], plan.techniques()
    assert passed > 10


def test_context_parallel_ranks_reduce_gradients_and_hide_the_ring_on_long_sequences() -> None:
    ev = _ev("llama2-7b", "dgx-h100", seq=8192, batch=2)
    plan = Plan.uniform(32, micro_batches=1, cp=2, zero=1)  # TP 1: no TP collectives
    got = ev.evaluate(plan)
    weights = got.memory_breakdown["weights"]
    meta = ev.graph.meta
    kv_dim = meta.hidden // meta.heads * meta.kv_heads
    ring = 32 * p2p_time(2 * kv_dim * 2.0 * meta.batch * meta.seq / 2, *ev.group((0, 1)))  # K, V of a half sequence
    assert ring < ev.tech_scaled(1, 2).attn_f_l[-1]  # long sequences: attention outlasts the ring
    # only the gradient reduce-scatter + all-gather over the two CP ranks is left
    assert got.breakdown["communication_s"] == pytest.approx(allreduce_time(weights, 2, *ev.group((0, 1))), rel=1e-9)


def test_fast_technique_test_agrees_with_plan_techniques() -> None:
    from paratune.costmodel._plan import TECHNIQUE_DEFAULTS
    from paratune.costmodel._techniques import uses_techniques

    plain = Plan.uniform(32, tp=2, pp=2)
    assert not uses_techniques(plain) and not plain.techniques()
    for name, default in TECHNIQUE_DEFAULTS.items():
        other = (not default) if isinstance(default, bool) else default + 2
        plan = Plan(plain.stages, micro_batches=2, **{name: other})
        assert uses_techniques(plan) and name in plan.techniques()
