"""The reward of both environments, and the reference each reward is measured against.

Reward (both environments, documented once here):

* feasible plan, minimised objective: ``log(reference / value)``; maximised
  (``throughput``): ``log(value / reference)``; multi-objective problems use the
  primary value (latency). So 0 = as good as the reference, +0.1 = about 10%
  better. Clipped to ``[-REWARD_CLIP, REWARD_CLIP]``.
* infeasible plan (memory over capacity, SLO missed, invalid):
  ``-(REWARD_CLIP + 1) - min(1, total violation)``, the violation being the sum
  of the positive constraint values of :meth:`Problem.score` (fractions over each
  bound; 1 for an invalid plan). Always below every feasible reward, and graded
  so a policy learns to come closer to fitting.

Reference (computed once per scenario, cached by the problem's fields): the
value of the ``megatron`` heuristic's plan. When megatron finds no feasible
plan: the best feasible uniform plan (one TP degree dividing the heads, even
layer ranges, every PP, no replicas, recompute tried when training); when none is
feasible either (or the graph is not layered): every task on one group of the
largest TP degree that fits (the simulator prices it); failing that, a bound:
the cost model's lower bound on latency (``tokens per pass / bound`` for
``throughput``), which no plan beats, so rewards are then <= 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..costmodel import Plan, Stage
from ..graphs import Phase
from ..problem import Evaluation, Problem, divisors
from ..search import make_tuner
from ._pool import problem_key

#: Feasible rewards are clipped to [-REWARD_CLIP, REWARD_CLIP] (e^3 = 20x better or worse).
REWARD_CLIP = 3.0


@dataclass(frozen=True)
class Reference:
    """The value a plan's reward is measured against, and where it came from."""

    value: float
    source: str  # "megatron", "uniform", "single-group" or "lower-bound"
    plan: Plan | None


_REFERENCES: dict[str, Reference] = {}


def reference(problem: Problem) -> Reference:
    """The problem's reference (see the module docstring); cached for the process by the problem's fields."""
    key = problem_key(problem)
    ref = _REFERENCES.get(key)
    if ref is None:
        ref = _REFERENCES[key] = _compute_reference(problem)
    return ref


def _compute_reference(problem: Problem) -> Reference:
    obj = problem.resolved_objective
    layered = problem.graph("layer").is_layered
    if layered:
        result = make_tuner("megatron").tune(problem, seed=0)
        if result.objective_value is not None and _usable(result.objective_value):
            return Reference(result.objective_value, "megatron", result.best_plan)
        best: Evaluation | None = None
        for plan in _uniform_plans(problem):
            ev = problem.score(plan)
            if ev.feasible and _usable(ev.value) and (best is None or obj.better(ev.value, best.value)):
                best = ev
        if best is not None:
            return Reference(best.value, "uniform", best.plan)
    graph = problem.graph()
    ids = tuple(t.id for t in graph.tasks)
    for tp in reversed(problem.tp_degrees() or [1]):
        plan = Plan((Stage(tp, tuple(range(tp)), tasks=ids),), granularity=problem.granularity)
        ev = problem.score(plan, problem.simulator().evaluate(plan))
        if ev.feasible and _usable(ev.value):
            return Reference(ev.value, "single-group", plan)
    bound = problem.simulator().lower_bound
    value = bound if obj.direction == "minimize" else graph.meta.tokens / max(bound, 1e-12)
    return Reference(max(value, 1e-12), "lower-bound", None)


def _uniform_plans(problem: Problem) -> Iterable[Plan]:
    n = problem.graph("layer").meta.n_layers
    for tp in problem.tp_degrees():
        for pp in range(1, min(n, problem.max_devices // tp) + 1):
            m = max(d for d in divisors(problem.batch) if d <= pp)
            for rc in (False, True) if problem.phase == Phase.TRAIN else (False,):
                yield Plan.uniform(n, tp=tp, pp=pp, micro_batches=m, recompute=rc)


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


def reward(problem: Problem, evaluation: Evaluation, ref: Reference) -> float:
    """The episode's final reward for ``evaluation`` (see the module docstring)."""
    if evaluation.feasible and _usable(evaluation.value):
        if problem.resolved_objective.direction == "maximize":
            r = math.log(evaluation.value / ref.value)
        else:
            r = math.log(ref.value / evaluation.value)
        return max(-REWARD_CLIP, min(REWARD_CLIP, r))
    violation = sum(c for c in evaluation.constraints if c > 0 and math.isfinite(c))
    if not evaluation.violations or any(not math.isfinite(c) for c in evaluation.constraints):
        violation = 1.0
    return -(REWARD_CLIP + 1.0) - min(1.0, violation)


def episode_end(problem: Problem, evaluation: Evaluation, ref: Reference, doomed: bool, info: dict[str, Any]) -> float:
    """The final reward of an episode; adds to ``info`` what both envs report at the end (module docstring of each)."""
    info.update(
        plan=evaluation.plan,
        metrics=evaluation.metrics,
        feasible=evaluation.feasible,
        value=evaluation.value,
        violations=list(evaluation.violations),
        reference=ref.value,
        reference_source=ref.source,
        doomed=doomed,
        scenario=problem.name,
    )
    return float(reward(problem, evaluation, ref))
