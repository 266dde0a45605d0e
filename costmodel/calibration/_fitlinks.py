"""Fitting link terms: all-reduce and send/recv per link class, through the evaluators' collective functions.

Per link class (``intra``: a group inside one node; ``inter``: a group spanning
nodes), from the rows of clusters built like the platform's nodes: all-reduce
efficiency, per-step alpha and per-collective base latency (NCCL's fixed cost
per call; alpha is set to 0 when only one group size was measured, as the two
cannot then be told apart), and send/recv efficiency and latency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .._platform import Platform
from .._profile import LinkCalibration, Profile
from ._check import price_collectives
from ._lsq import solve
from ._rows import CollectiveRows


def fit_links(rows: CollectiveRows, platform: Platform) -> dict[str, dict[str, float]]:
    """Fitted terms per link class (``{intra: {efficiency, latency_us, base_latency_us, p2p_...}}``).

    Rows the platform cannot host (a group wider than its nodes) are left out.
    """
    out: dict[str, dict[str, float]] = {}
    if len(rows):
        rows = rows.subset(np.isfinite(price_collectives(rows, platform)))
    for link_class in ("intra", "inter"):
        if link_class not in platform.links:
            continue
        v: dict[str, float] = {}
        ar = rows.subset((rows.collective == "all_reduce") & (rows.link_class == link_class))
        if len(ar):
            one_size = len(np.unique(ar.workers)) < 2  # alpha and base latency cannot be told apart

            def ar_cal(x: np.ndarray, one_size: bool = one_size) -> LinkCalibration:
                return LinkCalibration(x[0], 0.0 if one_size else x[1] * 1e-6, base_latency_s=x[2] * 1e-6)

            x = solve(_link_residuals(ar, platform, link_class, ar_cal), [0.5, 1.0, 10.0], [0.005, 0, 0],
                       [1.0, 1000, 5000])  # fmt: skip
            v.update(efficiency=x[0], latency_us=0.0 if one_size else x[1], base_latency_us=x[2])
        sr = rows.subset((rows.collective == "send_recv") & (rows.link_class == link_class))
        if len(sr):

            def sr_cal(x: np.ndarray) -> LinkCalibration:
                return LinkCalibration(0.5, 0.0, p2p_efficiency=x[0], p2p_latency_s=x[1] * 1e-6)

            x = solve(_link_residuals(sr, platform, link_class, sr_cal), [0.5, 5.0], [0.005, 0], [1.0, 5000])
            v.update(p2p_efficiency=x[0], p2p_latency_us=x[1])
        if v:
            out[link_class] = v
    return out


def _link_residuals(
    rows: CollectiveRows, platform: Platform, link_class: str, cal: Callable[[np.ndarray], LinkCalibration]
) -> Callable[[np.ndarray], np.ndarray]:
    log_y = np.log(rows.seconds)

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = dataclasses.replace(platform.profile, links={**platform.profile.links, link_class: cal(x)})
        return np.log(price_collectives(rows, dataclasses.replace(platform, profile=prof))) - log_y

    return residuals


def with_links(base: Profile, fitted: dict[str, dict[str, float]]) -> Profile:
    """``base`` with the fitted link terms; terms not fitted keep their values."""
    links = dict(base.links)
    for link_class, v in fitted.items():
        old = base.link(link_class)
        links[link_class] = LinkCalibration(
            v.get("efficiency", old.efficiency),
            v.get("latency_us", old.latency_s * 1e6) * 1e-6,
            base_latency_s=v.get("base_latency_us", old.base_latency_s * 1e6) * 1e-6,
            p2p_efficiency=v.get("p2p_efficiency", old.p2p_efficiency),
            p2p_latency_s=v["p2p_latency_us"] * 1e-6 if "p2p_latency_us" in v else old.p2p_latency_s,
        )
    return dataclasses.replace(base, links=links)
