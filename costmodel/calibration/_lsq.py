"""Least squares in log space, the one solver every calibration fit uses (deterministic, bounded)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sig(x: float) -> float:
    """``x`` to 6 significant digits: fitted values written to YAML read back equal."""
    return float(f"{x:.6g}")


def solve(residuals: Callable[[np.ndarray], np.ndarray], x0: list[float], lo: list[float], hi: list[float]) -> list:
    """Minimise the sum of squared ``residuals(x)`` within ``[lo, hi]`` from ``x0`` (trust region reflective)."""
    from scipy.optimize import least_squares  # only fitting needs scipy: checking a profile does not

    res = least_squares(residuals, np.array(x0), bounds=(np.array(lo), np.array(hi)), method="trf", x_scale="jac")
    return [sig(v) for v in res.x]
