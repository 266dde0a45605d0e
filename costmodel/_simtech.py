"""ZeRO (0-3, hybrid ``shard_group``) and ``overlap`` in the discrete-event simulator.

The simulator sums its own per-task prices (weights of each task's ops at the stage's
TP degree, each slot's kernels) and applies the project's conventions (issue 18) with
the same terms as the analytic evaluator (:mod:`._techniques`), so the two agree:

* model state per device: weights W, gradients W, optimizer state K/elem W (K = 12);
  ZeRO-1 divides the optimizer state by the shard degree N_d, ZeRO-2 also the
  gradients, ZeRO-3 also the weights, plus the largest layer's gathered weights as a
  buffer (two with ``overlap``: the prefetched next layer);
* data-parallel traffic per pipeline stage (all its chunks): ZeRO-0 all-reduce of W;
  ZeRO-1/2 reduce-scatter + all-gather of the updated weights inside the shard group
  (+ an all-reduce of W/g across groups when hybrid); ZeRO-3 per micro-batch one
  all-gather per layer in each chunk's forward slot, all-gather + reduce-scatter in its
  backward slot (spread over the slot's tasks by their weight bytes; a fully recomputing
  chunk's recomputed forward runs on the backward's gather, as FSDP's pre-backward
  all-gather serves both); the optimizer updates 1/N_d of the
  parameters;
* ``tp_overlap``: each chunk's TP all-reduces of a direction hide behind the chunk's
  TP-split GEMMs of that direction (matmul and MoE ops, not replicated, not the
  attention core), up to their time; a recomputed forward keeps its forward's share;
* ``cp``: the sequence split over the CP ranks (kernels at 1/cp of the tokens, one
  rank simulated, the others identical); ring attention per transformer layer sends
  (cp - 1) K, V chunks in the forward, twice that in the backward, on the CP ring's
  link, hidden behind the chunk's attention-core kernels of that direction (exposed =
  max(0, ring - core)); gradients are reduced over replicas x cp ranks;
* ``ep``: expert ops priced with 1/ep of the experts' weights; per MoE layer and
  micro-batch 2 all-to-alls (dispatch, combine) in the forward and 2 in the backward of
  tokens x top_k x hidden elements (/ t with SP) on the EP group (ep consecutive
  data-parallel ranks); expert state / ep, its gradients reduced over the N / ep ranks
  holding the same experts;
* ``overlap``: the stage's gradient reduction hides behind one micro-batch's backward
  slots but never below one layer's bucket, the ZeRO-1/2 all-gather stays exposed;
  ZeRO-3's gathers in a slot hide behind the slot's kernels but never below the first
  layer's.

The gathers are priced onto the slot (not run on a separate stream), which is what the
closed forms say; a later version could schedule them as jobs of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..graphs import DTYPE_BYTES
from ._memory import OPTIMIZER_STATE_BYTES_PER_PARAM
from ._plan import Plan
from ._pricing import alltoall_time, group_link, p2p_time
from ._simengine import BACKWARD, FORWARD
from ._stash import is_attention_core
from ._techniques import exposed, gradient_sync, model_state, zero3_slot_traffic

if TYPE_CHECKING:
    from ._simulator import Simulator


@dataclass
class StageState:
    """Per pipeline stage: model state per device and the data-parallel tail."""

    weights: list[float]
    gradients: list[float]
    optimizer_state: list[float]
    buffers: list[float]  # ZeRO-3's gathered layer(s)
    group: int  # ranks the state is sharded over (1 without ZeRO)


def shard_group(plan: Plan) -> int:
    """N_d: the ranks ZeRO shards over (``shard_group`` or all data-parallel ranks); 1 without ZeRO."""
    return (plan.shard_group or plan.data_parallel) if plan.zero else 1


def _dp_ranks(plan: Plan, stage: int) -> tuple[int, ...]:
    """The devices holding the same shard as the first device of ``stage``: its CP ranks (fastest) in every replica."""
    st, dpr = plan.stages[stage], plan.devices_per_replica
    return tuple(st.devices[j * st.tp] + k * dpr for k in range(plan.replicas) for j in range(plan.cp))


def model_states(sim: Simulator, plan: Plan, group_of: list[int]) -> StageState:
    """Weights, gradients, optimizer state and ZeRO-3 buffers per device of each pipeline stage."""
    k_ratio = OPTIMIZER_STATE_BYTES_PER_PARAM / DTYPE_BYTES[sim.graph.meta.dtype]
    group = shard_group(plan)
    out = StageState([], [], [], [], group)
    ep = plan.ep
    expert_shard = group if ep == 1 else plan.data_parallel // ep
    for s, st in enumerate(plan.physical_stages):
        dense, expert = _dense_expert(sim, plan, group_of, s)
        w, g, o = model_state(dense, expert, k_ratio, plan.zero, group, expert_shard)
        out.weights.append(w)
        out.gradients.append(g)
        out.optimizer_state.append(o)
        buffer = 0.0
        if plan.zero == 3 and group > 1:
            buffer = max(_unit_weights(sim, group_of, s, st.tp).values(), default=0.0) * (2.0 if plan.overlap else 1.0)
        out.buffers.append(buffer)
    return out


def _dense_expert(sim: Simulator, plan: Plan, group_of: list[int], s: int) -> tuple[float, float]:
    """(dense, expert) weight bytes per device of stage ``s``; the expert ones split over ``ep`` ranks."""
    tp = plan.stages[s].tp
    total = sim.stage_weights(group_of, s, tp)
    if plan.ep == 1:
        return total, 0.0
    per_task = sim.task_weights(tp, experts=True)
    expert = sum(per_task[i] for i, g in enumerate(group_of) if g == s and sim.step[i] == FORWARD)
    return total - expert, expert / plan.ep


def _unit_weights(sim: Simulator, group_of: list[int], s: int, tp: int) -> dict[int, float]:
    """Weight bytes per device of each layer (embedding -1, head n) stage ``s`` holds."""
    per_task = sim.task_weights(tp)
    out: dict[int, float] = {}
    for i, g in enumerate(group_of):
        if g == s and sim.step[i] == FORWARD:
            out[sim.layer[i]] = out.get(sim.layer[i], 0.0) + per_task[i]
    return out


def zero3_gathers(sim: Simulator, plan: Plan, chunk_of: list[int], kernels: list[float]) -> list[float]:
    """Per task: ZeRO-3 gather seconds added to its duration (forward and backward tasks; 0 elsewhere).

    ``kernels`` are each task's kernel seconds at the plan's share (without TP
    all-reduces or recomputation), what a slot's gathers hide behind with ``overlap``.
    """
    T = len(sim.ids)
    extra = [0.0] * T
    group = shard_group(plan)
    if plan.zero != 3 or group <= 1:
        return extra
    n = len(plan.stages)
    per_chunk: list[list[int]] = [[] for _ in range(n)]
    for i, k in enumerate(chunk_of):
        if not sim.once[i]:
            per_chunk[k].append(i)
    for k, tasks in enumerate(per_chunk):
        st = plan.stages[k]
        weights = sim.task_weights(st.tp)
        fwd = [i for i in tasks if sim.step[i] == FORWARD]
        total = sum(weights[i] for i in fwd)
        if total <= 0.0:
            continue
        units: dict[int, float] = {}
        for i in fwd:
            units[sim.layer[i]] = units.get(sim.layer[i], 0.0) + weights[i]
        link = group_link(sim.platform, _dp_ranks(plan, k % plan.pp)[:group])
        ag_f, ag_b = zero3_slot_traffic(total, group, len(units), link)
        if plan.overlap:
            first = ag_f * max(units.values()) / total
            ag_f = exposed(ag_f, sum(kernels[i] for i in fwd), first)
            back = [i for i in tasks if sim.step[i] == BACKWARD and sim.fwd_of[i] >= 0]
            hide = sum(kernels[i] for i in back) + (sum(kernels[i] for i in fwd) if st.recompute else 0.0)
            ag_b = exposed(ag_b, hide, 2.0 * first)  # the recomputed forward runs in the backward slot too
        for i in fwd:
            share = weights[i] / total
            extra[i] = ag_f * share
            b = sim.bwd_of[i]
            if b >= 0:
                extra[b] = ag_b * share  # a recomputed forward reuses the backward's gather
    return extra


def dp_tails(sim: Simulator, plan: Plan, group_of: list[int], backward: list[float]) -> list[float]:
    """Per pipeline stage: exposed data-parallel seconds after its last backward (reduction + weight gather).

    ``backward`` holds each stage's backward slots of one micro-batch (seconds), what
    the bucketed reduction hides behind with ``overlap``.
    """
    dp, group, zero, ep = plan.data_parallel, shard_group(plan), plan.zero, plan.ep
    out = []
    for s, st in enumerate(plan.physical_stages):
        dense, expert = _dense_expert(sim, plan, group_of, s)
        total = dense + expert
        ranks = _dp_ranks(plan, s)
        inner = outer = (0.0, 1.0)
        if dp > 1:
            inner = group_link(sim.platform, ranks[: group if zero else dp])
            outer = group_link(sim.platform, ranks[::group]) if zero and group < dp else inner
        grad, gather = gradient_sync(total if ep == 1 else dense, dp, zero, group if zero else dp, inner, outer)
        if ep > 1 and expert > 0.0:  # expert gradients: over the ranks holding the same experts
            edp = dp // ep
            e_link = group_link(sim.platform, ranks[::ep]) if edp > 1 else (0.0, 1.0)
            g_e, a_e = gradient_sync(expert, edp, zero, edp, e_link, e_link)
            grad, gather = grad + g_e, gather + a_e
        if plan.overlap and grad > 0.0:
            largest = max(_unit_weights(sim, group_of, s, st.tp).values(), default=0.0)
            grad = exposed(grad, backward[s], grad * largest / total if total > 0 else grad)
        out.append(grad + gather)
    return out


def gemm_ops(sim: Simulator) -> np.ndarray:
    """Ops TP collectives hide behind: TP-split GEMMs (matmul, MoE), not replicated, not the attention core.

    A mask over the graph's ops; :meth:`Simulator.gemm_kernels` builds it once per simulator.
    """
    core = np.array([is_attention_core(op) for task in sim.tasks for op in task.ops], dtype=bool)
    gemm = np.isin(np.array(sim.table.kinds), ["matmul", "moe"])
    return gemm & ~sim.table.replicated & ~core


def tp_overlap_keep(sim: Simulator, plan: Plan, chunk_of: list[int], allreduces: list[float]) -> list[float]:
    """Per task: the share of its TP all-reduce seconds (``allreduces``) left exposed by ``tp_overlap``."""
    T = len(sim.ids)
    keep = [1.0] * T
    n = len(plan.stages)
    comm = [[0.0, 0.0] for _ in range(n)]
    gemm = [[0.0, 0.0] for _ in range(n)]
    scale = 1.0 / (plan.replicas * plan.micro_batches * plan.cp)
    per_chunk = [sim.gemm_kernels(st.tp, scale) for st in plan.stages]  # cached per (TP, share) by the simulator
    for i, k in enumerate(chunk_of):
        step = sim.step[i]
        if sim.once[i] or step not in (FORWARD, BACKWARD):
            continue
        comm[k][step] += allreduces[i]
        gemm[k][step] += per_chunk[k][i]
    for i, k in enumerate(chunk_of):
        step = sim.step[i]
        if sim.once[i] or step not in (FORWARD, BACKWARD) or comm[k][step] <= 0.0:
            continue
        keep[i] = 1.0 - min(comm[k][step], gemm[k][step]) / comm[k][step]
    return keep


def ring_attention(sim: Simulator, plan: Plan, chunk_of: list[int], kernels: list[float]) -> list[float]:
    """Per task: exposed ring-attention seconds of context parallelism (0 when ``cp`` is 1).

    Priced per chunk and direction, then spread over the chunk's tasks by their
    attention-core kernels (``kernels`` are per-op seconds of each task's stage, the
    share of one CP rank); a fully recomputing chunk's backward also re-runs its
    forward's exchange.
    """
    T, cp = len(sim.ids), plan.cp
    extra = [0.0] * T
    if cp <= 1:
        return extra
    meta = sim.graph.meta
    elem = DTYPE_BYTES[meta.dtype]
    hidden = meta.hidden or int(meta.spec.get("hidden", 0) or 0)
    kv_dim = hidden // max(meta.heads, 1) * meta.kv_heads
    tokens = meta.batch * meta.seq / (plan.replicas * plan.micro_batches * cp)
    n_layers = meta.n_layers
    for k, st in enumerate(plan.stages):
        tasks = [i for i, c in enumerate(chunk_of) if c == k and not sim.once[i]]
        layers = len({sim.layer[i] for i in tasks if 0 <= sim.layer[i] < n_layers})
        if not layers:
            continue
        ring_link = group_link(sim.platform, tuple(st.devices[j * st.tp] for j in range(cp)))
        kv_bytes = 2.0 * kv_dim * elem / min(st.tp, meta.kv_heads) * tokens
        ring_f = layers * (cp - 1) * p2p_time(kv_bytes, *ring_link)
        for step, ring in ((FORWARD, ring_f), (BACKWARD, 2.0 * ring_f)):
            mine = [i for i in tasks if sim.step[i] == step]
            core = [kernels[i] for i in mine]
            left = max(0.0, ring - sum(core))
            if left <= 0.0 or not mine:
                continue
            total = sum(core)
            for i, c in zip(mine, core, strict=True):
                extra[i] += left * (c / total if total > 0.0 else (1.0 if i == mine[0] else 0.0))
        if st.recompute:
            for i in tasks:
                b = sim.bwd_of[i]
                if sim.step[i] == FORWARD and b >= 0:
                    extra[b] += extra[i]
    return extra


def expert_alltoalls(sim: Simulator, plan: Plan, chunk_of: list[int]) -> list[float]:
    """Per task: all-to-all seconds of expert parallelism (dispatch + combine), 0 when ``ep`` is 1.

    Each MoE layer's first forward task holding expert ops carries the layer's two
    forward all-to-alls, its backward the two backward ones (and, when the chunk
    recomputes fully, the forward's again).
    """
    T, ep = len(sim.ids), plan.ep
    extra = [0.0] * T
    experts = sim.table.experts
    if ep <= 1 or experts is None:
        return extra
    meta = sim.graph.meta
    elem = DTYPE_BYTES[meta.dtype]
    hidden = meta.hidden or int(meta.spec.get("hidden", 0) or 0)
    top_k = int(meta.spec.get("top_k", 1) or 1)
    tokens = meta.batch * meta.seq / (plan.replicas * plan.micro_batches * plan.cp)
    has_experts = np.logical_or.reduceat(experts, sim.offsets).tolist()
    dpr, cp = plan.devices_per_replica, plan.cp
    seen: set[tuple[int, int]] = set()
    for i, k in enumerate(chunk_of):
        if sim.once[i] or sim.step[i] != FORWARD or not has_experts[i] or (k, sim.layer[i]) in seen:
            continue
        seen.add((k, sim.layer[i]))
        st = plan.stages[k]
        t = st.tp
        group = tuple(st.devices[(q % cp) * t] + (q // cp) * dpr for q in range(ep))
        nbytes = tokens * top_k * hidden * elem / (t if plan.sequence_parallel else 1)
        a2a = 2.0 * alltoall_time(nbytes, ep, *group_link(sim.platform, group))
        extra[i] += a2a
        b = sim.bwd_of[i]
        if b >= 0:
            extra[b] += a2a * (2.0 if st.recompute else 1.0)
    return extra
