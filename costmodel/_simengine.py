"""The event loop of the discrete-event simulator: list scheduling of jobs on machines.

Kept apart from :mod:`._simulator` (which prices tasks and assembles metrics) so the
hot loop sees only integers, floats and lists: no dicts keyed by task ids, no numpy
scalars, no dataclass attribute lookups per event.

Machines are the pipeline stages (a TP group runs one task at a time) and the
directed links between stages (a link carries one transfer at a time). Jobs are

* compute jobs ``q * T + i``: task ``i`` for instance ``q`` (a micro-batch, or a
  micro-batch's decode step); row ``Q`` holds the *once* tasks (optimizer), which run
  once per training step at full batch after every instance of their inputs;
* data-parallel all-reduce jobs ``D0 + s``, one per stage (training only): they
  start when every instance of the stage's other work is done and gate its once tasks;
* transfer jobs ``X0 + q * NX + x``: transfer ``x`` for instance ``q``: one tensor
  from its producer to one consumer stage, or one gradient summed over the
  producers of a stage for one consumer task (it starts when the last one ends).

A machine that falls idle takes the ready job with the smallest priority key
(instance, then topological rank; 1F1B puts backward first and gates forwards so
stage i keeps at most ``warmup[i]`` micro-batches in flight; GPipe holds
backwards until the stage's forwards are all done). With ``strict`` (layered
training pipelines, as Megatron-LM runs them) a stage goes through its slots
(forward or backward of one micro-batch) in the schedule's fixed order, each slot
whole: 1F1B is F0..F(w-1), then B0 F(w), B1 F(w+1), ..., then the last backwards; interleaved
1F1B (``virtual`` > 1) runs the chunks ``chunk_of`` of each stage in
:func:`~._pipeline.stage_order`'s order, the order the analytic makespan uses. Events closer than a
relative 1e-10 are handled as simultaneous, so float rounding of sums that are
equal on paper never changes which job a machine picks.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ._pipeline import stage_order
from ._plan import SCHEDULES, Schedule

FORWARD, BACKWARD, OPTIMIZER = 0, 1, 2


@dataclass
class SimInput:
    """Everything the loop needs, as flat lists indexed by task, transfer or stage."""

    n_stages: int
    n_links: int
    stage_of: list[int]
    step: list[int]  # FORWARD / BACKWARD / OPTIMIZER per task
    once: list[bool]  # runs once per step (optimizer), not per instance
    dur: list[float]  # seconds per instance (once tasks: their single run)
    local_succ: list[list[int]]  # successors on the same stage (free edges)
    sends: list[list[int]]  # transfers leaving each task
    x_link: list[int]
    x_dur: list[float]
    x_dur_once: list[float]  # duration when the producer is a once task
    x_dst: list[list[int]]  # tasks fed by each transfer (all on one stage)
    x_src: list[list[int]]  # the producers of each transfer (several: gradients summed before sending)
    x_label: list[int]  # the task a transfer is drawn under (its producer, or the gradient's consumer)
    instances: int  # Q
    chain: int = 0  # >0: instance q's sources wait for instance q - chain to finish (decode steps)
    schedule: str = "plain"  # plain | 1f1b | gpipe
    warmup: list[int] = field(default_factory=list)  # 1F1B depth per stage when not ``strict``
    dp_dur: list[float] | None = None  # per stage; None when there is no data-parallel all-reduce
    strict: bool = False  # stages run whole (step, micro-batch) slots in the schedule's fixed order
    chunk_of: list[int] | None = None  # interleaved 1F1B: each task's model chunk (chunk k on stage k mod n_stages)
    virtual: int = 1  # model chunks per stage (interleaved 1F1B when > 1)


@dataclass
class SimOutput:
    """Start and end of every job (-1 where a job never ran), the critical-path links and instance ends."""

    start: list[float]
    end: list[float]
    pred: list[int]
    inst_end: list[float]
    inst_last: list[int]
    last_job: int
    tasks: int
    instances: int
    dp0: int
    x0: int
    nx: int


def simulate(p: SimInput) -> SimOutput:
    T, S, Q, NX = len(p.stage_of), p.n_stages, p.instances, len(p.x_link)
    QT, D0 = Q * T, (Q + 1) * T
    X0 = D0 + S
    N = X0 + (Q + 1) * NX
    stage_of, step, once, dur, local_succ, sends = p.stage_of, p.step, p.once, p.dur, p.local_succ, p.sends
    x_link, x_dur, x_dur_once, x_dst = p.x_link, p.x_dur, p.x_dur_once, p.x_dst
    dp_dur = p.dp_dur
    sched = p.schedule
    gate_f = sched == Schedule.ONE_F_ONE_B
    gate_b = sched == Schedule.GPIPE

    # -- dependency counts ------------------------------------------------------
    npred = [0] * T
    for u in range(T):
        for v in local_succ[u]:
            if once[v] or not once[u]:
                npred[v] += 1 if once[u] or not once[v] else Q
    for x in range(NX):
        src_once = all(once[u] for u in p.x_src[x])
        for v in x_dst[x]:
            if once[v] or not src_once:
                npred[v] += 1 if src_once or not once[v] else Q
    pending = [0] * N
    regular = [i for i in range(T) if not once[i]]
    sources = [i for i in regular if npred[i] == 0]
    for q in range(Q):
        base = q * T
        for i in regular:
            pending[base + i] = npred[i]
        if p.chain and q >= p.chain:
            for i in sources:
                pending[base + i] += 1
    per_stage = [0] * S
    for i in regular:
        per_stage[stage_of[i]] += 1
    for i in range(T):
        if once[i]:
            pending[QT + i] = npred[i] + (1 if dp_dur is not None else 0)
    for q in range(Q + 1):
        xb = X0 + q * NX
        for x in range(NX):
            pending[xb + x] = len(p.x_src[x])
    stage_left = [c * Q for c in per_stage]
    if dp_dur is not None:
        for s in range(S):
            pending[D0 + s] = 1 if stage_left[s] else 0  # released when the stage's last instance job ends
    inst_left = [len(regular)] * Q
    fleft = [sum(Q for i in regular if stage_of[i] == s and step[i] == FORWARD) for s in range(S)]
    nb = [sum(1 for i in regular if stage_of[i] == s and step[i] == BACKWARD) for s in range(S)]
    bleft = [nb[s] for s in range(S) for _ in range(Q)]
    done_b = [0] * S
    warm = [p.warmup[s] if gate_f and nb[s] else Q + 1 for s in range(S)] if gate_f else [Q + 1] * S
    strict = p.strict and sched in SCHEDULES
    chunk_of = p.chunk_of if p.chunk_of is not None else stage_of
    slot_pos, slot_size, slot_seq = _slots(p, regular, strict)
    ptr = [0] * S
    slot_left = [slot_size[s][0] if slot_size[s] else 0 for s in range(S)]
    once_of_stage: list[list[int]] = [[] for _ in range(S)]
    for i in range(T):
        if once[i]:
            once_of_stage[stage_of[i]].append(i)

    # -- state ----------------------------------------------------------------------
    start = [-1.0] * N
    end = [-1.0] * N
    pred = [-1] * N
    cause = [-1] * N
    ready_t = [0.0] * N
    M = S + p.n_links
    queues: list[list[tuple[int, int]]] = [[] for _ in range(M)]
    busy = [False] * M
    free_t = [0.0] * M
    last = [-1] * M
    held: list[list[int]] = [[] for _ in range(S)]
    events: list[tuple[float, int]] = []
    inst_end = [0.0] * Q
    inst_last = [-1] * Q
    dirty: set[int] = set()
    big = 3 * (QT + T)
    now = 0.0

    def key_of(job: int, q: int, i: int) -> int:
        if sched == "plain":
            return job
        first = step[i] == BACKWARD if sched == Schedule.ONE_F_ONE_B else step[i] == FORWARD
        return (0 if first else QT) + job

    def eligible(q: int, i: int, s: int) -> bool:
        if strict:
            return slot_pos[(chunk_of[i] * 2 + step[i]) * Q + q] == ptr[s]
        if gate_f and step[i] == FORWARD:
            return q < warm[s] + done_b[s]
        if gate_b and step[i] == BACKWARD:
            return fleft[s] == 0
        return True

    gated = gate_f or gate_b
    push = heapq.heappush

    def ready(job: int, by: int) -> None:
        ready_t[job] = now
        cause[job] = by
        if job < QT:
            i = job % T
            s = stage_of[i]
            if gated:
                q = job // T
                if not eligible(q, i, s):
                    held[s].append(job)
                    return
                push(queues[s], (key_of(job, q, i), job))
            else:
                push(queues[s], (job, job))
        elif job < D0:
            s = stage_of[job - QT]
            push(queues[s], (big + job, job))
        elif job < X0:
            s = job - D0
            heapq.heappush(queues[s], (big + job, job))
        else:
            s = S + x_link[(job - X0) % NX]
            heapq.heappush(queues[s], (job, job))
        dirty.add(s)

    def release(s: int, by: int) -> None:
        keep = []
        for job in held[s]:
            q, i = divmod(job, T)
            if eligible(q, i, s):
                ready_t[job] = now
                cause[job] = by
                heapq.heappush(queues[s], (key_of(job, q, i), job))
                dirty.add(s)
            else:
                keep.append(job)
        held[s] = keep

    def dec(job: int, by: int) -> None:
        pending[job] -= 1
        if pending[job] == 0:
            ready(job, by)

    for q in range(Q if not p.chain else min(Q, p.chain)):
        for i in sources:
            ready(q * T + i, -1)
    if dp_dur is not None:
        for s in range(S):
            if pending[D0 + s] == 0:
                ready(D0 + s, -1)
    for i in range(T):
        if once[i] and pending[QT + i] == 0:
            ready(QT + i, -1)

    while True:
        for mach in dirty:
            if not busy[mach] and queues[mach]:
                job = heapq.heappop(queues[mach])[1]
                pred[job] = cause[job] if ready_t[job] >= free_t[mach] or last[mach] < 0 else last[mach]
                if job < D0:
                    d = dur[job % T]
                elif job < X0:
                    d = dp_dur[job - D0]  # type: ignore[index]
                else:
                    q, x = divmod(job - X0, NX)
                    d = x_dur_once[x] if q == Q else x_dur[x]
                start[job] = now
                end[job] = t = now + d
                busy[mach] = True
                last[mach] = job
                heapq.heappush(events, (t, job))
        dirty.clear()
        if not events:
            break
        t, job = heapq.heappop(events)
        batch = [job]
        limit = t + 1e-10 * t
        while events and events[0][0] <= limit:
            t, j = heapq.heappop(events)
            batch.append(j)
        now = t
        for job in batch:
            if job < D0:
                q, i = divmod(job, T)
                s = stage_of[i]
                busy[s] = False
                free_t[s] = end[job]
                dirty.add(s)
                if q < Q:
                    base = q * T
                    for v in local_succ[i]:
                        jj = QT + v if once[v] else base + v
                        left = pending[jj] - 1
                        pending[jj] = left
                        if left == 0:
                            ready(jj, job)
                    xb = X0 + q * NX
                    for x in sends[i]:
                        dec(xb + x, job)
                    inst_left[q] -= 1
                    if inst_left[q] == 0:
                        inst_end[q], inst_last[q] = end[job], job
                        if p.chain and q + p.chain < Q:
                            nb_ = (q + p.chain) * T
                            for src in sources:
                                dec(nb_ + src, job)
                    if dp_dur is not None:
                        stage_left[s] -= 1
                        if stage_left[s] == 0:
                            dec(D0 + s, job)
                    st = step[i]
                    if strict:
                        slot_left[s] -= 1
                        if slot_left[s] == 0 and ptr[s] + 1 < len(slot_seq[s]):
                            ptr[s] += 1
                            slot_left[s] = slot_size[s][ptr[s]]
                            release(s, job)
                    elif gate_f and st == BACKWARD:
                        k = s * Q + q
                        bleft[k] -= 1
                        if bleft[k] == 0:
                            done_b[s] += 1
                            release(s, job)
                    elif gate_b and st == FORWARD:
                        fleft[s] -= 1
                        if fleft[s] == 0:
                            release(s, job)
                else:
                    for v in local_succ[i]:
                        if once[v]:
                            dec(QT + v, job)
                    xb = X0 + Q * NX
                    for x in sends[i]:
                        if any(once[v] for v in x_dst[x]):
                            dec(xb + x, job)
            elif job < X0:
                s = job - D0
                busy[s] = False
                free_t[s] = end[job]
                dirty.add(s)
                for v in once_of_stage[s]:
                    dec(QT + v, job)
            else:
                q, x = divmod(job - X0, NX)
                mach = S + x_link[x]
                busy[mach] = False
                free_t[mach] = end[job]
                dirty.add(mach)
                for v in x_dst[x]:
                    if once[v]:
                        dec(QT + v, job)
                    elif q < Q:
                        dec(q * T + v, job)
    last_job = max(range(N), key=end.__getitem__) if N else -1
    return SimOutput(start, end, pred, inst_end, inst_last, last_job, T, Q, D0, X0, NX)


def _slots(p: SimInput, regular: list[int], strict: bool) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """Each stage's slot order: position of (chunk, step, instance), slot sizes and the slot sequence.

    A slot of a chunk with no task of that step (a stage without backward tasks) is skipped.
    """
    S, Q, v = p.n_stages, p.instances, p.virtual
    chunk_of = p.chunk_of if p.chunk_of is not None else p.stage_of
    pos = [-1] * (S * v * 2 * Q)
    sizes: list[list[int]] = [[] for _ in range(S)]
    seqs: list[list[int]] = [[] for _ in range(S)]
    if not strict:
        return pos, sizes, seqs
    count = [[0, 0] for _ in range(S * v)]
    for i in regular:
        if p.step[i] in (FORWARD, BACKWARD):
            count[chunk_of[i]][p.step[i]] += 1
    gpipe = p.schedule == Schedule.GPIPE
    for s in range(S):
        for k, back, q in stage_order(S, Q, gpipe, s, v):
            st = BACKWARD if back else FORWARD
            if count[k][st]:
                pos[(k * 2 + st) * Q + q] = len(seqs[s])
                seqs[s].append(st)
                sizes[s].append(count[k][st])
    return pos, sizes, seqs
