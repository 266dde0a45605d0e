"""Transfer of a policy to a scenario it was not trained on: zero-shot, fine-tuned, and the gaps that matter.

For one problem :func:`transfer` reports

* **zero-shot**: the ``rl`` tuner with the policy as trained, greedy (1 rollout)
  and best of ``rollouts`` (greedy, the setup sweep, then sampled rollouts);
* **fine-tuned**: the same after :func:`~._train.finetune` continued training on
  this problem alone for ``finetune_steps`` env steps;
* the gap of each to the **optimum** (``dp``; certified when dp says so, else
  its best plan and a note) and to the **best heuristic** (best feasible of
  megatron, serving-default, min-tp-replicas, balanced-pp). Gaps follow
  :meth:`Objective.gap`: 0.05 = 5% worse, negative = better.

Learned placers in the literature (Placeto, GDP, REGAL) report transfer against
their own baselines; measuring against a certified optimum is the point here.
Multi-objective problems have no single optimum: their gaps to the optimum
are None (the gap to the best heuristic uses the primary value).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._limits import MAX_BUDGET, MAX_TIMESTEPS, check_at_most
from ..problem import Problem
from ..search import TuneResult, make_tuner
from ._policy import Policy
from ._rl_tuner import RLTuner, resolve_policy
from ._settings import TRANSFER

#: The heuristics the best heuristic is chosen among.
HEURISTICS = ("megatron", "serving-default", "min-tp-replicas", "balanced-pp")


@dataclass
class TransferRow:
    """One line of the report: a result, its value and its gaps."""

    label: str
    value: float | None
    gap_to_optimum: float | None
    gap_to_heuristic: float | None
    wall_s: float
    rollouts: int | None = None
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TransferReport:
    """What :func:`transfer` measured on one problem (``to_dict`` is the ``--json`` contract)."""

    policy: str
    problem: Problem
    optimum: float | None
    optimum_source: str
    certified: bool
    heuristic: str | None
    heuristic_value: float | None
    rows: list[TransferRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, label: str) -> TransferRow | None:
        return next((r for r in self.rows if r.label == label), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "problem": self.problem.to_dict(),
            "optimum": {"value": self.optimum, "source": self.optimum_source, "certified": self.certified},
            "best_heuristic": {"name": self.heuristic, "value": self.heuristic_value},
            "rows": [r.to_dict() for r in self.rows],
            "notes": list(self.notes),
        }


def optimum_of(problem: Problem) -> tuple[float | None, str, bool]:
    """(dp value, where it comes from, certified); value None for multi-objective or non-layered problems."""
    if problem.resolved_objective.multi:
        return None, "multi-objective: no single optimum", False
    if not problem.graph().is_layered:
        return None, "dp needs a layered graph", False
    result = make_tuner("dp").tune(problem)
    if result.objective_value is None:
        return None, "dp found no feasible plan", bool(result.optimal)
    if result.optimal:
        return result.objective_value, "dp (certified)", True
    return result.objective_value, "dp best plan, not certified: " + "; ".join(result.notes), False


def best_heuristic(problem: Problem) -> tuple[str | None, float | None, list[str]]:
    """The best feasible heuristic (name, value) and notes on heuristics that failed."""
    best: tuple[str | None, float | None] = (None, None)
    notes: list[str] = []
    for name in HEURISTICS:
        try:
            value = make_tuner(name).tune(problem, seed=0).objective_value
        except (ValueError, RuntimeError) as exc:  # a heuristic that does not apply says why; keep the others
            notes.append(f"heuristic {name}: {exc}")
            continue
        if value is not None and (best[1] is None or problem.resolved_objective.better(value, best[1])):
            best = (name, value)
    return best[0], best[1], notes


def transfer(
    problem: Problem,
    *,
    policy: str | Path | Policy | None = None,
    finetune_steps: int = TRANSFER.finetune_steps,
    rollouts: int = TRANSFER.rollouts,
    seed: int = TRANSFER.seed,
    granularity: str | None = None,
    temperature: float = TRANSFER.temperature,
) -> TransferReport:
    """Zero-shot and fine-tuned results of ``policy`` on ``problem``, with gaps (see the module docstring)."""
    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}")
    if finetune_steps < 0:
        raise ValueError(f"finetune_steps must be >= 0, got {finetune_steps}")
    check_at_most(rollouts, MAX_BUDGET, "rollouts")
    check_at_most(finetune_steps, MAX_TIMESTEPS, "finetune_steps")
    pol = resolve_policy(policy)
    opt, source, certified = optimum_of(problem)
    heur, heur_value, notes = best_heuristic(problem)
    report = TransferReport(
        str(pol.path or "in-memory policy"), problem, opt, source, certified, heur, heur_value, notes=notes
    )

    def add(label: str, result: TuneResult, wall: float, n: int | None) -> None:
        value = result.objective_value
        plan = None if result.best_plan is None else result.best_plan.to_dict()
        report.rows.append(
            TransferRow(label, value, _gap(problem, value, opt), _gap(problem, value, heur_value), wall, n, plan)
        )

    def run(p: Policy, prefix: str, extra_wall: float = 0.0) -> None:
        budgets = [(1, "greedy")] + ([(rollouts, f"best of {rollouts}")] if rollouts > 1 else [])
        for n, label in budgets:
            start = time.perf_counter()
            result = RLTuner(policy=p, granularity=granularity, temperature=temperature).tune(
                problem, budget=n, seed=seed
            )
            add(f"{prefix} {label}", result, extra_wall + time.perf_counter() - start, n)

    run(pol, "zero-shot")
    if finetune_steps > 0:
        from ._train import finetune

        start = time.perf_counter()
        tuned = finetune(pol, problem, finetune_steps, seed=seed, granularity=granularity)
        run(tuned, "fine-tuned", time.perf_counter() - start)
        report.notes.append(f"fine-tuned {finetune_steps} steps on this scenario (wall includes the fine-tuning)")
    if heur is not None:
        report.rows.append(
            TransferRow(f"best heuristic ({heur})", heur_value, _gap(problem, heur_value, opt), 0.0, 0.0)
        )
    if opt is not None:
        report.rows.append(
            TransferRow("dp" if certified else "dp (not certified)", opt, 0.0, _gap(problem, opt, heur_value), 0.0)
        )
    if not certified and opt is not None:
        report.notes.append(f"optimum: {source}")
    return report


def _gap(problem: Problem, value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return problem.resolved_objective.gap(value, reference)
