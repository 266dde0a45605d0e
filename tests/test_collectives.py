"""Fitted collectives: the profile section, the algorithm chosen by size, evaluators agreeing, the fit."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, allreduce_time, get_platform, group_link
from paratune.costmodel._collectives import Collectives, bus_factor
from paratune.costmodel._fields import FieldReader
from paratune.costmodel._platform import Platform, platforms_dir
from paratune.costmodel._pricing import GroupLink, group_terms, rails, tp_allreduce_array, tp_allreduce_time
from paratune.costmodel._profile import Profile
from paratune.graphs import build_graph, coarsen
from paratune.search import Problem, tune

MIB = 2**20
#: An H100-like section: a one-shot custom all-reduce (low latency, low bandwidth) up to 512 KiB, a two-shot
#: one up to 16 MiB, then NCCL with NVLS (hand-set numbers of the fitted shape; the fit is tested below).
SECTION = {
    "tp_allreduce": "trtllm",
    "link_bandwidth_gbs": 450,
    "all_reduce": {
        "nccl": {
            2: [[6.0, 0.3, 1 * MIB], [40.0, 0.75]],
            8: [[16.0, 0.05, 0.5 * MIB], [35.0, 0.75, 64 * MIB], [75.0, 1.05]],
        },
        "trtllm": {
            2: [[2.7, 0.6, 8 * MIB], [75.0, 0.75]],
            4: [[2.8, 0.03, 0.1 * MIB], [3.1, 0.35, 8 * MIB], [28.0, 0.77]],
            8: [[3.2, 0.15, 0.5 * MIB], [17.5, 0.47, 16 * MIB], [72.0, 1.04]],
        },
    },
    "all_gather": {"nccl": {8: [[12.0, 0.1, 1 * MIB], [25.0, 0.9]]}},
}


def _with_section(platform: Platform, section: dict | None = None) -> Platform:
    data = platform.profile.to_dict()
    data["collectives"] = copy.deepcopy(SECTION if section is None else section)
    return dataclasses.replace(platform, profile=Profile.from_dict(data, "test profile"))


#: The ring of the Vidur-fitted profile (no collectives section), and the same with the test section.
BASE = get_platform("dgx-h100x2:profile=h100-vidur")
FITTED = _with_section(BASE)


def test_section_round_trips_and_absent_means_none() -> None:
    assert BASE.profile.collectives is None
    prof = FITTED.profile
    assert Profile.from_dict(prof.to_dict(), "again") == prof
    coll = prof.collectives
    assert coll is not None and coll.tp_implementation() == "trtllm"
    assert coll.curves["all_reduce"]["trtllm"][8][0] == pytest.approx((3.2e-6, 0.15, 0.5 * MIB))
    assert coll.curves["all_reduce"]["trtllm"][8][-1][2] == float("inf")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"all_reduce": {"nccl": {2: [[6.0, 0.0]]}}}, "efficiency"),
        ({"all_reduce": {"nccl": {2: [[float("nan"), 0.3]]}}}, "finite"),
        ({"all_reduce": {"nccl": {1: [[6.0, 0.3]]}}}, "group size"),
        ({"all_reduce": {"nccl": {2: []}}}, "list of 1 to"),
        ({"all_reduce": {"nccl": {2: [[6.0]]}}}, "unbounded"),
        ({"all_reduce": {"nccl": {2: [[6.0, 0.3], [9.0, 0.5]]}}}, "up_to_bytes"),
        ({"all_reduce": {"nccl": {2: [[6.0, 0.3, 1e6], [7.0, 0.5, 1e5], [9.0, 0.5]]}}}, "must grow"),
        ({"allreduce": {}}, "unknown field"),
        ({"link_class": "pcie"}, "link_class"),
    ],
)
def test_bad_sections_name_the_field(patch: dict, message: str) -> None:
    section = {**SECTION, **patch}
    with pytest.raises(ValueError, match=message):
        Collectives.from_dict(FieldReader(section, "p.yaml", "collectives"))


def test_small_messages_take_the_low_latency_algorithm_and_large_ones_the_high_bandwidth_one() -> None:
    link = group_terms(FITTED, tuple(range(8)))
    assert len(link.allreduce) == 3
    small, large = 64 * 1024, 256 * MIB
    lines = [[lat + s * b for lat, b, _ in link.allreduce] for s in (small, large)]
    lats, per_byte = [a[0] for a in link.allreduce], [a[1] for a in link.allreduce]
    assert lats == sorted(lats) and per_byte == sorted(per_byte, reverse=True)  # latency traded for bandwidth
    assert tp_allreduce_time(small, 1, 8, link) == pytest.approx(lines[0][0], rel=1e-12)  # one-shot
    assert tp_allreduce_time(large, 1, 8, link) == pytest.approx(lines[1][2], rel=1e-12)  # NVLS
    assert tp_allreduce_time(4 * MIB, 1, 8, link) == pytest.approx(17.5e-6 + 4 * MIB * per_byte[1], rel=1e-12)
    # the measured scale: a few microseconds for 64 KiB on 8 GPUs, where the ring's ~30 us was 5-10x too slow
    assert 3e-6 < tp_allreduce_time(small, 1, 8, link) < 8e-6
    ring = allreduce_time(small, 8, *group_link(BASE, tuple(range(8))))
    assert ring > 3 * tp_allreduce_time(small, 1, 8, link)
    # n equal all-reduces cost n times one of them (what the evaluators' summed form relies on)
    one = tp_allreduce_time(small, 1, 8, link)
    assert tp_allreduce_time(6 * small, 6, 8, link) == pytest.approx(6 * one, rel=1e-12)
    arr = tp_allreduce_array(np.array([0.0, small, large]), np.array([0.0, 1.0, 1.0]), 8, link)
    assert arr[0] == 0.0
    assert arr[1:] == pytest.approx([one, tp_allreduce_time(large, 1, 8, link)], rel=1e-12)


def test_unmeasured_group_sizes_and_other_link_classes() -> None:
    # TP 2 uses trtllm's curve for 2; an implementation without a curve falls back to NCCL's
    assert group_terms(FITTED, (0, 1)).allreduce[0][0] == pytest.approx(2.7e-6)
    only_nccl = _with_section(BASE, {**SECTION, "tp_allreduce": "vllm"})
    assert group_terms(only_nccl, (0, 1)).allreduce[0][0] == pytest.approx(6.0e-6)
    # NCCL has no curve for 4 ranks: derived from 2 (the largest measured below), bus factor of 4
    coll = only_nccl.profile.collectives
    assert coll is not None and coll.algorithms("all_reduce", "nccl", 4) == (coll.curves["all_reduce"]["nccl"][2], 2)
    per_byte = group_terms(only_nccl, (0, 1, 2, 3)).allreduce[0][1]
    assert group_terms(only_nccl, (0, 1, 2, 3)).allreduce[0][2] == 1 * MIB
    assert per_byte == pytest.approx(bus_factor("all_reduce", 4) / (0.3 * 450e9), rel=1e-12)
    # a group across the two nodes keeps the ring
    across = group_terms(FITTED, tuple(range(4, 12)))
    assert across.allreduce == () and (across.alpha, across.bandwidth) == group_link(FITTED, tuple(range(4, 12)))


def test_profiles_without_the_section_price_the_ring_exactly() -> None:
    for n in (2, 4, 8, 16):
        devices = tuple(range(n))
        link = group_terms(BASE, devices)
        assert link == GroupLink(*group_link(BASE, devices))
        alpha, bw = group_link(BASE, devices)
        assert tp_allreduce_time(3e6, 4, n, link) == allreduce_time(3e6, n, 4 * alpha, bw)


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_evaluators_agree_with_the_section(phase: str) -> None:
    seq, context = (1, 256) if phase == "decode" else (128, 0)
    g = coarsen(build_graph("llama2-7b:layers=4", phase=phase, batch=8, seq=seq, context=context), "layer")
    ev, sim = AnalyticEvaluator(g, FITTED), Simulator(g, FITTED)
    plain = AnalyticEvaluator(g, BASE)
    for pp, tp, m in itertools.product([1, 2], [2, 4, 8], [1, 2]):
        plan = Plan.uniform(4, tp=tp, pp=pp, micro_batches=m)
        a, s = ev.evaluate(plan), sim.evaluate(plan)
        assert s.latency_s == pytest.approx(a.latency_s, rel=1e-9), (pp, tp, m)
        assert s.stage_times_s == pytest.approx(a.stage_times_s, rel=1e-9)
        assert a.breakdown["communication_s"] != plain.evaluate(plan).breakdown["communication_s"]
    plans = ev.random_plans(60, np.random.default_rng(3), max_stages=3)
    res = ev.evaluate_batch(plans)
    single = [ev.evaluate(plans.to_plan(i)).latency_s for i in range(len(plans))]
    np.testing.assert_allclose(res.latency_s, single, rtol=1e-9)


def test_decode_tbt_drops_where_the_ring_overpriced_small_all_reduces() -> None:
    g = coarsen(build_graph("llama2-7b", phase="decode", batch=1, seq=1, context=1024), "layer")
    plan = Plan.uniform(32, tp=8)
    ring, fitted = AnalyticEvaluator(g, BASE).evaluate(plan), AnalyticEvaluator(g, FITTED).evaluate(plan)
    # 65 all-reduces of 8 KiB: ~30 us each on the ring, ~3.5 us measured with TRT-LLM's one-shot kernel
    drop = ring.breakdown["communication_s"] - fitted.breakdown["communication_s"]
    assert drop > 65 * 20e-6
    assert fitted.tbt_s == pytest.approx(ring.tbt_s - drop, rel=1e-9)


@pytest.mark.parametrize(("phase", "objective"), [("decode", "tbt"), ("prefill", "ttft"), ("train", "step")])
def test_exact_tuners_agree_with_the_section(tmp_path: Path, phase: str, objective: str) -> None:
    """dp (closed forms on the layered space) equals enumerate (the evaluator) on a fitted platform."""
    profile = BASE.profile.to_dict() | {"collectives": copy.deepcopy(SECTION)}
    (tmp_path / "fitted.yaml").write_text(yaml.safe_dump(profile))
    spec = yaml.safe_load((platforms_dir() / "dgx-h100.yaml").read_text())
    spec.update(profile=str(tmp_path / "fitted.yaml"), devices_per_node=4, nodes=2)
    (tmp_path / "plat.yaml").write_text(yaml.safe_dump(spec))
    model = "llama2-7b:layers=3,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=1000"
    p = Problem(model, str(tmp_path / "plat.yaml"), phase=phase, objective=objective, batch=2, seq=64)
    assert p.resolved_platform.profile.collectives is not None
    a, b = tune(p, "enumerate", max_micro_batches=2), tune(p, "dp", max_micro_batches=2)
    assert a.objective_value is not None and b.objective_value is not None
    assert b.objective_value == pytest.approx(a.objective_value, rel=1e-9)
    assert p.score(b.best_plan).value == pytest.approx(b.objective_value, rel=1e-9)


# -- the fit on AIConfigurator's measured tables (optional extra paratune[silicon]) -----------------


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_fit_reproduces_measured_points_and_orders_algorithms_by_size() -> None:
    from paratune.costmodel.calibration._aic_comm import MAX_EFFICIENCY, errors, fit_curves, measured_curves

    for impl in ("nccl", "trtllm"):
        (curve,) = [c for c in measured_curves("h200_sxm", impl) if c.collective == "all_reduce" and c.ranks == 8]
        algs = fit_curves([curve])
        err = np.abs(errors(curve, algs))
        assert err.mean() < 0.03 and err.max() < 0.15, (impl, err)
        # small messages: the lowest-latency algorithm; large ones: the highest bus bandwidth
        # (a flat, latency-bound band gets the largest efficiency allowed: no bandwidth to speak of)
        assert algs[-1][1] == max(a[1] for a in algs if a[1] < MAX_EFFICIENCY) > 1.0  # NVLS beats the link
        assert algs[0][0] < 0.5 * algs[-1][0]  # the algorithm of small messages has the far lower latency
        assert algs[-1][2] == float("inf") and all(a[2] < b[2] for a, b in itertools.pairwise(algs))


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_fitted_fragment_loads_and_prices_the_measured_all_reduce() -> None:
    from paratune.costmodel.calibration._aic_comm import fit_collectives, measured_curves

    fragment, report = fit_collectives("h100_sxm", "trtllm")
    # held out (fitted on H200 only): the target, <= 10% in every size band
    for key in ("all_reduce/trtllm", "all_reduce/nccl"):
        assert max(report["held_out"][key]["by_band"].values()) <= 10.0, report["held_out"][key]
    assert report["provenance"] and all(p["licence"] == "Apache-2.0" for p in report["provenance"])
    platform = _with_section(get_platform("dgx-h100"), fragment["collectives"])
    (curve,) = [c for c in measured_curves("h100_sxm", "trtllm") if c.ranks == 8]
    link = group_terms(platform, tuple(range(8)))
    pred = np.array([tp_allreduce_time(s, 1, 8, link) for s in curve.nbytes])
    np.testing.assert_allclose(pred, curve.seconds, rtol=0.15)


def test_groups_across_nodes_get_one_nic_per_member_on_each_node_capped_by_nvlink() -> None:
    """NCCL runs one ring per rail: k members per node cross nodes on k NICs, one per node on one; never past NVLink."""
    platform = get_platform("dgx-a100x8")
    alpha_nic, nic = platform.link_terms("inter")
    _, nvlink = platform.link_terms("intra")
    assert 2 * nic < nvlink < 64 * nic
    one_per_node = tuple(range(0, 64, 8))
    assert group_link(platform, one_per_node)[1] == pytest.approx(nic, rel=1e-12)
    assert group_link(platform, (0, 1, 8, 9))[1] == pytest.approx(2 * nic, rel=1e-12)
    assert group_link(platform, tuple(range(64)))[1] == pytest.approx(min(8 * nic, nvlink), rel=1e-12)
    assert rails(platform, (0, 1, 2, 3, 8)) == 1  # the node with the fewest members sets the rings' NICs
    assert rails(platform, tuple(range(8))) == 1 and rails(platform, tuple(range(64))) == 8
    # Latency is the link's whatever the rails; a group inside one node is priced as before.
    base = platform.profile.link("inter").base_latency_s
    assert group_link(platform, tuple(range(64)))[0] == pytest.approx(alpha_nic + base / 126, rel=1e-12)
    assert group_link(platform, tuple(range(8)))[1] == nvlink
    wide = dataclasses.replace(
        platform, links={**platform.links, "inter": dataclasses.replace(platform.links["inter"], bandwidth=1e15)}
    )
    assert group_link(wide, tuple(range(16)))[1] == pytest.approx(nvlink, rel=1e-12)
    assert group_link(wide, (0, 8))[1] == pytest.approx(1e15 * platform.profile.link("inter").efficiency, rel=1e-12)


def test_data_parallel_across_nodes_is_cheaper_with_more_members_per_node_in_both_evaluators() -> None:
    """TP-1 replicas put 8 DP members on each node: 8 rails. The evaluators agree, and the all-reduce costs several
    times less than where NVLink is as slow as one NIC (which caps the rings at one NIC's bandwidth)."""
    graph = coarsen(build_graph("llama2-7b:layers=2", phase="train", batch=16, seq=256), "layer")
    platform = get_platform("dgx-a100x2")
    prof = platform.profile
    one_nic = platform.links["inter"].bandwidth * prof.link("inter").efficiency / prof.link("intra").efficiency
    slow = dataclasses.replace(
        platform, links={**platform.links, "intra": dataclasses.replace(platform.links["intra"], bandwidth=one_nic)}
    )
    assert group_link(slow, tuple(range(16)))[1] == pytest.approx(platform.link_terms("inter")[1], rel=1e-9)
    comm = {}
    for name, plat in (("rails", platform), ("one NIC", slow)):
        plan = Plan.uniform(2, tp=1, replicas=16)
        a, s = AnalyticEvaluator(graph, plat).evaluate(plan), Simulator(graph, plat).evaluate(plan)
        assert s.step_s == pytest.approx(a.step_s, rel=0.01), name
        comm[name] = a.breakdown["communication_s"]
    assert 0 < comm["rails"] < comm["one NIC"] / 4
