"""The tuner interface and the recorder every tuner reports its evaluations to.

A tuner subclasses :class:`Tuner` and implements ``_search(problem, recorder,
rng, seed)`` (returning notes for the result, or None): it proposes plans, hands each to ``recorder.evaluate`` (or
``recorder.record`` when it priced the plan itself, as the batched and exact
solvers do), and stops when ``recorder.done``. The recorder counts evaluations,
keeps the best feasible plan, the anytime history, the Pareto front of
multi-objective problems, and calls the user's callback, so no tuner
re-implements the bookkeeping (the pattern of stable-baselines3's callbacks and
Optuna's study).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from ..costmodel import Metrics, Plan
from ..problem import Evaluation, Problem
from ._options import TunerOptions
from ._result import HistoryPoint, TuneResult


class Family(StrEnum):
    """What kind of tuner it is: campaigns run the deterministic families once per scenario."""

    HEURISTIC = "heuristic"
    EXACT = "exact"
    OPTUNA = "optuna"
    RL = "rl"

    @property
    def deterministic(self) -> bool:
        """Heuristics and exact solvers ignore the seed."""
        return self in (Family.HEURISTIC, Family.EXACT)


@dataclass(frozen=True)
class Progress:
    """What a callback sees after each evaluation; return ``False`` from the callback to stop the tuner."""

    tuner: str
    evaluations: int
    budget: int | None
    wall_s: float
    best: float | None
    last: Evaluation


Callback = Callable[[Progress], bool | None]


@dataclass
class Scope:
    """The best feasible evaluation recorded inside :meth:`Recorder.scope`."""

    best: Evaluation | None = None


class Recorder:
    """Counts evaluations against the budget and keeps the best plan, history and Pareto front."""

    def __init__(self, problem: Problem, tuner: str, budget: int | None, callback: Callback | None = None) -> None:
        self.problem, self.tuner, self.budget, self.callback = problem, tuner, budget, callback
        self.objective = problem.resolved_objective
        self.evaluations = 0
        self.best: Evaluation | None = None
        self.history: list[HistoryPoint] = []
        self.front: list[Evaluation] = []
        self.stopped = False
        self.certified: bool | None = None  # an exact solver sets it (False when it could not certify)
        self.start = time.perf_counter()
        self._scope: Scope | None = None

    @property
    def done(self) -> bool:
        """True when the budget is spent or the callback asked to stop."""
        return self.stopped or (self.budget is not None and self.evaluations >= self.budget)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.evaluations)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def evaluate(self, plan: Plan) -> Evaluation:
        """Price ``plan`` on the problem, count it, and keep it if it is the best so far."""
        return self.record(self.problem.score(plan))

    def record_metrics(self, plan: Plan, metrics: Metrics) -> Evaluation:
        return self.record(self.problem.score(plan, metrics))

    @contextmanager
    def scope(self, evaluations: int) -> Iterator[Scope]:
        """A part of the search that may spend at most ``evaluations`` more (e.g. another tuner's ``_search``
        run on this recorder, so every evaluation is counted and reported); its own best is in ``Scope.best``."""
        scope = Scope()
        saved, self.budget = self.budget, self.evaluations + evaluations
        if saved is not None:
            self.budget = min(saved, self.budget)
        self._scope = scope
        try:
            yield scope
        finally:
            self.budget, self._scope = saved, None

    def record(self, ev: Evaluation, *, count: int = 1) -> Evaluation:
        """Count ``count`` evaluations ending with ``ev`` (a batch reports its best once with its size)."""
        self.evaluations += count
        scope = self._scope
        if (
            scope is not None
            and ev.feasible
            and (scope.best is None or self.objective.better(ev.value, scope.best.value))
        ):
            scope.best = ev
        if ev.feasible:
            if self.best is None or self.objective.better(ev.value, self.best.value):
                self.best = ev
                self.history.append(HistoryPoint(self.evaluations, self.elapsed, ev.value))
            if self.objective.multi:
                self._update_front(ev)
        if self.callback is not None:
            progress = Progress(
                self.tuner,
                self.evaluations,
                self.budget,
                self.elapsed,
                None if self.best is None else self.best.value,
                ev,
            )
            if self.callback(progress) is False:
                self.stopped = True
        return ev

    def _update_front(self, ev: Evaluation) -> None:
        vals = ev.values
        if any(_dominates(f.values, vals) or f.values == vals for f in self.front):
            return
        self.front = [f for f in self.front if not _dominates(vals, f.values)] + [ev]

    def result(self, tuner: Tuner, seed: int, *, optimal: bool = False, notes: list[str] | None = None) -> TuneResult:
        best = self.best
        front = sorted(self.front, key=lambda e: e.values)
        return TuneResult(
            tuner=self.tuner,
            problem=self.problem.name,
            objective=self.objective.name,
            direction=self.objective.direction,
            best_plan=None if best is None else best.plan,
            best_metrics=None if best is None else best.metrics,
            objective_value=None if best is None else best.value,
            evaluations=self.evaluations,
            wall_s=self.elapsed,
            seed=seed,
            history=self.history,
            optimal=optimal and best is not None,
            pareto=[(e.plan, e.values) for e in front],
            options=dict(tuner.options),
            notes=list(notes or []),
            stopped_early=self.stopped,
        )


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


class Tuner(ABC):
    """Base of every tuner: ``tune(problem, budget, seed, callback) -> TuneResult``.

    Subclasses set ``name``, ``family`` (heuristic, exact, optuna, rl), a one-line
    ``description``, whether they are ``stochastic`` (results depend on the seed)
    and ``exact`` (the result is certified optimal under the cost model), their
    ``Options`` (a :class:`~._options.TunerOptions` dataclass), and implement
    ``_search``. These class attributes are the one source the registry and
    ``paratune tuners list`` read. Options are keyword arguments of the
    constructor, checked there into ``self.config`` (so a typo fails before any
    search) and recorded as given in the result (``self.options``).
    """

    name: ClassVar[str] = ""
    family: ClassVar[Family] = Family.HEURISTIC
    stochastic: ClassVar[bool] = False
    exact: ClassVar[bool] = False
    default_budget: ClassVar[int | None] = None
    description: ClassVar[str] = ""
    Options: ClassVar[type[TunerOptions]] = TunerOptions

    def __init__(self, **options: Any) -> None:
        self.config = self.Options.parse(self.name or type(self).__name__, options)
        self.options = options

    def tune(
        self, problem: Problem, budget: int | None = None, seed: int = 0, callback: Callback | None = None
    ) -> TuneResult:
        """Search ``problem`` with at most ``budget`` evaluations (None: the tuner's default) from ``seed``."""
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1 evaluation, got {budget}")
        budget = self.default_budget if budget is None else budget
        recorder = Recorder(problem, self.name, budget, callback)
        rng = np.random.default_rng(seed)
        notes = self._search(problem, recorder, rng, seed) or []
        certified = self.exact if recorder.certified is None else recorder.certified
        return recorder.result(self, seed, optimal=certified and not recorder.stopped, notes=notes)

    @abstractmethod
    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str] | None:
        """Propose and record plans until done; return notes for the user (what was assumed or skipped)."""
