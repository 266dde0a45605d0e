"""The per-plan arithmetic of :class:`AnalyticEvaluator` (formulas in :mod:`._analytic`'s docstring).

Kept apart so the hot path reads as one function of plain float arithmetic on
cached Python lists: no numpy scalars, no allocation beyond the result, which
is what makes 10^4+ evaluations per second on one core possible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graphs import Phase
from ._analytic_train import evaluate_techniques
from ._layer_tables import range_max
from ._metrics import Metrics
from ._pipeline import training_makespan
from ._plan import Plan, Schedule
from ._pricing import allreduce_time, p2p_time, tp_allreduce_time
from ._techniques import uses_techniques
from ._trust import annotate

if TYPE_CHECKING:
    from ._analytic import AnalyticEvaluator


def evaluate_plan(ev: AnalyticEvaluator, plan: Plan) -> Metrics:
    """Metrics of a valid layered ``plan`` (not checked here); plans with training techniques go to
    :func:`._analytic_train.evaluate_techniques`, the rest stay on this fast path."""
    if uses_techniques(plan):
        return evaluate_techniques(ev, plan)
    n_layers, phase = ev.n_layers, ev.phase
    r, m = plan.replicas, plan.micro_batches
    share = r * m
    scale = 1.0 / share
    stages = plan.stages
    p = len(stages)
    train = phase == Phase.TRAIN
    gpipe = plan.schedule == Schedule.GPIPE
    dpr = sum(st.tp for st in stages)
    sequences = ev.batch / r
    kv_len = ev.kv_len
    links, pairs, tp_cache, sc_cache = ev._links, ev._pairs, ev._tp, ev._scaled
    kerns: list[float] = []
    comms: list[float] = []
    needs: list[float] = []
    hops: list[float] = []
    tails: list[tuple[float, float, float]] = []  # train: (backward, dp all-reduce, optimizer) per stage
    warnings: list[str] = []
    kernel_error = 0.0  # kernel seconds x held-out error of their kind
    for i, st in enumerate(stages):
        t = st.tp
        a, b = st.layers  # type: ignore[misc]
        lo = 0 if a == 0 else a + 1
        hi = n_layers + 2 if b == n_layers - 1 else b + 2
        tt = tp_cache.get(t) or ev.tp_tables(t)
        sc = sc_cache.get((t, share)) or ev.scaled_tables(t, share)
        tl = tt.lists
        link = links.get(st.devices) or ev.link(st.devices)
        fl = sc.fwd_l
        kern = fl[hi] - fl[lo]
        col = tl["ar_fwd_n"]
        n_ar = col[hi] - col[lo]
        col = tl["ar_fwd_b"]
        comm = tp_allreduce_time((col[hi] - col[lo]) * scale, n_ar, t, link) if n_ar > 0.5 else 0.0
        col = tl["weights"]
        weights = col[hi] - col[lo]
        need = weights + 2.0 * range_max(tt.out_max_l, lo, hi) * scale
        if train:
            bl = sc.bwd_l
            kern_b = bl[hi] - bl[lo]
            col = tl["ar_bwd_n"]
            n_ar = col[hi] - col[lo]
            col = tl["ar_bwd_b"]
            comm_b = tp_allreduce_time((col[hi] - col[lo]) * scale, n_ar, t, link) if n_ar > 0.5 else 0.0
            kept = m if gpipe else min(m, p - i)
            if st.recompute:
                # Each micro-batch in flight keeps only its layer inputs; one layer's full
                # activations are rebuilt at a time, for the micro-batch being backpropagated.
                kern_b += kern
                comm_b += comm
                col = tl["inputs"]
                stash = ((col[hi] - col[lo]) * kept + range_max(tt.stash_max_l, lo, hi)) * scale
            else:
                col = tl["stash"]
                stash = (col[hi] - col[lo]) * scale * kept
            col = tl["state"]
            need += col[hi] - col[lo] + stash
            kern += kern_b
            comm += comm_b
            col = tl["opt"]
            dp = allreduce_time(weights, r, *ev.dp_link(st.devices[0], dpr, r)) if r > 1 else 0.0
            tails.append((kern_b + comm_b, dp, col[hi] - col[lo]))
        else:
            col = tl["kv"]
            need += (col[hi] - col[lo]) * sequences * kv_len
        el = sc.error_l
        kernel_error += el[hi] - el[lo]
        ol = sc.outside_l
        if ol[hi] - ol[lo] > 0.5:
            warnings.append(
                f"stage {i} (tp {t}): {int(ol[hi] - ol[lo])} kernel(s) run per-device work outside the calibrated "
                f"range of profile {ev.platform.profile.name}: the prediction extrapolates"
            )
        kerns.append(kern)
        comms.append(comm)
        needs.append(need)
        if i < p - 1:
            nxt = stages[i + 1].devices
            alpha, bw = pairs.get((st.devices[-1], nxt[0])) or ev.pair(st.devices, nxt)
            hops.append(p2p_time(ev.cut[b + 1] * scale, alpha, bw))
    metrics = _finish(ev, plan, kerns, comms, hops, tails, needs, warnings, dpr)
    annotate(metrics, ev.pricer.errors, ev.platform, plan, kernel_error, sum(kerns), sum(comms) + sum(hops))
    return metrics


def _finish(
    ev: AnalyticEvaluator,
    plan: Plan,
    kerns: list[float],
    comms: list[float],
    hops: list[float],
    tails: list[tuple[float, float, float]],
    needs: list[float],
    warnings: list[str],
    dpr: int,
) -> Metrics:
    """Combine stage and boundary times by the phase's formula; fill the breakdown and memory."""
    m, r = plan.micro_batches, plan.replicas
    taus = [k + c for k, c in zip(kerns, comms, strict=True)]
    sum_k, sum_c, sum_hop = sum(kerns), sum(comms), sum(hops)
    top = max(taus)
    top_hop = max(hops) if hops else 0.0
    b = taus.index(top)
    phase = ev.phase
    ttft = tbt = step = mfu = None
    pipelined = 0.0
    if phase == Phase.TRAIN:
        backs = [t[0] for t in tails]
        fwds = [tau - b_ for tau, b_ in zip(taus, backs, strict=True)]
        ends = [t[1] + t[2] for t in tails]
        latency = step = training_makespan(fwds, backs, hops, ends, m, plan.schedule == Schedule.GPIPE)
        _, dp, opt = max(tails, key=lambda x: x[1] + x[2])
        compute = sum_k + (m - 1) * kerns[b] + opt
        comm = sum_c + 2.0 * sum_hop + (m - 1) * comms[b] + dp
        tokens = ev.tokens / step
        devices = dpr * r
        mfu = ev.units.train_flops / (step * devices * ev.pricer.peak)
    else:
        path = sum(taus) + sum_hop
        bottleneck = top if top >= top_hop else top_hop
        compute, comm = sum_k, sum_c + sum_hop
        if phase == Phase.PREFILL:
            latency = ttft = path + (m - 1) * bottleneck
            if top >= top_hop:
                compute += (m - 1) * kerns[b]
                comm += (m - 1) * comms[b]
            else:
                comm += (m - 1) * top_hop
            tokens = ev.tokens / latency
            pipelined = ev.tokens / (m * bottleneck)
        else:
            latency = tbt = path if path >= m * bottleneck else m * bottleneck
            tokens = ev.batch / latency
    idle = latency - compute - comm
    if idle < 0.0:  # rounding only: the parts are the terms of the latency
        compute, idle = latency - comm, 0.0
    memory = [0.0] * ev.platform.num_devices
    for st, need in zip(plan.stages, needs, strict=True):
        for d in st.devices:
            for k in range(r):
                memory[d + k * dpr] = need
    worst = max(needs)
    feasible = worst <= ev.usable
    reason = ""
    if not feasible:
        s = needs.index(worst)
        reason = ev.over_reason(plan.stages[s].devices[0], s, worst)
    return Metrics(
        feasible=feasible,
        reason=reason,
        phase=phase,
        latency_s=latency,
        ttft_s=ttft,
        tbt_s=tbt,
        step_s=step,
        tokens_per_s=tokens,
        pipelined_tokens_per_s=pipelined or tokens,
        mfu=mfu,
        peak_memory_bytes=memory,
        memory_capacity_bytes=ev.usable,
        lower_bound_s=ev._lower if ev._lower is not None else ev.lower_bound,
        breakdown={"compute_s": compute, "communication_s": comm, "idle_s": idle},
        stage_times_s=taus,
        devices_used=dpr * r,
        warnings=warnings,
        memory_breakdown=_breakdown(ev, plan, needs.index(worst), worst),
    )


def _breakdown(ev: AnalyticEvaluator, plan: Plan, s: int, need: float) -> dict[str, float]:
    """Bytes by term on a device of stage ``s`` (the most loaded), the terms of its ``need``.

    Training: weights, gradients (the weights' dtype) and optimizer state, activations
    (the stash, or with recomputation the layer inputs and one rebuilt unit); inference:
    weights and KV cache; both: the workspace of the largest op's input and output as buffers.
    """
    st = plan.stages[s]
    a, b = st.layers  # type: ignore[misc]
    lo = 0 if a == 0 else a + 1
    hi = ev.n_layers + 2 if b == ev.n_layers - 1 else b + 2
    tt = ev._tp.get(st.tp) or ev.tp_tables(st.tp)
    tl = tt.lists
    weights = tl["weights"][hi] - tl["weights"][lo]
    buffers = 2.0 * range_max(tt.out_max_l, lo, hi) / (plan.replicas * plan.micro_batches)
    if ev.phase == Phase.TRAIN:
        state = tl["state"][hi] - tl["state"][lo]
        rest = need - weights - state - buffers
        return {
            "weights": weights, "gradients": weights, "optimizer_state": state - weights,
            "activations": rest if rest > 0.0 else 0.0, "kv_cache": 0.0, "buffers": buffers,
        }  # fmt: skip
    rest = need - weights - buffers
    return {
        "weights": weights, "gradients": 0.0, "optimizer_state": 0.0, "activations": 0.0,
        "kv_cache": rest if rest > 0.0 else 0.0, "buffers": buffers,
    }  # fmt: skip
