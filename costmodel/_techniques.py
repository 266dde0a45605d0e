"""Communication and memory terms of the training techniques (ZeRO, SP, selective recomputation, CP, EP, overlap).

Plain functions of bytes, ranks and link terms, shared by the analytic evaluator
(:mod:`._analytic_train`) and its tests; the conventions are the project's (issue 18):

* Model state per device, mixed-precision Adam (ZeRO paper, K = 12): weights W (the
  stage's bytes per device after TP / PP, expert weights also / ep), gradients W (same
  dtype), optimizer state K / elem x W (fp32 master copy + two moments). ZeRO-1 divides
  the optimizer state by the shard degree N_d, ZeRO-2 also the gradients, ZeRO-3 also the
  weights and holds one layer's gathered weights as a buffer (two with prefetch).
* DP traffic (ring model): ZeRO-0 all-reduces the gradients over the N data-parallel
  ranks; ZeRO-1/2 reduce-scatter them and all-gather the updated weights (the bytes of one
  all-reduce), once per step; ZeRO-3 all-gathers each layer's weights in the forward and
  again in the backward of every micro-batch and reduce-scatters its gradients in the
  backward (1.5x ZeRO-0's volume at one micro-batch). Hybrid sharding (``shard_group`` g):
  the collectives above run inside groups of g ranks, plus an all-reduce of the 1/g shard
  across the N/g groups.
* Overlap (``overlap``): the gradient reduction runs in buckets behind the backward of the
  last micro-batch: exposed = max(reduction - that backward, one bucket's reduction), one
  bucket = one layer's gradients (the last layer's bucket cannot start before its backward
  ends). The all-gather of updated weights (ZeRO-1/2) stays exposed. ZeRO-3's per-layer
  all-gathers are prefetched behind the previous layer's compute: exposed = max(first
  layer's gather, gathers - compute of the slot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._pricing import allgather_time, allreduce_time

if TYPE_CHECKING:
    from ._plan import Plan

Link = tuple[float, float]  # (alpha seconds, bytes/s)


def uses_techniques(plan: Plan) -> bool:
    """True when any plan-wide training technique differs from its default (``Plan.techniques``, faster)."""
    return bool(
        plan.zero != 0
        or plan.virtual_stages != 1
        or plan.cp != 1
        or plan.ep != 1
        or plan.sequence_parallel is not False
        or plan.selective_recompute is not False
        or plan.overlap is not False
        or plan.tp_overlap is not False
        or plan.shard_group != 0
    )


def model_state(
    weights: float, expert_weights: float, k_ratio: float, zero: int, shard: int, expert_shard: int
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes per device under ZeRO stage ``zero``.

    ``weights`` are the dense weight bytes per device, ``expert_weights`` the expert ones
    (already divided by ep); ``k_ratio`` = optimizer bytes per weight byte (12 / 2 for
    bf16 weights); ``shard`` = N_d for dense state, ``expert_shard`` for expert state
    (the expert-data-parallel ranks: experts live on ep of the data-parallel ranks only).
    """
    nd = shard if zero >= 1 else 1
    ne = expert_shard if zero >= 1 else 1
    w = weights / nd + expert_weights / ne if zero >= 3 else weights + expert_weights
    g = weights / nd + expert_weights / ne if zero >= 2 else weights + expert_weights
    o = (weights / nd + expert_weights / ne) * k_ratio
    return w, g, o


def gradient_sync(
    nbytes: float, ranks: int, zero: int, group: int, inner: Link, outer: Link, collectives: int = 1
) -> tuple[float, float]:
    """(gradient reduction, weight all-gather) seconds per step of ``nbytes`` per device over ``ranks`` DP ranks.

    ``group`` = shard group size (``ranks`` when not hybrid), ``inner`` its link and
    ``outer`` the link across groups. ZeRO-3's reduction is per micro-batch and per layer
    (:func:`zero3_slot_traffic`); here it contributes only the hybrid all-reduce across groups.
    ``collectives`` = how many separate collectives the bytes are sent in (their alpha terms).
    """
    if ranks <= 1 or nbytes <= 0:
        return 0.0, 0.0
    if zero == 0:
        return allreduce_time(nbytes, ranks, collectives * inner[0], inner[1]), 0.0
    across = allreduce_time(nbytes / group, ranks // group, collectives * outer[0], outer[1]) if group < ranks else 0.0
    if zero == 3:
        return across, 0.0
    rs = allgather_time(nbytes, group, collectives * inner[0], inner[1])
    return rs + across, allgather_time(nbytes, group, inner[0], inner[1])


def zero3_slot_traffic(nbytes: float, group: int, layers: int, inner: Link) -> tuple[float, float]:
    """(forward, backward) seconds of ZeRO-3 per micro-batch: per layer all-gather; all-gather + reduce-scatter."""
    if group <= 1 or nbytes <= 0:
        return 0.0, 0.0
    gather = allgather_time(nbytes, group, max(layers, 1) * inner[0], inner[1])
    return gather, 2.0 * gather


def exposed(comm: float, hidden_behind: float, first: float) -> float:
    """Seconds of ``comm`` left on the path when it overlaps ``hidden_behind``; ``first`` can never hide."""
    if comm <= 0.0:
        return 0.0
    rest = comm - hidden_behind
    return max(rest, min(first, comm))


def interleaved_in_flight(p: int, m: int, v: int, stage: int) -> int:
    """Model-chunk micro-batches whose activations stage ``stage`` holds at peak under interleaved 1F1B.

    Megatron-Core's warm-up runs (p - s - 1) x 2 + (v - 1) x p forwards before the first
    backward, one more is in flight then (capped at m x v). For stage 0 with uniform
    chunks that is p (1 + (p - 1)/(p v)) micro-batches' worth of a whole stage, the factor
    Korthikanti et al. (2022, sec. 4.2.3) give.
    """
    return min(m * v, (p - stage - 1) * 2 + (v - 1) * p + 1)
