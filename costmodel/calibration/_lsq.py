"""Least squares in log space, the one solver every calibration fit uses (deterministic, bounded).

Why standard errors: some parameters barely change the predictions on the rows
fitted (a memory curve's ``half`` far below the smallest operand measured trades
off exactly against the kernel overhead: for ``B >> h``, ``B / (bw p B/(B+h))``
is ``B/(bw p) + h/(bw p)``, a constant like the overhead). Such a parameter is
wherever the solver stopped in a flat valley, and two machines (another BLAS,
another CPU) stop at different places while predicting the same times to 1e-5.
:func:`solve_with_errors` says which parameters the data determine, so the fit
can report the others as weakly determined instead of pretending to six digits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: A parameter is weakly determined when its standard error exceeds this: in decades for those fitted on a
#: log10 scale (a factor 10), relative to the value for the others (100%).
WEAK_DECADES, WEAK_RELATIVE = 1.0, 1.0


def sig(x: float) -> float:
    """``x`` to 6 significant digits: fitted values written to YAML read back equal."""
    return float(f"{x:.6g}")


def solve(residuals: Callable[[np.ndarray], np.ndarray], x0: list[float], lo: list[float], hi: list[float]) -> list:
    """Minimise the sum of squared ``residuals(x)`` within ``[lo, hi]`` from ``x0`` (trust region reflective)."""
    return solve_with_errors(residuals, x0, lo, hi)[0]


def solve_with_errors(
    residuals: Callable[[np.ndarray], np.ndarray], x0: list[float], lo: list[float], hi: list[float]
) -> tuple[list[float], list[float]]:
    """:func:`solve`, and each parameter's standard error (``inf`` where the data do not determine it).

    The errors are the usual linearised ones at the optimum, ``s^2 (J^T J)^-1`` with
    ``s^2`` the residual variance, taken through the eigenvalues of ``J^T J`` floored
    at ``1e-14`` of the largest, so a direction the data do not see gives a huge
    error instead of a singular matrix. They are statistics of the model's misfit,
    not measurement noise; what matters is the order of magnitude.
    """
    from scipy.optimize import least_squares  # only fitting needs scipy: checking a profile does not

    res = least_squares(residuals, np.array(x0), bounds=(np.array(lo), np.array(hi)), method="trf", x_scale="jac")
    jac = np.atleast_2d(np.asarray(res.jac, dtype=float))
    n, p = jac.shape
    if n <= p or not np.isfinite(jac).all():
        return [sig(v) for v in res.x], [float("inf")] * p
    s2 = 2.0 * float(res.cost) / (n - p)
    lam, vec = np.linalg.eigh(jac.T @ jac)
    lam = np.maximum(lam, 1e-14 * max(float(lam.max()), 1e-300))
    stderr = np.sqrt(s2 * (vec**2 / lam).sum(axis=1))
    return [sig(v) for v in res.x], [sig(float(e)) for e in stderr]


def weak(value: float, stderr: float, *, log_scale: bool) -> bool:
    """Whether a fitted value is weakly determined (:data:`WEAK_DECADES`, :data:`WEAK_RELATIVE`)."""
    if log_scale:
        return not stderr <= WEAK_DECADES
    return not stderr <= WEAK_RELATIVE * abs(value)
