"""How far to trust a prediction: inside the calibrated range or not, and its expected error.

A fitted profile records its error on held-out measurements per op (``holdout_error``)
and per collective. A prediction's expected error is the time-weighted mean of
those errors over the kernels and the communication it sums: each kernel time
weighs with the held-out MAPE of its kind, each communication second with the
collectives' MAPE. It is a conservative figure (independent kernel errors partly
cancel in a sum) and it is ``None`` for a hand-set profile, which has no held-out
rows: such predictions are never called calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._machine import foreign_reason
from ._metrics import Metrics
from ._plan import Plan
from ._platform import Platform
from ._profile import Profile

#: Vidur op names (as the fit reports them) behind each op kind of the cost model.
_KIND_OPS = {
    "norm": ("attn_norm", "mlp_norm"),
    "elementwise": ("attn_rope", "mlp_act", "residual"),
    "embedding": ("embed",),
    # Fitted on AIConfigurator's kernels (calibration/_aic_attention.py), held out per system.
    "attention": ("attention_prefill", "attention_decode"),
    # MoE blocks (calibration/_aic_moe.py), held out per system within its family.
    "moe": ("moe_bf16", "moe_fp8"),
}


@dataclass(frozen=True)
class ErrorModel:
    """Held-out MAPE (as a fraction) per op kind and for communication."""

    kind: dict[str, float]
    default: float
    communication: float
    communication_inter: float

    def of(self, kind: str) -> float:
        return self.kind.get(kind, self.default)

    @classmethod
    def from_profile(cls, profile: Profile) -> ErrorModel | None:
        """The error model of a fitted profile; None when it has no held-out errors or is another CPU's."""
        err: dict[str, Any] = profile.holdout_error or {}
        classes, per_op = err.get("classes", {}), err.get("per_op", {})
        if "mape" not in err or foreign_reason(profile.name, profile.fit):
            return None
        overall = float(err["mape"]) / 100.0
        kind: dict[str, float] = {}
        gemm = classes.get("gemm", {}).get("mape")
        if gemm is not None:
            kind["matmul"] = kind["moe"] = float(gemm) / 100.0
        for name, ops in _KIND_OPS.items():
            values = [float(per_op[o]["mape"]) for o in ops if o in per_op]
            if values:
                kind[name] = sum(values) / len(values) / 100.0
        intra, inter = _collective_mape(err, ".intra"), _collective_mape(err, ".inter")
        communication = intra if intra is not None else overall
        return cls(kind, overall, communication, max(communication, inter if inter is not None else overall))


def _collective_mape(err: dict[str, Any], suffix: str) -> float | None:
    """The worst MAPE of the fitted clusters' collectives whose key ends with ``suffix`` (None: no data)."""
    values = [
        float(row["mape"])
        for cluster in err.get("collectives", {}).values()
        if isinstance(cluster, dict) and "note" not in cluster  # a note marks a cluster checked, not fitted
        for key, row in cluster.items()
        if key.endswith(suffix) and isinstance(row, dict) and "mape" in row
    ]
    return max(values) / 100.0 if values else None


def in_calibrated_tp(profile: Profile, tps: list[int]) -> bool:
    """True when every TP degree lies inside the profile's measured TP range (or none is recorded)."""
    span = profile.ranges.get("tp")
    return span is None or all(span[0] <= t <= span[1] for t in tps)


def annotate(
    metrics: Metrics,
    errors: ErrorModel | None,
    platform: Platform,
    plan: Plan,
    kernel_error: float,
    kernel_s: float,
    communication_s: float,
) -> None:
    """Fill ``metrics.calibrated`` and ``metrics.expected_error_pct``.

    Args:
        kernel_error: the summed kernel seconds, each weighted by its kind's held-out error.
        kernel_s, communication_s: the summed kernel and communication seconds they come from.
    """
    if errors is None:
        return
    total = kernel_s + communication_s
    spans_nodes = platform.topology == "switch" and plan.num_devices > platform.devices_per_node
    comm_error = errors.communication_inter if spans_nodes else errors.communication
    metrics.expected_error_pct = 100.0 * (kernel_error + communication_s * comm_error) / total if total > 0 else 0.0
    tps = [st.tp for st in plan.stages]
    metrics.calibrated = not metrics.warnings and in_calibrated_tp(platform.profile, tps)


def calibration_reason(metrics: Metrics, platform: Platform) -> str | None:
    """Why a prediction is not calibrated (None when it is): the words behind ``calibrated: false``."""
    foreign = foreign_reason(platform.profile.name, platform.profile.fit)
    if foreign:
        return foreign
    if platform.uncalibrated:
        return f"uncalibrated on {platform.device.name}: {platform.uncalibrated}"
    if metrics.calibrated:
        return None
    if metrics.expected_error_pct is None:
        return f"profile {platform.profile.name} has no held-out error (hand-set, or fitted without a hold-out)"
    if metrics.warnings:
        return "outside the calibrated range: " + "; ".join(metrics.warnings)
    return f"a TP degree outside the measured range of profile {platform.profile.name}"
