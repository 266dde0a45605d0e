"""Planning headroom (``slo_margin``): the search plans below the SLO by a margin, auto = the model's own error."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from paratune.costmodel import get_platform
from paratune.costmodel._iteration import IterationModel
from paratune.costmodel._trust import ErrorModel
from paratune.graphs import get_model
from paratune.search._serve import Evaluator, ServingProblem, ServingSpace, search_deployments
from paratune.serving import Deployment, Lengths, Pool, Slo, Traffic
from paratune.serving._margin import (
    UNCALIBRATED_MARGIN_PCT,
    check_margin,
    decode_step,
    deployment_margins,
    step_error_pct,
)

CHAT = Traffic(Lengths("fixed", mean=1024.0), Lengths("fixed", mean=256.0), rate=1.0)
SLO = Slo(ttft_ms=1000.0, tpot_ms=30.0)
SMALL = ServingSpace(tp=(1, 2, 4), pp=(1,), max_num_seqs=(16, 64, 256), max_batched_tokens=(1024, 4096))
MIXED = Deployment((Pool("mixed", tp=1, max_num_seqs=256, max_batched_tokens=1024),))
#: The best of SMALL on dgx-h100 before the margin existed (commit 099dc95): margin 0 must keep it.
BEFORE_TOKENS_PER_S_PER_GPU = 5340.697662226169
BEFORE_EVALUATIONS = 669


@pytest.fixture(scope="module")
def h100():
    return get_platform("dgx-h100")


def _ev(platform: Any, margin: float | str, slo: Slo | None = SLO) -> Evaluator:
    return Evaluator("llama3-8b", platform, CHAT, slo, gpus=8, target=None, proto=Deployment((Pool(),)),
                     slo_margin=margin)  # fmt: skip


def test_margin_zero_keeps_the_search_as_it_was(h100) -> None:
    res = search_deployments("llama3-8b", h100, CHAT, SLO, gpus=8, space=SMALL, slo_margin=0)
    assert res.best is not None
    assert res.best.metrics.tokens_per_s_per_gpu == pytest.approx(BEFORE_TOKENS_PER_S_PER_GPU, rel=1e-9)
    assert res.evaluations == BEFORE_EVALUATIONS
    assert res.to_dict()["slo_margin"]["planning_slo"] == {"ttft_ms": 1000.0, "tpot_ms": 30.0, "percentile": 90.0}


def test_a_margin_shrinks_the_load_a_deployment_is_run_at(h100) -> None:
    tight = Slo(ttft_ms=1000.0, tpot_ms=15.0)  # TPOT binds well before the batch cap
    edge, planned = _ev(h100, 0, tight).capacity(MIXED), _ev(h100, 10, tight).capacity(MIXED)
    assert edge is not None and planned is not None
    assert planned.load < edge.load * 0.95  # measured 12% less load for 10% less TPOT
    assert planned.metrics.tpot_ms["p90"] <= 15.0 / 1.1 * (1 + 1e-9)
    assert edge.metrics.tpot_ms["p90"] > 15.0 / 1.1  # the edge itself would break on a 10% slower step
    assert planned.metrics.meets_slo is True  # against the planning target


def test_the_search_meets_the_planning_targets_and_records_both(h100) -> None:
    res = search_deployments("llama3-8b", h100, CHAT, SLO, gpus=8, space=SMALL, slo_margin=5.0)
    assert res.best is not None
    m = res.best.metrics
    assert m.tpot_ms["p90"] <= 30.0 / 1.05 * (1 + 1e-9) and m.ttft_ms["p90"] <= 1000.0 / 1.05 * (1 + 1e-9)
    record = res.to_dict()["slo_margin"]
    assert record["requested"] == 5.0 and record["source"] == "fixed"
    assert record["ttft_pct"] == record["tpot_pct"] == 5.0
    assert record["planning_slo"]["tpot_ms"] == pytest.approx(30.0 / 1.05, rel=1e-12)
    assert res.best.metrics.tokens_per_s_per_gpu < BEFORE_TOKENS_PER_S_PER_GPU


def test_auto_is_the_profiles_held_out_error_of_the_step(h100) -> None:
    ev = _ev(h100, "auto")
    margins = ev.margins(MIXED)
    assert margins is not None and margins.source == "auto"
    errors = ErrorModel.from_profile(h100.profile)
    assert errors is not None
    lo, hi = 100 * min(errors.kind.values()), 100 * max(errors.kind.values())
    assert lo < margins.tpot_pct < hi  # a time-weighted mean of the kinds' errors
    assert margins.ttft_pct == margins.tpot_pct  # aggregated: the prompts run in the same mixed steps
    plan = ev.planning_slo(MIXED)
    assert plan is not None and plan.tpot_ms == pytest.approx(30.0 / (1 + margins.tpot_pct / 100), rel=1e-12)


def _scaled(err: Any, k: float) -> Any:
    if isinstance(err, dict):
        return {key: (v * k if key == "mape" else _scaled(v, k)) for key, v in err.items()}
    return err


def test_auto_follows_the_profile_doubling_its_errors_doubles_the_margin(h100) -> None:
    spec = get_model("llama3-8b")
    pool = MIXED.pools[0]
    worse = replace(h100, profile=replace(h100.profile, holdout_error=_scaled(h100.profile.holdout_error, 2.0)))
    a = IterationModel(spec, h100, tp=1, budget_tokens=1024, max_seqs=256)
    b = IterationModel(spec, worse, tp=1, budget_tokens=1024, max_seqs=256)
    mix = decode_step(a, pool, 1024.0, 256.0)
    ea, eb = step_error_pct(a, mix), step_error_pct(b, mix)
    assert ea is not None and eb is not None
    assert eb == pytest.approx(2.0 * ea, rel=1e-9)


def test_auto_disaggregated_takes_each_sides_step(h100) -> None:
    dep = Deployment((Pool("prefill", tp=1, max_batched_tokens=8192), Pool("decode", tp=2, max_num_seqs=256)))
    margins = _ev(h100, "auto").margins(dep)
    assert margins is not None and margins.source == "auto"
    assert margins.ttft_pct != pytest.approx(margins.tpot_pct, rel=1e-3)  # a prefill step is not a decode step
    assert 1.0 < margins.ttft_pct < 20.0 and 1.0 < margins.tpot_pct < 20.0


def test_auto_without_held_out_errors_uses_the_documented_default() -> None:
    cpu = get_platform("cpu-local")
    dep = Deployment((Pool("mixed", tp=2, max_num_seqs=64, max_batched_tokens=8192),))
    ev = Evaluator("llama3-8b", cpu, CHAT, SLO, gpus=cpu.num_devices, target=None, proto=dep, slo_margin="auto")
    margins = ev.margins(dep)
    assert margins is not None and margins.source == "auto-default"
    assert margins.ttft_pct == margins.tpot_pct == UNCALIBRATED_MARGIN_PCT


def test_no_slo_means_no_planning_target(h100) -> None:
    ev = _ev(h100, "auto", slo=None)
    assert ev.planning_slo(MIXED) is None


@pytest.mark.parametrize(("raw", "want"), [("auto", "auto"), ("AUTO", "auto"), ("5", 5.0), ("7.5%", 7.5), (0, 0.0)])
def test_margin_values_read(raw: Any, want: Any) -> None:
    assert check_margin(raw) == want


@pytest.mark.parametrize("raw", ["-1", "101", "lots", float("nan"), True, None])
def test_bad_margins_name_the_field(raw: Any) -> None:
    with pytest.raises(ValueError, match="slo_margin"):
        check_margin(raw)


def test_a_problem_keeps_its_margin_and_old_files_read_as_zero() -> None:
    p = ServingProblem("llama3-8b", "dgx-h100", CHAT, SLO, slo_margin="auto")
    assert ServingProblem.from_dict(p.to_dict()) == p
    old = p.to_dict()
    del old["slo_margin"]
    assert ServingProblem.from_dict(old).slo_margin == 0.0
    with pytest.raises(ValueError, match="field 'slo_margin'"):
        ServingProblem.from_dict({**p.to_dict(), "slo_margin": "much"})
    assert p.evaluator().slo_margin == "auto"


def test_deployment_margins_fixed_is_the_percent_given(h100) -> None:
    m = deployment_margins(3.0, MIXED, {}, CHAT)
    assert (m.ttft_pct, m.tpot_pct, m.source) == (3.0, 3.0, "fixed")
    plan = m.planning(SLO)
    assert plan is not None and plan.ttft_ms == pytest.approx(1000.0 / 1.03) and plan.percentile == 90.0


class _Slower:
    """Every iteration ``factor`` times as long as the model says (the model off by its error)."""

    def __init__(self, cost: Any, factor: float) -> None:
        self._cost, self._factor = cost, factor

    def latency_s(self, mix: Any) -> float:
        return self._cost.latency_s(mix) * self._factor

    def interval_s(self, mix: Any) -> float:
        return self._cost.interval_s(mix) * self._factor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cost, name)


@pytest.mark.parametrize("tpot_ms", [30.0, 15.0])
def test_a_deployment_planned_with_a_margin_meets_the_slo_when_every_step_is_that_much_slower(h100, tpot_ms) -> None:
    from paratune.search._serve import with_load
    from paratune.serving import analytic

    slo = Slo(ttft_ms=1000.0, tpot_ms=tpot_ms)
    planned = _ev(h100, 10, slo).capacity(MIXED)
    # The targets alone divided (no load headroom): what the margin is not.
    targets_only = _ev(h100, 0, Slo(ttft_ms=1000.0 / 1.1, tpot_ms=tpot_ms / 1.1)).capacity(MIXED)
    assert planned is not None and targets_only is not None
    costs = _ev(h100, 0, slo).costs(MIXED)
    assert costs is not None
    slower = {role: _Slower(c, 1.1) for role, c in costs.items()}
    kept = analytic(MIXED, with_load(CHAT, planned.load), slower, slo)
    assert kept.meets_slo is True and not kept.saturated
    assert kept.tpot_ms["p90"] <= tpot_ms * (1 + 1e-9)
    # Dividing the targets alone leaves no room in the queue: 10% slower steps break it (30 ms: saturated).
    broken = analytic(MIXED, with_load(CHAT, targets_only.load), slower, slo)
    assert broken.meets_slo is False
