"""``tp_overlap``'s GEMM mask and per-task GEMM seconds are built once per simulator, not per evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, _simtech, get_platform
from paratune.graphs import build_graph, coarsen


@pytest.fixture(scope="module")
def sim() -> Simulator:
    g = coarsen(build_graph("llama2-7b:layers=4", phase="train", batch=16, seq=256), "op")
    return Simulator(g, get_platform("dgx-h100x2"))


def test_gemm_seconds_match_the_mask_and_are_cached(sim: Simulator) -> None:
    mask = _simtech.gemm_ops(sim)
    assert 0 < mask.sum() < len(mask)  # some ops are GEMMs, not all
    times = sim.kernels(4, 0.25)[0]
    expected = np.add.reduceat(np.where(mask, times, 0.0), sim.offsets)
    got = sim.gemm_kernels(4, 0.25)
    assert got == pytest.approx(expected.tolist(), rel=1e-12, abs=0.0)
    assert sim.gemm_kernels(4, 0.25) is got  # the same list: nothing rebuilt
    assert sim.gemm_kernels(2, 0.25) != pytest.approx(got, rel=1e-6)  # keyed by TP degree


def test_tp_overlap_plans_build_the_mask_once_and_keep_their_numbers(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = _simtech.gemm_ops

    def counting(s: Simulator) -> np.ndarray:
        calls.append(1)
        return real(s)

    fresh = Simulator(sim.graph, sim.platform)
    monkeypatch.setattr("paratune.costmodel._simulator.gemm_ops", counting)
    ev = AnalyticEvaluator(sim.graph, sim.platform)
    for tp, m in ((8, 2), (4, 4), (8, 2)):
        plan = Plan.uniform(4, tp=tp, pp=2, micro_batches=m, tp_overlap=True)
        assert fresh.evaluate(plan).step_s == pytest.approx(ev.evaluate(plan).step_s, rel=1e-6)
    assert len(calls) == 1
