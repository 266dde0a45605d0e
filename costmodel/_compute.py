"""Pricing kernels and collectives: the one place both evaluators get their times from.

The analytic evaluator and the discrete-event simulator must agree, so neither
computes a time itself: they call :func:`op_times` for kernels and
:func:`allreduce_time` / :func:`p2p_time` for communication.

Kernel time on one device of a TP group (roofline with efficiency):

    t = max(F / (peak * eff_c(F)), B / (bw * eff_m(B))) + overhead

with F and B the FLOPs and bytes of the op on that device (divided by the op's
split under TP, scaled by the micro-batch share of the batch-dependent part;
weights are read whole by every micro-batch). Causal attention kernels run
half of the counted score FLOPs.

Collectives (alpha-beta, ring): all-reduce of S bytes on n ranks costs
2(n-1)·alpha + 2(n-1)/n·S/B; all-gather / reduce-scatter (n-1)·alpha + (n-1)/n·S/B;
point-to-point alpha + S/B. B and alpha are those of the slowest link the group spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graphs import Op
from ._platform import Platform


@dataclass(frozen=True)
class OpTable:
    """Columns of a list of ops, for vectorised pricing (one row per op)."""

    flops: np.ndarray
    bytes: np.ndarray
    weight_bytes: np.ndarray
    allreduce_bytes: np.ndarray
    param_bytes: np.ndarray
    output_bytes: np.ndarray
    kv_bytes_per_token: np.ndarray
    replicated: np.ndarray  # bool: runs whole on every TP rank
    shard_max: np.ndarray  # 0 = no cap
    causal: np.ndarray  # bool
    kinds: tuple[str, ...]

    @classmethod
    def from_ops(cls, ops: list[Op] | tuple[Op, ...]) -> OpTable:
        def col(name: str) -> np.ndarray:
            return np.array([getattr(o, name) for o in ops], dtype=float)

        return cls(
            flops=col("flops"),
            bytes=col("bytes"),
            weight_bytes=col("weight_bytes"),
            allreduce_bytes=col("allreduce_bytes"),
            param_bytes=col("param_bytes"),
            output_bytes=col("output_bytes"),
            kv_bytes_per_token=col("kv_bytes_per_token"),
            replicated=np.array([o.shard == "replicated" for o in ops], dtype=bool),
            shard_max=np.array([o.shard_max for o in ops], dtype=float),
            causal=np.array([o.causal for o in ops], dtype=bool),
            kinds=tuple(o.kind for o in ops),
        )

    def __len__(self) -> int:
        return len(self.kinds)

    def split(self, tp: int) -> np.ndarray:
        """Degree by which each op is divided on a TP group of ``tp`` (see ``Op.split``)."""
        split = np.where(self.shard_max > 0, np.minimum(tp, self.shard_max), tp)
        return np.where(self.replicated, 1.0, split)


class KernelPricer:
    """Per-op efficiencies of one platform and dtype, cached per op kind.

    Example:
        >>> from paratune.costmodel import get_platform
        >>> from paratune.graphs import build_graph
        >>> g = build_graph("gpt2", phase="decode", batch=1, seq=64)
        >>> pricer = KernelPricer(get_platform("dgx-a100"), "bf16")
        >>> t = pricer.op_times(OpTable.from_ops([o for t in g.tasks for o in t.ops]), tp=1)
        >>> bool((t > 0).all())
        True
    """

    def __init__(self, platform: Platform, dtype: str) -> None:
        self.platform = platform
        dev, prof = platform.device, platform.profile
        self.peak = dev.peak(dtype)
        self.bw = dev.memory_bw
        self.overhead = prof.kernel_overhead_s
        self._prof = prof

    def op_times(self, table: OpTable, tp: int, scale: float = 1.0) -> np.ndarray:
        """Seconds of each op on one device of a TP group of ``tp``, for a ``scale`` share of the batch."""
        split = table.split(tp)
        flops = table.flops * scale / split
        flops = np.where(table.causal, 0.5 * flops, flops)
        nbytes = (table.weight_bytes + (table.bytes - table.weight_bytes) * scale) / split
        comp = np.zeros(len(table))
        mem = np.zeros(len(table))
        for kind in set(table.kinds):
            idx = np.fromiter((k == kind for k in table.kinds), dtype=bool, count=len(table))
            ce, me = self._prof.compute_eff(kind), self._prof.memory_eff(kind)
            f, b = flops[idx], nbytes[idx]
            with np.errstate(divide="ignore", invalid="ignore"):
                comp[idx] = np.where(f > 0, f / (self.peak * ce(f)), 0.0)
                mem[idx] = np.where(b > 0, b / (self.bw * me(b)), 0.0)
        return np.maximum(comp, mem) + self.overhead

    def op_time(self, op: Op, tp: int, scale: float = 1.0) -> float:
        """Seconds of one op (convenience for a single op; prefer :meth:`op_times`)."""
        return float(self.op_times(OpTable.from_ops([op]), tp, scale)[0])


def allreduce_time(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """Ring all-reduce of ``nbytes`` over ``ranks`` (0 for a single rank or no data)."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def allgather_time(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """Ring all-gather (or reduce-scatter) whose full result is ``nbytes``."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return (ranks - 1) * alpha + (ranks - 1) / ranks * nbytes / bandwidth


def p2p_time(nbytes: float, alpha: float, bandwidth: float) -> float:
    """Point-to-point send of ``nbytes`` (pipeline boundary)."""
    if nbytes <= 0:
        return 0.0
    return alpha + nbytes / bandwidth


def group_link(platform: Platform, devices: tuple[int, ...] | list[int]) -> tuple[float, float]:
    """(alpha, bytes/s) for collectives of a device group: its slowest link, mesh hops included."""
    alpha, bw = platform.link_terms(platform.link_class(devices))
    return alpha * platform.hops(devices), bw


def pair_link(platform: Platform, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[float, float]:
    """(alpha, bytes/s) of a transfer between groups ``src`` and ``dst``, the same both ways.

    The pair that carries it is the last device of the group with the lower ids and the
    first of the other (neighbours on a switch or a mesh), so activations forward and
    gradients backward cross the same link.
    """
    low, high = (src, dst) if src[0] <= dst[0] else (dst, src)
    return group_link(platform, (low[-1], high[0]))
