"""The simulator runs interleaved 1F1B and every training technique as the analytic evaluator prices them."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, get_platform
from paratune.costmodel._pipeline import training_makespan
from paratune.costmodel._simbuild import build_input
from paratune.costmodel._simengine import FORWARD
from paratune.graphs import TaskGraph, build_graph, coarsen

PLATFORM = get_platform("dgx-h100x2")
_cache: dict[str, tuple[TaskGraph, Simulator]] = {}


def _sim(model: str = "llama2-7b:layers=8", granularity: str = "layer") -> Simulator:
    key = f"{model}/{granularity}"
    if key not in _cache:
        g = coarsen(build_graph(model, phase="train", batch=16, seq=256), granularity)
        _cache[key] = (g, Simulator(g, PLATFORM))
    return _cache[key][1]


def _makespan_inputs(sim: Simulator, plan: Plan) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-chunk slot times, per-boundary hops and per-stage tails, summed from the simulator's own prices."""
    chunk_of = sim.placement(plan)
    inp = build_input(sim, plan, chunk_of, 1.0 / (plan.replicas * plan.micro_batches)).inp
    n, p = len(plan.stages), plan.pp
    fwd, back, tails = [0.0] * n, [0.0] * n, list(inp.dp_dur or [0.0] * p)
    for i, k in enumerate(chunk_of):
        if sim.once[i]:
            tails[k % p] += inp.dur[i]
        elif sim.step[i] == FORWARD:
            fwd[k] += inp.dur[i]
        else:
            back[k] += inp.dur[i]
    hops, grads = [0.0] * (n - 1), [0.0] * (n - 1)
    for x, srcs in enumerate(inp.x_src):
        a, b = chunk_of[srcs[0]], chunk_of[inp.x_dst[x][0]]
        assert abs(a - b) == 1, "layered chunks only exchange with their neighbours"
        if b == a + 1:
            hops[a] += inp.x_dur[x]
        else:
            grads[b] += inp.x_dur[x]
    assert grads == pytest.approx(hops, rel=1e-12)  # a gradient is as large as its activation
    return fwd, back, hops, tails


PLANS = [  # (pp, virtual, micro-batches, replicas, tp, recompute)
    (2, 2, 4, 1, 1, False),
    (2, 4, 2, 2, 1, False),
    (4, 2, 8, 1, 2, False),
    (4, 2, 4, 2, 1, True),
    (2, 2, 8, 1, 2, True),
]


@pytest.mark.parametrize(("pp", "v", "m", "r", "tp", "rc"), PLANS)
def test_interleaved_step_is_the_slot_level_makespan(pp: int, v: int, m: int, r: int, tp: int, rc: bool) -> None:
    """The event loop and training_makespan(virtual=v) run the same slots on the same prices: equal steps."""
    sim = _sim()
    plan = Plan.uniform(8, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, virtual_stages=v)
    res = sim.run(plan, timeline=False).metrics
    assert res.feasible, res.reason
    fwd, back, hops, tails = _makespan_inputs(sim, plan)
    assert res.step_s == pytest.approx(training_makespan(fwd, back, hops, tails, m, False, virtual=v), rel=1e-9)


def test_uneven_chunks_agree_too() -> None:
    """Chunks of 1, 3, 2 and 2 layers (embedding and head on the end chunks): still the same makespan."""
    sim = _sim()
    base = Plan.uniform(8, pp=2, micro_batches=4, virtual_stages=2)
    cuts = [(0, 0), (1, 3), (4, 5), (6, 7)]
    plan = dataclasses.replace(
        base, stages=tuple(dataclasses.replace(st, layers=c) for st, c in zip(base.stages, cuts, strict=True))
    )
    res = sim.run(plan, timeline=False).metrics
    assert res.feasible, res.reason
    fwd, back, hops, tails = _makespan_inputs(sim, plan)
    assert max(fwd) > 2 * min(fwd)
    assert res.step_s == pytest.approx(training_makespan(fwd, back, hops, tails, 4, False, virtual=2), rel=1e-9)


def test_interleaving_shrinks_the_bubble_and_keeps_static_memory() -> None:
    sim = _sim()
    runs = [sim.run(Plan.uniform(8, pp=2, micro_batches=4, virtual_stages=v), timeline=True) for v in (1, 2, 4)]
    steps = [r.metrics.step_s for r in runs]
    assert steps[0] > steps[1] > steps[2]
    for r in runs:  # each stage holds all its chunks' weights and state: same bytes whatever v
        assert len(r.static_memory_bytes) == 2
        assert r.static_memory_bytes == pytest.approx(runs[0].static_memory_bytes, rel=1e-12)
        assert {e.stage for e in r.timeline} == {0, 1}
        for s in (0, 1):  # a stage runs one task at a time
            bars = sorted((e.start, e.end) for e in r.timeline if e.stage == s and e.kind != "transfer")
            assert all(a[1] <= b[0] * (1 + 1e-9) + 1e-15 for a, b in itertools.pairwise(bars))


def test_interleaved_stash_follows_the_schedule() -> None:
    """Stage 0 keeps p + (p - 1)/v stage-sized stashes instead of p: 1.375x at p = 4, v = 2 (lifetimes, within 5%)."""
    sim = _sim()
    one = sim.run(Plan.uniform(8, pp=4, micro_batches=8), timeline=False).activation_bytes
    two = sim.run(Plan.uniform(8, pp=4, micro_batches=8, virtual_stages=2), timeline=False).activation_bytes
    assert two[0] / one[0] == pytest.approx((4 + 3 / 2) / 4, rel=0.05)
    assert all(b > a for a, b in zip(one, two, strict=True))


def test_expert_parallelism_with_zero3_or_hybrid_sharding_is_refused_by_name() -> None:
    sim = _sim("mixtral-8x7b:layers=2")
    for extra, name in (
        ({"zero": 3}, "zero 3 with ep > 1"),
        ({"zero": 1, "shard_group": 2}, "shard_group with ep > 1"),
    ):
        plan = Plan.uniform(2, pp=1, micro_batches=2, replicas=4, ep=2, **extra)
        assert not plan.problems(sim.graph, PLATFORM)
        res = sim.run(plan).metrics
        assert not res.feasible and name in res.reason


def test_chunks_of_a_stage_must_recompute_alike() -> None:
    sim = _sim()
    base = Plan.uniform(8, pp=2, micro_batches=4, virtual_stages=2)
    stages = list(base.stages)
    stages[2] = dataclasses.replace(stages[2], recompute=True)
    res = sim.run(dataclasses.replace(base, stages=tuple(stages))).metrics
    assert not res.feasible and "stage 2: recompute must match chunk 0" in res.reason


@pytest.mark.parametrize("granularity", ["layer", "op"])
def test_interleaved_plans_agree_with_the_analytic_evaluator(granularity: str) -> None:
    """Plans with only ``virtual_stages`` set: the same step (same slots, same prices), the same static memory,
    and activation lifetimes within the usual slack of the analytic's stash (uniform chunks)."""
    sim = _sim(granularity=granularity)
    ev = AnalyticEvaluator(sim.graph, PLATFORM)
    meta = sim.graph.meta
    hidden = meta.hidden * meta.batch * meta.seq * 2
    for pp, v, m, r, tp, rc in PLANS[:4]:
        plan = Plan.uniform(8, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, virtual_stages=v)
        res, a = sim.run(plan, timeline=False), ev.evaluate(plan)
        s = res.metrics
        assert s.feasible and a.feasible
        assert s.step_s == pytest.approx(a.step_s, rel=1e-6), plan.to_dict()
        assert s.mfu == pytest.approx(a.mfu, rel=1e-6)
        for k, st in enumerate(plan.physical_stages):
            analytic_act = a.peak_memory_bytes[st.devices[0]] - res.static_memory_bytes[k]
            # the analytic stash follows the schedule's peak mix of chunks (peak_stash); the LM head's backward
            # transients on the last device group exceed its workspace term by up to ~3 hidden states
            assert res.activation_bytes[k] <= analytic_act + 4.0 * hidden / (r * m), (plan.to_dict(), k)
        worst = max(range(pp), key=lambda k: a.peak_memory_bytes[plan.stages[k].devices[0]])
        state = sum(a.memory_breakdown[x] for x in ("weights", "gradients", "optimizer_state"))
        assert res.static_memory_bytes[worst] == pytest.approx(state, rel=1e-4)


ZERO_PLANS = [  # (pp, virtual, micro-batches, replicas, tp, recompute)
    (2, 1, 4, 4, 1, False),
    (2, 2, 4, 2, 2, False),
    (1, 1, 2, 8, 1, False),
    (4, 2, 4, 2, 1, True),
]


@pytest.mark.parametrize(("pp", "v", "m", "r", "tp", "rc"), ZERO_PLANS)
def test_zero_and_overlap_agree_with_the_analytic_evaluator(pp: int, v: int, m: int, r: int, tp: int, rc: bool) -> None:
    """Every ZeRO stage, hybrid sharding, overlap and TP overlap on and off: the same step and model state by term."""
    sim = _sim()
    ev = AnalyticEvaluator(sim.graph, PLATFORM)
    for zero, group, overlap, tp_overlap in itertools.product((0, 1, 2, 3), (0, 2), (False, True), (False, True)):
        if group and not zero:
            continue
        plan = Plan.uniform(
            8, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, virtual_stages=v,
            zero=zero, shard_group=group, overlap=overlap, tp_overlap=tp_overlap,
        )  # fmt: skip
        s, a = sim.evaluate(plan), ev.evaluate(plan)
        assert s.feasible and a.feasible, (s.reason, a.reason)
        assert s.step_s == pytest.approx(a.step_s, rel=1e-6), plan.techniques()
        for term in ("weights", "gradients", "optimizer_state"):
            assert s.memory_breakdown[term] == pytest.approx(a.memory_breakdown[term], rel=1e-4), (term, plan)


def test_zero_shards_model_state_as_the_zero_paper_says() -> None:
    """2W + 2W + 12W per device (K = 12); ZeRO-1 / 2 / 3 divide optimizer / + gradients / + weights by N_d."""
    sim = _sim()
    n = 8
    base = sim.evaluate(Plan.uniform(8, replicas=n, micro_batches=2)).memory_breakdown
    w = base["weights"]
    assert base["gradients"] == pytest.approx(w) and base["optimizer_state"] == pytest.approx(6 * w)
    expected = {1: (w, w, 6 * w / n), 2: (w, w / n, 6 * w / n), 3: (w / n, w / n, 6 * w / n)}
    for zero, (ew, eg, eo) in expected.items():
        mb = sim.evaluate(Plan.uniform(8, replicas=n, micro_batches=2, zero=zero)).memory_breakdown
        assert (mb["weights"], mb["gradients"], mb["optimizer_state"]) == pytest.approx((ew, eg, eo), rel=1e-9)
        assert (mb["buffers"] > 0) == (zero == 3)  # one gathered layer under ZeRO-3
    hybrid = sim.evaluate(Plan.uniform(8, replicas=n, micro_batches=2, zero=1, shard_group=2)).memory_breakdown
    assert hybrid["optimizer_state"] == pytest.approx(6 * w / 2, rel=1e-9)


def test_zero3_gathers_cost_time_and_overlap_hides_some() -> None:
    """ZeRO-3 moves 1.5x ZeRO-0's bytes, per micro-batch; overlap hides the reduction behind the backward."""
    sim = _sim()
    plan = Plan.uniform(8, tp=2, pp=2, micro_batches=4, replicas=4)
    steps = {
        (z, o): sim.evaluate(dataclasses.replace(plan, zero=z, overlap=o)).step_s for z in (0, 3) for o in (False, True)
    }
    assert steps[(3, False)] > steps[(0, False)]
    assert steps[(0, True)] < steps[(0, False)] and steps[(3, True)] < steps[(3, False)]
    res = sim.run(dataclasses.replace(plan, zero=3))
    assert res.metrics.breakdown["communication_s"] > sim.run(plan).metrics.breakdown["communication_s"]


@pytest.mark.parametrize("granularity", ["layer", "op"])
def test_timeline_bars_cover_every_job_with_techniques(granularity: str) -> None:
    """ZeRO-3 gathers, the sharded optimizer and TP overlap are drawn as they are priced: bars sum to the jobs."""
    sim = _sim("llama2-7b:layers=4", granularity)
    for rc in (False, True):
        plan = Plan.uniform(4, tp=2, pp=2, micro_batches=2, replicas=4, recompute=rc, zero=3, tp_overlap=True)
        res = sim.run(plan)
        inp = build_input(sim, plan, sim.placement(plan), 1.0 / 8).inp
        jobs = sum(d * (1 if once else 2) for d, once in zip(inp.dur, inp.once, strict=True)) + sum(inp.dp_dur or [])
        bars = sum(e.end - e.start for e in res.timeline if e.kind != "transfer")
        assert bars == pytest.approx(jobs, rel=1e-9)
        assert any(e.kind == "allreduce" and e.task.endswith(".bwd") for e in res.timeline)


UNFUSED = "gpt2:attention=unfused,dropout=true"


@pytest.mark.parametrize(("model", "granularity"), [("llama2-7b:layers=4", "layer"), (UNFUSED, "op")])
def test_sequence_parallel_and_selective_agree_with_the_analytic_evaluator(model: str, granularity: str) -> None:
    """SP and selective recomputation (with ZeRO-3, interleaving): the same step; activations within the slack.

    With SP and *full* recomputation only the step is compared: the analytic divides every
    checkpointed layer input and the rebuilt unit by t, while the simulator keeps the
    stage's received input whole in memory (its transfer is sent as TP shards, its buffer is not).
    """
    sim = _sim(model, granularity)
    ev = AnalyticEvaluator(sim.graph, PLATFORM)
    meta = sim.graph.meta
    n, hidden = meta.n_layers, meta.hidden * meta.batch * meta.seq * 2
    shapes = [(2, 1, 2, 2, 2), (2, 2, 4, 1, 4)]  # pp, v, m, r, tp
    for (pp, v, m, r, tp), sp, sel, rc, zero in itertools.product(shapes, *[(False, True)] * 3, (0, 3)):
        plan = Plan.uniform(
            n, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, virtual_stages=v,
            sequence_parallel=sp, selective_recompute=sel, zero=zero,
        )  # fmt: skip
        res, a = sim.run(plan, timeline=False), ev.evaluate(plan)
        assert res.metrics.feasible and a.feasible, (res.metrics.reason, a.reason)
        assert res.metrics.step_s == pytest.approx(a.step_s, rel=1e-6), plan.techniques()
        if sp and rc:
            continue
        for k, st in enumerate(plan.physical_stages):
            analytic_act = a.peak_memory_bytes[st.devices[0]] - res.static_memory_bytes[k]
            assert res.activation_bytes[k] <= analytic_act + 4.0 * hidden / (r * m), (plan.to_dict(), k)


def test_selective_recomputation_trades_the_attention_core_stash_for_time() -> None:
    """Unfused attention with dropout: the scores-sized tensors leave the stash; the backward re-runs the core."""
    sim = _sim(UNFUSED, "layer")
    plan = Plan.uniform(12, tp=2, pp=2, micro_batches=2)
    base, sel = sim.run(plan), sim.run(dataclasses.replace(plan, selective_recompute=True))
    assert sel.activation_bytes[0] < 0.8 * base.activation_bytes[0]
    assert sel.metrics.step_s > base.metrics.step_s
    sp = sim.run(dataclasses.replace(plan, sequence_parallel=True))
    assert sp.activation_bytes[0] < base.activation_bytes[0]
    assert sp.metrics.step_s < base.metrics.step_s  # norms, residuals and dropouts on half the tokens
    bars = sum(e.end - e.start for e in sel.timeline if e.kind == "compute")
    assert bars > sum(e.end - e.start for e in base.timeline if e.kind == "compute")


@pytest.mark.parametrize(("model", "granularity"), [("llama2-7b:layers=4", "layer"), (UNFUSED, "op")])
def test_context_parallelism_agrees_with_the_analytic_evaluator(model: str, granularity: str) -> None:
    """CP (with SP, ZeRO-3, overlap, interleaving, recomputation): the same step; activations within the slack."""
    sim = _sim(model, granularity)
    ev = AnalyticEvaluator(sim.graph, PLATFORM)
    meta = sim.graph.meta
    n, hidden = meta.n_layers, meta.hidden * meta.batch * meta.seq * 2
    shapes = [(2, 1, 2, 2, 2, 2), (2, 2, 4, 1, 2, 2), (2, 1, 2, 1, 1, 8)]  # pp, v, m, r, tp, cp
    for (pp, v, m, r, tp, cp), sp, rc, zero in itertools.product(shapes, (False, True), (False, True), (0, 3)):
        plan = Plan.uniform(
            n, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, virtual_stages=v,
            sequence_parallel=sp, zero=zero, cp=cp, overlap=zero == 3,
        )  # fmt: skip
        res, a = sim.run(plan, timeline=False), ev.evaluate(plan)
        assert res.metrics.feasible and a.feasible, (res.metrics.reason, a.reason)
        assert res.metrics.step_s == pytest.approx(a.step_s, rel=1e-6), plan.techniques()
        if sp and rc:
            continue
        for k, st in enumerate(plan.physical_stages):
            analytic_act = a.peak_memory_bytes[st.devices[0]] - res.static_memory_bytes[k]
            assert res.activation_bytes[k] <= analytic_act + 4.0 * hidden / (r * m * cp), (plan.to_dict(), k)


def test_ring_attention_is_exposed_across_nodes_and_cp_splits_activations() -> None:
    sim = _sim()
    plan = Plan.uniform(8, tp=1, pp=2, micro_batches=2)
    wide = dataclasses.replace(plan, cp=8, stages=tuple(
        dataclasses.replace(st, devices=tuple(range(8 * (k % 2), 8 * (k % 2) + 8))) for k, st in enumerate(plan.stages)
    ))  # fmt: skip
    assert not wide.problems(sim.graph, PLATFORM)
    built = build_input(sim, wide, sim.placement(wide), 1.0 / 16)
    assert sum(built.extra) > 0.0  # eight ranks in one node still leave some ring exchange exposed
    one, eight = sim.run(plan, timeline=False), sim.run(wide, timeline=False)
    assert eight.activation_bytes[0] < one.activation_bytes[0] / 4
    assert eight.metrics.step_s < one.metrics.step_s


@pytest.mark.parametrize("granularity", ["layer", "op"])
def test_expert_parallelism_agrees_with_the_analytic_evaluator(granularity: str) -> None:
    """EP (with CP, SP, ZeRO-1/2, overlap, recomputation): the same step and model state by term."""
    sim = _sim("mixtral-8x7b:layers=2", granularity)
    ev = AnalyticEvaluator(sim.graph, PLATFORM)
    shapes = [(2, 2, 4, 1, 1, 2), (2, 2, 2, 2, 2, 4), (1, 2, 8, 1, 1, 8)]  # pp, m, r, tp, cp, ep
    for (pp, m, r, tp, cp, ep), sp, rc, zero in itertools.product(shapes, (False, True), (False, True), (0, 2)):
        plan = Plan.uniform(
            2, tp=tp, pp=pp, micro_batches=m, replicas=r, recompute=rc, sequence_parallel=sp, zero=zero, cp=cp,
            ep=ep, overlap=zero > 0,
        )  # fmt: skip
        s, a = sim.evaluate(plan), ev.evaluate(plan)
        assert s.step_s == pytest.approx(a.step_s, rel=1e-6), plan.techniques()
        for term in ("weights", "gradients", "optimizer_state"):
            assert s.memory_breakdown[term] == pytest.approx(a.memory_breakdown[term], rel=1e-4), (term, plan)
    plain = Plan.uniform(2, micro_batches=2, replicas=8)
    split = dataclasses.replace(plain, ep=8)
    assert sim.evaluate(split).memory_breakdown["weights"] < 0.5 * sim.evaluate(plain).memory_breakdown["weights"]
    built = build_input(sim, split, sim.placement(split), 1.0 / 16)
    assert sum(built.extra) > 0.0  # the dispatch and combine all-to-alls


@pytest.mark.parametrize("phase", ["train", "prefill", "decode"])
def test_memory_breakdown_sums_to_the_most_loaded_device(phase: str) -> None:
    g = coarsen(
        build_graph("llama2-7b:layers=4", phase=phase, batch=8, seq=1 if phase == "decode" else 256, context=256),
        "layer",
    )
    m = Simulator(g, PLATFORM).evaluate(Plan.uniform(4, tp=2, pp=2, micro_batches=2))
    terms = ("weights", "gradients", "optimizer_state", "activations", "kv_cache", "buffers")
    assert set(m.memory_breakdown) == set(terms)
    assert sum(m.memory_breakdown.values()) == pytest.approx(m.max_memory_bytes, rel=1e-9)
    assert (m.memory_breakdown["kv_cache"] > 0) == (phase != "train")
    assert (m.memory_breakdown["optimizer_state"] > 0) == (phase == "train")
