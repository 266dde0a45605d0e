"""The serving simulator against a real continuous-batching run of a small torch model on this CPU (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.needs("torch")]


def test_simulator_replays_a_cpu_serving_run(tmp_path: Path) -> None:
    """``benchmarks/serving_cpu.py --quick``: one process, 60 requests calibrated on another 60 (about 40 s).

    Timed on the engine's CPU clock (a dedicated core, whatever else runs on the machine). Replayed through the
    simulator on a cost fitted on the run's own iterations, TTFT and TPOT p50 within 20% (what remains is the
    scheduling model and the linear fit's shape; 14% seen at worst); on the cost fitted on the separate
    calibration run, within 30% (the issue's target is 15%: the benchmark's full runs give 9% at worst, but a
    60-request run moves with the machine's load between the two runs: up to 21% seen).
    """
    out = tmp_path / "serving_cpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serving_cpu.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.exists(), proc.stdout + proc.stderr
    row = json.loads(out.read_text())["cases"][0]["runs"][0]
    for metric in ("ttft", "tpot"):
        assert abs(row["error_own_fit_pct"][metric]["p50"]) <= 20, proc.stdout
        assert abs(row["error_pct"][metric]["p50"]) <= 30, proc.stdout
        assert row["measured_ms"][metric]["p50"] > 0
