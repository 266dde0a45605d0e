"""Turning a plan into the event loop's input: task durations, transfers, data-parallel all-reduces.

Every time comes from the shared pricing functions: kernels from the simulator's
cached :meth:`KernelPricer.op_times` tables (per TP degree and batch share, summed
per task), TP all-reduces from :func:`allreduce_time` on the stage's
:func:`group_link`, transfers from :func:`p2p_time` on :func:`pair_link`.

Transfers: a tensor goes once to each consumer stage (``output_bytes`` of its
producer, capped by the bytes of the edges it feeds there: two ops of the next
layer read the hidden state, it is sent once); gradients flowing into one backward
task from several producers on another stage are summed there and sent once, with
the size of the forward tensor they are the gradient of (what autograd does).

Interleaved 1F1B (``virtual_stages`` v > 1): ``stage_of`` gives each task's model
chunk (of p x v); the event loop's stages are the p device groups, chunk k on group
k mod p. Prices depend only on the group (its TP degree and devices), recomputation
on the chunk; a tensor between two chunks of one group stays there (no transfer);
transfers between groups use the directed link of that pair of groups, whichever
chunks they join (with p = 2, forward activations and backward gradients can share
a direction); each group reduces the gradients of all its chunks in one
data-parallel all-reduce.

Sequence parallelism: the tensor crossing stages is sharded over TP, each of the
min(t, t') TP rank pairs sends 1/min(t, t') of it in parallel on the pair's terms, as the
analytic evaluator prices a hop (:mod:`._analytic_train`); ``x_bytes`` (what the receiver
holds in the lifetimes) keeps the whole tensor.

ZeRO and ``overlap`` (data-parallel tails, ZeRO-3's per-slot gathers, the sharded
optimizer) come from :mod:`._simtech`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..graphs import Phase
from ._plan import Plan
from ._pricing import GroupLink, group_terms, p2p_time, pair_link
from ._simengine import BACKWARD, SimInput
from ._simtech import dp_tails, expert_alltoalls, ring_attention, shard_group, tp_overlap_keep, zero3_gathers

if TYPE_CHECKING:
    from ._simulator import Simulator

#: Per stage: (op seconds, task seconds, op all-reduce seconds, task all-reduce seconds) at the plan's share.
StagePrices = tuple[np.ndarray, list[float], np.ndarray, list[float]]


@dataclass
class Built:
    """The event loop's input and what reading its output needs."""

    inp: SimInput
    ar_part: list[float]  # all-reduce seconds inside each task's duration
    x_bytes: list[float]  # bytes of each transfer, whole batch
    per_stage: list[StagePrices]
    links: list[GroupLink]  # collective terms of each stage's group
    extra: list[float] = field(default_factory=list)  # per task: collective seconds beyond its ops (ZeRO-3 gathers)
    ar_keep: list[float] = field(default_factory=list)  # per task: share of its TP all-reduces left exposed
    once_share: float = 1.0  # share of the once tasks' work each rank does (ZeRO: 1 / N_d)
    rerun: list[float] = field(default_factory=list)  # per task: recomputed attention-core seconds (selective)


def build_input(sim: Simulator, plan: Plan, stage_of: list[int], scale: float) -> Built:
    """Per-task durations, transfers and the schedule of ``plan`` for the event loop.

    ``stage_of`` is each task's entry of ``plan.stages`` (a model chunk when interleaved).
    """
    T, chunks = len(sim.ids), plan.stages
    p = plan.pp
    group_of = [k % p for k in stage_of]  # the device group (pipeline stage) running each task
    stages = plan.physical_stages
    links = [group_terms(sim.platform, plan.tp_group(s)) for s in range(p)]  # CP rank 0's TP group
    per_stage: list[StagePrices] = []
    train = sim.phase == Phase.TRAIN
    sp = train and plan.sequence_parallel
    for s, st in enumerate(stages):
        ep = plan.ep if train else 1
        k_times, k_sums = sim.kernels_sp(st.tp, scale, ep) if sp and st.tp > 1 else sim.kernels(st.tp, scale, ep)
        a_times, a_sums = sim.allreduces(st.tp, scale, links[s])
        per_stage.append((k_times, k_sums, a_times, a_sums))
    kernels = [0.0 if sim.once[i] else per_stage[group_of[i]][1][i] for i in range(T)]
    rerun = [0.0] * T  # selective recomputation: the attention core's forward, re-run before a backward
    if train and plan.selective_recompute:
        cores = [sim.core_kernels(k_times) for k_times, *_ in per_stage]
        for i in range(T):
            f = sim.fwd_of[i]
            if f >= 0 and not sim.once[i] and not chunks[stage_of[i]].recompute:
                rerun[i] = cores[group_of[i]][f]
    keep = [1.0] * T
    if train and plan.tp_overlap:
        ars = [0.0 if sim.once[i] else per_stage[group_of[i]][3][i] for i in range(T)]
        keep = tp_overlap_keep(sim, plan, stage_of, ars)
    dur, ar_part = [0.0] * T, [0.0] * T
    for i in range(T):
        s = group_of[i]
        if sim.once[i]:
            tp = stages[s].tp
            k_sums, a_sums = sim.kernels(tp, 1.0)[1], sim.allreduces(tp, 1.0, links[s])[1]
        else:
            k_sums, a_sums = per_stage[s][1], per_stage[s][3]
        kern, ar = k_sums[i] + rerun[i], a_sums[i] * keep[i]
        f = sim.fwd_of[i]
        if f >= 0 and chunks[stage_of[i]].recompute:
            kern, ar = kern + k_sums[f], ar + a_sums[f] * keep[f]
        dur[i], ar_part[i] = kern + ar, ar
    extra = [0.0] * T
    once_share = 1.0
    if train and plan.cp > 1:
        cores = [sim.core_kernels(k_times) for k_times, *_ in per_stage]
        ring = ring_attention(sim, plan, stage_of, [cores[g][i] for i, g in enumerate(group_of)])
        for i in range(T):
            dur[i] += ring[i]
            ar_part[i] += ring[i]
            extra[i] += ring[i]
    if train and plan.ep > 1:
        for i, a2a in enumerate(expert_alltoalls(sim, plan, stage_of)):
            dur[i] += a2a
            ar_part[i] += a2a
            extra[i] += a2a
    if train and plan.zero:
        once_share = 1.0 / shard_group(plan)
        gathers = zero3_gathers(sim, plan, stage_of, kernels)
        for i in range(T):
            extra[i] += gathers[i]
            dur[i] += gathers[i]
            ar_part[i] += gathers[i]
            if sim.once[i]:  # each rank updates its shard of the parameters
                dur[i] *= once_share
                ar_part[i] *= once_share
    local_succ: list[list[int]] = [[] for _ in range(T)]
    sends: list[list[int]] = [[] for _ in range(T)]
    groups: dict[tuple[int, int, int], int] = {}
    x_src: list[list[int]] = []
    x_dst: list[list[int]] = []
    x_sum: list[float] = []
    x_cap: list[float] = []
    x_label: list[int] = []
    step = sim.step
    for u, v, nbytes in sim.edges:
        su, sv = stage_of[u], stage_of[v]
        if group_of[u] == group_of[v]:  # same chunk, or two chunks of one device group
            local_succ[u].append(v)
            continue
        # A tensor goes once to each consumer stage; gradients for one consumer are summed, then sent once.
        grad = step[u] == BACKWARD and step[v] == BACKWARD
        key = (1, v, su) if grad else (0, u, sv)
        x = groups.get(key)
        if x is None:
            x = groups[key] = len(x_src)
            x_src.append([])
            x_dst.append([])
            x_sum.append(0.0)
            x_cap.append(sim.out_bytes[sim.fwd_of[v]] if grad and sim.fwd_of[v] >= 0 else sim.out_bytes[u])
            x_label.append(v if grad else u)
        if u not in x_src[x]:
            x_src[x].append(u)
            sends[u].append(x)
        if v not in x_dst[x]:
            x_dst[x].append(v)
        x_sum[x] += nbytes
    link_id: dict[tuple[int, int], int] = {}
    x_link, x_dur, x_dur_once, x_bytes = [], [], [], []
    for x, srcs in enumerate(x_src):
        su, sv = group_of[srcs[0]], group_of[x_dst[x][0]]
        nbytes = min(x_cap[x], x_sum[x]) if x_cap[x] > 0 else x_sum[x]
        terms = pair_link(sim.platform, stages[su].devices, stages[sv].devices)
        shards = min(stages[su].tp, stages[sv].tp) if sp else 1  # SP: each TP rank pair sends its shard
        x_link.append(link_id.setdefault((su, sv), len(link_id)))
        x_dur.append(p2p_time(nbytes * scale / shards, *terms))
        x_dur_once.append(p2p_time(nbytes / shards, *terms))
        x_bytes.append(nbytes)
    m = plan.micro_batches
    dp = None
    if train:
        backward = [0.0] * p
        for i, s in enumerate(group_of):
            if sim.step[i] == BACKWARD and not sim.once[i]:
                backward[s] += dur[i]
        dp = dp_tails(sim, plan, group_of, backward)
    inp = SimInput(
        n_stages=p, n_links=len(link_id), stage_of=group_of, step=sim.step, once=sim.once, dur=dur,
        local_succ=local_succ, sends=sends, x_link=x_link, x_dur=x_dur, x_dur_once=x_dur_once, x_dst=x_dst,
        x_src=x_src, x_label=x_label,
        instances=m * sim.decode_steps if sim.phase == Phase.DECODE else m,
        chain=m if sim.phase == Phase.DECODE else 0,
        schedule=plan.schedule if train else "plain",
        warmup=[min(m, p - s) for s in range(p)], dp_dur=dp, strict=train and plan.is_layered,
        chunk_of=stage_of, virtual=plan.virtual_stages,
    )  # fmt: skip
    return Built(inp, ar_part, x_bytes, per_stage, links, extra, keep, once_share, rerun)
