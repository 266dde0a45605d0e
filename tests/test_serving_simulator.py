"""The request-level serving simulator on a linear iteration cost, where queueing has closed forms."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from paratune.serving import Deployment, Lengths, Mix, Pool, Slo, Traffic, simulate

A, B, C, D = 4e-3, 1e-4, 1e-7, 2e-4  # s per iteration, per prompt token, per cached token read, per decode


@dataclass
class Linear:
    """A legitimate simple iteration cost: a + b * prompt tokens + c * decode context + d * decode sequences.

    With PP the stages split it evenly: a new iteration may start every latency / pp.
    """

    kv_capacity_tokens: int = 1 << 30
    pp: int = 1
    a: float = A

    def latency_s(self, mix: Mix) -> float:
        return self.a + B * mix.prefill_tokens + C * mix.decode_context + D * mix.decode_seqs

    def interval_s(self, mix: Mix) -> float:
        return self.latency_s(mix) / self.pp


def _fixed(prompt: int, output: int, *, rate: float | None = None, concurrency: int | None = None) -> Traffic:
    return Traffic(Lengths("fixed", mean=prompt), Lengths("fixed", mean=output), rate=rate, concurrency=concurrency)


def _mixed(**pool: int) -> Deployment:
    return Deployment((Pool(**pool),))


def test_alone_ttft_is_the_prefill_and_tpot_the_decode_step() -> None:
    p, o = 200, 50
    m = simulate(_mixed(), _fixed(p, o, rate=0.2), {"mixed": Linear()}, requests=300, seed=1)
    prefill = A + B * p
    step = A + D + C * (p + o / 2)  # the mean decode context over the steps: p + 1 .. p + o - 1
    assert m.ttft_ms["p50"] == pytest.approx(prefill * 1e3, rel=1e-9)
    assert m.tpot_ms["p50"] == pytest.approx(step * 1e3, rel=1e-9)
    assert m.tokens_per_s_per_user == pytest.approx(1 / step, rel=0.02)  # a few requests overlap
    assert not m.saturated
    assert m.tokens_per_s_per_gpu == pytest.approx(0.2 * o, rel=0.15)  # Poisson count over the window


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_waiting_time(rho: float) -> None:
    """One request at a time, prefill only: an M/D/1 queue, mean wait rho S / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    p = 500
    service = A + B * p
    rate = rho / service
    m = simulate(_mixed(max_num_seqs=1), _fixed(p, 1, rate=rate), {"mixed": Linear()}, requests=40_000, seed=2)
    wait = rho * service / (2 * (1 - rho))
    assert m.ttft_ms["mean"] == pytest.approx((wait + service) * 1e3, rel=0.06)
    assert m.concurrency == pytest.approx(rate * (wait + service), rel=0.06)  # Little's law, L = lambda W
    assert m.ttft_ms["p50"] < m.ttft_ms["p90"] < m.ttft_ms["p99"]
    assert not m.saturated


def test_littles_law_with_continuous_batching() -> None:
    o = 64
    m = simulate(_mixed(max_num_seqs=32), _fixed(300, o, rate=10.0), {"mixed": Linear()}, requests=6000, seed=3)
    e2e = (m.ttft_ms["mean"] + (o - 1) * m.tpot_ms["mean"]) / 1e3
    assert m.concurrency == pytest.approx(m.requests_per_s * e2e, rel=0.05)
    assert m.requests_per_s == pytest.approx(10.0, rel=0.05)
    assert m.tokens_per_s_per_gpu == pytest.approx(10.0 * o, rel=0.05)
    assert 1 < m.concurrency < 32


def test_saturation_is_flagged_and_slo_fails() -> None:
    slo = Slo(ttft_ms=1000.0, tpot_ms=100.0)
    traffic = Traffic(Lengths("lognormal", mean=512.0, sigma=0.5), Lengths("fixed", mean=128.0), rate=40.0)
    over = simulate(_mixed(max_num_seqs=16), traffic, {"mixed": Linear()}, slo, requests=3000)
    assert over.saturated and over.meets_slo is False
    assert any("saturated" in n for n in over.notes)
    light = Traffic(traffic.prompt, traffic.output, rate=5.0)
    under = simulate(_mixed(max_num_seqs=16), light, {"mixed": Linear()}, slo, requests=3000)
    assert not under.saturated and under.meets_slo is True
    # at saturation the batch is full: throughput is what 16 running sequences give, not the arrivals
    assert over.tokens_per_s_per_gpu < 40.0 * 128 * 0.8


def test_kv_capacity_bounds_the_batch() -> None:
    p, o = 100, 400
    cost = Linear(kv_capacity_tokens=4 * (p + o) + 10)  # four requests fit, the fifth waits
    m = simulate(_mixed(), _fixed(p, o, concurrency=16), {"mixed": cost}, requests=400, warmup=0.2)
    step = A + 4 * D + 4 * C * (p + o / 2)  # about: four decodes per iteration
    assert m.tokens_per_s_per_gpu == pytest.approx(4 / step, rel=0.1)
    assert m.saturated  # 16 users, 4 run: more wait than run
    with pytest.raises(ValueError, match="needs 1,100 KV tokens but a mixed instance holds 1,000"):
        simulate(_mixed(), _fixed(600, 500, rate=1.0), {"mixed": Linear(kv_capacity_tokens=1000)}, requests=10)
    no_room = Linear()
    no_room.kv_capacity_tokens = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="weights alone do not fit"):
        simulate(_mixed(), _fixed(6, 5, rate=1.0), {"mixed": no_room}, requests=10)


def test_closed_loop_runs_the_concurrency() -> None:
    p, o, users = 50, 100, 8
    m = simulate(_mixed(), _fixed(p, o, concurrency=users), {"mixed": Linear()}, requests=2000)
    assert m.concurrency == pytest.approx(users, rel=0.02)
    assert not m.saturated
    step = A + users * D + C * users * (p + o / 2)
    assert m.tokens_per_s_per_gpu == pytest.approx(users / step, rel=0.1)


def test_disaggregated_prefill_then_transfer_then_decode() -> None:
    p, o, transfer = 400, 20, 0.05
    dep = Deployment((Pool(role="prefill"), Pool(role="decode", replicas=2)))
    costs = {"prefill": Linear(), "decode": Linear()}
    m = simulate(dep, _fixed(p, o, rate=0.1), costs, requests=200, kv_transfer_s=lambda tokens: transfer)
    assert m.ttft_ms["p50"] == pytest.approx((A + B * p) * 1e3, rel=1e-9)
    step = A + D + C * (p + o / 2)
    assert m.tpot_ms["p50"] == pytest.approx((transfer + (o - 1) * step) / (o - 1) * 1e3, rel=1e-9)
    with pytest.raises(ValueError, match="no entry for the 'decode' pool"):
        simulate(dep, _fixed(p, o, rate=0.1), {"prefill": Linear()}, requests=10)


def test_transfer_time_read_from_the_cost_object() -> None:
    @dataclass
    class WithTransfer(Linear):
        def kv_transfer_s(self, tokens: int) -> float:
            return 1e-4 * tokens

    dep = Deployment((Pool(role="prefill"), Pool(role="decode")))
    p, o = 400, 11
    m = simulate(dep, _fixed(p, o, rate=0.1), {"prefill": Linear(), "decode": WithTransfer()}, requests=100)
    step = A + D + C * (p + o / 2)
    assert m.tpot_ms["p50"] == pytest.approx((0.04 + (o - 1) * step) / (o - 1) * 1e3, rel=1e-9)


def test_pipeline_lanes_overlap_iterations() -> None:
    """PP 2: two lanes of 32 requests, one iteration starting every latency / 2, so twice the lanes' rate.

    Outputs vary so that the lanes balance (identical requests released together would all join one lane).
    """
    users, o = 64, 400
    traffic = Traffic(Lengths("fixed", mean=8.0), Lengths("uniform", mean=o, low=200, high=600), concurrency=users)
    dep = Deployment((Pool(pp=2, max_num_seqs=64),))
    cost = Linear(pp=2, a=0.02)
    m = simulate(dep, traffic, {"mixed": cost}, requests=1000, warmup=0.3)
    lane_step = 0.02 + 32 * D + C * 32 * (8 + o / 2)
    assert m.tokens_per_s_per_gpu * dep.gpus == pytest.approx(64 / lane_step, rel=0.05)
    flat = simulate(_mixed(max_num_seqs=64), traffic, {"mixed": Linear(a=0.02)}, requests=1000, warmup=0.3)
    assert m.tokens_per_s_per_gpu * 2 > 1.2 * flat.tokens_per_s_per_gpu  # 64 / (a + 32 d) against 64 / (a + 64 d)


def test_replicas_behind_the_router_scale() -> None:
    traffic = Traffic(Lengths("uniform", mean=300.0, low=100, high=500), Lengths("fixed", mean=64.0), rate=10.0)
    one = simulate(_mixed(max_num_seqs=32), traffic, {"mixed": Linear()}, requests=4000, seed=5)
    double = Traffic(traffic.prompt, traffic.output, rate=20.0)
    two = simulate(_mixed(max_num_seqs=32, replicas=2), double, {"mixed": Linear()}, requests=8000, seed=5)
    assert two.tokens_per_s_per_gpu == pytest.approx(one.tokens_per_s_per_gpu, rel=0.05)
    assert two.tpot_ms["p50"] == pytest.approx(one.tpot_ms["p50"], rel=0.1)
    assert two.ttft_ms["p50"] <= one.ttft_ms["p50"] * 1.1  # least-loaded routing pools the queues


def test_chunked_prefill_respects_the_token_budget() -> None:
    seen: list[Mix] = []

    @dataclass
    class Recording(Linear):
        def latency_s(self, mix: Mix) -> float:
            seen.append(mix)
            return super().latency_s(mix)

    traffic = Traffic(Lengths("uniform", mean=1500.0, low=1000, high=2000), Lengths("fixed", mean=32.0), rate=30.0)
    simulate(_mixed(max_batched_tokens=512, max_num_seqs=64), traffic, {"mixed": Recording()}, requests=300)
    assert max(m.tokens for m in seen) == 512
    assert any(m.prefill_tokens and m.decode_seqs for m in seen)  # chunks ride along with decodes
    whole = [m for m in seen if m.prefill_tokens and m.decode_seqs == 0 and m.sampled == 0]
    assert all(m.prefill_attention >= m.prefill_tokens * (m.prefill_tokens + 1) / 2 - 1e-6 for m in whole)


def test_seeded_and_validated() -> None:
    traffic = Traffic(Lengths("lognormal", mean=256.0, sigma=1.0), Lengths("fixed", mean=16.0), rate=10.0)
    cost = {"mixed": Linear()}
    a, b = (
        simulate(_mixed(), traffic, cost, requests=500, seed=7),
        simulate(_mixed(), traffic, cost, requests=500, seed=7),
    )
    assert a == b
    assert simulate(_mixed(), traffic, cost, requests=500, seed=8) != a
    with pytest.raises(ValueError, match="requests is 1,000,001"):
        simulate(_mixed(), traffic, cost, requests=1_000_001)
    with pytest.raises(ValueError, match="warmup"):
        simulate(_mixed(), traffic, cost, warmup=1.0)

    @dataclass
    class Broken(Linear):
        def latency_s(self, mix: Mix) -> float:
            return float("nan")

    with pytest.raises(ValueError, match="latency nan"):
        simulate(_mixed(), traffic, {"mixed": Broken()}, requests=10)
