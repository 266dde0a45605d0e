"""Many plans at once: numpy over the analytic evaluator's prefix tables.

A :class:`PlanBatch` holds n plans of at most S stages as arrays. Devices are
contiguous by convention: stage s of replica 0 occupies the devices
``start_s .. start_s + tp_s - 1`` with ``start_s = sum of tp over stages before s``,
and replica k the same ids shifted by k x devices per replica (what
``Plan.uniform`` and most tuners produce). That convention lets every link term
be looked up from a stage's first and last device instead of a device list.

:func:`~paratune.costmodel._batch_eval.evaluate_batch` applies the formulas of
:mod:`._analytic` by gathering from tables of shape [TP degrees, units + 1]
(kernel tables also per distinct replicas x micro_batches), in chunks of plans,
and gives the same numbers as :meth:`AnalyticEvaluator.evaluate` for every valid
plan. This module holds the data (plans and results); :mod:`._batch_eval` the
arithmetic, so the import runs one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..graphs import Phase, TaskGraph
from ._divisors import divisors
from ._plan import Plan, Schedule, Stage
from ._platform import Platform

if TYPE_CHECKING:
    pass


@dataclass
class PlanBatch:
    """n contiguous layered plans as arrays ([n, S] per stage, [n] per plan); ``tp == 0`` marks no stage.

    ``recompute`` ([n, S]) and ``gpipe`` ([n], the GPipe schedule instead of 1F1B)
    default to all False.
    """

    first_layer: np.ndarray
    last_layer: np.ndarray
    tp: np.ndarray
    micro_batches: np.ndarray
    replicas: np.ndarray
    recompute: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    gpipe: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        shape = np.shape(self.tp)
        if len(shape) != 2:
            raise ValueError(f"plan batch: field 'tp' must have shape [n, stages], got {shape}")
        self.first_layer = np.asarray(self.first_layer, dtype=np.int64)
        self.last_layer = np.asarray(self.last_layer, dtype=np.int64)
        self.tp = np.asarray(self.tp, dtype=np.int64)
        self.micro_batches = np.asarray(self.micro_batches, dtype=np.int64)
        self.replicas = np.asarray(self.replicas, dtype=np.int64)
        self.recompute = np.asarray(self.recompute, dtype=bool)
        self.gpipe = np.asarray(self.gpipe, dtype=bool)
        if self.recompute.size == 0:  # not given: no stage recomputes
            self.recompute = np.zeros(shape, dtype=bool)
        if self.gpipe.size == 0:  # not given: 1F1B everywhere
            self.gpipe = np.zeros(shape[0], dtype=bool)
        for name in ("first_layer", "last_layer", "recompute"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"plan batch: field {name!r} must have shape {shape} like 'tp'")
        for name in ("micro_batches", "replicas", "gpipe"):
            if getattr(self, name).shape != (shape[0],):
                raise ValueError(f"plan batch: field {name!r} must have shape ({shape[0]},)")

    def slice(self, start: int, stop: int) -> PlanBatch:
        """Plans ``start .. stop-1`` (views, no copy)."""
        sl = slice(start, stop)
        return PlanBatch(
            self.first_layer[sl], self.last_layer[sl], self.tp[sl], self.micro_batches[sl], self.replicas[sl],
            self.recompute[sl], self.gpipe[sl],
        )  # fmt: skip

    def __len__(self) -> int:
        return int(self.tp.shape[0])

    @classmethod
    def from_plans(cls, plans: list[Plan]) -> PlanBatch:
        """Pack layered plans whose stages use contiguous devices from 0 (raise ``ValueError`` otherwise).

        A batch has no training-technique fields (``zero``, ``cp``, ...): a plan that uses one
        is refused, naming them, rather than packed without them.
        """
        n, width = len(plans), max((p.pp for p in plans), default=1)
        first, last, tp = (np.zeros((n, width), dtype=np.int64) for _ in range(3))
        recompute = np.zeros((n, width), dtype=bool)
        for i, plan in enumerate(plans):
            used = plan.techniques()
            if used:
                raise ValueError(
                    f"plan {i}: uses {', '.join(f'{k}={v}' for k, v in used.items())}; a plan batch holds plans "
                    "without training techniques (evaluate it with AnalyticEvaluator.evaluate)"
                )
            start = 0
            for s, st in enumerate(plan.stages):
                if st.layers is None:
                    raise ValueError(f"plan {i}: stage {s} has no layer range (a plan batch holds layered plans)")
                if st.devices != tuple(range(start, start + st.tp)):
                    raise ValueError(
                        f"plan {i}: stage {s} uses devices {list(st.devices)}; a plan batch needs contiguous devices "
                        f"{start}..{start + st.tp - 1} (stages in order from device 0)"
                    )
                first[i, s], last[i, s] = st.layers
                tp[i, s], recompute[i, s] = st.tp, st.recompute
                start += st.tp
        return cls(
            first, last, tp,
            np.array([p.micro_batches for p in plans], dtype=np.int64),
            np.array([p.replicas for p in plans], dtype=np.int64),
            recompute,
            np.array([p.schedule == Schedule.GPIPE for p in plans], dtype=bool),
        )  # fmt: skip

    def to_plan(self, i: int, *, granularity: str = "layer") -> Plan:
        """Plan ``i`` as a :class:`Plan` (contiguous devices)."""
        stages, start = [], 0
        for s in range(self.tp.shape[1]):
            t = int(self.tp[i, s])
            if t <= 0:
                break
            layers = (int(self.first_layer[i, s]), int(self.last_layer[i, s]))
            recompute = bool(self.recompute[i, s])
            stages.append(Stage(tp=t, devices=tuple(range(start, start + t)), layers=layers, recompute=recompute))
            start += t
        schedule = "gpipe" if self.gpipe[i] else "1f1b"
        return Plan(tuple(stages), granularity, int(self.micro_batches[i]), int(self.replicas[i]), schedule)


@dataclass
class BatchResult:
    """Per-plan results; invalid plans have ``valid`` False, infinite latency and zero throughput."""

    latency_s: np.ndarray
    tokens_per_s: np.ndarray
    max_memory_bytes: np.ndarray
    feasible: np.ndarray
    valid: np.ndarray
    step_s: np.ndarray | None = None
    mfu: np.ndarray | None = None


def _divisors(n: int) -> np.ndarray:
    return np.array(divisors(n), dtype=np.int64)


def random_plans(
    graph: TaskGraph,
    platform: Platform,
    n: int,
    rng: np.random.Generator,
    *,
    max_stages: int = 8,
    max_micro_batches: int | None = None,
) -> PlanBatch:
    """``n`` random valid contiguous plans (feasibility in memory not guaranteed).

    Replicas are drawn among the divisors of the batch that fit the platform,
    then the stage count, a TP degree per stage (divisors of the heads; redrawn
    until the replica fits, else all 1), distinct cut points, and micro-batches
    among the divisors of the replica's batch. Training plans also draw
    recompute per stage and the schedule. Cuts fall where tasks start (granularity
    ``layers:k`` merges k layers into one task).
    """
    meta, n_dev = graph.meta, platform.num_devices
    n_layers = meta.n_layers
    cands = _divisors(meta.heads)
    cands = cands[cands <= n_dev]
    starts = np.flatnonzero(_allowed_starts(graph))
    cut_points = starts[starts > 0]
    width = max(1, min(max_stages, len(cut_points) + 1, n_dev))
    rep_choices = _divisors(meta.batch)
    rep_choices = rep_choices[rep_choices <= n_dev]
    replicas = rep_choices[rng.integers(0, len(rep_choices), n)]
    budget = n_dev // replicas
    pp = 1 + (rng.random(n) * np.minimum(width, budget)).astype(np.int64)
    cols = np.arange(width)
    present = cols[None, :] < pp[:, None]
    tp = np.zeros((n, width), dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    for _ in range(32):
        draw = cands[rng.integers(0, len(cands), (int(todo.sum()), width))] * present[todo]
        tp[todo] = draw
        todo = tp.sum(1) > budget
        if not todo.any():
            break
    tp[todo] = present[todo].astype(np.int64)
    keys = rng.random((n, len(cut_points)))
    order = np.argsort(keys, axis=1)[:, : width - 1]
    chosen = np.where(cols[None, : width - 1] < (pp - 1)[:, None], cut_points[order], n_layers)
    chosen.sort(axis=1)
    first = np.zeros((n, width), dtype=np.int64)
    first[:, 1:] = chosen
    last = np.full((n, width), n_layers - 1, dtype=np.int64)
    last[:, :-1] = first[:, 1:] - 1
    first, last = np.where(present, first, 0), np.where(present, last, 0)
    mb_choices = _divisors(meta.batch)
    if max_micro_batches is not None:
        mb_choices = mb_choices[mb_choices <= max_micro_batches]
    ok = ((meta.batch // replicas)[:, None] % mb_choices[None, :]) == 0
    micro = mb_choices[np.argmax(np.where(ok, rng.random((n, len(mb_choices))), -1.0), axis=1)]
    train = meta.phase == Phase.TRAIN
    recompute = (rng.random((n, width)) < 0.5) & present if train else np.zeros((n, width), dtype=bool)
    gpipe = rng.random(n) < 0.5 if train else np.zeros(n, dtype=bool)
    return PlanBatch(first, last, tp, micro, replicas, recompute, gpipe)


def _allowed_starts(graph: TaskGraph) -> np.ndarray:
    starts = np.zeros(graph.meta.n_layers, dtype=bool)
    starts[0] = True
    for task in graph.tasks:
        if task.step == "forward" and 0 <= task.layer < graph.meta.n_layers:
            starts[task.layer] = True
    return starts
