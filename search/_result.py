"""What a tuner returns: the best plan, how it was found, and its anytime history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..costmodel import Metrics, Plan


@dataclass(frozen=True)
class HistoryPoint:
    """The best feasible value known after ``evaluation`` evaluations and ``wall_s`` seconds."""

    evaluation: int
    wall_s: float
    best: float


@dataclass
class TuneResult:
    """The outcome of one ``tune`` call.

    ``history`` has one point per improvement (best-so-far is a step function of
    evaluations and of wall time: plot it with ``drawstyle='steps-post'``).
    ``optimal`` is true only when the tuner certifies the optimum under the cost
    model over its search space (the exact solvers). ``pareto`` holds the
    non-dominated (plan, values) pairs of multi-objective problems.
    """

    tuner: str
    problem: str
    objective: str
    direction: str
    best_plan: Plan | None
    best_metrics: Metrics | None
    objective_value: float | None
    evaluations: int
    wall_s: float
    seed: int
    history: list[HistoryPoint] = field(default_factory=list)
    optimal: bool = False
    pareto: list[tuple[Plan, tuple[float, ...]]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def found(self) -> bool:
        return self.best_plan is not None

    def evaluations_to_within(self, target: float, rel: float = 0.01) -> int | None:
        """Evaluations used when the best-so-far first came within ``rel`` of ``target`` (None if never)."""
        for point in self.history:
            if _within(point.best, target, rel, self.direction):
                return point.evaluation
        return None

    def seconds_to_within(self, target: float, rel: float = 0.01) -> float | None:
        for point in self.history:
            if _within(point.best, target, rel, self.direction):
                return point.wall_s
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tuner": self.tuner,
            "problem": self.problem,
            "objective": self.objective,
            "direction": self.direction,
            "best_plan": self.best_plan.to_dict() if self.best_plan else None,
            "best_metrics": self.best_metrics.to_dict() if self.best_metrics else None,
            "objective_value": self.objective_value,
            "evaluations": self.evaluations,
            "wall_s": self.wall_s,
            "seed": self.seed,
            "optimal": self.optimal,
            "history": [[h.evaluation, h.wall_s, h.best] for h in self.history],
            "pareto": [{"plan": p.to_dict(), "values": list(v)} for p, v in self.pareto],
            "options": self.options,
            "notes": self.notes,
            "stopped_early": self.stopped_early,
        }


def _within(value: float, target: float, rel: float, direction: str) -> bool:
    if direction == "maximize":
        return value >= target * (1.0 - rel)
    return value <= target * (1.0 + rel)
