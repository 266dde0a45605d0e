"""Activation memory of a simulated schedule, from tensor lifetimes.

A tensor is a task's output for one instance: ``output_bytes x scale / split``
(the split of the task's last op at the stage's TP degree). It lives on the
producing stage from the producer's start to the end of its last consumer on
that stage or of its last outgoing transfer, and on a consumer stage from the
transfer's start to the end of its last consumer there (a received copy holds
the whole tensor on every device of the group, as a pipeline receive does).

Beyond task outputs:

* training: a forward task whose backward (``id + ".bwd"``) runs on the same
  stage keeps its stash (what that backward reads, :mod:`._stash`: the same
  bytes the analytic evaluator sums, at every granularity) until that backward
  ends; its output is freed after its forward consumers and transfers (the
  backward reads the stash, not the output). With recompute nothing is stashed
  in forward: the received inputs are kept until their consumers' backward ends
  (the checkpoints), and each backward re-materialises its forward's stash while
  it runs;
* a merged task holds its largest inner op output while it runs (workspace).

Edges into optimizer tasks are gradient-ready dependencies, not activations
(weight gradients live in the static training state), so they extend nothing.
Consumers that free at the same instant as another tensor is allocated free first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._simengine import BACKWARD, FORWARD, SimInput, SimOutput


@dataclass
class TensorSizes:
    """Per-task bytes per device for one stage's TP degree, whole batch (multiplied by the share's scale)."""

    out: list[float]  # the task's output
    inner: list[float]  # outputs of its other ops (stashed for backward in training)
    largest_inner: list[float]  # workspace while it runs
    saved: list[float]  # training: what its backward reads (the stash), see _stash


def activation_peaks(
    inp: SimInput,
    out: SimOutput,
    sizes: list[TensorSizes],
    x_bytes: list[float],
    bwd_of: list[int],
    recompute: list[bool],
    scale: float,
    *,
    keep_timeline: bool,
) -> tuple[list[float], dict[int, list[tuple[float, float]]] | None]:
    """Peak live activation bytes per stage (and the live-bytes curve per stage when asked)."""
    S, T, Q, NX, X0 = inp.n_stages, out.tasks, out.instances, out.nx, out.x0
    stage_of, step, once, local_succ, sends, x_dst = (
        inp.stage_of, inp.step, inp.once, inp.local_succ, inp.sends, inp.x_dst,
    )  # fmt: skip
    start, end = out.start, out.end
    x_stage = [stage_of[v[0]] for v in x_dst]
    st_l: list[int] = []
    t0_l: list[float] = []
    t1_l: list[float] = []
    b_l: list[float] = []
    # Consumers that extend a tensor's life, per task (placement-dependent, instance-independent).
    keep_succ = []
    for i in range(T):
        fwd = step[i] == FORWARD
        keep_succ.append([v for v in local_succ[i] if not once[v] and not (fwd and step[v] == BACKWARD)])
    keep_x = []
    for x in range(NX):
        dst = [v for v in x_dst[x] if not once[v]]
        if recompute[x_stage[x]]:
            dst += [bwd_of[v] for v in dst if step[v] == FORWARD and bwd_of[v] >= 0]
        keep_x.append(dst)
    for q in range(Q):
        base = q * T
        xb = X0 + q * NX
        for i in range(T):
            if once[i]:
                continue
            j = base + i
            s = stage_of[i]
            sz = sizes[s]
            t0, t1 = start[j], end[j]
            for v in keep_succ[i]:
                e = end[base + v]
                if e > t1:
                    t1 = e
            for x in sends[i]:
                e = end[xb + x]
                if e > t1:
                    t1 = e
            st_l.append(s)
            t0_l.append(t0)
            t1_l.append(t1)
            b_l.append(sz.out[i] * scale)
            b = bwd_of[i]
            if step[i] == FORWARD and b >= 0 and stage_of[b] == s and sz.saved[i] > 0.0:
                st_l.append(s)
                t0_l.append(start[base + b] if recompute[s] else t0)
                t1_l.append(end[base + b])
                b_l.append(sz.saved[i] * scale)
            if sz.largest_inner[i] > 0.0:
                st_l.append(s)
                t0_l.append(t0)
                t1_l.append(end[j])
                b_l.append(sz.largest_inner[i] * scale)
        for x in range(NX):
            j = xb + x
            t1 = end[j]
            for v in keep_x[x]:
                e = end[base + v]
                if e > t1:
                    t1 = e
            st_l.append(x_stage[x])
            t0_l.append(start[j])
            t1_l.append(t1)
            b_l.append(x_bytes[x] * scale)
    return _sweep(S, st_l, t0_l, t1_l, b_l, keep_timeline)


def _sweep(
    n_stages: int, stages: list[int], t0: list[float], t1: list[float], nbytes: list[float], keep: bool
) -> tuple[list[float], dict[int, list[tuple[float, float]]] | None]:
    """Max over time of the live bytes on each stage (frees before allocations at the same instant)."""
    peaks = [0.0] * n_stages
    curves: dict[int, list[tuple[float, float]]] | None = {} if keep else None
    if not stages:
        return peaks, curves
    st = np.array(stages + stages)
    times = np.array(t0 + t1)
    b = np.array(nbytes)
    delta = np.concatenate((b, -b))
    order = np.lexsort((delta, times, st))
    st, times, delta = st[order], times[order], delta[order]
    bounds = np.searchsorted(st, np.arange(n_stages + 1))
    for s in range(n_stages):
        lo, hi = bounds[s], bounds[s + 1]
        if hi == lo:
            continue
        live = np.cumsum(delta[lo:hi])
        peaks[s] = max(float(live.max()), 0.0)
        if curves is not None:
            curves[s] = list(zip(times[lo:hi].tolist(), live.tolist(), strict=True))
    return peaks, curves
