"""The steady-state analytic serving model: Little's law, load, saturation, disaggregation, SLOs."""

from __future__ import annotations

import itertools
import math

import pytest

from paratune.costmodel import get_platform
from paratune.costmodel._iteration import IterationModel
from paratune.serving import Deployment, Lengths, Mix, Pool, Slo, Traffic, analytic, instance_cost

H100 = get_platform("dgx-h100")
CHAT = (Lengths(mean=1000), Lengths(mean=200))


def _mixed(replicas: int = 2, **pool: int) -> tuple[Deployment, dict[str, IterationModel]]:
    dep = Deployment((Pool(tp=1, replicas=replicas, **pool),))
    return dep, {"mixed": instance_cost("llama3-8b", H100, dep.pools[0], dep)}


def _traffic(rate: float | None = None, concurrency: int | None = None) -> Traffic:
    return Traffic(*CHAT, rate=rate, concurrency=concurrency)


def test_littles_law_and_throughput_equal_to_arrivals_below_capacity() -> None:
    dep, costs = _mixed()
    for rate in (1.0, 10.0, 30.0):
        m = analytic(dep, _traffic(rate), costs)
        assert not m.saturated
        assert m.requests_per_s == pytest.approx(rate, rel=1e-9)
        assert m.tokens_per_s_per_gpu == pytest.approx(rate * 200 / dep.gpus, rel=1e-9)
        # Little: requests in flight per instance = arrivals per instance x time in the system.
        in_system = (m.ttft_ms["mean"] + 199 * m.tpot_ms["mean"]) / 1e3
        assert m.concurrency == pytest.approx(rate / 2 * in_system, rel=1e-6)
        assert m.tokens_per_s_per_user == pytest.approx(1e3 / m.tpot_ms["mean"], rel=1e-12)


def test_tpot_and_ttft_grow_with_rate_and_percentiles_are_ordered() -> None:
    dep, costs = _mixed()
    runs = [analytic(dep, _traffic(rate), costs) for rate in (1.0, 8.0, 20.0, 40.0)]
    tpots = [m.tpot_ms["mean"] for m in runs]
    ttfts = [m.ttft_ms["mean"] for m in runs]
    assert all(a < b for a, b in itertools.pairwise(tpots))
    assert all(a < b for a, b in itertools.pairwise(ttfts))
    for m in runs:
        for d in (m.ttft_ms, m.tpot_ms):
            assert d["p50"] <= d["p90"] <= d["p99"]


def test_tpot_at_light_load_is_one_sequence_decode_step() -> None:
    dep, costs = _mixed(replicas=1)
    m = analytic(dep, _traffic(0.01), costs)
    alone = costs["mixed"].latency_s(Mix(decode_seqs=1, decode_context=1100, sampled=1))
    assert m.tpot_ms["p50"] == pytest.approx(alone * 1e3, rel=0.02)


def test_saturation_above_capacity_reports_the_capped_throughput() -> None:
    dep, costs = _mixed()
    below = analytic(dep, _traffic(30.0), costs)
    over = analytic(dep, _traffic(1000.0), costs)
    far = analytic(dep, _traffic(5000.0), costs)
    assert over.saturated and far.saturated and not below.saturated
    assert 30.0 < over.requests_per_s < 1000.0
    assert far.requests_per_s == pytest.approx(over.requests_per_s, rel=1e-9)  # capacity does not depend on load
    assert math.isinf(over.ttft_ms["p90"])
    assert over.meets_slo is None
    assert analytic(dep, _traffic(1000.0), costs, Slo(tpot_ms=1e9)).meets_slo is False
    # Just below capacity is not saturated and serves what arrives.
    edge = analytic(dep, _traffic(0.98 * over.requests_per_s), costs)
    assert not edge.saturated and edge.ttft_ms["mean"] > below.ttft_ms["mean"]


def test_batch_cap_and_kv_capacity_bound_the_decode_batch() -> None:
    dep, costs = _mixed(replicas=1, max_num_seqs=16)
    m = analytic(dep, _traffic(1000.0), costs)
    # At the cap 16 sequences decode: 199 decode steps each, one token per step per sequence.
    assert m.saturated
    assert m.requests_per_s * 199 * m.tpot_ms["mean"] / 1e3 == pytest.approx(16, rel=0.02)
    wide = analytic(_mixed(replicas=1)[0], _traffic(1000.0), _mixed(replicas=1)[1])
    assert wide.requests_per_s > 2 * m.requests_per_s


def test_closed_loop_keeps_the_users_in_flight() -> None:
    dep, costs = _mixed()
    for users in (1, 16, 128):
        m = analytic(dep, _traffic(concurrency=users), costs)
        cycle = (m.ttft_ms["mean"] + 199 * m.tpot_ms["mean"]) / 1e3
        assert m.requests_per_s * cycle == pytest.approx(users, rel=1e-3)
        assert not m.saturated


def test_closed_loop_beyond_the_caps_queues_users_in_both_layouts() -> None:
    """More users than the batch caps admit: Little's law still holds, the excess waits (TTFT or decode slots)."""
    for dep, costs in (_mixed(max_num_seqs=32), _disaggregated(max_num_seqs=32)):
        m = analytic(dep, _traffic(concurrency=2000), costs)
        cycle = (m.ttft_ms["mean"] + 199 * m.tpot_ms["mean"]) / 1e3
        assert m.requests_per_s * cycle == pytest.approx(2000, rel=0.02)
        assert not m.saturated


def _disaggregated(
    prefill: int = 1, decode: int = 2, **decode_pool: int
) -> tuple[Deployment, dict[str, IterationModel]]:
    pre = Pool(role="prefill", tp=1, replicas=prefill)
    dec = Pool(role="decode", tp=1, replicas=decode, **decode_pool)
    dep = Deployment((pre, dec))
    return dep, {
        "prefill": instance_cost("llama3-8b", H100, pre, dep),
        "decode": instance_cost("llama3-8b", H100, dec, dep),
    }


def test_disaggregated_ttft_includes_the_kv_transfer_and_tpot_has_no_prefill_interference() -> None:
    dep, costs = _disaggregated()
    m = analytic(dep, _traffic(2.0), costs)
    pre = costs["prefill"]
    prompt = pre.latency_s(Mix(prefill_tokens=1000, prefill_attention=1000 * 1001 / 2, sampled=1))
    transfer = pre.kv_transfer_s(1000, same_node=True)
    # 1000 tokens x 32 layers x 2 x 1024 x 2 bytes = 131 MB over NVLink: tens of microseconds to a millisecond.
    assert 1e-5 < transfer < 5e-3
    assert m.ttft_ms["p50"] == pytest.approx((prompt + transfer) * 1e3, rel=0.01)
    assert m.tpot_ms["p99"] == pytest.approx(m.tpot_ms["p50"], rel=1e-9)  # no chunks interleave
    # Across nodes the transfer runs on the network: slower.
    assert pre.kv_transfer_s(1000, same_node=False) > 3 * transfer
    # The aggregated deployment with the same GPUs has TPOT spread from prompt chunks.
    agg, agg_costs = _mixed(replicas=3)
    a = analytic(agg, _traffic(20.0), agg_costs)
    assert a.tpot_ms["p99"] > a.tpot_ms["p50"]


def test_disaggregated_capacity_is_the_smaller_pool() -> None:
    dep, costs = _disaggregated(prefill=1, decode=1, max_num_seqs=8)
    m = analytic(dep, _traffic(1000.0), costs)
    assert m.saturated
    assert any("saturated" in n for n in m.notes)
    more_decode, costs2 = _disaggregated(prefill=1, decode=4, max_num_seqs=8)
    assert analytic(more_decode, _traffic(1000.0), costs2).requests_per_s > 2 * m.requests_per_s


def test_closed_loop_beyond_a_decode_bound_pair_waits_for_admission() -> None:
    """More users than the decode side holds: the excess waits for a decode slot after its first token (TPOT grows,
    as a request-level measurement sees it), it is not dropped from the loop."""
    dep, costs = _disaggregated(prefill=2, decode=1, max_num_seqs=8)
    few, many = (analytic(dep, _traffic(concurrency=n), costs) for n in (64, 640))
    assert many.requests_per_s == pytest.approx(few.requests_per_s, rel=0.01)  # both at the decode side's capacity
    assert many.tpot_ms["mean"] > 5 * few.tpot_ms["mean"]
    for m, users in ((few, 64), (many, 640)):
        cycle = (m.ttft_ms["mean"] + 199 * m.tpot_ms["mean"]) / 1e3
        assert m.requests_per_s * cycle == pytest.approx(users, rel=1e-3)


def test_slo_flag_follows_its_percentile() -> None:
    dep, costs = _mixed()
    m = analytic(dep, _traffic(20.0), costs, Slo(ttft_ms=1e4, tpot_ms=1e4, percentile=95))
    assert m.meets_slo is True and "p95" in m.ttft_ms
    assert m.ttft_ms["p90"] <= m.ttft_ms["p95"] <= m.ttft_ms["p99"]
    tight = Slo(tpot_ms=m.tpot_ms["p50"] * 0.5)
    assert analytic(dep, _traffic(20.0), costs, tight).meets_slo is False
    loose_p50 = Slo(ttft_ms=m.ttft_ms["p50"] * 1.001, percentile=50)
    assert analytic(dep, _traffic(20.0), costs, loose_p50).meets_slo is True


def test_bad_inputs_raise_naming_the_field() -> None:
    dep, costs = _mixed()
    with pytest.raises(ValueError, match="rate"):
        analytic(dep, _traffic(0.0), costs)
    with pytest.raises(ValueError, match="mixed"):
        analytic(dep, _traffic(1.0), {})
    with pytest.raises(ValueError, match="prompt and output"):
        analytic(dep, Traffic(Lengths(mean=0.5), Lengths(mean=10), rate=1.0), costs)


def test_prompt_length_spread_widens_the_ttft_tail_not_the_mean_throughput() -> None:
    dep, costs = _mixed()
    fixed = analytic(dep, _traffic(8.0), costs)
    spread = analytic(dep, Traffic(Lengths(kind="lognormal", mean=1000, sigma=0.8), CHAT[1], rate=8.0), costs)
    assert spread.tokens_per_s_per_gpu == pytest.approx(fixed.tokens_per_s_per_gpu, rel=1e-9)
    assert spread.ttft_ms["p99"] > 1.5 * fixed.ttft_ms["p99"]
    assert spread.ttft_ms["p50"] < fixed.ttft_ms["p50"]  # the lognormal's median is below its mean


def test_poisson_and_length_quantiles() -> None:
    from paratune.serving._shapes import length_quantile, poisson_quantile

    assert poisson_quantile(0.0, 99.0) == 0.0
    assert poisson_quantile(0.1, 50.0) == 0.0 and poisson_quantile(0.1, 99.0) == 1.0  # P(0) = 0.905, P(<=1) = 0.995
    assert poisson_quantile(3.0, 90.0) == 5.0  # P(<=4) = 0.815, P(<=5) = 0.916
    assert length_quantile(Lengths(kind="uniform", mean=150, low=100, high=200), 90.0) == pytest.approx(190.0)
    median = length_quantile(Lengths(kind="lognormal", mean=1000, sigma=0.8), 50.0)
    assert median == pytest.approx(1000 * math.exp(-0.32), rel=1e-9)
    assert length_quantile(Lengths(kind="empirical", mean=2.5, values=(1, 2, 3, 4)), 90.0) == 4.0


def test_pipeline_parallel_instance_keeps_pp_batches_in_flight() -> None:
    """PP 2: each batch iterates every max(latency, 2 x interval); capacity stays near that of TP 2."""
    traffic = _traffic(4.0)
    pp = Deployment((Pool(tp=2, pp=2),))
    tp = Deployment((Pool(tp=4),))
    m_pp = analytic(pp, traffic, {"mixed": instance_cost("llama3-70b", H100, pp.pools[0], pp)})
    m_tp = analytic(tp, traffic, {"mixed": instance_cost("llama3-70b", H100, tp.pools[0], tp)})
    assert not m_pp.saturated and not m_tp.saturated
    assert m_pp.tpot_ms["mean"] > m_tp.tpot_ms["mean"]  # a token crosses both stages in turn
    cost = instance_cost("llama3-70b", H100, pp.pools[0], pp)
    one = cost.latency_s(Mix(decode_seqs=1, decode_context=1100, sampled=1))
    assert m_pp.tpot_ms["p50"] >= one * 1e3 * 0.99


class _LinearCost:
    """A bare IterationCost: 5 ms + 20 us per token, no fixed cost for an empty iteration, no kv_transfer_s."""

    pp = 1
    kv_capacity_tokens = 1_000_000

    def latency_s(self, mix: Mix) -> float:
        tokens = mix.prefill_tokens + mix.decode_seqs
        return 5e-3 + 20e-6 * tokens if tokens > 0 else 0.0

    def interval_s(self, mix: Mix) -> float:
        return self.latency_s(mix)


def test_any_iteration_cost_works_even_without_a_fixed_cost_per_iteration() -> None:
    dep = Deployment((Pool(),))
    m = analytic(dep, _traffic(2.0), {"mixed": _LinearCost()})
    # Capacity bound: 1000 + 199 tokens per request at 20 us (plus 5 ms per iteration) is far above 2 req/s.
    assert not m.saturated and m.requests_per_s == pytest.approx(2.0)
    assert m.tpot_ms["p50"] > 5.0 and m.ttft_ms["p50"] > 5.0 + 20e-3 * 1000
    dis = Deployment((Pool(role="prefill"), Pool(role="decode")))
    d = analytic(dis, _traffic(2.0), {"prefill": _LinearCost(), "decode": _LinearCost()})
    assert any("kv_transfer_s" in n for n in d.notes)


def test_metrics_json_is_strict_json_when_saturated() -> None:
    import json

    from paratune.serving import metrics_json

    dep, costs = _mixed()
    out = metrics_json(analytic(dep, _traffic(1000.0), costs, Slo(ttft_ms=100)))
    text = json.dumps(out, allow_nan=False)  # raises on inf / nan
    assert '"saturated": true' in text and out["ttft_ms"]["p90"] is None and out["meets_slo"] is False
