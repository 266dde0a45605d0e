"""Moving between plans at run time: running a plan on another shape, what differs, and what a switch costs.

* :func:`fit_plan`: a plan tuned for one batch run on another, as a run time would:
  same stages, TP degrees, devices and replicas; micro-batches clipped to the
  largest divisor of the replica's batch not above the plan's; a batch that the
  replicas do not divide is *padded* up to a multiple of them (a run time fills
  the last replicas with padding or leaves them idle: the latency is the same).
* :func:`changed_decisions` / :func:`transplant`: which of the plan's decisions
  differ between two plans, and the plan that takes just one of them from another
  (repaired into a valid layout), for the per-decision ablation of the study.
* :func:`reshard_cost`: the weight bytes the devices must receive to go from plan
  A to plan B, and the time it takes at the platform's point-to-point link terms.

What :func:`reshard_cost` models, and what not:

* Each layer's weights are sharded evenly over the TP group of the stage that
  holds it (rank j of a group of t holds the slice [j/t, (j+1)/t)); the embedding
  lives with the first stage, the LM head with the last; every replica holds a copy.
* A device of plan B needs the part of its slice it does not already hold in plan
  A; each piece comes from the nearest device holding it in A (same node when any
  holder is there, else over the network; fewest hops on a mesh), priced with
  ``Platform.p2p_terms`` of that link class, the terms the analytic model uses for
  pipeline send/recv: ``alpha`` per source device and ``bytes / bandwidth``.
  NVLink and the network are separate ports, so a device's time is the slower of
  its intra-node and inter-node receptions, and the switch takes the slowest device.
* The KV cache is not moved: the switch happens between batches, when no request
  is resident. The time is the stall of a switch that does not overlap compute,
  and a *lower bound* on it: senders are assumed never to contend (one holder may
  serve several receivers), and buffer re-allocation and the launch of the new
  plan's kernels and communicators are not counted.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..costmodel import Plan, Stage
from ..problem import Problem, contiguous_plan, divisors

#: The decisions a plan makes, as the study's breakdown names them.
DECISIONS = ("granularity", "tp", "stages", "micro_batches", "replicas", "recompute")


def fit_plan(plan: Plan, batch: int) -> tuple[Plan, int]:
    """``plan`` as run on batches of ``batch`` requests, and the (padded) batch it is priced on."""
    padded = -(-batch // plan.replicas) * plan.replicas
    per_replica = padded // plan.replicas
    micro = max(d for d in divisors(per_replica) if d <= plan.micro_batches)
    fitted = plan if micro == plan.micro_batches else replace(plan, micro_batches=micro)
    return fitted, padded


def _layered(plan: Plan) -> list[tuple[int, int]]:
    if not plan.is_layered:
        raise ValueError("the static-vs-runtime study compares layered plans (stages with layer ranges)")
    return [s.layers for s in plan.stages]  # type: ignore[misc]


def _stage_at(plan: Plan, layer: int) -> Stage:
    for s in plan.stages:
        a, b = s.layers  # type: ignore[misc]
        if a <= layer <= b:
            return s
    return plan.stages[-1]


def _per_layer(plan: Plan, what: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for s in plan.stages:
        a, b = s.layers  # type: ignore[misc]
        out += [getattr(s, what)] * (b - a + 1)
    return tuple(out)


def changed_decisions(a: Plan, b: Plan) -> list[str]:
    """The decisions (of :data:`DECISIONS`) on which ``a`` and ``b`` differ.

    TP degrees and recomputation are compared per layer, so moving a stage cut
    without changing any layer's TP degree counts as ``stages`` only.
    """
    out = []
    if a.granularity != b.granularity:
        out.append("granularity")
    if _per_layer(a, "tp") != _per_layer(b, "tp"):
        out.append("tp")
    if _layered(a) != _layered(b):
        out.append("stages")
    if a.micro_batches != b.micro_batches:
        out.append("micro_batches")
    if a.replicas != b.replicas:
        out.append("replicas")
    if _per_layer(a, "recompute") != _per_layer(b, "recompute"):
        out.append("recompute")
    return out


def transplant(base: Plan, donor: Plan, decisions: str | Sequence[str], max_devices: int) -> Plan | None:
    """``base`` with ``decisions`` taken from ``donor``, repaired into a valid layout; None when unchanged or unfit.

    Stage-wise values (TP, recompute) are read from the donor's stage covering the
    middle layer of each stage (with ``stages`` taken, the donor's cuts; without, the
    base's), the others from the base the same way. Devices are laid out contiguously
    again (:func:`~paratune.search.contiguous_plan`); when the plan then needs more
    devices than the platform has, replicas shrink to what fits (the repair the hybrid
    search space makes). A granularity that does not allow the cuts comes back as a
    plan the cost model calls invalid: the caller counts it as no gain.
    """
    taken = {decisions} if isinstance(decisions, str) else set(decisions)
    unknown = sorted(taken - set(DECISIONS))
    if unknown:
        raise ValueError(f"unknown decision(s) {', '.join(unknown)}; allowed: {', '.join(DECISIONS)}")

    def source(decision: str) -> Plan:
        return donor if decision in taken else base

    cuts = _layered(source("stages"))
    tps = [_stage_at(source("tp"), (a + b) // 2).tp for a, b in cuts]
    rcs = [_stage_at(source("recompute"), (a + b) // 2).recompute for a, b in cuts]
    replicas = min(source("replicas").replicas, max_devices // sum(tps))
    if replicas < 1:
        return None
    plan = contiguous_plan(
        [(a, b, t) for (a, b), t in zip(cuts, tps, strict=True)],
        micro_batches=source("micro_batches").micro_batches,
        replicas=replicas,
        granularity=source("granularity").granularity,
        schedule=base.schedule,
        recompute=rcs,
    )
    return None if plan == base else plan


# -- resharding weights ------------------------------------------------------


def unit_weight_bytes(problem: Problem) -> list[float]:
    """Weight bytes of each unit: the embedding (unit 0), each layer (1..n), the head (n + 1)."""
    graph = problem.graph()
    n = graph.meta.n_layers
    out = [0.0] * (n + 2)
    for t in graph.tasks:
        if t.step == "forward":
            out[min(max(t.layer, -1), n) + 1] += t.param_bytes
    return out


def _holders(plan: Plan, n_layers: int) -> list[list[tuple[int, int, int]]]:
    """Per unit: (device, TP rank, TP degree) of every device holding a slice, in every replica."""
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(n_layers + 2)]
    for si, s in enumerate(plan.stages):
        a, b = s.layers  # type: ignore[misc]
        units = list(range(a + 1, b + 2))
        if si == 0:
            units.insert(0, 0)
        if si == len(plan.stages) - 1:
            units.append(n_layers + 1)
        for k in range(plan.replicas):
            devices = plan.replica_devices(si, k)
            for u in units:
                out[u] += [(d, j, s.tp) for j, d in enumerate(devices)]
    return out


@dataclass(frozen=True)
class ReshardCost:
    """What switching plans moves: ``bytes`` received by all devices together, ``time_s`` of the slowest
    device, ``per_device_max_bytes`` and ``devices`` (how many receive anything)."""

    bytes: float
    time_s: float
    per_device_max_bytes: float
    devices: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def reshard_cost(plan_a: Plan, plan_b: Plan, problem: Problem) -> ReshardCost:
    """Weight movement to switch from ``plan_a`` to ``plan_b`` (see the module docstring).

    Example:
        >>> p = Problem("llama2-7b:layers=4", "dgx-a100", phase="decode", batch=8, context=512)
        >>> reshard_cost(Plan.uniform(4, tp=2), Plan.uniform(4, tp=2), p).bytes
        0.0
    """
    _layered(plan_a)
    _layered(plan_b)
    plat = problem.resolved_platform
    n = problem.n_layers
    weights = unit_weight_bytes(problem)
    held_a, held_b = _holders(plan_a, n), _holders(plan_b, n)
    # device -> link class -> [bytes, set of sources]
    incoming: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(lambda: [0.0, set()]))
    for u in range(n + 2):
        if not weights[u]:
            continue
        mine = {d: (j, t) for d, j, t in held_a[u]}
        by_rank: dict[int, list[int]] = defaultdict(list)
        t_a = held_a[u][0][2]
        for d, j, _ in held_a[u]:
            by_rank[j].append(d)
        for d, j, t_b in held_b[u]:
            scale = math.lcm(t_a, t_b)
            lo, hi = j * scale // t_b, (j + 1) * scale // t_b  # needed slice in units of 1/scale
            have = None
            if d in mine:
                r, t = mine[d]
                have = (r * scale // t, (r + 1) * scale // t)
            for i in range(lo * t_a // scale, -(-hi * t_a // scale)):
                a_lo, a_hi = max(lo, i * scale // t_a), min(hi, (i + 1) * scale // t_a)
                if have is not None:  # drop what d already holds (one interval, so at most two pieces stay)
                    keep = max(0, min(a_hi, have[0]) - a_lo) + max(0, a_hi - max(a_lo, have[1]))
                else:
                    keep = a_hi - a_lo
                if keep <= 0:
                    continue
                src, link = _nearest(plat, d, by_rank[i])
                cell = incoming[d][link]
                cell[0] += weights[u] * keep / scale
                cell[1].add(src)
    total = 0.0
    worst_bytes = 0.0
    worst_time = 0.0
    for d, links in incoming.items():
        got = sum(c[0] for c in links.values())
        total += got
        worst_bytes = max(worst_bytes, got)
        times = []
        for link, (nbytes, sources) in links.items():
            alpha, bw = plat.p2p_terms(link)
            hops = max(plat.hops((s, d)) for s in sources)
            times.append(alpha * hops * len(sources) + nbytes / bw)
        worst_time = max(worst_time, max(times))
    return ReshardCost(total, worst_time, worst_bytes, len(incoming))


def _nearest(plat: Any, device: int, holders: list[int]) -> tuple[int, str]:
    """The holder closest to ``device`` (same node first, then fewest mesh hops, then lowest id) and its link class."""

    def rank(src: int) -> tuple[int, int, int]:
        cls = plat.link_class((src, device))
        return (0 if cls != "inter" else 1, plat.hops((src, device)), src)

    src = min(holders, key=rank)
    return src, plat.link_class((src, device))
