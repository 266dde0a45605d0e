"""The training pipeline's makespan, shared by the analytic evaluator and its batched form.

A stage runs whole *slots* (forward or backward of one micro-batch) in the schedule's
fixed order, as Megatron-LM does:

* 1F1B: stage s (of p) runs w = min(m, p - s) warm-up forwards, then alternates one
  backward and one forward, then the remaining backwards;
* GPipe: all m forwards, then all m backwards;
* interleaved 1F1B (``virtual`` v > 1, Megatron-Core's
  ``forward_backward_pipelining_with_interleaving`` with its default group of p
  micro-batches): the model is cut into p x v *chunks* in model order, chunk k on
  stage k mod p. Stage s runs m v *virtual* micro-batches; virtual micro-batch j is
  micro-batch (j // (p v)) p + j mod p of its local chunk (j mod p v) // p in the
  forward order, the local chunks reversed in the backward order. It runs
  min(m v, 2 (p - s - 1) + (v - 1) p) warm-up forwards, then one forward and one
  backward at a time, then the remaining backwards. m must be a multiple of p (as
  Megatron-Core requires).

A forward slot needs the previous chunk's forward of the same micro-batch, a backward
slot the next chunk's backward (the last chunk's backward follows its own forward).
Each ordered pair of stages is a directed link that carries one transfer at a time;
with interleaving the hop from chunk k to k + 1 with k mod p = p - 1 goes from the
last stage back to the first, and with p = 2 a forward hop and a backward hop can
share a direction (and so wait for each other). The makespan is the longest path
through these slots; with uniform stages it is the textbook (m + p - 1)(f + b) +
2(p - 1)c, i.e. a bubble of (p - 1) / m of the ideal m (f + b); interleaving cuts the
bubble to (p - 1) / (v m) at the price of v times more hops. With uneven stages or
recomputation on some stages it follows whichever stage really bounds the pipeline.
The discrete-event simulator runs the same schedules (``strict`` slots) and gets the
same times.

Values may be Python floats (one plan) or numpy arrays (many plans at once): the
arithmetic is written once for both, with ``maximum`` the matching max function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

V = TypeVar("V")

#: One slot: (chunk, is_backward, micro-batch); the chunk is the stage when not interleaved.
Slot = tuple[int, bool, int]


def _check(p: int, m: int, gpipe: bool, virtual: int) -> None:
    if p < 1 or m < 1 or virtual < 1:
        raise ValueError(f"pipeline stages p ({p}), micro_batches m ({m}) and virtual_stages ({virtual}) must be >= 1")
    if virtual > 1:
        if gpipe:
            raise ValueError("virtual_stages > 1 (interleaved 1F1B) needs schedule '1f1b', not 'gpipe'")
        if p < 2:
            raise ValueError("virtual_stages > 1 needs at least 2 pipeline stages")
        if m % p:
            raise ValueError(f"interleaved 1F1B needs micro_batches ({m}) to be a multiple of the {p} pipeline stages")


@lru_cache(maxsize=4096)
def stage_order(p: int, m: int, gpipe: bool, s: int, virtual: int = 1) -> tuple[Slot, ...]:
    """The slots stage ``s`` runs, in order: (chunk, is_backward, micro-batch), chunks in model order.

    Raises:
        ValueError: a schedule that does not exist (GPipe or m not a multiple of p when interleaved).
    """
    _check(p, m, gpipe, virtual)
    if gpipe:
        return tuple((s, False, q) for q in range(m)) + tuple((s, True, q) for q in range(m))
    if virtual == 1:
        w = min(m, p - s)
        order: list[Slot] = [(s, False, q) for q in range(w)]
        for q in range(m):
            order.append((s, True, q))
            if q + w < m:
                order.append((s, False, q + w))
        return tuple(order)
    v = virtual
    total = m * v
    group = p * v

    def slot(j: int, back: bool) -> Slot:
        local = (j % group) // p
        q = (j // group) * p + j % p
        return ((v - 1 - local if back else local) * p + s, back, q)

    warm = min(total, 2 * (p - s - 1) + (v - 1) * p)
    order = [slot(j, False) for j in range(warm)]
    for k in range(total - warm):
        order.append(slot(warm + k, False))
        order.append(slot(k, True))
    order.extend(slot(k, True) for k in range(total - warm, total))
    return tuple(order)


@lru_cache(maxsize=1024)
def slot_order(p: int, m: int, gpipe: bool, virtual: int = 1) -> tuple[Slot, ...]:
    """Slots (chunk, is_backward, micro-batch) of every stage in an order where every slot follows what it needs.

    Chunk k runs on stage k mod p; without interleaving the chunk is the stage.

    Raises:
        ValueError: a schedule that does not exist (GPipe or m not a multiple of p when interleaved).
    """
    orders = [stage_order(p, m, gpipe, s, virtual) for s in range(p)]
    last = p * virtual - 1
    done: set[Slot] = set()
    ptr = [0] * p
    out: list[Slot] = []
    total = sum(len(o) for o in orders)
    while len(out) < total:
        moved = False
        for s in range(p):
            while ptr[s] < len(orders[s]):
                k, back, q = orders[s][ptr[s]]
                if back:
                    need: Slot | None = (k, False, q) if k == last else (k + 1, True, q)
                else:
                    need = (k - 1, False, q) if k > 0 else None
                if need is not None and need not in done:
                    break
                done.add((k, back, q))
                out.append((k, back, q))
                ptr[s] += 1
                moved = True
        if not moved:  # cannot happen for these schedules; guard against an endless loop
            raise RuntimeError(f"pipeline schedule p={p} m={m} gpipe={gpipe} virtual={virtual} deadlocks")
    return tuple(out)


@lru_cache(maxsize=4096)
def in_flight(p: int, m: int, stage: int, *, virtual: int = 1, gpipe: bool = False) -> int:
    """Most micro-batch chunks stage ``stage`` holds at once (forward done, backward not yet).

    What activation memory multiplies: min(m, p - s) for 1F1B, m for GPipe, and for
    interleaved 1F1B min(m v, 2 (p - s - 1) + (v - 1) p + 1) chunks of 1/v of the
    stage's layers each: on stage 0, p + (p - 1)/v stage-sized stashes, the
    (1 + (p - 1)/(p v)) x p of Korthikanti et al. (2022).
    """
    return int(peak_stash(p, m, stage, (1.0,) * virtual, gpipe=gpipe))


def peak_stash(p: int, m: int, stage: int, sizes: Sequence[float], *, gpipe: bool = False) -> float:
    """Peak over the schedule of the summed ``sizes[c]`` of the chunks in flight on ``stage``.

    ``sizes`` holds one value per local chunk of the stage (v values, in model order:
    local chunk c is model chunk c p + stage), e.g. the stash of one micro-batch of
    that chunk; the peak is taken after each forward slot, so uneven chunks count
    at the moment the largest mix is alive.
    """
    v = len(sizes)
    live = top = 0.0
    for k, back, _q in stage_order(p, m, gpipe, stage, v):
        size = sizes[k // p]
        if back:
            live -= size
        else:
            live += size
            top = max(top, live)
    return top


def training_makespan(
    fwd: Sequence[V],
    back: Sequence[V],
    hops: Sequence[V],
    tails: Sequence[V],
    m: int,
    gpipe: bool,
    maximum: Callable[[Any, Any], Any] = max,
    zero: Any = 0.0,
    virtual: int = 1,
) -> Any:
    """Step time: the pipeline's slots, then each stage's tail (DP all-reduce + optimizer).

    Args:
        fwd, back: per chunk (p x v, model order; the stages when ``virtual`` is 1), the
            time of one forward / backward slot (backward includes recomputation where
            the chunk recomputes).
        hops: per boundary k -> k + 1 (p x v - 1 of them), the transfer time of one
            micro-batch (either way).
        tails: per stage (p of them), work after its last backward (gradient all-reduce,
            optimizer).
        m: micro-batches; gpipe: GPipe order instead of 1F1B.
        maximum: ``max`` for floats, ``numpy.maximum`` for arrays.
        zero: the zero of the value type (0.0, or an array of zeros).
        virtual: virtual stages v (interleaved 1F1B when > 1).

    Raises:
        ValueError: lengths that do not match p x v, or a schedule that does not exist.
    """
    if virtual != 1:
        return _interleaved_makespan(fwd, back, hops, tails, m, maximum, zero, virtual)
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


def _interleaved_makespan(
    fwd: Sequence[Any],
    back: Sequence[Any],
    hops: Sequence[Any],
    tails: Sequence[Any],
    m: int,
    maximum: Callable[[Any, Any], Any],
    zero: Any,
    v: int,
) -> Any:
    """:func:`training_makespan` of interleaved 1F1B: chunks share their stage, links are directed stage pairs."""
    p = len(tails)
    n = len(fwd)
    if n != p * v or len(back) != n or len(hops) != n - 1:
        raise ValueError(
            f"interleaved pipeline of {p} stages x {v} virtual stages needs {p * v} forward and backward "
            f"times and {p * v - 1} hops, got {len(fwd)}, {len(back)} and {len(hops)}"
        )
    free: list[Any] = [zero] * p
    link: dict[tuple[int, int], Any] = {}  # directed stage pair -> when it is free
    arr_f: dict[tuple[int, int], Any] = {}
    arr_b: dict[tuple[int, int], Any] = {}
    for k, is_back, q in slot_order(p, m, False, v):
        s = k % p
        if is_back:
            end = maximum(free[s], arr_b.get((k, q), zero)) + back[k]
            if k > 0:
                pair = (s, (k - 1) % p)
                t = maximum(end, link.get(pair, zero)) + hops[k - 1]
                link[pair] = arr_b[(k - 1, q)] = t
        else:
            end = maximum(free[s], arr_f.get((k, q), zero)) + fwd[k]
            if k < n - 1:
                pair = (s, (k + 1) % p)
                t = maximum(end, link.get(pair, zero)) + hops[k]
                link[pair] = arr_f[(k + 1, q)] = t
        free[s] = end
    step = free[0] + tails[0]
    for s in range(1, p):
        step = maximum(step, free[s] + tails[s])
    return step
