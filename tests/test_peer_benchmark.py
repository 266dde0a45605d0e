"""``benchmarks/peer_aiconfigurator.py``: both tools price a case; TPOT averages the peer's decode steps.

The ratio paratune / AIConfigurator is the benchmark's figure, not a pass mark: these
tests only check that both sides return finite positive latencies for the same case.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_aiconfigurator.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_aiconfigurator", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_decode_points_cover_every_generated_token(bench: ModuleType) -> None:
    points = bench.decode_points(1024, 128, 32)
    assert points == [(1025, 32), (1057, 32), (1089, 32), (1121, 31)]
    assert sum(w for _, w in bench.decode_points(100, 7, 4)) == 6
    assert bench.decode_points(10, 2, 32) == [(11, 1)]
    with pytest.raises(ValueError, match="osl"):
        bench.decode_points(10, 1, 32)


def test_cases_are_many_and_use_known_models_and_systems(bench: ModuleType) -> None:
    cases = bench.CASES
    assert len(cases) >= 20
    assert {c.model for c in cases} == set(bench.MODELS)
    assert {c.system for c in cases} == set(bench.PLATFORMS)
    assert {c.dtype for c in cases} == {"bf16", "fp8"}
    assert len({c.name for c in cases}) == len(cases)


def test_missing_peer_exits_2_with_one_line(bench: ModuleType, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "peer_available", lambda: False)
    assert bench.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aiconfigurator is not installed" in err[0]


def test_missing_platform_is_skipped_with_one_line(bench: ModuleType, monkeypatch) -> None:
    said: list[str] = []
    cases = [bench.Case("llama3.1-8b", "h100_sxm", 1, 1, isl=128, osl=4)] * 2
    monkeypatch.setitem(bench.PLATFORMS, "h100_sxm", "no-such-platform")
    rows = bench.evaluate_cases(cases, say=said.append)
    assert said == ["skipped: platform no-such-platform not defined"]
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert bench.summarise(rows)["overall"]["cases"] == 0


def test_both_tools_price_the_same_cases(bench: ModuleType) -> None:
    pytest.importorskip("aiconfigurator")
    pytest.importorskip("aiconfigurator_core")
    cases = [
        bench.Case("llama3.1-8b", "h200_sxm", 1, 2, isl=256, osl=8),
        bench.Case("mixtral-8x7b", "h200_sxm", 2, 4, isl=256, osl=8, dtype="fp8"),
    ]
    rows = bench.evaluate_cases(cases, stride=4, say=lambda line: None)
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        for tool in ("paratune", "peer"):
            for key in ("ttft_ms", "tpot_ms"):
                value = row[tool][key]
                assert math.isfinite(value) and value > 0, (row["case"], tool, key, value)
        assert math.isfinite(row["ttft_ratio"]) and math.isfinite(row["tpot_ratio"])
    assert rows[1]["peer"]["quant"]["gemm"] == "fp8" and rows[1]["peer"]["quant"]["kvcache"] == "fp8"
    summary = bench.summarise(rows)
    assert summary["overall"]["cases"] == 2
    assert summary["by_system"]["h200_sxm"]["cases"] == 2
