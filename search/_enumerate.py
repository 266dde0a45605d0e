"""``enumerate``: brute force over every plan of the dp's search space, for tiny problems.

It exists to check ``dp``: the same space (:mod:`._layered_space`), every plan
priced by ``problem.score`` (the analytic evaluator plus the limits), nothing
pruned, so its optimum (and Pareto front) is certified by exhaustion. It refuses
problems whose space holds more than ``max_plans`` plans rather than run for hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from ..problem import Problem
from ._layered_space import LayeredSpace
from ._options import LayeredOptions, TunerOptions, about
from ._techniques import technique_choices, with_techniques
from ._tuner import Family, Recorder, Tuner

DEFAULT_MAX_PLANS = 200_000


@dataclass(frozen=True)
class EnumerateOptions(LayeredOptions):
    """``enumerate``'s options: the layered space's, and the largest space it walks."""

    max_plans: int = field(
        default=DEFAULT_MAX_PLANS, metadata=about("refuse spaces of more plans than this", minimum=1)
    )
    techniques: Literal["off", "search"] = field(
        default="off",
        metadata=about(
            "training: 'search' tries every combination of ZeRO stage, sequence parallelism, selective "
            "recomputation, overlap and interleaving on each layout; 'off' (default) plans without them"
        ),
    )


class Enumerate(Tuner):
    """Every plan of the layered space, each scored by ``problem.score`` (options: ``max_plans``,
    ``max_micro_batches``, ``recompute``, ``replicas``, ``micro_batches``)."""

    name: ClassVar[str] = "enumerate"
    family: ClassVar[Family] = Family.EXACT
    exact: ClassVar[bool] = True
    description: ClassVar[str] = "brute force over every plan of the dp's space (tiny problems only)"
    Options: ClassVar[type[TunerOptions]] = EnumerateOptions
    config: EnumerateOptions

    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str]:
        opts = self.config
        cap = opts.max_plans
        space = LayeredSpace.build(
            problem,
            max_micro_batches=opts.max_micro_batches,
            recompute=opts.recompute,
            replicas=opts.replicas,
            micro_batches=opts.micro_batches,
        )
        choices = technique_choices(opts.techniques) if problem.phase == "train" else [{}]
        total = space.count_plans() * len(choices)
        if total > cap:
            raise ValueError(
                f"enumerate: the space of {problem.name} holds {total} plans, more than the cap of {cap}; "
                "raise option 'max_plans' or use the 'dp' tuner"
            )
        for r, m in space.pairs:
            for stages in _compositions(space, 0, space.max_devices // r):
                for flags in _flags(space.recompute, len(stages)):
                    layout = space.plan(stages, r, m, flags)
                    # a technique that does not apply to the layout is dropped: score each distinct plan once
                    for plan in dict.fromkeys(with_techniques(layout, c) for c in choices):
                        recorder.record(problem.score(plan))
        what = "plans of the layered space" if len(choices) == 1 else f"layouts x {len(choices)} technique sets"
        notes = [f"enumerated all {total} {what}"]
        if recorder.best is None:
            notes.append("no plan of the space is feasible (memory, SLOs, device cap or calibrated range)")
        recorder.certified = not recorder.stopped
        return notes


def _compositions(space: LayeredSpace, i: int, budget: int) -> Iterator[list[tuple[int, int, int]]]:
    """Every stage sequence covering cuts[i:] with at most ``budget`` devices."""
    for t in space.tps:
        if t > budget:
            continue
        for j in range(i, space.n_cuts):
            if j == space.n_cuts - 1:
                yield [(i, j, t)]
            else:
                for rest in _compositions(space, j + 1, budget - t):
                    yield [(i, j, t), *rest]


def _flags(choices: tuple[bool, ...], n: int) -> Iterator[list[bool]]:
    if n == 0:
        yield []
        return
    for head in choices:
        for rest in _flags(choices, n - 1):
            yield [head, *rest]
