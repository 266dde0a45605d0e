"""Building plans from the few numbers tuners decide: stage cuts, TP per stage, micro-batches, replicas."""

from __future__ import annotations

from collections.abc import Sequence

from ..costmodel import Plan, Stage


def contiguous_plan(
    stages: Sequence[tuple[int, int, int]],
    *,
    micro_batches: int = 1,
    replicas: int = 1,
    granularity: str = "layer",
    schedule: str = "1f1b",
    recompute: bool | Sequence[bool] = False,
) -> Plan:
    """A plan from ``(first_layer, last_layer, tp)`` per stage, devices assigned contiguously from 0.

    Contiguous groups are what Megatron-LM and vLLM build (TP groups inside a node
    whenever the node holds them), so every tuner shares this layout.
    """
    flags = [recompute] * len(stages) if isinstance(recompute, bool) else list(recompute)
    out, first = [], 0
    for (a, b, tp), rc in zip(stages, flags, strict=True):
        out.append(Stage(tp=tp, devices=tuple(range(first, first + tp)), layers=(a, b), recompute=rc))
        first += tp
    return Plan(tuple(out), granularity, micro_batches, replicas, schedule)


def even_cuts(n_layers: int, pp: int, tp: int | Sequence[int]) -> list[tuple[int, int, int]]:
    """``pp`` stages of (almost) equal layer counts, earlier stages taking the remainder."""
    tps = [tp] * pp if isinstance(tp, int) else list(tp)
    base, extra = divmod(n_layers, pp)
    out, first = [], 0
    for s in range(pp):
        count = base + (1 if s < extra else 0)
        out.append((first, first + count - 1, tps[s]))
        first += count
    return out
