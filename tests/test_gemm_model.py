"""The shape-aware GEMM model: its profile section, its pricing, and its fit to measured GEMMs."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from paratune.costmodel import KernelPricer, OpTable, get_platform, load_profile
from paratune.costmodel._gemm import GemmModel
from paratune.costmodel._profile import Profile
from paratune.graphs import Op, build_graph

SAMPLE = Path(__file__).parent / "data" / "aiconfigurator" / "h200_sxm_gemm_sample.csv"


def _model(residual: float = 0.0) -> GemmModel:
    grid = np.arange(0.0, 17.0)
    return GemmModel(0.8, 1e9, 0.8, 1e4, 2.0, 3e-6, grid, grid[5:], grid[5:], np.full((17, 12, 12), residual))


def test_section_round_trips_and_prices_alike() -> None:
    model = _model(0.1)
    again = GemmModel.from_dict(model.to_dict(), "p.yaml", "gemm.bf16")
    m, n, k = np.array([1.0, 300.0, 5000.0]), np.array([4096.0] * 3), np.array([8192.0] * 3)
    f, b = 2 * m * n * k, (k * n + m * k + m * n) * 2
    np.testing.assert_allclose(again.times(m, n, k, f, b, 989e12, 4.8e12), model.times(m, n, k, f, b, 989e12, 4.8e12))


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"log2_m": [3, 2]}, "log2_m"),
        ({"log2_n": [0, float("nan")]}, "log2_n"),
        ({"residual": ["1 2"]}, "residual"),
        ({"compute": {"peak": 1.5, "half": 1}}, "compute.peak"),
        ({"exponent": 0.5}, "exponent"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_section_is_refused_naming_the_field(change: dict, mentions: str) -> None:
    data = {**_model().to_dict(), **change}
    with pytest.raises(ValueError, match=mentions):
        GemmModel.from_dict(data, "p.yaml", "gemm.bf16")


def test_a_residual_row_out_of_range_is_refused() -> None:
    data = _model().to_dict()
    data["residual"][3] = " ".join(["9"] * 12)
    with pytest.raises(ValueError, match="row 3"):
        GemmModel.from_dict(data, "p.yaml", "gemm.bf16")


def test_graph_gemms_carry_their_shape() -> None:
    g = build_graph("llama2-7b:layers=2", phase="prefill", batch=2, seq=128)
    ops = {o.name: o for t in g.tasks for o in t.ops}
    qkv, out = ops["L0.attn_qkv"], ops["L0.attn_out"]
    assert (qkv.gemm_k, qkv.gemm_n) == (4096, 3 * 4096) and qkv.flops == 2 * 256 * 4096 * 3 * 4096
    assert (out.gemm_k, out.gemm_n) == (4096, 4096)


def test_tp_splits_n_of_column_and_k_of_row_parallel_gemms() -> None:
    ops = [
        Op("col", "matmul", flops=2 * 64 * 1024 * 512, shard="column", gemm_k=1024, gemm_n=512),
        Op("row", "matmul", flops=2 * 64 * 1024 * 512, shard="row", gemm_k=1024, gemm_n=512),
    ]
    shapes = OpTable.from_ops(ops).gemm_shapes(tp=4, scale=0.5)
    assert shapes is not None
    m, n, k = shapes
    assert m.tolist() == [32, 32] and n.tolist() == [128, 512] and k.tolist() == [1024, 256]


def test_an_op_with_a_bad_gemm_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="gemm_k"):
        Op("x", "matmul", gemm_k=-1)


def test_gemms_use_the_shape_model_and_other_ops_keep_their_curves() -> None:
    plat = get_platform("hgx-h200")
    g = build_graph("llama2-7b:layers=2", phase="decode", batch=4, seq=1, context=512)
    ops = [o for t in g.tasks for o in t.ops]
    table = OpTable.from_ops(ops)
    with_model = dataclasses.replace(plat.profile, gemm={"bf16": _model(np.log(2.0))})
    plain = KernelPricer(plat, "bf16").op_times(table, 2)
    doubled = KernelPricer(dataclasses.replace(plat, profile=with_model), "bf16").op_times(table, 2)
    shaped = np.array([o.kind == "matmul" and o.gemm_k > 0 for o in ops])
    assert shaped.sum() >= 8
    np.testing.assert_allclose(doubled[~shaped], plain[~shaped])
    model = _model(0.0)
    m, n, k = table.gemm_shapes(2)
    f, b = table.per_device(2)
    base = model.times(
        m[shaped], n[shaped], k[shaped], f[shaped], b[shaped], plat.device.peak("bf16"), plat.device.memory_bw
    )
    np.testing.assert_allclose(doubled[shaped], 2 * base, rtol=1e-9)  # the residual scales overhead and roofline
    fp16 = KernelPricer(dataclasses.replace(plat, profile=with_model), "fp16").op_times(table, 2)
    assert np.all(fp16[shaped] > plain[shaped])  # fp16 GEMMs fall back to the bf16 model


def test_profiles_without_the_section_round_trip_without_it() -> None:
    prof = load_profile("h100-vidur")
    assert prof.gemm == {} and "gemm" not in prof.to_dict()
    assert Profile.from_dict(prof.to_dict(), "x").to_dict() == prof.to_dict()


def test_committed_h200_profile_predicts_measured_gemms() -> None:
    """The committed h200-aic profile against 80 measured H200 GEMMs (in the fit: an in-sample check, 10%)."""
    prof = load_profile("h200-aic")
    plat = get_platform("hgx-h200")
    rows = list(csv.DictReader(SAMPLE.open()))
    for dtype, name, elem in (("bf16", "bfloat16", 2), ("fp8", "fp8", 1)):
        sel = [r for r in rows if r["gemm_dtype"] == name]
        m, n, k = (np.array([float(r[c]) for r in sel]) for c in ("m", "n", "k"))
        measured = np.array([float(r["latency_ms"]) for r in sel]) * 1e-3
        model = prof.gemm[dtype]
        pred = model.times(m, n, k, 2 * m * n * k, (k * n + m * k + m * n) * elem, plat.device.peak(dtype), 4.8e12)
        err = np.abs(pred / measured - 1)
        assert err.mean() < 0.10, (dtype, err.mean())
        assert err.max() < 0.5, (dtype, err.max())


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_a_gemm_model_fitted_on_h100_predicts_h200() -> None:
    """Leave-one-system-out: fitted on H100's fp8 GEMMs, checked on H200's (measured 4.7%; allowed 8%)."""
    from paratune.costmodel.calibration._aic_gemm import fit_gemm, gemm_errors, gemm_rows

    model = fit_gemm([gemm_rows("h100_sxm", "fp8")])
    held = gemm_errors(model, gemm_rows("h200_sxm", "fp8"))
    assert held["rows"] > 10_000 and held["mape"] < 8.0


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--from", "aiconfigurator"], "--system"),
        (["--from", "nowhere", "--system", "h200_sxm"], "--from"),
        (["--from", "vidur"], "--profiles"),
    ],
)
def test_fit_options_are_checked_in_one_line(tmp_path: Path, args: list[str], mentions: str) -> None:
    from typer.testing import CliRunner

    from paratune.cli import app

    res = CliRunner().invoke(app, ["calibrate", "fit", *args, "-o", str(tmp_path / "p.yaml")])
    assert res.exit_code == 2 and mentions in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_an_unknown_system_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from paratune.cli import app

    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(app, ["calibrate", "fit", "--from", "aiconfigurator", "--system", "../x", "-o", str(out)])
    assert res.exit_code == 2 and "h200_sxm" in res.output and not out.exists()


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_the_fitted_profile_loads_and_records_where_it_came_from(tmp_path: Path) -> None:
    from paratune.costmodel.calibration import fit_from_aiconfigurator, write_profile

    result = fit_from_aiconfigurator("a100_sxm")
    path = tmp_path / "a100-aic.yaml"
    write_profile(result.profile, path)
    prof = load_profile(str(path))
    assert prof.name == "a100-aic" and set(prof.gemm) >= {"bf16"} and prof.collectives is not None
    assert prof.fit["provenance"]["licence"] == "Apache-2.0" and "aiconfigurator" in prof.source
    assert result.report["gemm"]["bf16"]["in_sample"]["mape"] < 10.0
    assert prof.holdout_error["classes"]["gemm"]["method"].startswith("in-sample")
