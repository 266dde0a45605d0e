"""The physical lower bound of a graph's work on a platform.

No plan can beat the time all devices of the platform need at datasheet peak
to do the FLOPs, or to move the bytes through their memories (weights read at
least once, KV cache read once), with free communication. Reported next to
every prediction, so a user sees how far a plan is from the hardware's limit.
"""

from __future__ import annotations

from ..graphs import TaskGraph
from ._platform import Platform


def lower_bound_s(graph: TaskGraph, platform: Platform) -> float:
    """max(FLOPs / total peak, bytes / total bandwidth) over all devices of ``platform``."""
    n = platform.num_devices
    flops = 0.0
    nbytes = 0.0
    for task in graph.tasks:
        for op in task.ops:
            flops += 0.5 * op.flops if op.causal else op.flops
            nbytes += op.bytes
    peak = platform.device.peak(graph.meta.dtype) * n
    bw = platform.device.memory_bw * n
    return max(flops / peak, nbytes / bw)
