"""Plan-wide training techniques as search decisions, shared by the tuners.

A layout (stage cuts, TP per stage, replicas, micro-batches, recomputation) is what
the tuners have always searched; issue 18 adds decisions that apply to the whole
plan: ZeRO stage, sequence parallelism, selective recomputation, overlap, the
interleaved schedule's virtual stages. They are few and mostly discrete, so a tuner
treats them as one more choice per plan: :func:`technique_choices` lists the
combinations of a mode and :func:`with_techniques` puts one on a layout, repairing
what does not apply (sequence parallelism without TP, interleaving without a
pipeline or with too few layers per stage) instead of producing an invalid plan.

Modes (tuner option ``techniques``):

* ``off``: today's plans only (no technique), the default while the dp's exact
  search prices only them;
* ``search``: ZeRO 0 / 1 / 3, sequence parallelism on / off, selective recomputation
  on / off, overlap on / off, virtual stages 1 / 2 (context and expert parallelism
  change the device layout and are left to explicit plans for now).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from ..costmodel import Plan, Stage

TECHNIQUE_MODES = ("off", "search")

#: The values each searched technique takes (``search`` mode), in the order tuners index them.
SEARCHED: dict[str, tuple[Any, ...]] = {
    "zero": (0, 1, 3),
    "sequence_parallel": (False, True),
    "selective_recompute": (False, True),
    "overlap": (False, True),
    "virtual_stages": (1, 2),
}


def technique_choices(mode: str) -> list[dict[str, Any]]:
    """Every combination of techniques a tuner tries in ``mode`` (``[{}]`` for ``off``)."""
    if mode not in TECHNIQUE_MODES:
        raise ValueError(f"option 'techniques' is {mode!r}; allowed: {', '.join(TECHNIQUE_MODES)}")
    if mode == "off":
        return [{}]
    names = list(SEARCHED)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*SEARCHED.values())]


def with_techniques(plan: Plan, choice: dict[str, Any]) -> Plan:
    """``plan`` with the techniques of ``choice``, leaving out those that do not apply to its layout.

    Sequence parallelism needs a stage with TP > 1; interleaving needs a layered plan of
    at least two stages, micro-batches a multiple of the stages and at least ``v`` layers
    per stage; selective recomputation matters only on stages that do not recompute
    fully. Dropped choices fall back to their defaults, so the result is always a plan
    the cost model prices.
    """
    if not choice:
        return plan
    fields = dict(choice)
    if fields.get("sequence_parallel") and all(st.tp == 1 for st in plan.stages):
        fields["sequence_parallel"] = False
    if fields.get("selective_recompute") and all(st.recompute for st in plan.stages):
        fields["selective_recompute"] = False
    v = int(fields.pop("virtual_stages", 1))
    out = dataclasses.replace(plan, **fields)
    if v > 1 and _interleavable(plan, v):
        out = dataclasses.replace(out, stages=_chunks(plan.stages, v), virtual_stages=v)
    return out


def _interleavable(plan: Plan, v: int) -> bool:
    if plan.virtual_stages != 1 or plan.pp < 2 or plan.micro_batches % plan.pp or plan.granularity != "layer":
        return False
    return all(st.layers is not None and st.layers[1] - st.layers[0] + 1 >= v for st in plan.stages)


def _chunks(stages: tuple[Stage, ...], v: int) -> tuple[Stage, ...]:
    """Stage s's layers split into ``v`` near-equal chunks, dealt round-robin: chunk j of stage s
    becomes virtual stage j x p + s, so the model's layers stay in order across chunks.

    The layer counts per stage are kept; the layers themselves are renumbered so that
    chunk k (in model order) covers the next ``count`` layers.
    """
    p = len(stages)
    counts = []
    for st in stages:
        a, b = st.layers  # type: ignore[misc]
        base, extra = divmod(b - a + 1, v)
        counts.append([base + (1 if j < extra else 0) for j in range(v)])
    out, first = [], 0
    for j in range(v):
        for s in range(p):
            n = counts[s][j]
            out.append(dataclasses.replace(stages[s], layers=(first, first + n - 1)))
            first += n
    return tuple(out)
