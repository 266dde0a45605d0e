"""Define-by-run search spaces for the Optuna tuners: a trial's parameters -> one plan.

Three spaces (option ``space`` of ``optuna-*``):

* ``uniform``: granularity x TP x PP x micro-batches x replicas (x recompute when
  training), one TP degree and even stages: the grid practitioners sweep.
* ``hybrid``: number of stages, the share of layers of each stage, TP per stage,
  micro-batches, replicas (x recompute per stage): the dp's space.
* ``placement``: a device group per task, for graphs that are not layered (or any
  graph at ``op`` granularity); priced by the simulator.

Every space asks for the *same* parameters with the *same* ranges in every trial
(no conditional parameters): Optuna's relative samplers (CMA-ES, QMC, GP,
multivariate TPE) only model parameters seen with one fixed distribution, and
would hand conditional ones to their independent fall-back. Dependent choices
are instead *repaired* deterministically (PP clipped to the devices left by TP
and replicas, the largest TP of a hybrid halved until the stages fit, the
largest micro-batch count dividing the replica's batch below the one drawn), so
every trial is a valid plan the cost model prices and the sampler learns from.
Ordinal choices (TP, PP, replicas, micro-batches, granularity) are integer
indices, which TPE, GP and CMA-ES all model; only nominal ones (the group of a
task) are categorical, except with ``ordinal_only`` (CMA-ES, QMC) where they
are integer indices too.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import networkx as nx

from .._limits import DOC, MAX_MICRO_BATCHES, MAX_PLACEMENT_CHOICES
from ..costmodel import Plan, Stage
from ..graphs import Phase, parse_granularity
from ..problem import Problem, contiguous_plan, divisors
from ._techniques import SEARCHED, TECHNIQUE_MODES, with_techniques

if TYPE_CHECKING:
    from optuna.trial import Trial

SPACES = ("uniform", "hybrid", "placement")

#: Range of a hybrid stage's weight: its layer share is proportional to weight x TP, so equal
#: weights give stages balanced by TP degree and each weight can move a stage's share 4x either way.
WEIGHT_RANGE = (0.25, 4.0)
#: Default cap on the stages of the hybrid space (two parameters per stage).
MAX_STAGES = 16
#: Device groups a task of the placement space chooses among (4x the largest shipped platform): each trial
#: draws one categorical of this many choices per task, and Optuna keeps each trial's choices.
MAX_PLACEMENT_GROUPS = 256


class Space(ABC):
    """Maps a trial's parameters to a plan; built once per tune from the problem."""

    name: ClassVar[str] = ""

    def __init__(self, problem: Problem, *, ordinal_only: bool = False, techniques: str = "off") -> None:
        if techniques not in TECHNIQUE_MODES:
            raise ValueError(f"option 'techniques' is {techniques!r}; allowed: {', '.join(TECHNIQUE_MODES)}")
        self.problem = problem
        self.ordinal_only = ordinal_only
        self.train = problem.phase == Phase.TRAIN
        #: Plan-wide training techniques searched as parameters ``t_<name>`` (an index into ``SEARCHED``).
        self.techniques = techniques == "search" and self.train
        batch = problem.graph().meta.batch
        self.batch = batch
        self.replica_choices = [r for r in divisors(batch) if r <= problem.max_devices]
        # A plan of more micro-batches than MAX_MICRO_BATCHES is refused (the simulator steps each through each
        # stage), so the space offers none: a batch of 65,536 would otherwise draw up to 65,536.
        self.micro_choices = [m for m in divisors(batch) if m <= MAX_MICRO_BATCHES]

    @abstractmethod
    def suggest(self, trial: Trial) -> Plan:
        """Draw this trial's parameters and build its (valid) plan."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the result's notes."""

    # -- shared pieces ----------------------------------------------------
    #: The integer parameters that shape the whole plan (the polish moves them two at a time, :mod:`._polish`).
    GLOBALS: ClassVar[tuple[str, ...]] = ("replicas", "micro_batches")

    def balanced(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the stages' shares reset to the balanced split (spaces without shares: unchanged)."""
        return params

    def shares(self, params: dict[str, Any]) -> list[str]:
        """Names of the share parameters of the stages ``params`` uses (none in spaces without shares)."""
        return []

    def params_of(self, plan: Plan) -> dict[str, int | float] | None:
        """This space's parameters for ``plan`` (to enqueue it as a trial), or None when the space cannot hold it."""
        return None

    def warm_start(self) -> list[dict[str, int | float]]:
        """Parameters of the uniform plans practitioners try first (one TP degree, even stages), best-guess order.

        Enqueued as the study's first trials (``Study.enqueue_trial``) when the tuner's
        ``warm_start`` option is on; empty for spaces without a natural grid (placement).
        """
        return []

    def _grid(self, tps: Sequence[int], max_pp: int) -> list[tuple[int, int, int, int]]:
        """(tp index, pp, replicas index, micro-batches index): largest TP first, PP in powers of two."""
        pps = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= max_pp]
        out = []
        for ti in reversed(range(len(tps))):
            for pp in pps:
                for ri in (0, len(self.replica_choices) - 1):
                    for mi in (0, len(self.micro_choices) - 1):
                        out.append((ti, pp, ri, mi))
        return list(dict.fromkeys(out))

    def _with_techniques(self, trial: Trial, plan: Plan) -> Plan:
        """``plan`` with the trial's plan-wide techniques (``techniques="search"``, training only), repaired
        where they do not apply to its layout (:func:`with_techniques`); the plan itself otherwise."""
        if not self.techniques:
            return plan
        choice = {k: values[trial.suggest_int(f"t_{k}", 0, len(values) - 1)] for k, values in SEARCHED.items()}
        return with_techniques(plan, choice)

    def _index(self, trial: Trial, name: str, n: int, *, nominal: bool = False) -> int:
        """An index in 0..n-1: an integer parameter, or a categorical one for nominal choices."""
        if nominal and not self.ordinal_only:
            return int(trial.suggest_categorical(name, list(range(n))))
        return trial.suggest_int(name, 0, n - 1)

    def _replicas_micro(self, trial: Trial, devices_per_replica: int) -> tuple[int, int]:
        """Replicas and micro-batches, repaired: the most replicas <= the drawn count that fit the
        devices, then the most micro-batches <= the drawn count that divide the replica's batch.

        Replicas are decided last (from the devices a replica needs) so that the parameters that
        shape a replica, drawn first, are never overridden: clipping TP or stages to fit a replica
        count drawn first made large plateaus (every plan with 8 replicas collapsed to TP 1, PP 1).
        """
        want_r = self.replica_choices[self._index(trial, "replicas", len(self.replica_choices))]
        fit = self.problem.max_devices // devices_per_replica
        replicas = max(r for r in self.replica_choices if r <= min(want_r, fit))
        want = self.micro_choices[self._index(trial, "micro_batches", len(self.micro_choices))]
        per_replica = self.batch // replicas
        micro = max(m for m in self.micro_choices if m <= want and per_replica % m == 0)
        return replicas, micro


class _LayerUnits:
    """Where a layered graph of one granularity may be cut: unit u starts at layer ``starts[u]``."""

    def __init__(self, problem: Problem, granularity: str) -> None:
        graph = problem.graph(granularity)
        n = graph.meta.n_layers
        starts = {0} | {t.layer for t in graph.tasks if t.step == "forward" and 0 <= t.layer < n}
        self.granularity, self.n_layers = granularity, n
        self.starts = sorted(starts)

    def __len__(self) -> int:
        return len(self.starts)

    def stages(self, sizes: Sequence[int], tps: Sequence[int]) -> list[tuple[int, int, int]]:
        """(first_layer, last_layer, tp) of consecutive stages of ``sizes`` units each."""
        bounds = [*self.starts, self.n_layers]
        out, u = [], 0
        for size, tp in zip(sizes, tps, strict=True):
            out.append((bounds[u], bounds[u + size] - 1, tp))
            u += size
        return out


def _even(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _proportional(n: int, weights: Sequence[float]) -> list[int]:
    """``n`` units over ``len(weights)`` stages, each at least one, the rest by largest remainder."""
    p = len(weights)
    spare, total = n - p, sum(weights)
    exact = [spare * w / total for w in weights]
    sizes = [int(e) for e in exact]
    order = sorted(range(p), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: spare - sum(sizes)]:
        sizes[i] += 1
    return [s + 1 for s in sizes]


def _check_layered(problem: Problem, granularity: str, space: str) -> None:
    if not problem.graph(granularity).is_layered:
        raise ValueError(
            f"space {space!r} cuts layer ranges but the graph of {problem.model!r} at granularity "
            f"{granularity!r} is not layered; use space='placement'"
        )


class UniformSpace(Space):
    """One TP degree, even stages: granularity x TP x PP x micro-batches x replicas (x recompute)."""

    name = "uniform"
    GLOBALS = ("tp", "pp", "replicas", "micro_batches")

    def __init__(
        self,
        problem: Problem,
        *,
        ordinal_only: bool = False,
        granularities: Sequence[str] | None = None,
        techniques: str = "off",
    ) -> None:
        super().__init__(problem, ordinal_only=ordinal_only, techniques=techniques)
        grans = list(granularities) if granularities else default_granularities(problem)
        if not grans:
            raise ValueError("option 'granularities' must name at least one granularity")
        for g in grans:
            level, k = parse_granularity(g)
            if level == "layers" and k >= problem.n_layers:
                raise ValueError(
                    f"granularity {g!r} merges {k} layers but the model has {problem.n_layers}: "
                    f"use layers:k with k < {problem.n_layers}"
                )
            _check_layered(problem, g, self.name)
        self.units = [_LayerUnits(problem, g) for g in grans]
        self.tps = problem.tp_degrees()
        self.max_pp = max(1, min(max(len(u) for u in self.units), problem.max_devices))

    def suggest(self, trial: Trial) -> Plan:
        units = self.units[self._index(trial, "granularity", len(self.units))]
        tp = self.tps[self._index(trial, "tp", len(self.tps))]
        pp = trial.suggest_int("pp", 1, self.max_pp)
        recompute = self.train and bool(trial.suggest_int("recompute", 0, 1))
        pp = max(1, min(pp, len(units), self.problem.max_devices // tp))
        replicas, micro = self._replicas_micro(trial, tp * pp)
        stages = units.stages(_even(len(units), pp), [tp] * pp)
        plan = contiguous_plan(
            stages, micro_batches=micro, replicas=replicas, granularity=units.granularity, recompute=recompute
        )
        return self._with_techniques(trial, plan)

    def warm_start(self) -> list[dict[str, int | float]]:
        out: list[dict[str, int | float]] = []
        for ti, pp, ri, mi in self._grid(self.tps, self.max_pp):
            for rc in (0, 1) if self.train else (0,):
                params: dict[str, int | float] = {"granularity": 0, "tp": ti, "pp": pp, "replicas": ri}
                params.update(micro_batches=mi, **({"recompute": rc} if self.train else {}))
                out.append(params)
        return out

    def describe(self) -> str:
        grans = ", ".join(u.granularity for u in self.units)
        return f"uniform space: granularities [{grans}], TP {self.tps}, PP 1..{self.max_pp}"


class HybridSpace(Space):
    """Stages with their own TP and layer share: the number of stages, a weight and a TP per stage.

    Stage s gets a share of the cut units proportional to ``weight_s x tp_s`` (each at
    least one unit), so equal weights are the balanced split of a hybrid and the
    weights are smooth, bounded floats that CMA-ES and TPE model well (sorted cut
    points would couple every cut to its neighbours). Parameters of stages beyond
    the drawn number are drawn too but unused, to keep one fixed space.
    """

    name = "hybrid"

    def __init__(
        self, problem: Problem, *, ordinal_only: bool = False, max_stages: int | None = None, techniques: str = "off"
    ) -> None:
        super().__init__(problem, ordinal_only=ordinal_only, techniques=techniques)
        _check_layered(problem, problem.granularity, self.name)
        self.units = _LayerUnits(problem, problem.granularity)
        self.tps = problem.tp_degrees()
        cap = MAX_STAGES if max_stages is None else max_stages
        if cap < 1:
            raise ValueError(f"option 'max_stages' must be >= 1, got {cap}")
        self.max_pp = max(1, min(cap, len(self.units), problem.max_devices))

    def suggest(self, trial: Trial) -> Plan:
        pp = trial.suggest_int("stages", 1, self.max_pp)
        tps = [self.tps[self._index(trial, f"tp_{s}", len(self.tps))] for s in range(self.max_pp)]
        weights = [trial.suggest_float(f"w_{s}", *WEIGHT_RANGE, log=True) for s in range(self.max_pp)]
        flags = [bool(trial.suggest_int(f"recompute_{s}", 0, 1)) for s in range(self.max_pp)] if self.train else []
        budget = self.problem.max_devices
        tps = tps[:pp]
        while sum(tps) > budget:  # the largest TP (the last such stage) steps down one degree
            s = max(range(pp), key=lambda i: (tps[i], i))
            tps[s] = max(t for t in self.tps if t < tps[s])
        sizes = _proportional(len(self.units), [w * t for w, t in zip(weights, tps, strict=False)])
        replicas, micro = self._replicas_micro(trial, sum(tps))
        plan = contiguous_plan(
            self.units.stages(sizes, tps),
            micro_batches=micro,
            replicas=replicas,
            granularity=self.units.granularity,
            recompute=flags[:pp] if self.train else False,
        )
        return self._with_techniques(trial, plan)

    GLOBALS = ("stages", "replicas", "micro_batches")

    def balanced(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: (1.0 if k.startswith("w_") else v) for k, v in params.items()}

    def shares(self, params: dict[str, Any]) -> list[str]:
        return [f"w_{s}" for s in range(int(params.get("stages", 1)))]

    def params_of(self, plan: Plan) -> dict[str, int | float] | None:
        """The parameters nearest to ``plan``: exact for most plans (a stage's weight is recovered from its
        share of the cut units and its TP degree; rounding may move a cut by one unit)."""
        if not plan.is_layered or plan.pp > self.max_pp or any(s.tp not in self.tps for s in plan.stages):
            return None
        starts = self.units.starts
        sizes = []
        for stage in plan.stages:
            lo, hi = stage.layers or (0, -1)
            sizes.append(sum(1 for u in starts if lo <= u <= hi))
        if any(size < 1 for size in sizes):
            return None
        raw = [(size - 0.5) / s.tp for size, s in zip(sizes, plan.stages, strict=True)]
        mean = math.exp(sum(math.log(r) for r in raw) / len(raw))
        params: dict[str, int | float] = {"stages": plan.pp}
        for s in range(self.max_pp):
            stage = plan.stages[min(s, plan.pp - 1)]
            params[f"tp_{s}"] = self.tps.index(stage.tp)
            w = raw[s] / mean if s < plan.pp else 1.0
            params[f"w_{s}"] = min(WEIGHT_RANGE[1], max(WEIGHT_RANGE[0], w))
            if self.train:
                params[f"recompute_{s}"] = int(stage.recompute)
        params["replicas"] = max(i for i, r in enumerate(self.replica_choices) if r <= plan.replicas)
        params["micro_batches"] = max(i for i, m in enumerate(self.micro_choices) if m <= plan.micro_batches)
        return params

    def warm_start(self) -> list[dict[str, int | float]]:
        out: list[dict[str, int | float]] = []
        for ti, pp, ri, mi in self._grid(self.tps, self.max_pp):
            for rc in (0, 1) if self.train else (0,):
                params: dict[str, int | float] = {"stages": pp, "replicas": ri, "micro_batches": mi}
                for s in range(self.max_pp):
                    params.update({f"tp_{s}": ti, f"w_{s}": 1.0, **({f"recompute_{s}": rc} if self.train else {})})
                out.append(params)
        return out

    def describe(self) -> str:
        return f"hybrid space: 1..{self.max_pp} stages over {len(self.units)} cut units, TP per stage {self.tps}"


class PlacementSpace(Space):
    """A device group per task, for any DAG; priced by the simulator.

    One TP degree per trial; the devices of a replica form ``devices // tp`` groups
    and each task draws one (a categorical). The groups used become the stages, in
    the topological order of their first task, on contiguous devices from 0 (so
    replicas never collide and pipeline neighbours sit side by side). The menu is
    sized for small instances: one parameter per task, among at most
    :data:`MAX_PLACEMENT_GROUPS` groups; tasks x groups is bounded by
    ``_limits.MAX_PLACEMENT_CHOICES`` (65,536 devices made 65,536 choices per task, 0.75 s and
    megabytes per trial on 25 tasks).
    """

    name = "placement"
    GLOBALS = ("tp", "replicas", "micro_batches")

    def __init__(self, problem: Problem, *, ordinal_only: bool = False) -> None:
        super().__init__(problem, ordinal_only=ordinal_only)
        self.graph = problem.graph(problem.granularity)
        self.order = list(nx.topological_sort(self.graph.nx))
        self.position = {t: i for i, t in enumerate(self.order)}
        self.tps = problem.tp_degrees()
        self.max_groups = min(problem.max_devices, MAX_PLACEMENT_GROUPS)
        choices = len(self.order) * self.max_groups
        if choices > MAX_PLACEMENT_CHOICES:
            raise ValueError(
                f"space 'placement': {len(self.order):,} tasks x {self.max_groups} device groups make {choices:,} "
                f"choices per trial; at most {MAX_PLACEMENT_CHOICES:,} (see {DOC}): use a coarser granularity "
                "or space 'hybrid'"
            )

    def suggest(self, trial: Trial) -> Plan:
        tp = self.tps[self._index(trial, "tp", len(self.tps))]
        n_groups = self.problem.max_devices // tp
        members: dict[int, list[str]] = {}
        for i, task in enumerate(self.order):
            g = self._index(trial, f"group_{i}", self.max_groups, nominal=True)
            members.setdefault(g * n_groups // self.max_groups, []).append(task)
        ordered = sorted(members.values(), key=lambda tasks: self.position[tasks[0]])
        replicas, micro = self._replicas_micro(trial, tp * len(ordered))
        stages = tuple(
            Stage(tp=tp, devices=tuple(range(s * tp, (s + 1) * tp)), tasks=tuple(tasks))
            for s, tasks in enumerate(ordered)
        )
        return Plan(stages, self.problem.granularity, micro, replicas)

    def describe(self) -> str:
        return f"placement space: {len(self.order)} tasks, up to {self.max_groups} device groups, TP {self.tps}"


def default_granularities(problem: Problem) -> list[str]:
    """``layer`` plus ``layers:2`` / ``layers:4`` where they divide the layers into at least two units."""
    n = problem.n_layers
    return ["layer"] + [f"layers:{k}" for k in (2, 4) if n % k == 0 and n // k >= 2]


def make_space(
    name: str | None,
    problem: Problem,
    *,
    ordinal_only: bool = False,
    granularities: Sequence[str] | None = None,
    max_stages: int | None = None,
    techniques: str = "off",
) -> Space:
    """The space ``name`` (None: ``hybrid`` for layered graphs, ``placement`` otherwise) for ``problem``.

    ``techniques="search"`` adds the plan-wide training techniques (:mod:`._techniques`) to the
    layered spaces; the placement space (priced by the simulator) keeps plans without them.
    """
    if name is None:
        name = "hybrid" if problem.graph(problem.granularity).is_layered else "placement"
    if name == "uniform":
        return UniformSpace(problem, ordinal_only=ordinal_only, granularities=granularities, techniques=techniques)
    if name == "hybrid":
        return HybridSpace(problem, ordinal_only=ordinal_only, max_stages=max_stages, techniques=techniques)
    if name == "placement":
        if techniques != "off":
            raise ValueError("option 'techniques' applies to the layered spaces (uniform, hybrid), not to 'placement'")
        return PlacementSpace(problem, ordinal_only=ordinal_only)
    raise ValueError(f"unknown search space {name!r}; allowed: {', '.join(SPACES)}")
