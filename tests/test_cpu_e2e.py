"""End-to-end validation on this CPU: a real model run (1 process, TP2, PP2) against the cost model.

The slow test first measures this CPU (``calibrate_local``, about 30 s on 2 cores, into a
temporary cache: ``cpu-local`` is then this machine, whatever CPU runs the suite), then runs
the small grid of ``validate_cpu`` (about 30 s). Tests
never assert wall-clock targets (timings on 2 shared cores vary run to run: TP2 decode
at batch 1 measured 16-31 ms for the same code), so the targets (15% single
process, 25% TP2 and PP2) are measured and printed by ``benchmarks/cpu_e2e.py``; this
test checks the harness end to end (sharded runs reproduce the unsharded model's
logits, every case is measured and predicted) and that no case is off by more than
a factor of ``SANITY_FACTOR`` = 3 (a broken model, harness or calibration, not noise: the
shipped profile on another CPU was off by +100% to +2400%, while on an idle 2-core machine
the worst case, pp2 decode, measured 40-52% slower than predicted). When other processes
used more than ``BUSY_CORES`` while measuring or running, both are repeated once, and the
test is skipped if the machine stays busy.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from paratune.costmodel import Plan
from paratune.costmodel.calibration._e2e import DEFAULT_MODEL, TOLERANCE_PCT, default_cases, format_table, predict
from paratune.graphs import get_model


@pytest.mark.needs("torch")
def test_cases_and_predictions_are_sane() -> None:
    for quick in (True, False):
        cases = default_cases(quick)
        assert {c.mode for c in cases} == {"single", "tp2", "pp2"}
        for case in cases:
            t = predict(DEFAULT_MODEL, case)
            assert math.isfinite(t) and 0 < t < 60, case.label
    spec = get_model(DEFAULT_MODEL)
    assert spec.dtype == "bf16" and spec.layers == 4


@pytest.mark.needs("torch")
def test_stage_layers_match_plan_uniform() -> None:
    from paratune.costmodel.calibration._e2e_run import stage_layers

    for n, pp in ((4, 2), (5, 2), (7, 3)):
        plan = Plan.uniform(n, pp=pp)
        assert [stage_layers(n, pp, s) for s in range(pp)] == [st.layers for st in plan.stages]


@pytest.mark.needs("torch")
def test_tp_sharding_reconstructs_the_unsharded_weights() -> None:
    import torch

    from paratune.costmodel.calibration._e2e_model import Shard
    from paratune.graphs import ModelSpec

    spec = ModelSpec("tiny", layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=100)
    full = Shard(spec, seed=3)
    parts = [Shard(spec, tp=2, rank=r, seed=3) for r in range(2)]
    w, p0, p1 = full.layers[1], parts[0].layers[1], parts[1].layers[1]
    assert torch.equal(torch.cat([p0["down"], p1["down"]], dim=1), w["down"])
    assert torch.equal(torch.cat([p0["o"], p1["o"]], dim=1), w["o"])
    gate = torch.cat([p0["up"].chunk(2)[0], p1["up"].chunk(2)[0]])
    assert torch.equal(gate, w["up"].chunk(2)[0])
    assert torch.equal(torch.cat([parts[0].head, parts[1].head]), full.head)
    stage1 = Shard(spec, layers=(1, 1), seed=3)
    assert torch.equal(stage1.layers[0]["qkv"], w["qkv"]) and not stage1.has_embed and stage1.has_head


BUSY_CORES = 0.25
#: The right magnitude: each prediction within a factor of 3 of the measurement. The accuracy targets per
#: mode (15-25%) are benchmarks (`benchmarks/cpu_e2e.py`); on a 2-core machine pp2 decode, whose two
#: processes share the cores with their gloo messages, measured 40-52% slower than predicted.
SANITY_FACTOR = 3.0


@pytest.mark.slow
@pytest.mark.needs("torch")
def test_cpu_end_to_end_runs_and_predicts_the_right_magnitude(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from paratune.costmodel import _machine, get_platform
    from paratune.costmodel.calibration import calibrate_local, validate_cpu

    monkeypatch.setenv(_machine.CACHE_ENV, str(tmp_path))
    for _ in range(2):
        _, fit = calibrate_local(force=True)  # measure before predicting: cpu-local is this CPU
        assert fit is not None
        measured_busy = max((v or 0.0) for v in fit.profile.fit["measured"]["other_processes_cores"].values())
        result = validate_cpu(cases=default_cases(quick=True), reps=3)
        print(format_table(result), "\nother processes used", result["other_processes_cores"], "cores")
        busy = max(result["other_processes_cores"] or 0.0, measured_busy)
        if busy <= BUSY_CORES:
            break
    else:
        pytest.skip(f"machine busy: other processes used {busy:.2f} cores during both runs; timings not comparable")
    profile = get_platform("cpu-local").profile
    assert result["profile"] == "cpu-local" and "paratune calibrate local" in profile.source
    assert _machine.foreign_reason(profile.name, profile.fit) is None
    assert all(v < 0.05 for v in result["checks"].values()), result["checks"]
    rows = result["cases"]
    assert {r["mode"] for r in rows} == {"single", "tp2", "pp2"}
    assert all(math.isfinite(r["measured_s"]) and r["measured_s"] > 0 for r in rows), rows
    ratio = {r["label"]: r["predicted_s"] / r["measured_s"] for r in rows}
    sane = (1 / SANITY_FACTOR, SANITY_FACTOR)
    bad = [f"{label}: predicted/measured {x:.2f}" for label, x in ratio.items() if not sane[0] <= x <= sane[1]]
    assert not bad, "off by more than a sane margin: " + "; ".join(bad)
    over = [r["label"] for r in rows if abs(r["error_pct"]) > TOLERANCE_PCT[r["mode"]]]
    print("outside the targets in this run:", over or "none")
