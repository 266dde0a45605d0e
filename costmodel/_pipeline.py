"""The training pipeline's makespan, shared by the analytic evaluator and its batched form.

A stage runs whole *slots* (forward or backward of one micro-batch) in the schedule's
fixed order, as Megatron-LM does:

* 1F1B: stage s (of p) runs w = min(m, p - s) warm-up forwards, then alternates one
  backward and one forward, then the remaining backwards;
* GPipe: all m forwards, then all m backwards.

A forward slot needs the previous stage's forward of the same micro-batch, a backward
slot the next stage's backward (the last stage's backward follows its own forward);
each boundary is a link in each direction that carries one transfer at a time. The
makespan is the longest path through these slots; with uniform stages it is the
textbook (m + p - 1)(f + b) + 2(p - 1)c, with uneven stages or recomputation on some
stages it follows whichever stage really bounds the pipeline. The discrete-event
simulator runs the same schedule (``strict`` slots) and gets the same times.

Values may be Python floats (one plan) or numpy arrays (many plans at once): the
arithmetic is written once for both, with ``maximum`` the matching max function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

V = TypeVar("V")


@lru_cache(maxsize=1024)
def slot_order(p: int, m: int, gpipe: bool) -> tuple[tuple[int, bool, int], ...]:
    """Slots (stage, is_backward, micro-batch) in an order where every slot follows what it needs."""
    orders: list[list[tuple[bool, int]]] = []
    for s in range(p):
        if gpipe:
            order = [(False, q) for q in range(m)] + [(True, q) for q in range(m)]
        else:
            w = min(m, p - s)
            order = [(False, q) for q in range(w)]
            for q in range(m):
                order.append((True, q))
                if q + w < m:
                    order.append((False, q + w))
        orders.append(order)
    done: set[tuple[int, bool, int]] = set()
    ptr = [0] * p
    out: list[tuple[int, bool, int]] = []
    total = sum(len(o) for o in orders)
    while len(out) < total:
        moved = False
        for s in range(p):
            while ptr[s] < len(orders[s]):
                back, q = orders[s][ptr[s]]
                if back:
                    need = (s, False, q) if s == p - 1 else (s + 1, True, q)
                else:
                    need = (s - 1, False, q) if s > 0 else None  # type: ignore[assignment]
                if need is not None and need not in done:
                    break
                done.add((s, back, q))
                out.append((s, back, q))
                ptr[s] += 1
                moved = True
        if not moved:  # cannot happen for these schedules; guard against an endless loop
            raise RuntimeError(f"pipeline schedule p={p} m={m} gpipe={gpipe} deadlocks")
    return tuple(out)


def training_makespan(
    fwd: Sequence[V],
    back: Sequence[V],
    hops: Sequence[V],
    tails: Sequence[V],
    m: int,
    gpipe: bool,
    maximum: Callable[[Any, Any], Any] = max,
    zero: Any = 0.0,
) -> Any:
    """Step time: the pipeline's slots, then each stage's tail (DP all-reduce + optimizer).

    Args:
        fwd, back: per stage, the time of one forward / backward slot (backward includes
            recomputation where the stage recomputes).
        hops: per boundary s -> s + 1, the transfer time of one micro-batch (either way).
        tails: per stage, work after its last backward (gradient all-reduce, optimizer).
        m: micro-batches; gpipe: GPipe order instead of 1F1B.
        maximum: ``max`` for floats, ``numpy.maximum`` for arrays.
        zero: the zero of the value type (0.0, or an array of zeros).
    """
    p = len(fwd)
    free: list[Any] = [zero] * p  # when each stage is free
    link_f: list[Any] = [zero] * p  # when each forward link (s -> s + 1) is free
    link_b: list[Any] = [zero] * p  # when each backward link (s + 1 -> s) is free
    arr_f: dict[tuple[int, int], Any] = {}
    arr_b: dict[tuple[int, int], Any] = {}
    for s, is_back, q in slot_order(p, m, gpipe):
        if is_back:
            ready = arr_b.get((s, q), zero)
            end = maximum(free[s], ready) + back[s]
            if s > 0:
                t = maximum(end, link_b[s - 1]) + hops[s - 1]
                link_b[s - 1] = arr_b[(s - 1, q)] = t
        else:
            ready = arr_f.get((s, q), zero)
            end = maximum(free[s], ready) + fwd[s]
            if s < p - 1:
                t = maximum(end, link_f[s]) + hops[s]
                link_f[s] = arr_f[(s + 1, q)] = t
        free[s] = end
    step = free[0] + tails[0]
    for s in range(1, p):
        step = maximum(step, free[s] + tails[s])
    return step
