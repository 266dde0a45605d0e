"""Reading a finished simulation: the critical-path breakdown and the timeline events.

Both walk the arrays the event loop returns (:class:`SimOutput`); keeping them
out of the loop means an evaluation without a timeline pays for neither the
per-op segments nor the event objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graphs import Phase
from ._plan import Plan
from ._simengine import SimInput, SimOutput

if TYPE_CHECKING:
    from ._simbuild import Built
    from ._simulator import Simulator


def critical_breakdown(
    inp: SimInput, out: SimOutput, ar_part: list[float], final: int, w0: float, w1: float
) -> tuple[float, float, float]:
    """(compute, communication, idle) seconds of the critical path inside the window [w0, w1].

    The path runs back from ``final`` through each job's predecessor (the job
    whose end let it start: the last input to arrive, or the previous job on its
    machine); the gaps between a job's start and its predecessor's end are idle.
    The three parts sum to ``w1 - w0``.
    """
    T, D0 = out.tasks, out.dp0
    start, end, pred = out.start, out.end, out.pred
    dur = inp.dur
    compute = comm = idle = 0.0
    job, hi = final, w1
    while job >= 0 and hi > w0:
        s0, e0 = start[job], end[job]
        if hi > e0:
            idle += hi - max(e0, w0)
        length = min(e0, hi) - max(s0, w0)
        if length > 0.0:
            if job < D0:
                i = job % T
                frac = ar_part[i] / dur[i] if dur[i] > 0.0 else 0.0
                comm += length * frac
                compute += length * (1.0 - frac)
            else:
                comm += length
        hi = s0
        job = pred[job]
    if hi > w0:
        idle += hi - w0
    return compute, comm, idle


def _segments(
    offsets: np.ndarray, last_op: np.ndarray, i: int, kt: Any, at: Any, keep: float = 1.0
) -> list[tuple[str, float]]:
    """A task's ops as bars: consecutive kernels merged, each all-reduce its own bar (``keep`` of it exposed)."""
    segs: list[tuple[str, float]] = []
    acc = 0.0
    for o in range(int(offsets[i]), int(last_op[i]) + 1):
        acc += float(kt[o])
        a = float(at[o]) * keep
        if a > 0.0:
            segs.append(("compute", acc))
            segs.append(("allreduce", a))
            acc = 0.0
    if acc > 0.0 or not segs:
        segs.append(("compute", acc))
    return segs


def timeline_events(sim: Simulator, plan: Plan, inp: SimInput, out: SimOutput, built: Built, event: type) -> list[Any]:
    """Every compute bar, collective and transfer of the run, in start order.

    A task's ZeRO-3 gathers come first (its weights before its kernels), then a selective
    recomputation's attention core; the bars of a
    once task (optimizer) are scaled to the share of the work one rank does.
    """
    per_stage, links = built.per_stage, built.links
    T = len(sim.ids)
    extra, keeps, rerun = built.extra or [0.0] * T, built.ar_keep or [1.0] * T, built.rerun or [0.0] * T
    T, Q, NX, D0, X0 = out.tasks, out.instances, out.nx, out.dp0, out.x0
    start, end = out.start, out.end
    decode = sim.phase == Phase.DECODE
    m = plan.micro_batches
    ids, stage_of = sim.ids, inp.stage_of
    seg_cache: dict[tuple[int, bool], list[tuple[str, float]]] = {}

    def segments(i: int, once: bool) -> list[tuple[str, float]]:
        segs = seg_cache.get((i, once))
        if segs is None:
            s = stage_of[i]
            st = plan.stages[s]
            if once:
                kt, at = sim.kernels(st.tp, 1.0)[0], sim.allreduces(st.tp, 1.0, links[s])[0]
            else:
                kt, at = per_stage[s][0], per_stage[s][2]
            segs = [("allreduce", extra[i])] if extra[i] > 0.0 else []
            if rerun[i] > 0.0:  # selective recomputation of the attention core
                segs.append(("compute", rerun[i]))
            f = sim.fwd_of[i]
            if f >= 0 and st.recompute:
                segs += _segments(sim.offsets, sim.last_op, f, kt, at, keeps[f])
            segs += _segments(sim.offsets, sim.last_op, i, kt, at, keeps[i])
            if once and built.once_share != 1.0:
                segs = [(kind, d * built.once_share) for kind, d in segs]
            seg_cache[(i, once)] = segs
        return segs

    events = []
    for q in range(Q + 1):
        mb, step = (q % m, q // m) if decode else (q, 0)
        if q == Q:
            mb = -1
        for i in range(T):
            job = q * T + i
            if start[job] < 0.0:
                continue
            t = start[job]
            for kind, d in segments(i, q == Q):
                events.append(event(stage_of[i], ids[i], mb, t, t + d, kind, step))
                t += d
    for s in range(inp.n_stages):
        job = D0 + s
        if start[job] >= 0.0 and end[job] > start[job]:
            events.append(event(s, "dp-allreduce", -1, start[job], end[job], "allreduce", 0))
    for q in range(Q + 1):
        mb, step = (q % m, q // m) if decode else (q, 0)
        for x in range(NX):
            job = X0 + q * NX + x
            if start[job] >= 0.0 and end[job] > start[job]:
                u, v = inp.x_src[x][0], inp.x_dst[x][0]
                b = -1 if q == Q else mb
                events.append(
                    event(stage_of[u], ids[inp.x_label[x]], b, start[job], end[job], "transfer", step, stage_of[v])
                )
    events.sort(key=lambda e: (e.start, e.stage))
    return events
