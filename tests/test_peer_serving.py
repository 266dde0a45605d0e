"""``benchmarks/peer_serving.py`` (``peer_aiconfigurator.py --serving``): paratune's serving search against the peer's.

The first tests need no peer: how the question is posed to paratune, how paratune's choice is handed to the peer
(each decoding pool's batch cap at its operating batch), and the verdict over the rows, failures included. The last
one runs both searches and both cross-evaluations on a small scenario.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from paratune.serving import Deployment, Pool

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the benchmark imports its siblings by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("peer_serving")


@pytest.fixture(scope="module")
def aic() -> ModuleType:
    return _load("_aic_serving")


def test_pose_is_an_open_loop_at_the_median_with_the_scenarios_modes(bench: ModuleType, aic: ModuleType) -> None:
    scenario = aic._scenario("llama3.1-70b", "h200_sxm", aic.LONG, "disagg", tpot_ms=50.0)
    q = bench.pose(scenario)
    assert q["traffic"].concurrency is None and q["traffic"].rate == 1.0
    assert (q["traffic"].prompt.mean, q["traffic"].output.mean) == (8192, 512)
    assert (q["slo"].ttft_ms, q["slo"].tpot_ms, q["slo"].percentile) == (4000.0, 50.0, 50.0)
    assert q["modes"] == ("disagg",)
    assert bench.pose(aic._scenario("llama3.1-8b", "h100_sxm", aic.CHAT, "both"))["modes"] == ("agg", "disagg")
    # The peer's fp8 scenario stores its KV cache in fp8: paratune is asked the same (bf16 KV lost it the SLO).
    fp8 = bench.pose(aic._scenario("llama3.1-70b", "b200_sxm", aic.CHAT, "agg", tpot_ms=40.0, dtype="fp8"))
    assert (fp8["dtype"], fp8["kv_dtype"]) == ("fp8", "fp8") and q["kv_dtype"] == "bf16"


def test_operating_batch_is_littles_law_rounded_up_within_the_cap(bench: ModuleType) -> None:
    assert bench.operating_batch(10.0, 5.0, 1, 1024) == 50
    assert bench.operating_batch(10.0, 5.01, 1, 1024) == 51  # rounded up: the cap must hold the batch
    assert bench.operating_batch(10.0, 5.0, 2, 1024) == 25  # per batch in flight of a PP instance
    assert bench.operating_batch(10.0, 5.0, 1, 32) == 32  # never above the cap searched
    assert bench.operating_batch(0.001, 1.0, 1, 64) == 1
    assert bench.operating_batch(math.inf, 1.0, 1, 64) == 64


def test_handoff_caps_the_decoding_pools_at_their_batch(bench: ModuleType) -> None:
    metrics = SimpleNamespace(tpot_ms={"mean": 20.0}, requests_per_s=40.0)
    agg = Deployment((Pool("mixed", tp=1, replicas=8, max_num_seqs=1024, max_batched_tokens=2048),))
    (pool,) = bench.handoff(agg, metrics, 1024, 256).pools
    assert (pool.max_num_seqs, pool.max_batched_tokens, pool.replicas) == (26, 2048, 8)  # 5 req/s x 256 x 20 ms
    pd = Deployment(
        (Pool("prefill", tp=1, replicas=4, max_num_seqs=1024, max_batched_tokens=4096),
         Pool("decode", tp=2, replicas=2, max_num_seqs=512, max_batched_tokens=16384))
    )  # fmt: skip
    pre, dec = bench.handoff(pd, metrics, 1024, 256).pools
    assert pre == pd.pools[0]  # no price for the prefill side: as chosen
    assert dec.max_num_seqs == 102 and dec.max_batched_tokens == 16384  # 20 req/s x 255 x 20 ms

    class Cost:  # 10 ms a step plus 10 us a prompt token
        pp = 1

        def latency_s(self, mix) -> float:
            return 0.01 + 1e-5 * mix.prefill_tokens

        interval_s = latency_s

    busy = SimpleNamespace(tpot_ms={"mean": 20.0}, requests_per_s=200.0)
    pre, dec = bench.handoff(pd, busy, 1024, 256, lambda pool: Cost()).pools
    # 50 prompts/s an instance: one prompt a 20.24 ms step is not enough (1.01 > 1), two a 30.5 ms step are
    assert (pre.max_num_seqs, pre.max_batched_tokens, pre.replicas) == (2, 2048, 4)
    assert dec.max_num_seqs == 510
    assert bench.prefill_batch(Cost(), 1e6, 1024, 1, 4) == 4  # never above what the budget admits


def test_figures_count_the_budget_and_a_missing_metric_is_worth_nothing(bench: ModuleType) -> None:
    m = SimpleNamespace(
        tokens_per_s_per_gpu=1000.0, tokens_per_s_per_user=40.0, requests_per_s=3.0, saturated=False,
        ttft_ms={"p50": 120.0}, tpot_ms={"p50": math.inf}, meets_slo=True,
    )  # fmt: skip
    f = bench.figures(m, 6, 8)
    assert f["tokens_per_s_per_gpu_cluster"] == pytest.approx(750.0, rel=1e-12)  # two idle GPUs of eight
    assert f["ttft_ms"] == 120.0 and f["tpot_ms"] is None and f["meets_slo"]
    nothing = bench.figures(None, 6, 8)
    assert nothing["tokens_per_s_per_gpu_cluster"] == 0.0 and not nothing["meets_slo"]


def test_summary_counts_failures_as_misses_and_their_wall_time(bench: ModuleType) -> None:
    rows = [
        {"scenario": f"s{i}", "status": "ok", "ratio": 1.0, "as_good": True, "faster": True,
         "paratune_wall_s": 1.0, "peer_wall_s": 10.0}
        for i in range(4)
    ]  # fmt: skip
    assert bench.summarise(rows)["meets_target"]
    failed = {"scenario": "s4", "status": "error", "error": "x", "paratune_wall_s": 0.5, "peer_wall_s": 2.0}
    s = bench.summarise([*rows, failed])
    assert (s["as_good"], s["scenarios"], s["errors"]) == (4, 5, 1)
    assert s["wall_s"] == pytest.approx(4.5) and s["peer_wall_s"] == pytest.approx(42.0)
    assert s["meets_target"]  # 80% as good
    slow = [{**r, "paratune_wall_s": 20.0} for r in rows]
    assert not bench.summarise(slow)["meets_target"]  # as good, but slower in total
    assert bench._finite({"a": [math.inf, 1.0], "b": math.nan}) == {"a": [None, 1.0], "b": None}


def test_refit_takes_the_largest_batch_the_peer_allows_and_its_best_neighbour(bench: ModuleType, aic) -> None:
    assert bench.refit_candidates(100) == [56, 64, 80, 96, 100, 112, 128, 144, 160, 176, 192]
    scenario = aic._scenario("llama3.1-8b", "h100_sxm", aic.CHAT, "agg")
    calls: list[int] = []

    def estimate(dep: dict) -> dict:
        b = dep["pools"][0]["max_num_seqs"]
        calls.append(b)
        worth = 1000.0 + b if b != 112 else 5000.0  # not monotone: 112 beats the largest batch that meets the SLO
        return {"tokens_per_s_per_gpu_cluster": worth, "meets_slo": b <= 130, "gpus_used": 8, "fits": True}

    dep = Deployment((Pool("mixed", replicas=8, max_num_seqs=100),)).to_dict()
    fit = bench.refit(scenario, dep, estimate)
    assert fit["batch"] == 112 and fit["score"] == 5000.0
    assert len(calls) == len(set(calls)) == fit["calls"] <= 6  # binary search, then two neighbours, each once
    assert 128 in calls and 144 in calls  # the edge: 128 meets the SLO, 144 does not
    nothing = bench.refit(scenario, dep, lambda d: {**estimate(d), "meets_slo": False})
    assert nothing["score"] == 0.0


def test_refit_halves_a_prefill_batch_the_peer_finds_too_slow(bench: ModuleType, aic: ModuleType) -> None:
    scenario = aic._scenario("llama3.1-8b", "h100_sxm", aic.CHAT, "disagg")
    pd = Deployment(
        (Pool("prefill", replicas=4, max_num_seqs=8, max_batched_tokens=8192),
         Pool("decode", tp=2, replicas=2, max_num_seqs=100))
    ).to_dict()  # fmt: skip

    def estimate(dep: dict) -> dict:
        pre, dec = dep["pools"]
        assert pre["max_batched_tokens"] == 1024 * pre["max_num_seqs"]  # the peer's (p)bs, whole prompts
        ok = pre["max_num_seqs"] <= 2 and dec["max_num_seqs"] <= 120  # TTFT wants at most 2 prompts a batch
        worth = 100.0 + dec["max_num_seqs"] - pre["max_num_seqs"]
        return {"tokens_per_s_per_gpu_cluster": worth, "meets_slo": ok, "gpus_used": 8, "fits": True}

    fit = bench.refit(scenario, pd, estimate)
    assert (fit["prefill_batch"], fit["batch"], fit["score"]) == (2, 112, 210.0)


def test_labels_are_short(bench: ModuleType) -> None:
    pd = Deployment((Pool("prefill", replicas=4, max_batched_tokens=2048), Pool("decode", tp=2, pp=2, max_num_seqs=96)))
    assert bench.label(pd.to_dict()) == "P 4x tp1 t2048 + D 1x tp2pp2 b96"


@pytest.mark.needs("aiconfigurator", "aiconfigurator_core")
def test_both_searches_and_both_cross_evaluations_on_a_small_scenario(bench: ModuleType, aic: ModuleType) -> None:
    from peer_aiconfigurator import _PeerModels

    scenario = aic._scenario("llama3.1-8b", "h200_sxm", aic.CHAT, "agg", gpus=2)
    models = _PeerModels()
    try:
        row = bench.run_scenario(scenario, models, refit_batch=False)  # the re-fit is tested above without the peer
    finally:
        models.close()
    assert row["status"] == "ok", row
    ours, theirs = row["paratune"], row["peer"]
    hand = Deployment.from_dict(ours["handoff"])
    assert hand.gpus <= 2 and not hand.disaggregated
    assert ours["paratune"]["meets_slo"] and ours["paratune"]["tokens_per_s_per_gpu_cluster"] > 0
    # at the hand-off's cap (the mean batch, no PP) paratune's throughput holds within 2% (TTFT grows: prompts queue)
    assert ours["handoff_paratune"]["tokens_per_s_per_gpu_cluster"] == pytest.approx(
        ours["paratune"]["tokens_per_s_per_gpu_cluster"], rel=0.02
    )
    assert ours["peer"]["tokens_per_s_per_gpu_cluster"] > 0 and theirs["peer"]["meets_slo"]
    assert theirs["paratune"]["fits"] and theirs["paratune"]["at_capacity"]["tokens_per_s_per_gpu_cluster"] > 0
    assert row["ratio"] == pytest.approx(
        ours["peer"]["tokens_per_s_per_gpu_cluster"] / theirs["peer"]["tokens_per_s_per_gpu_cluster"], rel=1e-9
    )
    assert row["paratune_wall_s"] > 0 and row["peer_wall_s"] > 0
