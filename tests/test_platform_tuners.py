"""Every tuner on the presets from the system specs, and the spaces of a 72-GPU NVLink domain (gb200-nvl72).

Each is priced by its profile fitted on AIConfigurator's measured tables (``<gpu>-aic``); the tests check
what the tuners can express (degrees, device counts, plans found and valid), not which plan wins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from paratune.costmodel import Plan
from paratune.costmodel._platform import platforms_dir
from paratune.search import Limits, Problem, tune
from paratune.search._layered_space import LayeredSpace
from paratune.search._optuna_spaces import HybridSpace, PlacementSpace, UniformSpace

PLATFORMS = ("dgx-b200", "hgx-b300", "gb200-nvl72", "l40s-pcie", "rtx-pro-6000")
PHASES = {
    "prefill": {"batch": 4, "seq": 256},
    "decode": {"batch": 8, "context": 512},
    "train": {"batch": 8, "seq": 128},
}
FAST_TUNERS = ("megatron", "serving-default", "min-tp-replicas", "balanced-pp", "dp", "optuna-tpe")
#: 64 heads: TP 16, 32 and 64 divide them; 72 heads with head size 64: TP 72 does too.
WIDE = "llama2-7b:layers=2,heads=64"
WIDEST = "llama2-7b:layers=2,heads=72,kv_heads=72,hidden=4608"


def _problem(platform: str, phase: str, model: str = "llama2-7b:layers=2") -> Problem:
    return Problem(model, platform, phase=phase, **PHASES[phase])  # type: ignore[arg-type]


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_fast_tuner_finds_a_valid_plan(platform: str, phase: str) -> None:
    p = _problem(platform, phase)
    n = p.resolved_platform.num_devices
    values = {}
    for name in FAST_TUNERS:
        r = tune(p, name, budget=12, seed=0)
        assert r.best_plan is not None and r.objective_value is not None, (name, r.notes)
        assert r.best_plan.num_devices <= n and p.score(r.best_plan).feasible
        assert r.best_metrics is not None and r.best_metrics.expected_error_pct is not None  # a fitted profile
        values[name] = r.objective_value
    # dp is exact on this space: nothing found by another tuner beats it (minimised objectives, 1e-9 relative).
    assert all(values["dp"] <= v * (1 + 1e-9) for v in values.values()), values


def test_calibrated_only_finds_nothing_on_a_placeholder_profile_and_says_why(tmp_path: Path) -> None:
    data = yaml.safe_load((platforms_dir() / "dgx-b200.yaml").read_text())
    data.update(profile="h100-vidur", placeholder={"profile": "h100-vidur", "reason": "fitted on H100, not B200"})
    path = tmp_path / "b200-borrowed.yaml"
    path.write_text(yaml.safe_dump(data))
    p = Problem("llama2-7b:layers=2", str(path), phase="decode", **PHASES["decode"])  # type: ignore[arg-type]
    r = tune(p.with_(limits=Limits(calibrated_only=True)), "dp")
    assert r.best_plan is None
    assert any(n.startswith("no plan can be calibrated: fitted on H100, not B200") for n in r.notes), r.notes


def test_enumerate_agrees_with_dp_on_a_pcie_board() -> None:
    p = _problem("l40s-pcie", "decode")
    a, b = tune(p, "enumerate"), tune(p, "dp")
    assert a.objective_value == pytest.approx(b.objective_value, rel=1e-9)


def test_nvl72_spaces_hold_tp_beyond_8_and_72_gpu_plans() -> None:
    p = _problem("gb200-nvl72", "decode", WIDE).with_(batch=72)
    assert p.tp_degrees() == [1, 2, 4, 8, 16, 32, 64]
    space = LayeredSpace.build(p)
    assert space.tps[-3:] == [16, 32, 64] and space.max_devices == 72 and (72, 1) in space.pairs
    assert HybridSpace(p).tps[-3:] == [16, 32, 64] and UniformSpace(p).tps[-3:] == [16, 32, 64]
    placement = PlacementSpace(p.with_(granularity="sublayer"))
    assert placement.tps[-3:] == [16, 32, 64] and placement.max_groups == 72
    for plan in (Plan.uniform(2, tp=64), Plan.uniform(2, tp=8, replicas=9), Plan.uniform(2, tp=1, replicas=72)):
        m = p.evaluate(plan)
        assert m.feasible and m.devices_used == plan.num_devices
    assert p.evaluate(Plan.uniform(2, tp=8, replicas=9)).devices_used == 72
    megatron = tune(p, "megatron").best_plan
    assert megatron is not None and {s.tp for s in megatron.stages} == {64}  # TP = the NVLink domain's width


def test_nvl72_takes_tp_72_when_the_heads_allow_it() -> None:
    p = _problem("gb200-nvl72", "decode", WIDEST)
    assert p.tp_degrees()[-1] == 72
    m = p.evaluate(Plan.uniform(2, tp=72))
    assert m.feasible and m.devices_used == 72


def test_nvl72_expert_groups_wider_than_8_split_the_experts() -> None:
    p = _problem("gb200-nvl72", "decode", "mixtral-8x7b:layers=2").with_(batch=64)
    peaks = []
    for tp in (8, 16, 32):
        m = p.evaluate(Plan.uniform(2, tp=tp))
        assert m.feasible and m.devices_used == tp
        peaks.append(m.max_memory_bytes)
    assert peaks[0] > peaks[1] > peaks[2]  # 8 experts on 16 or 32 GPUs: each GPU holds a slice of every expert


def test_nvl72_tp_groups_stay_on_nvlink_and_pay_infiniband_only_across_racks() -> None:
    one, two = (_problem(n, "decode", WIDE) for n in ("gb200-nvl72", "gb200-nvl72x2"))
    inside = one.evaluate(Plan.uniform(2, tp=64)).breakdown["communication_s"]
    assert inside == pytest.approx(two.evaluate(Plan.uniform(2, tp=64)).breakdown["communication_s"], rel=1e-9)
    assert two.tp_degrees()[-1] == 64  # TP never spans racks; PP and replicas do
    pp = two.evaluate(Plan.uniform(2, tp=64, pp=2))
    assert pp.feasible and pp.devices_used == 128


@pytest.mark.parametrize("phase", ["decode", "train"])
def test_analytic_and_simulator_agree_on_racks_and_groups_that_straddle_them(phase: str) -> None:
    p = _problem("gb200-nvl72x2", phase, WIDE).with_(batch=72)
    plans = (
        Plan.uniform(2, tp=64, pp=2, micro_batches=2),  # devices 64-127: the second stage spans both racks
        Plan.uniform(2, tp=16, replicas=8),  # replica 4 (devices 64-79) spans both racks
        Plan.uniform(2, tp=8, pp=2, replicas=9),
    )
    for plan in plans:
        a, s = p.evaluator().evaluate(plan), p.simulator().evaluate(plan)
        assert a.feasible and s.feasible and a.latency_s == pytest.approx(s.latency_s, rel=1e-9)
    straddle, inside = (p.evaluate(pl) for pl in (plans[0], Plan.uniform(2, tp=64, pp=1)))
    assert straddle.latency_s > 2 * inside.latency_s  # its all-reduces cross InfiniBand


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_dp_and_optuna_search_the_whole_rack(phase: str) -> None:
    p = _problem("gb200-nvl72", phase, WIDE).with_(batch=72)
    dp = tune(p, "dp")
    assert dp.best_plan is not None and dp.optimal
    opt = tune(p, "optuna-tpe", budget=24, seed=1)
    assert opt.best_plan is not None and opt.objective_value >= dp.objective_value * (1 - 1e-9)  # type: ignore[operator]
    assert any("TP per stage [1, 2, 4, 8, 16, 32, 64]" in n for n in opt.notes), opt.notes


def test_dag_exact_refuses_the_rack_with_a_way_out() -> None:
    p = _problem("gb200-nvl72", "decode", WIDE)
    with pytest.raises(ValueError, match=r"72 devices, more than the limit of 8 .*limits.max_devices"):
        tune(p, "dag-exact")


@pytest.mark.needs("torch", "sb3_contrib")
def test_rl_on_the_rack_notes_the_tp_degrees_beyond_its_menu() -> None:
    from paratune.agents._policy import default_policy_path

    if not default_policy_path().is_file():
        pytest.skip("no shipped policy")
    p = _problem("gb200-nvl72", "decode", WIDE).with_(batch=72)
    r = tune(p, "rl", budget=4, seed=0)
    assert r.best_plan is not None and p.score(r.best_plan).feasible
    assert max(s.tp for s in r.best_plan.stages) <= 16
    assert any("TP degrees [32, 64]" in n and "beyond the policy's TP menu" in n for n in r.notes), r.notes


@pytest.mark.slow
@pytest.mark.needs("torch", "sb3_contrib")
@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_rl_with_the_shipped_policy_finds_a_valid_plan(platform: str, phase: str) -> None:
    from paratune.agents._policy import default_policy_path

    if not default_policy_path().is_file():
        pytest.skip("no shipped policy")
    p = _problem(platform, phase)
    r = tune(p, "rl", budget=8, seed=0)
    assert r.best_plan is not None and p.score(r.best_plan).feasible
    assert r.best_plan.num_devices <= p.resolved_platform.num_devices
    beyond = any("beyond the policy's TP menu" in n for n in r.notes)
    assert beyond == (platform == "gb200-nvl72")  # 32 heads: TP 32 only where a node holds 72 GPUs
