"""Scenario pools, the reference each reward is measured against, and the reward itself.

A pool is a list of :class:`~paratune.search.Problem`: given in code, read from
a YAML list of :meth:`Problem.from_dict` mappings, or from a directory of
scenario files (``benchmarks/scenarios``). An env samples one per episode with
its own RNG, so training across many models and platforms is one ``reset``.

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

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..costmodel import Plan, Stage
from ..costmodel._fields import load_yaml
from ..graphs import Phase
from ..problem import Evaluation, Problem, divisors, load_scenario, load_scenarios
from ..search import make_tuner

#: Feasible rewards are clipped to [-REWARD_CLIP, REWARD_CLIP] (e^3 = 20x better or worse).
REWARD_CLIP = 3.0

#: Small models on varied platforms: the default pool of ``gymnasium.make`` with no ``scenarios``.
DEFAULT_POOL: tuple[dict[str, Any], ...] = (
    {"name": "tiny-decode-a100", "model": "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8", "platform": "dgx-a100",
     "phase": "decode", "batch": 8, "seq": 512},
    {"name": "tiny-prefill-h100x2", "model": "llama2-7b:layers=6,hidden=512,heads=8,kv_heads=8",
     "platform": "dgx-h100x2", "phase": "prefill", "batch": 4, "seq": 512},
    {"name": "tiny-train-a100", "model": "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8", "platform": "dgx-a100",
     "phase": "train", "batch": 8, "seq": 256},
    {"name": "gpt2-decode-mesh", "model": "gpt2", "platform": "mesh", "phase": "decode", "batch": 16, "seq": 512,
     "objective": "throughput"},
    {"name": "gpt2-train-h100", "model": "gpt2", "platform": "dgx-h100", "phase": "train", "batch": 8, "seq": 512},
    {"name": "tiny-decode-tight", "model": "llama2-7b:layers=8,hidden=1024,heads=8,kv_heads=8",
     "platform": "cpu-local", "phase": "decode", "batch": 2, "seq": 256, "limits": {"memory_gib": 0.5}},
)  # fmt: skip


def load_pool(source: str | Path | Sequence[Problem | dict[str, Any] | str | Path] | None = None) -> list[Problem]:
    """A scenario pool from any of the accepted forms.

    Args:
        source: ``None`` (the default pool :data:`DEFAULT_POOL`); a YAML file
            holding a list of scenario mappings (or one scenario); a directory of
            scenario files (e.g. ``benchmarks/scenarios``); or a sequence whose
            items are :class:`Problem`, scenario mappings or scenario file paths.

    Raises:
        ValueError: an empty pool, two scenarios with the same name, or a bad file
            or field (the message names it).
    """
    if source is None:
        problems = list(_default_pool())
    elif isinstance(source, (str, Path)):
        problems = _from_path(Path(source))
    else:
        problems = [_one(item, f"scenarios[{i}]") for i, item in enumerate(source)]
    if not problems:
        raise ValueError("scenario pool is empty: give at least one Problem, mapping or scenario file")
    seen: set[str] = set()
    for p in problems:
        if p.name in seen:
            raise ValueError(f"scenario pool: two scenarios are named {p.name!r}; names must be unique")
        seen.add(p.name)
    return problems


_DEFAULT: list[Problem] = []


def _default_pool() -> list[Problem]:
    """The default pool's problems, built once per process so envs share their graphs and tables."""
    if not _DEFAULT:
        _DEFAULT.extend(Problem.from_dict(d, where=f"default pool[{i}]") for i, d in enumerate(DEFAULT_POOL))
    return _DEFAULT


def _from_path(path: Path) -> list[Problem]:
    if path.is_dir():
        return load_scenarios(path, check=False)
    if not path.is_file():
        raise ValueError(f"{path}: no such scenario pool file or directory")
    data = load_yaml(path)
    if isinstance(data, list):
        return [Problem.from_dict(d, where=f"{path}[{i}]") for i, d in enumerate(data)]
    return [load_scenario(path, check=False)]


def _one(item: Problem | dict[str, Any] | str | Path, where: str) -> Problem:
    if isinstance(item, Problem):
        return item
    if isinstance(item, dict):
        return Problem.from_dict(item, where=where)
    if isinstance(item, (str, Path)):
        return load_scenario(item, check=False)
    raise ValueError(f"{where}: expected a Problem, a scenario mapping or a file path, got {type(item).__name__}")


def problem_key(problem: Problem) -> str:
    """A stable key of the problem's fields (two equal problems share cached tables and references)."""
    return json.dumps(problem.to_dict(), sort_keys=True)


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
    obj = problem.obj
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
        if problem.obj.direction == "maximize":
            r = math.log(evaluation.value / ref.value)
        else:
            r = math.log(ref.value / evaluation.value)
        return max(-REWARD_CLIP, min(REWARD_CLIP, r))
    violation = sum(c for c in evaluation.constraints if c > 0 and math.isfinite(c))
    if not evaluation.violations or any(not math.isfinite(c) for c in evaluation.constraints):
        violation = 1.0
    return -(REWARD_CLIP + 1.0) - min(1.0, violation)
