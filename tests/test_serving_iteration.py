"""The iteration cost model against the graph-based evaluator, its KV capacity, and instance_cost."""

from __future__ import annotations

import pytest

from paratune.costmodel import AnalyticEvaluator, get_platform
from paratune.costmodel._iteration import IterationModel
from paratune.costmodel._memory import kv_cache_memory
from paratune.costmodel._pricing import OpTable
from paratune.graphs import build_graph, get_model
from paratune.problem._plan_builders import contiguous_plan, even_cuts
from paratune.serving import Deployment, Mix, Pool, instance_cost

TOLERANCE = 0.02  # the bar; the grid's interpolation error is far below it (about 0.05%)
H100 = get_platform("dgx-h100")


def _graph_latency(model: str, tp: int, pp: int, **workload: int | str) -> float:
    spec = get_model(model)
    graph = build_graph(spec, **workload)  # type: ignore[arg-type]
    return AnalyticEvaluator(graph, H100).evaluate(contiguous_plan(even_cuts(spec.layers, pp, tp))).latency_s


CASES = [("llama3-8b", 1, 1), ("llama3-8b", 2, 1), ("llama3-70b", 8, 1), ("llama3-70b", 2, 2), ("mixtral-8x7b", 2, 1)]


@pytest.mark.parametrize(("model", "tp", "pp"), CASES)
def test_decode_matches_graph_evaluator_off_grid(model: str, tp: int, pp: int) -> None:
    im = IterationModel(get_model(model), H100, tp=tp, pp=pp)
    for batch, context in ((1, 700), (16, 3000), (128, 7000), (13, 512), (100, 8000)):
        ref = _graph_latency(model, tp, pp, phase="decode", batch=batch, seq=1, context=context)
        mine = im.latency_s(Mix(decode_seqs=batch, decode_context=batch * context, sampled=batch))
        assert mine == pytest.approx(ref, rel=TOLERANCE), (batch, context)


@pytest.mark.parametrize(("model", "tp", "pp"), CASES)
def test_prefill_matches_graph_evaluator_off_grid(model: str, tp: int, pp: int) -> None:
    im = IterationModel(get_model(model), H100, tp=tp, pp=pp)
    for batch, seq in ((1, 130), (3, 900), (7, 3000), (8, 4000), (2, 1500)):
        ref = _graph_latency(model, tp, pp, phase="prefill", batch=batch, seq=seq)
        mix = Mix(prefill_tokens=batch * seq, prefill_attention=batch * seq * (seq + 1) / 2, sampled=batch)
        assert im.latency_s(mix) == pytest.approx(ref, rel=TOLERANCE), (batch, seq)


def test_hand_set_attention_curves_are_followed_across_batch_sizes() -> None:
    """dgx-a100's profile prices attention by efficiency curves, not affine in the batch: the count grid holds."""
    a100 = get_platform("dgx-a100")
    spec = get_model("llama3-8b")
    im = IterationModel(spec, a100, tp=2)
    plan = contiguous_plan(even_cuts(spec.layers, 1, 2))
    for batch, context in ((64, 3000), (128, 512), (300, 2000)):
        graph = build_graph(spec, phase="decode", batch=batch, seq=1, context=context)
        ref = AnalyticEvaluator(graph, a100).evaluate(plan).latency_s
        mix = Mix(decode_seqs=batch, decode_context=batch * context, sampled=batch)
        assert im.latency_s(mix) == pytest.approx(ref, rel=TOLERANCE), (batch, context)


def test_mixed_iteration_costs_between_its_parts_and_their_sum() -> None:
    """One iteration of a chunk and decodes reads the weights once: cheaper than two, dearer than either."""
    im = IterationModel(get_model("llama3-8b"), H100, tp=1)
    chunk = Mix(prefill_tokens=512, prefill_attention=512 * 256.5, sampled=1)
    decode = Mix(decode_seqs=64, decode_context=64 * 2000, sampled=64)
    both = Mix(512, 512 * 256.5, 64, 64 * 2000, 65)
    assert (
        max(im.latency_s(chunk), im.latency_s(decode)) < im.latency_s(both) < im.latency_s(chunk) + im.latency_s(decode)
    )


def test_pipeline_interval_is_the_slowest_stage_and_overhead_is_added_once() -> None:
    im = IterationModel(get_model("llama3-70b"), H100, tp=2, pp=2, iteration_overhead_s=1e-3, sequence_overhead_s=1e-5)
    mix = Mix(decode_seqs=32, decode_context=32 * 1000, sampled=32)
    stages, hops = im.stage_times(mix)
    overhead = 1e-3 + 32 * 1e-5
    assert im.latency_s(mix) == pytest.approx(sum(stages) + sum(hops) + overhead, rel=1e-12)
    assert im.interval_s(mix) == pytest.approx(max(stages) + overhead, rel=1e-12)
    assert im.interval_s(mix) < 0.7 * im.latency_s(mix)  # two balanced stages: about half


def test_kv_capacity_matches_kv_cache_memory() -> None:
    spec = get_model("llama3-8b")
    im = IterationModel(spec, H100, tp=2, memory_fraction=0.9, budget_tokens=4096, page_tokens=16)
    graph = build_graph(spec, phase="prefill", batch=1, seq=4096)
    table = OpTable.from_ops([o for t in graph.tasks for o in t.ops])
    per_token = kv_cache_memory(table, 2, sequences=1, kv_len=1)
    dev = H100.device
    weights = im.stage_weights[0]
    assert weights == pytest.approx(spec.params() * 2 / 2, rel=0.01)  # bf16, split over 2 GPUs (norms replicated)
    # Workspace: twice the largest op output of the budget's tokens (the MLP's up projection), split over TP.
    workspace = 2 * max(o.output_bytes for t in graph.tasks for o in t.ops) / 2
    expected = (dev.memory_bytes * 0.9 - dev.reserved_bytes - weights - workspace) / per_token
    assert im.kv_capacity_tokens % 16 == 0
    assert im.kv_capacity_tokens == pytest.approx(expected, abs=16 + expected * 0.002)
    # fp8 KV halves the bytes per token: about twice the tokens.
    fp8 = IterationModel(spec, H100, tp=2, kv_dtype="fp8", budget_tokens=4096, page_tokens=16)
    assert fp8.kv_capacity_tokens == pytest.approx(2 * im.kv_capacity_tokens, rel=0.01)
    assert im.with_limits(memory_fraction=0.5).kv_capacity_tokens < im.kv_capacity_tokens


def test_weights_that_do_not_fit_raise_naming_the_instance() -> None:
    with pytest.raises(ValueError, match=r"llama3-70b.*dgx-h100.*TP 1 x PP 1.*do not fit"):
        IterationModel(get_model("llama3-70b"), H100, tp=1)
    with pytest.raises(ValueError, match="tp"):
        IterationModel(get_model("llama3-8b"), H100, tp=3)


def test_instance_cost_is_cached_and_carries_the_pool_limits() -> None:
    dep = Deployment((Pool(tp=2, max_batched_tokens=2048, max_num_seqs=128),), engine="vllm")
    a = instance_cost("llama3-8b", H100, dep.pools[0], dep)
    b = instance_cost("llama3-8b", H100, dep.pools[0], dep)
    assert a.kv_capacity_tokens == b.kv_capacity_tokens and a.kv_capacity_tokens % 16 == 0
    mix = Mix(decode_seqs=8, decode_context=8000, sampled=8)
    assert a.latency_s(mix) == b.latency_s(mix) > 0
    bare = IterationModel(get_model("llama3-8b"), H100, tp=2)
    assert a.latency_s(mix) > bare.latency_s(mix)  # the engine's overhead is in
    sglang = instance_cost("llama3-8b", H100, dep.pools[0], Deployment(dep.pools, engine="sglang"))
    assert sglang.latency_s(mix) < a.latency_s(mix)
    with pytest.raises(ValueError, match=r"TP 1 x PP 1"):
        instance_cost("llama3-70b", H100, Pool(), Deployment((Pool(),)))


def test_disaggregated_pair_shares_one_kv_transfer_time() -> None:
    """Both sides of a prefill -> decode pair price the same transfer (the larger shard), whichever is asked."""
    pre, dec = Pool(role="prefill", tp=1), Pool(role="decode", tp=4)
    dep = Deployment((pre, dec))
    a, b = (instance_cost("llama3-8b", H100, p, dep) for p in (pre, dec))
    assert a.kv_transfer_s(1000) == b.kv_transfer_s(1000) > 0
    assert a.kv_transfer_bytes_per_token == a.kv_bytes_per_token == 131072  # TP 1 holds all 32 layers' K and V
    assert b.kv_bytes_per_token == 131072 / 4
    assert a.kv_same_node and a.kv_transfer_s(1000, same_node=False) > a.kv_transfer_s(1000)
