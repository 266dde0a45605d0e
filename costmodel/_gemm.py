"""Shape-aware GEMM times: a fitted roofline, corrected by a measured residual over (m, n, k).

Why: a GEMM's efficiency is not a function of its FLOPs and bytes alone. Measured on
H100 / H200 (NVIDIA AIConfigurator's tables), a roofline whose efficiencies saturate in
FLOPs and bytes misses by 11-15% on average and up to +111% on small-k shards: tile and
wave quantization, the k-loop's prologue and epilogue, and the kernel the library picks
for each shape are not in FLOPs and bytes. The model here keeps that roofline as a base
(so it extrapolates sanely) and multiplies it by ``exp(r(m, n, k))``, a residual fitted
on a grid in log2 of m, n and k and interpolated trilinearly (clamped at the grid's
edges)::

    c = F / (P * eff_c(F)),  m_t = B / (BW * eff_m(B))
    t = ((c^e + m_t^e)^(1/e) + overhead) * exp(r(m, n, k))

The residual is a property of the kernels (tile shapes, SM count, library), so it
carries over between GPUs of one architecture whose datasheets differ (H100 -> H200:
6% mean error on every measured shape; B200 -> GB200: 6%), where a roofline ratio does
not (15-20%: the memory-bound region moves with the bandwidth). The residual scales the
overhead too: a small GEMM's fixed time is a property of the kernel the library picked for
its shape as much as its streaming time is (held out H200 -> H100: 6.3% this way, 8.9% with
the overhead added after the residual).

In a profile (``gemm:`` section, one entry per dtype)::

    gemm:
      bf16:
        compute: {peak: 0.78, half: 2.0e9}     # eff_c(F) = peak * F / (F + half)
        memory: {peak: 0.83, half: 1.2e5}      # eff_m(B)
        exponent: 2.5
        overhead_us: 3.3
        log2_m: [0, 1, ..., 16]                 # grid of the residual
        log2_n: [...]
        log2_k: [...]
        residual: ["0.012 -0.034 ...", ...]   # one string of len(log2_k) numbers per (m, n) pair
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._limits import is_finite_number
from ._fields import FieldReader

#: Largest residual grid accepted from a profile file (cells).
MAX_GRID_CELLS = 1 << 16


@dataclass(frozen=True, eq=False)
class GemmModel:
    """GEMM time of one dtype on one device type (see the module docstring).

    Two models are equal when their profile sections are (the grids are numpy arrays).
    """

    compute_peak: float
    compute_half: float
    memory_peak: float
    memory_half: float
    exponent: float
    overhead_s: float
    log2_m: np.ndarray
    log2_n: np.ndarray
    log2_k: np.ndarray
    residual: np.ndarray  # shape (len(log2_m), len(log2_n), len(log2_k)), natural log

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GemmModel) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def base_times(self, flops: np.ndarray, nbytes: np.ndarray, peak: float, bw: float) -> np.ndarray:
        """The roofline part, without overhead and residual."""
        with np.errstate(divide="ignore", invalid="ignore"):
            comp = np.where(flops > 0, (flops + self.compute_half) / (peak * self.compute_peak), 0.0)
            mem = np.where(nbytes > 0, (nbytes + self.memory_half) / (bw * self.memory_peak), 0.0)
            hi, lo = np.maximum(comp, mem), np.minimum(comp, mem)
            ratio = np.where(hi > 0, lo / hi, 0.0)
        return hi * (1.0 + ratio**self.exponent) ** (1.0 / self.exponent)

    def correction(self, m: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        """``r(m, n, k)``: the fitted log residual, trilinear in log2 of each dimension."""
        out = np.zeros(np.broadcast(m, n, k).shape)
        corners = [grid_axis(self.log2_m, m), grid_axis(self.log2_n, n), grid_axis(self.log2_k, k)]
        (im, wm), (i_n, wn), (ik, wk) = corners
        for a, fa in ((0, 1.0 - wm), (1, wm)):
            for b, fb in ((0, 1.0 - wn), (1, wn)):
                for c, fc in ((0, 1.0 - wk), (1, wk)):
                    out += fa * fb * fc * self.residual[im + a, i_n + b, ik + c]
        return out

    def times(
        self,
        m: np.ndarray,
        n: np.ndarray,
        k: np.ndarray,
        flops: np.ndarray,
        nbytes: np.ndarray,
        peak: float,
        bw: float,
    ) -> np.ndarray:
        """Seconds of GEMMs of per-device shape (m, n, k) with ``flops`` and ``nbytes`` per device."""
        return (self.base_times(flops, nbytes, peak, bw) + self.overhead_s) * np.exp(self.correction(m, n, k))

    def to_dict(self) -> dict[str, Any]:
        rows = self.residual.reshape(-1, self.residual.shape[-1])
        return {
            "compute": {"peak": six_digits(self.compute_peak), "half": six_digits(self.compute_half)},
            "memory": {"peak": six_digits(self.memory_peak), "half": six_digits(self.memory_half)},
            "exponent": six_digits(self.exponent),
            "overhead_us": six_digits(self.overhead_s * 1e6),
            "log2_m": [six_digits(x) for x in self.log2_m],
            "log2_n": [six_digits(x) for x in self.log2_n],
            "log2_k": [six_digits(x) for x in self.log2_k],
            "residual": [" ".join(f"{x:.4f}" for x in row) for row in rows],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str, prefix: str = "") -> GemmModel:
        return cls.from_reader(FieldReader(data, where, prefix))

    @classmethod
    def from_reader(cls, r: FieldReader) -> GemmModel:
        """The model a profile's ``gemm.<dtype>`` section describes (errors name the field)."""
        curves = []
        for part in ("compute", "memory"):
            c = r.child(part)
            curves.append((c.fraction("peak"), c.number("half", minimum=0.0)))
            c.finish()
        grids = [read_log2_grid(r, name) for name in ("log2_m", "log2_n", "log2_k")]
        shape = (len(grids[0]), len(grids[1]), len(grids[2]))
        if int(np.prod(shape)) > MAX_GRID_CELLS:
            raise r.error("residual", f"has {int(np.prod(shape))} cells; at most {MAX_GRID_CELLS} are allowed")
        residual = read_grid_values(r, "residual", shape, limit=5.0, pair="(m, n)")
        model = cls(
            compute_peak=curves[0][0],
            compute_half=curves[0][1],
            memory_peak=curves[1][0],
            memory_half=curves[1][1],
            exponent=r.number("exponent", minimum=1.0),
            overhead_s=r.number("overhead_us", minimum=0.0) * 1e-6,
            log2_m=grids[0],
            log2_n=grids[1],
            log2_k=grids[2],
            residual=residual,
        )
        r.finish()
        return model


def grid_axis(grid: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower cell index and weight of ``log2(values)`` on ``grid`` (clamped to its ends)."""
    x = np.clip(np.log2(np.maximum(values, 1.0)), grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    return i, (x - grid[i]) / (grid[i + 1] - grid[i])


def six_digits(x: float) -> float:
    """``x`` rounded to 6 significant digits: what a fitted profile writes."""
    return float(f"{float(x):.6g}")


def read_log2_grid(r: FieldReader, name: str) -> np.ndarray:
    """A profile's grid axis: at least 2 strictly increasing log2 values within 0..40 (errors name the field)."""
    raw = r.raw(name)
    if not isinstance(raw, list) or len(raw) < 2 or not all(is_finite_number(x) for x in raw):
        raise r.error(name, "must be a list of at least 2 finite numbers (log2 of the grid's values)")
    grid = np.array(raw, dtype=float)
    if np.any(np.diff(grid) <= 0) or grid[0] < 0 or grid[-1] > 40:
        raise r.error(name, "must increase strictly, within 0..40")
    return grid


def read_grid_values(r: FieldReader, name: str, shape: tuple[int, int, int], *, limit: float, pair: str) -> np.ndarray:
    """A 3-D grid of log residuals written as one string per ``pair`` of the first two axes (the third axis's
    values in it), each finite and within ``-limit..limit``."""
    raw = r.raw(name)
    rows = shape[0] * shape[1]
    if not isinstance(raw, list) or len(raw) != rows or not all(isinstance(x, str) for x in raw):
        raise r.error(name, f"must be a list of {rows} strings (one per {pair} pair of the grid)")
    values = []
    for i, row in enumerate(raw):
        try:
            numbers = [float(x) for x in row.split()]
        except ValueError:
            raise r.error(name, f"row {i} is not a list of numbers") from None
        if len(numbers) != shape[2] or not all(np.isfinite(numbers)) or max(map(abs, numbers)) > limit:
            raise r.error(name, f"row {i} must hold {shape[2]} finite numbers within -{limit:g}..{limit:g}")
        values.append(numbers)
    return np.array(values, dtype=float).reshape(shape)
