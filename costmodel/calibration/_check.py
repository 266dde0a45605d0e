"""Checking a profile against measurements: the error per op class, per model split and per link class.

Errors are ``predicted / measured - 1`` in percent; a group reports its rows, its
MAPE (mean absolute percentage error) and its largest absolute error. The op
classes are the zoo's op names (``attn_qkv``, ``mlp_down``, ``embed``, ...) plus
``gemm_llmcompass``; the ``classes`` add the groups the calibration targets are
stated on: ``gemm`` (QKV, output projection, MLP up and down), ``gemm_ge512_tokens``
(the same at 512 tokens or more) and ``all_ops``. Collectives are grouped by
cluster, collective and link class (``intra``: the group inside one node,
``inter``: spanning nodes); clusters whose nodes differ from the platform's
(``a100_pairwise_nvlink`` against a DGX) are reported, marked, but priced on the
platform's own links.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._platform import Platform
from .._profile import Profile
from ._devices import platform_for
from ._read import read_measurements
from ._rows import GEMM_OPS, CollectiveRows, KernelRows, collective_rows, kernel_rows, with_nodes

#: Token count from which the tighter GEMM target applies.
LARGE_TOKENS = 512


def error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, Any]:
    """``{rows, mape, max_abs_pct_error, bias_pct}`` of ``predicted`` vs ``measured`` (NaN predictions skipped)."""
    ok = np.isfinite(predicted) & (measured > 0)
    if not ok.any():
        return {"rows": 0, "mape": float("nan"), "max_abs_pct_error": float("nan"), "bias_pct": float("nan")}
    err = (predicted[ok] / measured[ok] - 1.0) * 100.0
    return {
        "rows": int(ok.sum()),
        "mape": round(float(np.abs(err).mean()), 3),
        "max_abs_pct_error": round(float(np.abs(err).max()), 3),
        "bias_pct": round(float(np.median(err)), 3),
    }


def kernel_report(rows: KernelRows, predicted: np.ndarray) -> dict[str, Any]:
    """Overall, per-op and per-class errors of kernel rows."""
    out = error_stats(predicted, rows.seconds)
    out["per_op"] = {
        c: error_stats(predicted[rows.op_class == c], rows.seconds[rows.op_class == c])
        for c in sorted(set(rows.op_class.tolist()))
    }
    gemm = np.isin(rows.op_class, GEMM_OPS)
    vidur = rows.model != "llmcompass"
    groups = {
        "gemm": gemm,
        f"gemm_ge{LARGE_TOKENS}_tokens": gemm & (rows.tokens >= LARGE_TOKENS),
        "all_ops": vidur,
    }
    out["classes"] = {k: error_stats(predicted[m], rows.seconds[m]) for k, m in groups.items() if m.any()}
    out["models"] = sorted(set(rows.model.tolist()))
    return out


def collective_report(rows: CollectiveRows, predicted: np.ndarray, platform: Platform) -> dict[str, Any]:
    """Errors per ``cluster -> collective.link_class``; clusters unlike the platform's nodes are marked."""
    out: dict[str, Any] = {}
    own = rows.on(platform)
    for cluster in sorted(set(rows.cluster.tolist())):
        in_cluster = rows.cluster == cluster
        groups: dict[str, Any] = {}
        for coll in ("all_reduce", "send_recv"):
            for link_class in ("intra", "inter"):
                m = in_cluster & (rows.collective == coll) & (rows.link_class == link_class)
                if m.any():
                    groups[f"{coll}.{link_class}"] = error_stats(predicted[m], rows.seconds[m])
        if not own[in_cluster].all():
            groups["note"] = (
                f"nodes unlike {platform.name}'s ({platform.devices_per_node} devices): priced on its links, not fitted"
            )
        out[cluster] = groups
    return out


@dataclass(frozen=True)
class CheckReport:
    """A profile's errors on a folder of measurements (see :meth:`to_dict`)."""

    device: str
    profile: str
    platform: str
    kernels: dict[str, Any]
    collectives: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``rows``, ``mape``, ``max_abs_pct_error`` (all kernel rows), ``per_op``, ``classes``, ``collectives``."""
        return {"device": self.device, "profile": self.profile, "platform": self.platform, **self.kernels,
                "collectives": self.collectives}  # fmt: skip


def price_collectives(rows: CollectiveRows, platform: Platform) -> np.ndarray:
    """Seconds of collective rows on ``platform`` (given as many nodes as the rows span)."""
    if not len(rows):
        return np.array([])
    nodes = int(np.max(-(-rows.workers // np.maximum(rows.devices_per_node, 1))))
    return rows.predict(with_nodes(platform, nodes))


def check_profile(
    profiles_dir: Path | str, device: str, profile: Profile, *, models: Sequence[str] | None = None
) -> CheckReport:
    """Predict every row of ``profiles_dir`` for ``device`` with ``profile`` and report the errors.

    Args:
        profiles_dir: a Vidur-format folder (see :mod:`._read` for the layouts accepted).
        device: the device folder (``a100``, ``h100``, ``cpu``, ...); it also picks the
            platform whose datasheet the profile's efficiencies multiply.
        profile: the profile to check.
        models: only these model folders' kernel rows (all when None); collectives are
            always all checked.
    """
    meas = read_measurements(profiles_dir, device)
    platform = dataclasses.replace(platform_for(device, meas), profile=profile)
    krows = kernel_rows(meas)
    if models is not None:
        unknown = sorted(set(models) - set(krows.model.tolist()))
        if unknown:
            raise ValueError(f"model(s) {', '.join(unknown)} not in {profiles_dir} for device {device!r}")
        krows = krows.subset(np.isin(krows.model, list(models)))
    kernels = kernel_report(krows, krows.pricer()(platform)) if len(krows) else error_stats(np.array([]), np.array([]))
    crows = collective_rows(meas)
    colls = collective_report(crows, price_collectives(crows, platform), platform) if len(crows) else {}
    return CheckReport(device=device, profile=profile.name, platform=platform.name, kernels=kernels, collectives=colls)
