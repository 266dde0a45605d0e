"""The serving deployment search: its capacity is a true edge, its optimum the grid's, its fronts non-dominated."""

from __future__ import annotations

import itertools
import math

import pytest

from paratune.costmodel import get_platform
from paratune.search._serve import (
    Evaluator,
    ServingSpace,
    best_ratio,
    default_deployment,
    engine_defaults,
    pareto,
    search_deployments,
)
from paratune.serving import Deployment, Lengths, Pool, Slo, Traffic

CHAT = Traffic(Lengths("fixed", mean=1024.0), Lengths("fixed", mean=256.0), rate=1.0)
SLO = Slo(ttft_ms=1000.0, tpot_ms=30.0)
SMALL = ServingSpace(tp=(1, 2, 4), pp=(1,), max_num_seqs=(16, 64, 256), max_batched_tokens=(1024, 4096))


@pytest.fixture(scope="module")
def h100():
    return get_platform("dgx-h100")


@pytest.fixture(scope="module")
def result(h100):
    return search_deployments("llama3-8b", h100, CHAT, SLO, gpus=8, space=SMALL)


def test_the_best_meets_the_slo_and_uses_at_most_the_budget(result) -> None:
    best = result.best
    assert best is not None
    assert best.metrics.meets_slo is True and not best.metrics.saturated
    assert best.deployment.gpus <= 8
    assert best.metrics.tokens_per_s_per_gpu > 0
    assert result.evaluations > 0


def test_the_capacity_found_is_an_edge(h100) -> None:
    ev = Evaluator(
        "llama3-8b", h100, CHAT, SLO, gpus=8, target=None, proto=Deployment((Pool(),)),
    )  # fmt: skip
    dep = Deployment((Pool("mixed", tp=1, max_num_seqs=64, max_batched_tokens=4096),))
    cap = ev.capacity(dep)
    assert cap is not None
    assert ev.ok(dep, cap.load) is not None
    assert ev.ok(dep, cap.load * 1.1) is None  # bisection to well under 10%


def test_the_optimum_is_the_grids_best_aggregated_or_disaggregated(h100, result) -> None:
    ev = Evaluator("llama3-8b", h100, CHAT, SLO, gpus=8, target=None, proto=Deployment((Pool(),)))
    per_gpu = []
    for tp, seqs, chunk in itertools.product(SMALL.tp, SMALL.max_num_seqs, SMALL.max_batched_tokens):
        c = ev.aggregated(Pool("mixed", tp=tp, max_num_seqs=seqs, max_batched_tokens=chunk))
        if c is not None and c.metrics.meets_slo:
            per_gpu.append(c.metrics.tokens_per_s_per_gpu)
    assert per_gpu
    assert result.best.metrics.tokens_per_s_per_gpu >= max(per_gpu) * (1 - 1e-9)


def test_carrying_a_rate_takes_the_fewest_replicas(h100) -> None:
    traffic = Traffic(CHAT.prompt, CHAT.output, rate=20.0)
    res = search_deployments("llama3-8b", h100, traffic, SLO, gpus=8, carry=True, space=SMALL)
    best = res.best
    assert best is not None and best.load == 20.0
    assert best.metrics.meets_slo is True
    ev = Evaluator("llama3-8b", h100, traffic, SLO, gpus=8, target=20.0, proto=Deployment((Pool(),)))
    pools = best.deployment.pools
    if len(pools) == 1 and pools[0].replicas > 1:
        fewer = Deployment((Pool("mixed", pools[0].tp, pools[0].pp, pools[0].replicas - 1, pools[0].max_num_seqs,
                                 pools[0].max_batched_tokens),))  # fmt: skip
        assert ev.ok(fewer, 20.0) is None


def test_fronts_are_non_dominated(result) -> None:
    for front, key in (
        (result.front, lambda c: (c.metrics.tokens_per_s_per_gpu, c.metrics.tokens_per_s_per_user)),
        (result.ttft_front, lambda c: (c.metrics.tokens_per_s_per_gpu, -c.metrics.ttft_ms["p90"])),
    ):
        assert front
        for a, b in itertools.permutations(front, 2):
            ka, kb = key(a), key(b)
            assert not (ka[0] >= kb[0] and ka[1] >= kb[1] and ka != kb)
    assert pareto([], lambda c: (0.0, 0.0)) == []


def test_best_ratio_is_the_brute_force_optimum() -> None:
    for gp, cp, gd, cd, gpus in [(2, 3.0, 1, 1.0, 8), (1, 5.0, 4, 7.0, 16), (4, 1.0, 2, 9.0, 12)]:
        got = best_ratio(gp, cp, gd, cd, gpus, None)
        brute = max(
            (min(x * cp, y * cd) / (x * gp + y * gd), x, y)
            for x in range(1, gpus + 1)
            for y in range(1, gpus + 1)
            if x * gp + y * gd <= gpus
        )
        assert got is not None and math.isclose(got[0], brute[0], rel_tol=1e-12)
        assert got[1] * gp + got[2] * gd <= gpus
    assert best_ratio(2, 1.0, 2, 1.0, 3, None) is None
    carried = best_ratio(1, 2.0, 1, 3.0, 8, 5.0)
    assert carried == (5.0 / 5, 3, 2)


def test_best_ratio_filling_the_budget_is_the_brute_force_optimum_per_budget_gpu() -> None:
    for gp, cp, gd, cd, gpus in [(2, 3.0, 1, 1.0, 8), (1, 5.0, 4, 7.0, 16), (4, 1.0, 2, 9.0, 12), (2, 1.0, 4, 3.0, 16)]:
        got = best_ratio(gp, cp, gd, cd, gpus, None, fill=True)
        brute = max(
            min(x * cp, y * cd) / gpus
            for x in range(1, gpus + 1)
            for y in range(1, gpus + 1)
            if x * gp + y * gd <= gpus
        )
        assert got is not None and math.isclose(got[0], brute, rel_tol=1e-12)
        assert got[1] * gp + got[2] * gd <= gpus
    # per GPU used, 3 prefill (1 GPU, 1 req/s) and 1 decode (2 GPUs, 3 req/s) are best (0.6 on 5 GPUs, 3 idle); per
    # GPU of the budget 4 + 2 on all 8 serve more (4 req/s)
    assert best_ratio(1, 1.0, 2, 3.0, 8, None) == pytest.approx((0.6, 3, 1))
    assert best_ratio(1, 1.0, 2, 3.0, 8, None, fill=True) == pytest.approx((0.5, 4, 2))


def test_an_unreachable_slo_says_so(h100) -> None:
    res = search_deployments("llama3-8b", h100, CHAT, Slo(tpot_ms=0.01), gpus=8, space=SMALL)
    assert res.best is None and "SLO" in res.reason


def test_engine_defaults_follow_the_engines_rules(h100) -> None:
    assert engine_defaults("vllm", 80) == (1024, 8192)
    assert engine_defaults("vllm", 40) == (256, 2048)
    assert engine_defaults("sglang", 180)[1] == 16384
    assert engine_defaults("trtllm", 80) == (2048, 8192)
    dep = default_deployment("llama3-70b", h100, gpus=8)
    assert dep is not None and dep.pools[0].tp == 2 and dep.pools[0].replicas == 4  # 140 GB of weights: TP 2
    assert default_deployment("llama3-70b", h100, gpus=8, tp_rule="node").pools[0].tp == 8


def test_optuna_never_beats_the_exhaustive_optimum(h100, result) -> None:
    pytest.importorskip("optuna")
    from paratune.search._serve_optuna import optuna_deployments

    res = optuna_deployments("llama3-8b", h100, CHAT, SLO, gpus=8, space=SMALL, trials=25, seed=3)
    assert res.best is not None
    assert res.best.metrics.tokens_per_s_per_gpu <= result.best.metrics.tokens_per_s_per_gpu * (1 + 1e-9)
    again = optuna_deployments("llama3-8b", h100, CHAT, SLO, gpus=8, space=SMALL, trials=25, seed=3)
    assert again.best is not None and again.best.deployment == res.best.deployment  # seeded


def test_a_serving_problem_reads_back_and_names_bad_fields() -> None:
    from paratune.envs._serving import DEFAULT_SERVING_POOL
    from paratune.search._serve import ServingProblem

    for problem in DEFAULT_SERVING_POOL:
        assert ServingProblem.from_dict(problem.to_dict()) == problem
    data = DEFAULT_SERVING_POOL[0].to_dict()
    with pytest.raises(ValueError, match=r"x\.yaml: field 'gpus'"):
        ServingProblem.from_dict({**data, "gpus": 0}, where="x.yaml")
    with pytest.raises(ValueError, match="unknown field"):
        ServingProblem.from_dict({**data, "gpu": 8}, where="x.yaml")
    with pytest.raises(ValueError, match="finite"):
        ServingProblem.from_dict({**data, "rate": float("nan")}, where="x.yaml")


def test_a_closed_loop_capacity_stops_where_throughput_does(h100) -> None:
    closed = Traffic(CHAT.prompt, CHAT.output, concurrency=8)
    res = search_deployments("llama3-8b", h100, closed, None, gpus=2, space=SMALL)  # no SLO: nothing else stops it
    assert res.best is not None and res.best.load < 2**20
    ev = Evaluator("llama3-8b", h100, closed, None, gpus=2, target=None, proto=Deployment((Pool(),)))
    more = ev.at(res.best.deployment, res.best.load * 4)
    assert more is not None and more.requests_per_s <= res.best.metrics.requests_per_s * 1.01
