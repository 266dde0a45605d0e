"""What both halves of ``dp`` share (:mod:`._dp` inference, :mod:`._dp_train` training): a leaf module.

The float slack of every bound, Pareto filters, the uniform plans scored first as
incumbents, and the fallback that keeps ``dp`` honest when it cannot finish: the
heuristics' plans and a uniform sweep over every batch split, so a capped or
out-of-space search still answers with the best feasible plan anyone found
instead of claiming infeasibility it has not proved.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._limits import MAX_MICRO_BATCHES
from ..costmodel._batch import PlanBatch
from ..problem import Evaluation, divisors
from ._heuristics import BalancedPP, Megatron, MinTpReplicas, ServingDefault
from ._layered_space import LayeredSpace
from ._tuner import Recorder

#: Relative slack on bounds so float rounding never prunes a plan that is better by more than this.
SLACK = 1e-9


def pareto(items: list[tuple[Any, ...]], dims: int) -> list[tuple[Any, ...]]:
    """Non-dominated items on their first ``dims`` fields (minimised); ties keep the first."""
    if len(items) <= 1:
        return items
    items = sorted(items, key=lambda x: x[:dims])
    if dims == 1:
        return items[:1]
    if dims == 2:
        out, best = [], math.inf
        for it in items:
            if it[1] < best:
                out.append(it)
                best = it[1]
        return out
    out = []
    for it in items:
        if not any(all(o[k] <= it[k] for k in range(dims)) for o in out):
            out.append(it)
    return out


def add_front(front: list[tuple[float, float]], pt: tuple[float, float]) -> None:
    """Add ``pt`` to a 2-D minimisation front in place unless a point of it already dominates ``pt``."""
    if any(a <= pt[0] and b <= pt[1] for a, b in front):
        return
    front[:] = [(a, b) for a, b in front if not (pt[0] <= a and pt[1] <= b)] + [pt]


def seed_plans(
    space: LayeredSpace, pairs: list[tuple[int, int]] | None = None, top: int = 64, *, few: bool = False
) -> list[Evaluation]:
    """Feasible uniform plans (one TP, stages of even cut counts) as incumbents, best first.

    ``pairs`` are the (replicas, micro-batches) to sweep (default: the space's). Priced
    with the batched evaluator, then the ``top`` most promising are scored with
    ``problem.score`` (SLOs, calibration) until some are feasible. ``few`` keeps, per TP
    degree, the fewest and the most stages and the powers of two between (the slot-level
    makespan of hundreds of micro-batches costs in proportion to micro-batches x stages).
    """
    problem, ev = space.problem, space.ev
    rows: list[tuple[list[tuple[int, int, int]], int, int, bool]] = []
    d_min = space.min_replica_devices()  # fewer devices cannot hold the weights (and state)
    for r, m in space.pairs if pairs is None else pairs:
        budget = space.max_devices // r
        for t in space.tps:
            lo, hi = max(1, -(-d_min // t)), min(space.n_cuts, budget // t)
            counts = list(range(lo, hi + 1))
            if few and counts:
                counts = sorted({lo, hi} | {1 << k for k in range(hi.bit_length()) if lo <= 1 << k <= hi})
            for p in counts:
                base, extra = divmod(space.n_cuts, p)
                stages, i = [], 0
                for s in range(p):
                    k = base + (1 if s < extra else 0)
                    stages.append((i, i + k - 1, t))
                    i += k
                for rc in space.recompute:
                    rows.append((stages, r, m, rc))
    if not rows:
        return []
    width = max(len(s) for s, *_ in rows)
    n = len(rows)
    first = np.zeros((n, width), dtype=np.int64)
    last = np.zeros((n, width), dtype=np.int64)
    tp = np.zeros((n, width), dtype=np.int64)
    rec = np.zeros((n, width), dtype=bool)
    for k, (stages, _r, _m, rc) in enumerate(rows):
        for s, (i, j, t) in enumerate(stages):
            first[k, s], last[k, s], tp[k, s], rec[k, s] = space.cuts[i], space.ends[j], t, rc
    micro = np.array([row[2] for row in rows])
    reps = np.array([row[1] for row in rows])
    res = ev.evaluate_batch(PlanBatch(first, last, tp, micro, reps, rec))
    ok = res.valid & (res.max_memory_bytes / space.limit - 1.0 <= 0)
    order = [int(k) for k in np.argsort(np.where(ok, res.latency_s, np.inf)) if ok[k]]
    obj = problem.resolved_objective
    out: list[Evaluation] = []
    for k in order[:top]:
        stages, r, m, rc = rows[k]
        e = problem.score(space.plan(stages, r, m, [rc] * len(stages)))
        if e.feasible:
            out.append(e)
    out.sort(key=lambda e: -e.value if obj.direction == "maximize" else e.value)
    return out


def fallback(
    space: LayeredSpace, recorder: Recorder, replicas: int | None = None, micro_batches: int | None = None
) -> Evaluation | None:
    """The best feasible plan of the heuristics and of a uniform TP x PP x micro-batch sweep, recorded.

    The sweep takes every (replicas, micro-batches) pair dividing the batch, beyond the
    space's ``max_micro_batches``, with recomputation on and off when training, so a plan
    the space excludes (e.g. 512 micro-batches of one sequence, the only way some models
    fit) is still found. Every plan is scored by ``problem.score`` on ``recorder``'s
    problem; returns the best feasible one (None when there is none).
    """
    problem = space.problem
    best: Evaluation | None = None

    def keep(e: Evaluation | None) -> None:
        nonlocal best
        if e is None or not e.feasible or replicas not in (None, e.plan.replicas):
            return
        if micro_batches not in (None, e.plan.micro_batches):
            return
        if best is None or problem.resolved_objective.better(e.value, best.value):
            best = e

    for rule in (Megatron, ServingDefault, MinTpReplicas, BalancedPP):
        res = rule().tune(problem)
        recorder.evaluations += res.evaluations
        plan = res.best_plan
        if plan is not None and replicas in (None, plan.replicas) and micro_batches in (None, plan.micro_batches):
            keep(recorder.evaluate(plan))
    pairs = [
        (r, m)
        for r in divisors(problem.batch)
        if r <= space.max_devices
        for m in divisors(problem.batch // r)
        if m <= MAX_MICRO_BATCHES  # a plan of more micro-batches could not be read back
        and (r, m) not in space.pairs
        and replicas in (None, r)
        and micro_batches in (None, m)
    ]
    seeds = seed_plans(space, pairs, top=16, few=True) if pairs else []
    if seeds:
        keep(recorder.record(seeds[0], count=len(seeds)))
    return best
