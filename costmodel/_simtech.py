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
  chunk gathers again for its recomputed forward); the optimizer updates 1/N_d of the
  parameters;
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

from ..graphs import DTYPE_BYTES
from ._memory import OPTIMIZER_STATE_BYTES_PER_PARAM
from ._plan import Plan
from ._pricing import group_link
from ._simengine import BACKWARD, FORWARD
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
    """The devices holding the same shard as the first device of ``stage``, one per replica."""
    first, dpr = plan.stages[stage].devices[0], plan.devices_per_replica
    return tuple(first + k * dpr for k in range(plan.replicas))


def model_states(sim: Simulator, plan: Plan, group_of: list[int]) -> StageState:
    """Weights, gradients, optimizer state and ZeRO-3 buffers per device of each pipeline stage."""
    k_ratio = OPTIMIZER_STATE_BYTES_PER_PARAM / DTYPE_BYTES[sim.graph.meta.dtype]
    group = shard_group(plan)
    out = StageState([], [], [], [], group)
    for s, st in enumerate(plan.physical_stages):
        total = sim.stage_weights(group_of, s, st.tp)
        w, g, o = model_state(total, 0.0, k_ratio, plan.zero, group, group)
        out.weights.append(w)
        out.gradients.append(g)
        out.optimizer_state.append(o)
        buffer = 0.0
        if plan.zero == 3 and group > 1:
            buffer = max(_unit_weights(sim, group_of, s, st.tp).values(), default=0.0) * (2.0 if plan.overlap else 1.0)
        out.buffers.append(buffer)
    return out


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
            ag_b = exposed(ag_b, sum(kernels[i] for i in back), 2.0 * first)
        for i in fwd:
            share = weights[i] / total
            extra[i] = ag_f * share
            b = sim.bwd_of[i]
            if b >= 0:
                extra[b] = ag_b * share + (extra[i] if st.recompute else 0.0)
    return extra


def dp_tails(sim: Simulator, plan: Plan, group_of: list[int], backward: list[float]) -> list[float]:
    """Per pipeline stage: exposed data-parallel seconds after its last backward (reduction + weight gather).

    ``backward`` holds each stage's backward slots of one micro-batch (seconds), what
    the bucketed reduction hides behind with ``overlap``.
    """
    dp, group, zero = plan.data_parallel, shard_group(plan), plan.zero
    out = []
    for s, st in enumerate(plan.physical_stages):
        total = sim.stage_weights(group_of, s, st.tp)
        ranks = _dp_ranks(plan, s)
        inner = outer = (0.0, 1.0)
        if dp > 1:
            inner = group_link(sim.platform, ranks[: group if zero else dp])
            outer = group_link(sim.platform, ranks[::group]) if zero and group < dp else inner
        grad, gather = gradient_sync(total, dp, zero, group if zero else dp, inner, outer)
        if plan.overlap and grad > 0.0:
            largest = max(_unit_weights(sim, group_of, s, st.tp).values(), default=0.0)
            grad = exposed(grad, backward[s], grad * largest / total if total > 0 else grad)
        out.append(grad + gather)
    return out
