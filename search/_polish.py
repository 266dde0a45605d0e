"""Polishing an Optuna study's incumbent: single-parameter moves enqueued as trials.

Samplers such as TPE find the right region of a plan space quickly but place the
last details (a stage's share of the layers, one stage's TP degree, the number of
micro-batches) by chance: on the scenario suite TPE's median gap at 500 trials is
0% while a few runs stay 5-20% off. A coordinate search around the best feasible
trial closes that tail. Its moves are *trials of the same study*, enqueued with
``Study.enqueue_trial`` and run by ``Study.optimize``, so the sampler learns from
them, the budget counts them, and optuna-dashboard shows them like any other trial.

Moves, generated from the incumbent's parameters and their distributions:

* integer parameters (TP index, stage count, replicas, micro-batches, a task's group
  in ordinal spaces): one step down and one step up;
* float parameters (a stage's layer weight): x1.25 and /1.25 on a log scale, +-10% of
  the range on a linear one (clipped);
* categorical parameters: every other choice (at most :data:`MAX_CHOICES`, drawn
  with the tuner's random generator when there are more).

First improvement: moves are tried in chunks of :data:`CHUNK` (shuffled by the
tuner's seed) and the neighbourhood is rebuilt around a new incumbent as soon as a
chunk finds one. When a whole neighbourhood brings nothing the incumbent is a local
optimum for these moves and the rest of the budget goes back to the sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

#: Moves run between two looks at the incumbent.
CHUNK = 12
#: Other values of a categorical parameter tried per move.
MAX_CHOICES = 4


def neighbours(params: dict[str, Any], distributions: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every single-parameter move from ``params`` (see the module docstring), shuffled."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: list[dict[str, Any]] = []
    for name, value in params.items():
        d = distributions.get(name)
        values: list[Any] = []
        if isinstance(d, IntDistribution):
            values = [v for v in (value - d.step, value + d.step) if d.low <= v <= d.high]
        elif isinstance(d, FloatDistribution):
            if d.log:
                values = [min(d.high, value * 1.25), max(d.low, value / 1.25)]
            else:
                span = 0.1 * (d.high - d.low)
                values = [min(d.high, value + span), max(d.low, value - span)]
            values = [v for v in values if not math.isclose(v, value)]
        elif isinstance(d, CategoricalDistribution):
            others = [c for c in d.choices if c != value]
            if len(others) > MAX_CHOICES:
                others = [others[i] for i in rng.choice(len(others), MAX_CHOICES, replace=False)]
            values = others
        out += [{**params, name: v} for v in values]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def structural(params: dict[str, Any], distributions: dict[str, Any], space: Any) -> list[dict[str, Any]]:
    """Moves of the plan's shape: two of ``space.GLOBALS`` at once, and every shape move with balanced stages.

    A pipeline that needs one more stage *and* more micro-batches (or another replica
    count) is worse after either move alone, so single moves stop in front of it; a
    new shape also wants its stages rebalanced (``space.balanced``), and, as TP does not
    scale linearly, each of its stages' shares one step off the even split
    (``space.shares``).
    """
    from optuna.distributions import IntDistribution

    steps: list[list[tuple[str, int]]] = []
    names = [n for n in space.GLOBALS if isinstance(distributions.get(n), IntDistribution) and n in params]
    for name in names:
        steps += [[(name, -1)], [(name, 1)]]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            steps += [[(a, da), (b, db)] for da in (-1, 1) for db in (-1, 1)]
    out: list[dict[str, Any]] = [space.balanced(params)]
    for step in steps:
        moved = dict(params)
        for name, delta in step:
            d = distributions[name]
            moved[name] = params[name] + delta * d.step
        if all(distributions[n].low <= moved[n] <= distributions[n].high for n, _ in step):
            if len(step) == 2:
                out.append(moved)
            even = space.balanced(moved)
            out.append(even)
            for w in space.shares(even):  # the new shape's split, one stage's share off the even one
                d = distributions.get(w)
                if d is not None:
                    out += [{**even, w: min(d.high, even[w] * 1.25)}, {**even, w: max(d.low, even[w] / 1.25)}]
    unique = dict.fromkeys(_frozen(m) for m in out)
    return [dict(m) for m in unique if m != _frozen(params)]


def _frozen(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def polish(
    study: Any,
    objective: Callable[[Any], Any],
    trials: int,
    rng: np.random.Generator,
    incumbent: Callable[[], Any],
    callbacks: list[Any],
    space: Any = None,
) -> int:
    """Run up to ``trials`` single-parameter moves around ``incumbent()`` (a FrozenTrial or None); returns trials run.

    ``incumbent`` returns the best *feasible* trial so far (the caller knows what
    feasible means for its constraints); polishing stops early at a local optimum.
    With ``space`` (:class:`~._optuna_spaces.Space`) the shape moves of :func:`structural` come first.
    """
    ran = 0
    seen: set[tuple[tuple[str, Any], ...]] = {tuple(sorted(t.params.items())) for t in study.trials}
    while ran < trials:
        best = incumbent()
        if best is None:
            break
        shape = [] if space is None else structural(best.params, best.distributions, space)
        moves = [m for m in shape + neighbours(best.params, best.distributions, rng) if _frozen(m) not in seen]
        improved = False
        while moves and ran < trials and not improved:
            chunk, moves = moves[: min(CHUNK, trials - ran)], moves[CHUNK:]
            before = _finished(study)
            for params in chunk:
                seen.add(tuple(sorted(params.items())))
                study.enqueue_trial(params)
            study.optimize(objective, n_trials=len(chunk), callbacks=callbacks, catch=())
            done = _finished(study) - before
            ran += done
            now = incumbent()
            improved = now is not None and now.number != best.number
            if done < len(chunk):
                return ran  # a callback stopped the study (budget spent)
        if not improved:
            break
    return ran


def _finished(study: Any) -> int:
    """Trials that ran (enqueued ones wait in ``study.trials`` until a worker takes them)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())
