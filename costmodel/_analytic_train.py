"""The analytic evaluator's training step with techniques (ZeRO, SP, selective recomputation, interleaved 1F1B, CP, EP,
overlap); formulas in :mod:`._analytic`'s docstring, terms in :mod:`._techniques`.

Pipeline hops under sequence parallelism: Megatron-Core sends the pipeline tensor sharded
over TP (``get_tensor_shapes`` divides the sequence by the TP size), each TP rank to its peer
in the next stage over its own link (its own NIC across nodes), the t pairs in parallel. A hop
then moves 1/t of the boundary tensor on the boundary pair's terms (:func:`._pricing.pair_link`;
the other pairs are taken to be alike, as they are on a switch or a rail-optimised network).
Between stages of different TP degrees the smaller one sets the shards: min(t, t') ranks each
send or receive 1/min(t, t') of the tensor. Without SP every TP rank sends its whole
(replicated) copy to its peer, in parallel: one whole tensor per pair, as Megatron-Core does
(the older ``scatter_gather_tensors_in_pipeline``, 1/t per pair and a TP all-gather after it,
left Megatron-Core in 2023 and is not modelled).

Plans without techniques take :func:`._analytic_eval.evaluate_plan`'s fast path; this one
gives the same numbers for them (tests check it) and is a few times slower, which only
plans that use a technique pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graphs import DTYPE_BYTES
from ._layer_tables import range_max
from ._memory import OPTIMIZER_STATE_BYTES_PER_PARAM
from ._metrics import Metrics
from ._pipeline import peak_stash, training_makespan
from ._plan import Plan, Schedule
from ._pricing import alltoall_time, p2p_time, tp_allreduce_time
from ._techniques import exposed, gradient_sync, model_state, zero3_slot_traffic
from ._trust import annotate

if TYPE_CHECKING:
    from ._analytic import AnalyticEvaluator


def technique_refusals(plan: Plan) -> list[str]:
    """Combinations the analytic evaluator does not price (each names its fields); empty when it prices the plan."""
    out = []
    if plan.ep > 1 and plan.zero == 3:
        out.append("zero 3 with ep > 1: expert weights sharded over expert-data-parallel ranks are not priced")
    if plan.ep > 1 and plan.shard_group:
        out.append("shard_group with ep > 1: hybrid sharding of expert state is not priced")
    return out


def _refused(ev: AnalyticEvaluator, plan: Plan, reasons: list[str]) -> Metrics:
    return Metrics(
        feasible=False, reason="not priced by the analytic evaluator: " + "; ".join(reasons), phase=ev.phase,
        latency_s=float("inf"), memory_capacity_bytes=ev.usable, lower_bound_s=ev.lower_bound,
        devices_used=plan.num_devices,
    )  # fmt: skip


def evaluate_techniques(ev: AnalyticEvaluator, plan: Plan) -> Metrics:
    """Metrics of a valid layered training ``plan`` that may use any technique."""
    refusals = technique_refusals(plan)
    if refusals:
        return _refused(ev, plan, refusals)
    meta = ev.graph.meta
    n_layers = ev.n_layers
    r, m, cp, v, ep, zero = plan.replicas, plan.micro_batches, plan.cp, plan.virtual_stages, plan.ep, plan.zero
    p = plan.pp
    share = r * m * cp
    scale = 1.0 / share
    stages = plan.stages
    gpipe = plan.schedule == Schedule.GPIPE
    dpr = plan.devices_per_replica
    dp = r * cp
    group = (plan.shard_group or dp) if zero else 1
    sp, sel, overlap = plan.sequence_parallel, plan.selective_recompute, plan.overlap
    elem = DTYPE_BYTES[meta.dtype]
    k_ratio = OPTIMIZER_STATE_BYTES_PER_PARAM / elem
    spec = meta.spec
    hidden = meta.hidden or int(spec.get("hidden", 0) or 0)
    kv_dim = hidden // max(meta.heads, 1) * meta.kv_heads
    top_k = int(spec.get("top_k", 1) or 1)
    tokens_mb = ev.tokens * scale  # tokens per rank and micro-batch (CP: its share of the sequence)

    fwds: list[float] = []
    chunk_stash: list[float] = []  # activation bytes one micro-batch leaves on each chunk
    backs: list[float] = []
    hops: list[float] = []
    warnings: list[str] = []
    kernel_error = 0.0
    # per physical stage
    w_dense = [0.0] * p
    w_expert = [0.0] * p
    act = [0.0] * p
    rebuild = [0.0] * p
    work = [0.0] * p
    unit_w = [0.0] * p
    units = [0] * p
    opt = [0.0] * p
    back_sum = [0.0] * p
    kern_s = [0.0] * p
    comm_s = [0.0] * p
    for i, st in enumerate(stages):
        s = i % p
        t = st.tp
        a, b = st.layers  # type: ignore[misc]
        lo = 0 if a == 0 else a + 1
        hi = n_layers + 2 if b == n_layers - 1 else b + 2
        tt = ev.tp_tables(t)
        tl = tt.lists
        sc = ev.scaled_tables(t, share)
        xs = ev.tech_scaled(t, share, ep)
        xu = ev.tech_units(t)
        link = ev.link(plan.tp_group(i))
        kern_f = xs.fwd_l[hi] - xs.fwd_l[lo]
        kern_b = xs.bwd_l[hi] - xs.bwd_l[lo]
        if sp and t > 1:  # norms and residuals on 1/t of the tokens
            xt = ev.tech_scaled(t, share * t, ep)
            kern_f -= (xs.repl_f_l[hi] - xs.repl_f_l[lo]) - (xt.repl_f_l[hi] - xt.repl_f_l[lo])
            kern_b -= (xs.repl_b_l[hi] - xs.repl_b_l[lo]) - (xt.repl_b_l[hi] - xt.repl_b_l[lo])
        n_ar = tl["ar_fwd_n"][hi] - tl["ar_fwd_n"][lo]
        nb = (tl["ar_fwd_b"][hi] - tl["ar_fwd_b"][lo]) * scale
        comm_f = tp_allreduce_time(nb, n_ar, t, link) if n_ar > 0.5 else 0.0
        n_ar = tl["ar_bwd_n"][hi] - tl["ar_bwd_n"][lo]
        nb = (tl["ar_bwd_b"][hi] - tl["ar_bwd_b"][lo]) * scale
        comm_b = tp_allreduce_time(nb, n_ar, t, link) if n_ar > 0.5 else 0.0
        if plan.tp_overlap:  # each TP collective hidden behind the GEMM it feeds, up to that GEMM's time
            comm_f -= min(comm_f, xs.gemm_f_l[hi] - xs.gemm_f_l[lo])
            comm_b -= min(comm_b, xs.gemm_b_l[hi] - xs.gemm_b_l[lo])
        layers = xu.layer_l[hi] - xu.layer_l[lo]
        attn_f = xs.attn_f_l[hi] - xs.attn_f_l[lo]
        if cp > 1:  # ring attention: K and V chunks around the CP ring, behind the attention kernels
            ring_link = ev.group(tuple(st.devices[j * t] for j in range(cp)))
            kv_bytes = 2.0 * kv_dim * elem / min(t, meta.kv_heads) * tokens_mb
            ring_f = layers * (cp - 1) * p2p_time(kv_bytes, *ring_link)
            comm_f += max(0.0, ring_f - attn_f)
            comm_b += max(0.0, 2.0 * ring_f - (xs.attn_b_l[hi] - xs.attn_b_l[lo]))
        if ep > 1:  # dispatch and combine: 2 all-to-alls forward, 2 backward per MoE layer
            n_moe = xu.moe_l[hi] - xu.moe_l[lo]
            if n_moe > 0.5:
                ep_group = tuple(st.devices[(q % cp) * t] + (q // cp) * dpr for q in range(ep))
                a2a = alltoall_time(tokens_mb * top_k * hidden * elem / (t if sp else 1), ep, *ev.group(ep_group))
                comm_f += 2.0 * n_moe * a2a
                comm_b += 2.0 * n_moe * a2a
        weights = tl["weights"][hi] - tl["weights"][lo]
        expert = xu.expert_w_l[hi] - xu.expert_w_l[lo]
        biggest = range_max(xu.weight_max_l, lo, hi)
        dense_w, expert_w = weights - expert, expert / ep
        if st.recompute:  # only layer inputs stashed; one unit's full stash rebuilt at a time
            kern_b += kern_f
            comm_b += comm_f
            chunk_stash.append((tl["inputs"][hi] - tl["inputs"][lo]) * scale / (t if sp else 1))
            rebuild[s] = max(rebuild[s], range_max(tt.stash_sp_max_l if sp else tt.stash_max_l, lo, hi) * scale)
        else:
            if sel:  # selective: the attention core's forward re-runs in backward, its tensors not stashed
                kern_b += attn_f
                col = tl["stash_sel_sp" if sp else "stash_sel"]
            else:
                col = tl["stash_sp" if sp else "stash"]
            chunk_stash.append((col[hi] - col[lo]) * scale)
        # ZeRO-3, per layer and micro-batch: gather in forward, gather + reduce-scatter in backward. Priced after
        # recomputation: a recomputed forward runs inside the backward's gather (FSDP's pre-backward all-gather
        # serves the checkpointed forward and the backward), so it does not gather again.
        if zero == 3 and group > 1:
            shard_link = ev.group(_dp_ranks(st.devices, t, cp, r, dpr)[:group])
            total = dense_w + expert_w
            ag_f, ag_b = zero3_slot_traffic(total, group, hi - lo, shard_link)
            if overlap:
                first = ag_f * biggest / total if total > 0 else 0.0
                comm_f += exposed(ag_f, kern_f, first)
                comm_b += exposed(ag_b, kern_b, 2.0 * first)
            else:
                comm_f += ag_f
                comm_b += ag_b
        work[s] = max(work[s], 2.0 * range_max(tt.out_max_l, lo, hi) * scale)
        w_dense[s] += dense_w
        w_expert[s] += expert_w
        unit_w[s] = max(unit_w[s], biggest)
        units[s] += hi - lo
        opt[s] += (tl["opt"][hi] - tl["opt"][lo]) / (group if zero else 1)  # each rank updates its shard
        back_sum[s] += kern_b + comm_b
        kern_s[s] += kern_f + kern_b
        comm_s[s] += comm_f + comm_b
        fwds.append(kern_f + comm_f)
        backs.append(kern_b + comm_b)
        kernel_error += sc.error_l[hi] - sc.error_l[lo]
        outside = sc.outside_l[hi] - sc.outside_l[lo]
        if outside > 0.5:
            warnings.append(
                f"stage {i} (tp {t}): {int(outside)} kernel(s) run per-device work outside the calibrated "
                f"range of profile {ev.platform.profile.name}: the prediction extrapolates"
            )
        if i < len(stages) - 1:  # SP: each TP rank pair sends one shard (see the module's docstring)
            nxt = stages[i + 1]
            alpha, bw = ev.pair(st.devices, nxt.devices)
            shards = min(t, nxt.tp) if sp else 1
            hops.append(p2p_time(ev.cut[b + 1] * scale / shards, alpha, bw))

    for s in range(p):  # micro-batches in flight at the schedule's peak
        if v == 1:
            act[s] = chunk_stash[s] * (m if gpipe else min(m, p - s))
        else:
            act[s] = peak_stash(p, m, s, chunk_stash[s::p])
    ends: list[float] = []
    dps: list[float] = []
    needs: list[float] = []
    parts: list[tuple[float, float, float, float, float]] = []
    for s in range(p):
        st = stages[s]
        ranks = _dp_ranks(st.devices, st.tp, cp, r, dpr)
        inner = outer = (0.0, 1.0)
        if dp > 1:
            inner = ev.group(ranks[: group if zero else dp])
            outer = ev.group(ranks[::group]) if zero and group < dp else inner
        synced = w_dense[s] + (w_expert[s] if ep == 1 else 0.0)
        grad, gather = gradient_sync(synced, dp, zero, group if zero else dp, inner, outer)
        if ep > 1 and w_expert[s] > 0.0:  # expert gradients: over the ranks holding the same experts
            edp = dp // ep
            eranks = ranks[::ep]
            e_link = ev.group(eranks) if edp > 1 else (0.0, 1.0)
            g_e, a_e = gradient_sync(w_expert[s], edp, zero, edp, e_link, e_link)
            grad, gather = grad + g_e, gather + a_e
        if overlap and grad > 0.0:
            total = w_dense[s] + w_expert[s]
            grad = exposed(grad, back_sum[s], grad * unit_w[s] / total if total > 0 else grad)
        dps.append(grad + gather)
        ends.append(grad + gather + opt[s])
        w, g, o = model_state(w_dense[s], w_expert[s], k_ratio, zero, group, group if ep == 1 else dp // ep)
        buffers = work[s] + (unit_w[s] * (2.0 if overlap else 1.0) if zero == 3 and group > 1 else 0.0)
        activations = act[s] + rebuild[s]
        parts.append((w, g, o, activations, buffers))
        needs.append(w + g + o + activations + buffers)

    step = float(training_makespan(fwds, backs, hops, ends, m, gpipe, virtual=v))
    sum_k, sum_c, sum_hop = sum(kern_s), sum(comm_s), sum(hops)
    taus = [k + c for k, c in zip(kern_s, comm_s, strict=True)]
    bot = taus.index(max(taus))
    tail = max(range(p), key=lambda x: ends[x])
    # the path: the first micro-batch through every chunk, the rest on the bottleneck stage (1/v of the
    # other stages' work at each end when interleaved; sum + (m - 1) x bottleneck when not)
    compute = m * kern_s[bot] + (sum_k - kern_s[bot]) / v + opt[tail]
    comm = m * comm_s[bot] + (sum_c - comm_s[bot]) / v + 2.0 * sum_hop + dps[tail]
    idle = step - compute - comm
    if idle < 0.0:
        compute, idle = step - comm, 0.0
    memory = [0.0] * ev.platform.num_devices
    for s in range(p):
        for d in stages[s].devices:
            for k in range(r):
                memory[d + k * dpr] = needs[s]
    worst = max(needs)
    ws = needs.index(worst)
    feasible = worst <= ev.usable
    w, g, o, activations, buffers = parts[ws]
    metrics = Metrics(
        feasible=feasible,
        reason="" if feasible else ev.over_reason(stages[ws].devices[0], ws, worst),
        phase=ev.phase,
        latency_s=step,
        step_s=step,
        tokens_per_s=ev.tokens / step,
        pipelined_tokens_per_s=ev.tokens / step,
        mfu=ev.units.train_flops / (step * dpr * r * ev.pricer.peak),
        peak_memory_bytes=memory,
        memory_capacity_bytes=ev.usable,
        lower_bound_s=ev._lower if ev._lower is not None else ev.lower_bound,
        breakdown={"compute_s": compute, "communication_s": comm, "idle_s": idle},
        stage_times_s=taus,
        devices_used=dpr * r,
        warnings=warnings,
        memory_breakdown={
            "weights": w, "gradients": g, "optimizer_state": o, "activations": activations, "kv_cache": 0.0,
            "buffers": buffers,
        },
    )  # fmt: skip
    annotate(metrics, ev.pricer.errors, ev.platform, plan, kernel_error, sum_k, sum_c + sum_hop)
    return metrics


def _dp_ranks(devices: tuple[int, ...], tp: int, cp: int, replicas: int, dpr: int) -> tuple[int, ...]:
    """Devices holding the same shard as ``devices[0]``: its CP ranks (fastest) in every replica."""
    return tuple(devices[j * tp] + k * dpr for k in range(replicas) for j in range(cp))
