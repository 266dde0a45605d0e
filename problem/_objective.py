"""Objectives: what a tuner optimises, read off a plan's :class:`~paratune.costmodel.Metrics`.

Every objective knows its direction, the phases it applies to and how to read its
value(s); the multi-objective ones (``tbt+memory`` ...) return latency and the
peak memory of the busiest device, both minimised (a Pareto front).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..costmodel import Metrics
from ..graphs import Phase


@dataclass(frozen=True)
class Objective:
    """One objective: its name, direction(s), phases and how to read it from metrics."""

    name: str
    phases: tuple[str, ...]
    directions: tuple[str, ...]
    read: Callable[[Metrics], tuple[float, ...]]
    description: str

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    @property
    def direction(self) -> str:
        """Direction of the first (primary) value."""
        return self.directions[0]

    def values(self, metrics: Metrics) -> tuple[float, ...]:
        return self.read(metrics)

    def value(self, metrics: Metrics) -> float:
        """The primary value (latency for the multi-objective ones)."""
        return self.read(metrics)[0]

    def better(self, a: float, b: float) -> bool:
        """True when primary value ``a`` is strictly better than ``b``."""
        return a > b if self.direction == "maximize" else a < b

    def worst(self) -> float:
        return float("-inf") if self.direction == "maximize" else float("inf")

    def gap(self, value: float, optimum: float) -> float:
        """Relative gap of ``value`` to ``optimum`` (>= 0 when the optimum is right; 0.05 = 5% worse)."""
        if self.direction == "maximize":
            return optimum / value - 1.0 if value > 0 else float("inf")
        return value / optimum - 1.0 if optimum > 0 else float("inf")


def _latency(metrics: Metrics) -> tuple[float, ...]:
    return (metrics.latency_s,)


def _with_memory(metrics: Metrics) -> tuple[float, ...]:
    return (metrics.latency_s, metrics.max_memory_bytes)


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("ttft", (Phase.PREFILL,), ("minimize",), _latency, "time to first token (prefill latency), s"),
        Objective("tbt", (Phase.DECODE,), ("minimize",), _latency, "time between tokens (one decode step), s"),
        Objective("step", (Phase.TRAIN,), ("minimize",), _latency, "training step time, s"),
        Objective(
            "throughput",
            tuple(Phase),
            ("maximize",),
            lambda m: (m.pipelined_tokens_per_s,),
            "tokens/s of a stream of batches with the pipeline kept full (maximised; prefill: set by the bottleneck)",
        ),
        Objective(
            "ttft+memory", (Phase.PREFILL,), ("minimize", "minimize"), _with_memory, "TTFT and peak memory per device"
        ),
        Objective(
            "tbt+memory", (Phase.DECODE,), ("minimize", "minimize"), _with_memory, "TBT and peak memory per device"
        ),
        Objective(
            "step+memory",
            (Phase.TRAIN,),
            ("minimize", "minimize"),
            _with_memory,
            "step time and peak memory per device",
        ),
    )
}

DEFAULT_OBJECTIVE: dict[str, str] = {Phase.PREFILL: "ttft", Phase.DECODE: "tbt", Phase.TRAIN: "step"}


def get_objective(name: str, phase: str) -> Objective:
    """The objective ``name``, checked against ``phase``; the error lists what is allowed."""
    objective = OBJECTIVES.get(name)
    if objective is None:
        raise ValueError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    if phase not in objective.phases:
        allowed = [n for n, o in OBJECTIVES.items() if phase in o.phases]
        raise ValueError(f"objective {name!r} does not apply to phase {phase!r}; for {phase}: {', '.join(allowed)}")
    return objective
