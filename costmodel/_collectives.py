"""Fitted collectives: the ``collectives`` section of a profile, and its terms for a device group.

Why: engines pick a collective algorithm by message size (a one-shot custom all-reduce
for a few KiB, two-shot above, NCCL's protocols and ring / tree / NVLS for large
messages), so one alpha-beta ring cannot follow the measured times (it is 1.4-10x slow
at <= 1 MiB and 12-25% slow at >= 64 MiB on 8 GPUs). A fitted collective of S bytes on
n ranks costs, with ``a`` the algorithm whose size range holds S,

    t(S) = latency_a + f(n) * S / (efficiency_a * B)

with ``B`` the datasheet bandwidth of the profile's link class on the platform (per
device and direction), ``f(n)`` the bus factor (2(n-1)/n for an all-reduce, (n-1)/n
for all-gather, reduce-scatter and all-to-all) and ``efficiency_a * B`` the algorithm's
bus bandwidth. The choice is by size thresholds, as the libraries make it, not the
fastest line at each size: NCCL's switches are not always to a faster algorithm (8 B200:
32 us at 2 MiB, 53 us at 4 MiB), which no minimum of lines can follow (a minimum of lines
is concave; these curves are not). Curves are kept per collective, implementation (``nccl``, or an engine's
custom all-reduce: ``trtllm``, ``vllm``, ``sglang``) and group size. A group size that
was not measured uses the curve of the nearest measured one (the largest below it,
else the smallest), its latencies and bus efficiencies unchanged and the bus factor of
its own size: ring scaling, an extrapolation the report calls ``derived``.

The section is optional: a profile without it prices every collective as the ring of
:mod:`._pricing`, as before. See ``costmodel/calibration/_aic_comm.py`` for the fit.

YAML (in a profile)::

    collectives:
      tp_allreduce: trtllm         # implementation of TP all-reduces on the link class (default trtllm)
      link_class: intra            # the link class the curves apply to (default intra)
      link_bandwidth_gbs: 450      # the bandwidth the fit saw (a record; pricing uses the platform's)
      all_reduce:                  # per group size: [latency_us, efficiency, up_to_bytes], the last unbounded
        nccl: {2: [[5.9, 0.011, 92682], [6.9, 0.32, 741455], [39.3, 0.71]], 4: ..., 8: ...}
        trtllm: {...}
      all_gather: {nccl: {...}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._fields import FieldReader

INF = float("inf")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
#: Most algorithms per curve, and most group sizes per implementation, a profile may hold.
MAX_ALGORITHMS, MAX_GROUP_SIZES = 8, 64

Algorithms = tuple[tuple[float, float, float], ...]  # (latency s, bus efficiency, largest bytes; inf) per algorithm
Terms = tuple[
    tuple[float, float, float], ...
]  # (seconds per collective, seconds per byte, largest bytes) per algorithm


def bus_factor(collective: str, ranks: int) -> float:
    """nccl-tests' bus factor: the bytes each rank moves per byte of message, on a ring."""
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {', '.join(COLLECTIVES)}, got {collective!r}")
    return (2.0 if collective == "all_reduce" else 1.0) * (ranks - 1) / ranks


def nearest_ranks(measured: list[int], ranks: int) -> int:
    """The measured group size a curve for ``ranks`` is derived from: the largest not above it, else the smallest."""
    below = [n for n in measured if n <= ranks]
    return max(below) if below else min(measured)


@dataclass(frozen=True)
class Collectives:
    """Fitted collective curves of one device type (see the module docstring for the model)."""

    curves: dict[str, dict[str, dict[int, Algorithms]]]
    tp_allreduce: str = "trtllm"
    link_class: str = "intra"
    link_bandwidth: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def tp_implementation(self) -> str | None:
        """Implementation pricing TP all-reduces: ``tp_allreduce`` when fitted, else ``nccl``, else None."""
        fitted = self.curves.get("all_reduce", {})
        if self.tp_allreduce in fitted:
            return self.tp_allreduce
        return "nccl" if "nccl" in fitted else None

    def algorithms(self, collective: str, implementation: str, ranks: int) -> tuple[Algorithms, int] | None:
        """(algorithms, group size measured) of a curve; None when the profile has no such curve."""
        sizes = self.curves.get(collective, {}).get(implementation)
        if not sizes:
            return None
        n = ranks if ranks in sizes else nearest_ranks(sorted(sizes), ranks)
        return sizes[n], n

    def terms(self, collective: str, implementation: str, ranks: int, link_bw: float) -> Terms:
        """(seconds per collective, seconds per byte, largest bytes) of each algorithm on a link of ``link_bw``."""
        found = self.algorithms(collective, implementation, ranks)
        if found is None or ranks <= 1:
            return ()
        f = bus_factor(collective, ranks)
        return tuple((lat, f / (eff * link_bw), upto) for lat, eff, upto in found[0])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tp_allreduce": self.tp_allreduce, "link_class": self.link_class}
        if self.link_bandwidth is not None:
            out["link_bandwidth_gbs"] = float(f"{self.link_bandwidth / 1e9:.12g}")
        for coll, impls in self.curves.items():
            out[coll] = {
                impl: {
                    n: [[_us(lat), eff, *([] if upto == INF else [upto])] for lat, eff, upto in algs]
                    for n, algs in sizes.items()
                }
                for impl, sizes in impls.items()
            }
        return out

    @classmethod
    def from_dict(cls, r: FieldReader) -> Collectives:
        """Read the section (``r`` reads the ``collectives`` mapping); every number finite, names checked."""
        curves: dict[str, dict[str, dict[int, Algorithms]]] = {}
        for coll in COLLECTIVES:
            if not r.has(coll):
                continue
            cr = r.child(coll)
            curves[coll] = {}
            for impl in list(cr.data):
                if not isinstance(impl, str) or not impl.replace("_", "").isalnum():
                    raise cr.error(str(impl), "is not an implementation name (letters, digits, _)")
                curves[coll][impl] = _sizes(cr.child(impl))
                cr.seen.add(impl)
            cr.finish()
        link_bw = r.number("link_bandwidth_gbs", positive=True) * 1e9 if r.has("link_bandwidth_gbs") else None
        out = cls(
            curves=curves,
            tp_allreduce=r.text("tp_allreduce", "trtllm"),
            link_class=r.text("link_class", "intra", choices=("intra", "inter", "mesh", "host")),
            link_bandwidth=link_bw,
        )
        r.finish()
        return out


def _sizes(ir: FieldReader) -> dict[int, Algorithms]:
    """``{group size: [[latency_us, efficiency], ...]}`` of one implementation."""
    if len(ir.data) > MAX_GROUP_SIZES:
        raise ValueError(f"{ir.where}: '{ir.prefix}' has {len(ir.data)} group sizes, more than {MAX_GROUP_SIZES}")
    out: dict[int, Algorithms] = {}
    for key in list(ir.data):
        n = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ir.error(str(key), "must be a group size: an integer >= 2")
        raw = ir.raw(key)
        if not isinstance(raw, list) or not raw or len(raw) > MAX_ALGORITHMS:
            raise ir.error(str(key), f"must be a list of 1 to {MAX_ALGORITHMS} [latency_us, efficiency, up_to_bytes]")
        algs: list[tuple[float, float, float]] = []
        for i, entry in enumerate(raw):
            last = i == len(raw) - 1
            if not isinstance(entry, list) or len(entry) != (2 if last else 3):
                shape = (
                    "[latency_us, efficiency] (the last, unbounded)"
                    if last
                    else "[latency_us, efficiency, up_to_bytes]"
                )
                raise ir.error(f"{key}[{i}]", f"must be {shape}, got {entry!r}")
            pr = FieldReader(
                dict(zip(("latency_us", "efficiency", "up_to_bytes"), entry, strict=False)),
                ir.where,
                ir.path(f"{key}[{i}]"),
            )
            upto = INF if last else pr.number("up_to_bytes", positive=True)
            if algs and upto <= algs[-1][2]:
                raise pr.error(
                    "up_to_bytes", f"must grow from one algorithm to the next, got {upto} after {algs[-1][2]}"
                )
            algs.append((pr.number("latency_us", minimum=0.0) * 1e-6, pr.number("efficiency", positive=True), upto))
        out[n] = tuple(algs)
    ir.finish()
    return out


def _us(seconds: float) -> float:
    return float(f"{seconds * 1e6:.12g}")
