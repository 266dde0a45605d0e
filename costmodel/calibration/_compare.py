"""Comparing two profiles by their predictions: how fits are compared, since some parameters are weakly determined.

Two fits of the same rows on two machines (another BLAS, another CPU) can differ
in a parameter the rows barely constrain (``fit.weakly_determined``) while
predicting the same times; :func:`prediction_gap` measures what matters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._profile import Profile
from ._attention import measured_dtype, read_attention
from ._check import price_collectives
from ._devices import platform_for
from ._read import read_measurements
from ._rows import collective_rows, kernel_rows


def prediction_gap(profiles_dir: Path | str, device: str, first: Profile, second: Profile) -> dict[str, float]:
    """The largest ``|second / first - 1|`` of the predicted times of every row of ``profiles_dir``.

    Returns ``{"kernels": ..., "collectives": ..., "attention": ...}`` (a key per kind of
    row present; 0.0 when the predictions are equal).
    """
    meas = read_measurements(profiles_dir, device)
    platform = platform_for(device, meas)
    one, two = (dataclasses.replace(platform, profile=p) for p in (first, second))
    out: dict[str, float] = {}
    krows = kernel_rows(meas)
    if len(krows):
        out["kernels"] = _gap(krows.pricer()(one), krows.pricer()(two))
    crows = collective_rows(meas)
    if len(crows):
        out["collectives"] = _gap(price_collectives(crows, one), price_collectives(crows, two))
    attn = read_attention(profiles_dir, device)
    if len(attn):
        dtype = measured_dtype(profiles_dir)
        out["attention"] = _gap(attn.predict(one, dtype), attn.predict(two, dtype))
    return out


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0)
    if (np.isfinite(a) != np.isfinite(b)).any():
        return float("inf")  # one profile prices a row the other cannot
    return float(np.max(np.abs(b[ok] / a[ok] - 1.0))) if ok.any() else 0.0


def parameter_gaps(first: Profile, second: Profile) -> dict[str, float]:
    """``|second / first - 1|`` per fitted parameter (``kind.name``, ``links.class.name``) that is well determined.

    Parameters that either profile's ``fit.weakly_determined`` lists are left out:
    they are not reproducible, only the predictions are (:func:`prediction_gap`).
    """
    weak: set[str] = set()
    for prof in (first, second):
        for kind, names in (prof.fit.get("weakly_determined") or {}).items():
            weak.update(f"{kind}.{n}" for n in names)
    out: dict[str, float] = {}
    for part, prefix in (("kernels", ""), ("links", "links.")):
        one, two = first.fit.get(part) or {}, second.fit.get(part) or {}
        for key in sorted(set(one) & set(two)):
            for name in sorted(set(one[key]) & set(two[key])):
                if f"{key}.{name}" in weak:
                    continue
                a, b = float(one[key][name]), float(two[key][name])
                out[f"{prefix}{key}.{name}"] = 0.0 if a == b else abs(b / a - 1.0) if a else float("inf")
    return out
