"""``benchmarks/_aic_serving.py``: AIConfigurator's serving search as a peer, in paratune's deployment schema.

The first tests need no peer: the scenarios cover what issue 17 asks for and a result row
of the peer translates into a deployment paratune reads back. The last one runs the peer's
search on a small scenario (two GPUs, disaggregated) and checks that its estimate of the
chosen deployment reproduces the search's own figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from paratune.serving import Deployment

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "_aic_serving.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_aic_serving", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_scenarios_cover_the_issue(bench: ModuleType) -> None:
    scenarios = bench.SCENARIOS
    assert len(scenarios) >= 12
    assert len({s["name"] for s in scenarios}) == len(scenarios)
    assert {s["model"] for s in scenarios} == {"llama3-8b", "llama3-70b", "mixtral-8x7b"}
    assert {s["system"] for s in scenarios} == {"h100_sxm", "h200_sxm", "b200_sxm"}
    assert {s["traffic"] for s in scenarios} == {"chat", "long"}
    assert {s["mode"] for s in scenarios} == {"agg", "disagg", "both"}
    for s in scenarios:
        assert s["platform"] == bench.PLATFORMS[s["system"]]
        assert s["ttft_ms"] > 0 and s["tpot_ms"] > 0 and s["isl"] > s["osl"] > 1


def test_agg_row_translates_and_reads_back(bench: ModuleType) -> None:
    scenario = bench._scenario("llama3.1-8b", "h200_sxm", bench.CHAT, "agg")  # 8 GPUs
    row = {"tp": 2, "pp": 1, "bs": 96, "ctx_tokens": 2048, "num_total_gpus": 2, "dp": 1, "moe_ep": None}
    row |= {"backend": "vllm", "gemm": "fp8", "kvcache": "bfloat16"}
    data, notes = bench.row_to_deployment(row, scenario, "agg")
    dep = Deployment.from_dict(data)
    assert notes == []
    (pool,) = dep.pools
    assert (pool.role, pool.tp, pool.replicas, pool.max_num_seqs, pool.max_batched_tokens) == ("mixed", 2, 4, 96, 2048)
    assert (dep.engine, dep.dtype, dep.kv_dtype, dep.gpus) == ("vllm", "fp8", "bf16", 8)


def test_disagg_row_scales_workers_by_the_copies_that_fit(bench: ModuleType) -> None:
    scenario = bench._scenario("llama3.1-70b", "h100_sxm", bench.LONG, "disagg", gpus=16)
    row = {"(p)tp": 2, "(p)pp": 1, "(p)bs": 1, "(p)workers": 1, "(p)dp": 1, "(p)moe_ep": 1}
    row |= {"(d)tp": 4, "(d)pp": 1, "(d)bs": 64, "(d)workers": 1, "(d)dp": 2, "(d)moe_ep": 1, "num_total_gpus": 6}
    row |= {"(d)gemm": "bfloat16", "(d)kvcache": "fp8_block"}
    data, notes = bench.row_to_deployment(row, scenario, "disagg")
    dep = Deployment.from_dict(data)
    pre, dec = dep.pool("prefill"), dep.pool("decode")
    assert (pre.tp, pre.replicas, pre.max_num_seqs, pre.max_batched_tokens) == (2, 2, 1, 8192)
    assert (dec.tp, dec.replicas, dec.max_num_seqs, dec.max_batched_tokens) == (4, 2, 64, 64)
    assert dep.gpus == 12  # two copies of the 6-GPU group fit in 16
    assert dep.kv_dtype == "bf16"  # a quant mode paratune has no name for reads as bf16, and says so
    assert len(notes) == 2 and all("not expressible" in n for n in notes)
    assert notes[0].startswith("(d)attention dp 2") and "fp8_block" in notes[1]


def test_paratune_inputs_speak_the_serving_vocabulary(bench: ModuleType) -> None:
    scenario = bench._scenario("llama3.1-70b", "h200_sxm", bench.LONG, "both", tpot_ms=50.0)
    inputs = bench.paratune_inputs(scenario, concurrency=96)
    traffic, slo = inputs["traffic"], inputs["slo"]
    assert (traffic.prompt.mean, traffic.output.mean, traffic.concurrency, traffic.rate) == (8192, 512, 96, None)
    assert (slo.ttft_ms, slo.tpot_ms, slo.percentile) == (4000.0, 50.0, 50.0)
    assert (inputs["gpus"], inputs["platform"], inputs["model"]) == (8, "hgx-h200", "llama3-70b")
    assert bench.paratune_inputs(scenario)["traffic"].concurrency == 8 * 64


def _figures(cluster: float, *, meets: bool = True, gpus: int = 8, fits: bool = True) -> dict:
    return {"tokens_per_s_per_gpu_cluster": cluster, "meets_slo": meets, "gpus_used": gpus, "fits": fits}


@pytest.mark.parametrize(
    ("ours", "ratio", "as_good"),
    [
        (_figures(980.0), 0.98, True),
        (_figures(960.0), 0.96, False),
        (_figures(1500.0, meets=False), 0.0, False),  # misses the SLO: worth nothing
        (_figures(1500.0, gpus=16), 0.0, False),  # over the GPU budget: worth nothing
        (_figures(1500.0, fits=False), 0.0, False),  # its KV cache does not fit: worth nothing
    ],
)
def test_compare_scores_by_the_peers_estimate(bench: ModuleType, monkeypatch, ours: dict, ratio, as_good) -> None:
    scenario = bench._scenario("llama3.1-8b", "h100_sxm", bench.CHAT, "agg")
    monkeypatch.setattr(bench, "aic_estimate", lambda *a, **k: ours)
    found = {"aic": _figures(1000.0), "wall_s": 10.0}
    got = bench.compare(scenario, found, {}, wall_s=4.0)
    assert got["ratio"] == pytest.approx(ratio, abs=1e-12)
    assert got["as_good"] is as_good
    assert got["faster"] and got["wall_ratio"] == pytest.approx(0.4)


def test_verdict_needs_the_share_and_the_total_wall_time(bench: ModuleType) -> None:
    def row(good: bool, wall: float) -> dict:
        return {"as_good": good, "faster": wall <= 10.0, "wall_s": wall, "peer_wall_s": 10.0}

    passing = [row(True, 5.0)] * 4 + [row(False, 5.0)]  # 80%, half the time
    assert bench.verdict(passing)["meets_target"]
    assert not bench.verdict([row(True, 5.0)] * 3 + [row(False, 5.0)] * 2)["meets_target"]  # 60%
    slow = bench.verdict([row(True, 30.0)] + [row(True, 5.0)] * 4)  # 50 s against 50 s: still no more
    assert slow["meets_target"] and slow["faster"] == 4
    assert not bench.verdict([row(True, 31.0)] + [row(True, 5.0)] * 4)["meets_target"]
    assert not bench.verdict([])["meets_target"]


@pytest.mark.needs("aiconfigurator", "aiconfigurator_core")
def test_search_reads_back_and_its_estimate_reproduces_it(bench: ModuleType) -> None:
    scenario = bench._scenario("llama3.1-8b", "h200_sxm", bench.CHAT, "disagg", gpus=2)
    found = bench.aic_search(scenario)
    assert found["status"] == "ok" and found["mode"] == "disagg"
    dep = Deployment.from_dict(found["deployment"])
    assert dep.disaggregated and dep.gpus <= 2
    assert dep.to_dict() == found["deployment"]
    assert found["wall_s"] > 0
    again = bench.aic_estimate(scenario, found["deployment"])
    for key in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_ms", "tpot_ms"):
        assert again[key] == pytest.approx(found["aic"][key], rel=0.01), key
    assert again["meets_slo"] == found["aic"]["meets_slo"]
    same = bench.compare(scenario, found, found["deployment"], wall_s=found["wall_s"])
    assert same["ratio"] == pytest.approx(1.0, rel=0.01) and same["as_good"]
    oversized = {"pools": [{"role": "mixed", "tp": 1, "replicas": 2, "max_num_seqs": 4096}]}
    worse = bench.compare(scenario, found, oversized, wall_s=1.0)
    assert not worse["estimate"]["fits"] and worse["estimate"]["notes"]
    assert worse["ratio"] == 0.0 and not worse["as_good"]
