"""Calibration profiles: the fitted efficiencies and overheads of a device and its links.

A profile turns datasheet peaks into achievable times. Compute and memory
efficiencies are saturating curves of the work per device,
``eff(w) = peak * w / (w + half)``: small kernels cannot fill the machine,
large ones reach a plateau below the datasheet (Roofline with efficiency,
as in LLMCompass and Calculon). Curves may differ per op kind. Links get an
achieved-bandwidth fraction and a latency (alpha) per link class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ._fields import FieldReader, load_yaml

LINK_CLASSES = ("intra", "inter", "mesh", "host")


@dataclass(frozen=True)
class Efficiency:
    """``eff(w) = peak * w / (w + half)`` with ``w`` the work per device (FLOPs or bytes)."""

    peak: float
    half: float

    def __call__(self, work: Any) -> Any:
        return self.peak * work / (work + self.half)

    def to_dict(self) -> dict[str, float]:
        return {"peak": self.peak, "half": self.half}


@dataclass(frozen=True)
class LinkCalibration:
    """Achieved fraction of a link's datasheet bandwidth, and its per-message latency (alpha)."""

    efficiency: float
    latency_s: float


@dataclass(frozen=True)
class Profile:
    """Efficiency curves, kernel overhead and link terms of one device type.

    ``compute`` and ``memory`` map an op kind to its curve, with a ``default``
    entry for kinds not listed. ``ranges`` records, per quantity, the span of the
    calibration data (e.g. ``flops_per_device: [min, max]``) so the cost model
    can say when a prediction extrapolates.
    """

    name: str
    source: str
    compute: dict[str, Efficiency]
    memory: dict[str, Efficiency]
    kernel_overhead_s: float
    links: dict[str, LinkCalibration]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    holdout_error: dict[str, Any] = field(default_factory=dict)

    def compute_eff(self, kind: str) -> Efficiency:
        return self.compute.get(kind, self.compute["default"])

    def memory_eff(self, kind: str) -> Efficiency:
        return self.memory.get(kind, self.memory["default"])

    def link(self, link_class: str) -> LinkCalibration:
        return self.links.get(link_class, self.links["default"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "compute_efficiency": {k: v.to_dict() for k, v in self.compute.items()},
            "memory_efficiency": {k: v.to_dict() for k, v in self.memory.items()},
            "kernel_overhead_us": self.kernel_overhead_s * 1e6,
            "links": {k: {"efficiency": v.efficiency, "latency_us": v.latency_s * 1e6} for k, v in self.links.items()},
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "holdout_error": self.holdout_error,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Profile:
        r = FieldReader(data, where)
        curves = {}
        for group, half_name in (("compute_efficiency", "half_flops"), ("memory_efficiency", "half_bytes")):
            g = r.child(group)
            table = {}
            for kind in list(g.data):
                c = g.child(kind)
                peak = c.number("peak", positive=True)
                if peak > 1.0:
                    raise c.error("peak", f"is a fraction of the datasheet peak and must be <= 1, got {peak}")
                half = c.number(half_name if c.has(half_name) else "half", minimum=0.0)
                c.finish()
                g.seen.add(kind)
                table[kind] = Efficiency(peak, half)
            if "default" not in table:
                raise g.error("default", "is missing: every efficiency table needs a 'default' curve")
            curves[group] = table
        links = {}
        lr = r.child("links")
        for cls_name in list(lr.data):
            lc = lr.child(cls_name)
            eff = lc.number("efficiency", positive=True)
            if eff > 1.0:
                raise lc.error("efficiency", f"must be <= 1, got {eff}")
            links[cls_name] = LinkCalibration(eff, lc.number("latency_us", minimum=0.0) * 1e-6)
            lc.finish()
            lr.seen.add(cls_name)
        if "default" not in links:
            raise lr.error("default", "is missing: links need a 'default' entry")
        ranges = {k: (float(v[0]), float(v[1])) for k, v in (r.raw("ranges", {}) or {}).items()}
        prof = cls(
            name=r.text("name"),
            source=r.text("source"),
            compute=curves["compute_efficiency"],
            memory=curves["memory_efficiency"],
            kernel_overhead_s=r.number("kernel_overhead_us", minimum=0.0) * 1e-6,
            links=links,
            ranges=ranges,
            holdout_error=r.raw("holdout_error", {}) or {},
        )
        r.raw("fit", None)  # free-form record of how the profile was fitted
        r.finish()
        return prof


def profiles_dir() -> Path:
    return Path(str(resources.files("paratune.configs"))) / "profiles"


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (``configs/profiles/NAME.yaml``) or a profile file path."""
    path = Path(name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")):
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
            raise ValueError(f"unknown calibration profile {name_or_path!r}; known: {', '.join(known)}")
    return Profile.from_dict(load_yaml(path), str(path))


def in_range(profile: Profile, quantity: str, values: np.ndarray) -> bool:
    """True when every value lies inside the calibrated span of ``quantity`` (or none is recorded)."""
    span = profile.ranges.get(quantity)
    if span is None or values.size == 0:
        return True
    return bool(values.min() >= span[0] * 0.999 and values.max() <= span[1] * 1.001)
