"""Fit the shape-aware GEMM model (:mod:`paratune.costmodel._gemm`) to measured GEMM tables.

Two steps, both least squares on log(predicted / measured) so that a 1 us GEMM counts
as much as a 10 ms one:

1. the roofline base (compute and memory curves, exponent, overhead) on every row;
2. the residual over (m, n, k): trilinear in log2 of each dimension on the grid
   ``m = 1, 2, 4, ..., 65536`` and the measured n and k, solved as one sparse linear
   least-squares problem with a small ridge (cells without data stay at 0).

Bytes are counted as paratune's graphs count a GEMM with a weight: ``(k n + m k + m n)``
elements of the model dtype (``graphs/_builder.py::_matmul``), so the fitted curves are
the ones the cost model applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._gemm import GemmModel, grid_axis
from ._aiconfigurator import Table, read_table, system_spec

#: paratune dtype -> (the table's ``gemm_dtype``, the spec's peak key, bytes per element).
GEMM_DTYPES = {
    "bf16": ("bfloat16", "bfloat16_tc_flops", 2),
    "fp8": ("fp8", "fp8_tc_flops", 1),
}
LOG2_M = np.arange(0.0, 17.0)
#: Ridge weight of the residual solve (keeps cells with few rows near 0).
RIDGE = 0.01


@dataclass(frozen=True)
class GemmRows:
    """Measured GEMMs of one dtype on one system, with the datasheet peaks they are fractions of."""

    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    seconds: np.ndarray
    peak: float
    bw: float
    elem_bytes: int
    system: str
    provenance: dict[str, Any]

    @property
    def flops(self) -> np.ndarray:
        return 2.0 * self.m * self.n * self.k

    @property
    def nbytes(self) -> np.ndarray:
        return (self.k * self.n + self.m * self.k + self.m * self.n) * self.elem_bytes


def system_peaks(system: str) -> dict[str, float]:
    """Datasheet peaks of a system's GPU from its spec: ``bf16``/``fp8`` FLOP/s, ``bw`` bytes/s."""
    gpu = system_spec(system)["gpu"]
    out = {"bw": float(gpu["mem_bw"])}
    for dtype, (_, key, _) in GEMM_DTYPES.items():
        if key in gpu:
            out[dtype] = float(gpu[key])
    return out


def gemm_rows(system: str, dtype: str = "bf16", backend: str = "trtllm", version: str | None = None) -> GemmRows:
    """The measured GEMMs of ``dtype`` on ``system`` (an error naming what is missing)."""
    if dtype not in GEMM_DTYPES:
        raise ValueError(f"GEMM dtype {dtype!r} is not fitted; allowed: {', '.join(GEMM_DTYPES)}")
    name, _, elem = GEMM_DTYPES[dtype]
    table: Table = read_table(system, "gemm", "gemm_perf", backend, version, ("gemm_dtype", "m", "n", "k"))
    table = table.where(table["gemm_dtype"] == name)
    if len(table) < 50:
        raise ValueError(f"{table.provenance['table']}: {len(table)} rows of {name}; at least 50 are needed to fit")
    peaks = system_peaks(system)
    if dtype not in peaks:
        raise ValueError(f"the spec of {system} gives no {GEMM_DTYPES[dtype][1]}")
    return GemmRows(
        m=table["m"].astype(float),
        n=table["n"].astype(float),
        k=table["k"].astype(float),
        seconds=table["seconds"],
        peak=peaks[dtype],
        bw=peaks["bw"],
        elem_bytes=elem,
        system=system,
        provenance=table.provenance,
    )


def _base_model(z: np.ndarray, grids: tuple[np.ndarray, np.ndarray]) -> GemmModel:
    zeros = np.zeros((len(LOG2_M), len(grids[0]), len(grids[1])))
    return GemmModel(
        compute_peak=float(z[0]),
        compute_half=float(np.exp(z[1])),
        memory_peak=float(z[2]),
        memory_half=float(np.exp(z[3])),
        exponent=float(z[4]),
        overhead_s=float(z[5]) * 1e-6,
        log2_m=LOG2_M,
        log2_n=grids[0],
        log2_k=grids[1],
        residual=zeros,
    )


def fit_gemm(rows: list[GemmRows]) -> GemmModel:
    """The GEMM model fitted to ``rows`` (one or several systems of one architecture)."""
    from scipy.optimize import least_squares  # the fit path only: pricing needs numpy alone

    n_grid = np.log2(np.unique(np.concatenate([r.n for r in rows])))
    k_grid = np.log2(np.unique(np.concatenate([r.k for r in rows])))
    grids = (n_grid, k_grid)

    def residuals(z: np.ndarray) -> np.ndarray:
        model = _base_model(z, grids)
        out = [np.log((_core(model, r) + model.overhead_s) / r.seconds) for r in rows]
        return np.concatenate(out)

    start = np.array([0.8, np.log(1e9), 0.8, np.log(1e4), 2.0, 3.0])
    low = np.array([0.05, 0.0, 0.05, 0.0, 1.0, 0.0])
    high = np.array([1.0, 40.0, 1.0, 40.0, 20.0, 50.0])
    base = _base_model(least_squares(residuals, start, bounds=(low, high)).x, grids)
    return _with_residual(base, rows)


def _with_residual(base: GemmModel, rows: list[GemmRows]) -> GemmModel:
    from scipy.sparse import vstack
    from scipy.sparse.linalg import lsqr

    shape = (len(base.log2_m), len(base.log2_n), len(base.log2_k))
    designs, targets = [], []
    for r in rows:
        target = np.log(r.seconds / (_core(base, r) + base.overhead_s))
        designs.append(_design(base, r, shape))
        targets.append(target)
    x = vstack(designs).tocsr()
    solution = lsqr(x, np.concatenate(targets), damp=RIDGE)[0]
    residual = np.clip(solution.reshape(shape), -5.0, 5.0)
    return GemmModel(**{**base.__dict__, "residual": residual})


def _design(model: GemmModel, r: GemmRows, shape: tuple[int, int, int]) -> Any:
    from scipy.sparse import coo_matrix

    (im, wm), (i_n, wn), (ik, wk) = (
        grid_axis(model.log2_m, r.m),
        grid_axis(model.log2_n, r.n),
        grid_axis(model.log2_k, r.k),
    )
    count = len(r.m)
    rows, cols, vals = [], [], []
    for a, fa in ((0, 1.0 - wm), (1, wm)):
        for b, fb in ((0, 1.0 - wn), (1, wn)):
            for c, fc in ((0, 1.0 - wk), (1, wk)):
                rows.append(np.arange(count))
                cols.append(((im + a) * shape[1] + (i_n + b)) * shape[2] + ik + c)
                vals.append(fa * fb * fc)
    data = (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols)))
    return coo_matrix(data, shape=(count, int(np.prod(shape))))


def _core(model: GemmModel, r: GemmRows) -> np.ndarray:
    return model.base_times(r.flops, r.nbytes, r.peak, r.bw)


def _predict(model: GemmModel, r: GemmRows) -> np.ndarray:
    return model.times(r.m, r.n, r.k, r.flops, r.nbytes, r.peak, r.bw)


def gemm_errors(model: GemmModel, r: GemmRows) -> dict[str, Any]:
    """MAPE (%) of ``model`` on ``r`` with ``r``'s own peaks: overall and by token band, and the 95th percentile."""
    err = np.abs(_predict(model, r) / r.seconds - 1.0) * 100.0
    bands = {"m<=16": r.m <= 16, "17<=m<=1024": (r.m > 16) & (r.m <= 1024), "m>1024": r.m > 1024}
    out: dict[str, Any] = {"rows": len(err), "mape": round(float(err.mean()), 2)}
    out["p95"] = round(float(np.percentile(err, 95)), 2)
    for name, mask in bands.items():
        if mask.any():
            out[name] = round(float(err[mask].mean()), 2)
    return out
