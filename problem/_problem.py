"""A tuning problem: graph + platform + phase + workload shape + objective + limits.

Problems are plain values (they can be written to YAML and read back, for the
scenario suite and campaigns); graphs, evaluators and simulators are built
lazily and cached per granularity, so a tuner that visits many granularities
pays for each one once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._limits import MAX_BATCH, MAX_DEVICES, MAX_SEQ, check_at_most, check_workload, is_finite_number
from ..costmodel import AnalyticEvaluator, Metrics, Plan, Platform, Simulator, get_platform
from ..costmodel._fields import FieldReader, load_yaml
from ..graphs import PHASES, Phase, TaskGraph, load_graph, parse_granularity
from ._objective import DEFAULT_OBJECTIVE, Objective, get_objective

GIB = 1024**3


class LimitsError(ValueError):
    """A limit that contradicts the platform (``max_devices`` above its device count); the message names the field."""


@dataclass(frozen=True)
class Limits:
    """Constraints a plan must meet besides fitting in device memory.

    ``memory_gib`` caps memory per device below the device's usable memory (tight
    limits make hybrid plans matter); ``tbt_ms`` / ``ttft_ms`` are latency SLOs
    (useful with the ``throughput`` objective); ``max_devices`` caps the devices
    used; ``calibrated_only`` rejects plans whose prediction leaves the range the
    calibration profile was fitted on (``Metrics.calibrated``).
    """

    memory_gib: float | None = None
    tbt_ms: float | None = None
    ttft_ms: float | None = None
    max_devices: int | None = None
    calibrated_only: bool = False

    def __post_init__(self) -> None:
        """Refuse what no plan could meet or what would poison the scores: 0, negatives, NaN, infinities."""
        for name in ("memory_gib", "tbt_ms", "ttft_ms"):
            value = getattr(self, name)
            if value is None:
                continue
            if not is_finite_number(value):
                raise ValueError(f"field 'limits.{name}' must be a finite number, got {value!r}")
            if value <= 0:
                raise ValueError(f"field 'limits.{name}' must be > 0, got {value}")
        if self.max_devices is not None:
            if isinstance(self.max_devices, bool) or not isinstance(self.max_devices, int):
                raise ValueError(f"field 'limits.max_devices' must be an integer, got {self.max_devices!r}")
            if self.max_devices < 1:
                raise ValueError(f"field 'limits.max_devices' must be >= 1, got {self.max_devices}")
            check_at_most(self.max_devices, MAX_DEVICES, "field 'limits.max_devices'")
        if not isinstance(self.calibrated_only, bool):
            raise ValueError(f"field 'limits.calibrated_only' must be true or false, got {self.calibrated_only!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, False)}


@dataclass(frozen=True)
class Evaluation:
    """A plan, its metrics, and how it scores on a problem.

    ``constraints`` follow Optuna's convention: one value per constraint, <= 0 when
    met (memory over capacity, SLO over bound, devices over cap, as fractions; 1
    for an invalid plan); ``violations`` says the same in words.
    """

    plan: Plan
    metrics: Metrics
    feasible: bool
    values: tuple[float, ...]
    constraints: tuple[float, ...]
    violations: tuple[str, ...]

    @property
    def value(self) -> float:
        return self.values[0]


@dataclass
class Problem:
    """What to tune: ``model`` on ``platform`` for ``phase`` at one workload shape, for ``objective``.

    ``model`` is any graph source (zoo name with overrides, YAML, saved graph, ``hf:``);
    ``platform`` a preset name (``dgx-h100x8``), overrides or a YAML file. ``granularity``
    is the default task granularity (tuners such as ``optuna-*`` with the ``uniform``
    space may visit others).

    Example:
        >>> p = Problem("llama2-7b", "dgx-a100", phase="decode", batch=8, context=1024, objective="tbt")
        >>> p.evaluate(Plan.uniform(32, tp=2)).feasible
        True
    """

    model: str
    platform: str
    phase: str = "decode"
    objective: str = ""
    batch: int = 1
    seq: int = 2048
    context: int = 0
    granularity: str = "layer"
    limits: Limits = field(default_factory=Limits)
    name: str = ""
    _graphs: dict[str, TaskGraph] = field(default_factory=dict, init=False, repr=False, compare=False)
    _evaluators: dict[str, AnalyticEvaluator] = field(default_factory=dict, init=False, repr=False, compare=False)
    _simulators: dict[str, Simulator] = field(default_factory=dict, init=False, repr=False, compare=False)
    _platform: Platform | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"problem: field 'phase' is {self.phase!r}; allowed: {', '.join(PHASES)}")
        if not self.objective:
            self.objective = DEFAULT_OBJECTIVE[self.phase]
        get_objective(self.objective, self.phase)
        parse_granularity(self.granularity)
        check_workload(self.batch, self.seq, self.context, "problem")
        for key in ("batch", "seq"):
            if getattr(self, key) < 1:
                raise ValueError(f"problem: field '{key}' must be >= 1, got {getattr(self, key)}")
        if self.context < 0:
            raise ValueError(f"problem: field 'context' must be >= 0, got {self.context}")
        if self.phase == Phase.DECODE and self.context < 1:
            self.context = self.seq
        if not self.name:
            self.name = f"{self.model}@{self.platform}:{self.phase}:{self.objective}"

    # -- what the problem is made of ---------------------------------------
    @property
    def resolved_objective(self) -> Objective:
        return get_objective(self.objective, self.phase)

    @property
    def resolved_platform(self) -> Platform:
        if self._platform is None:
            platform = get_platform(self.platform)
            cap = self.limits.max_devices
            if cap is not None and cap > platform.num_devices:
                raise LimitsError(
                    f"field 'limits.max_devices' is {cap} but platform {self.platform!r} has "
                    f"{platform.num_devices} devices; give at most {platform.num_devices} (or leave it out)"
                )
            self._platform = platform
        return self._platform

    @property
    def memory_limit_bytes(self) -> float:
        """Memory a device may use: the device's usable memory, or the tighter ``limits.memory_gib``."""
        usable = self.resolved_platform.device.usable_memory
        if self.limits.memory_gib is None:
            return usable
        return min(usable, self.limits.memory_gib * GIB)

    @property
    def max_devices(self) -> int:
        n = self.resolved_platform.num_devices
        return n if self.limits.max_devices is None else min(n, self.limits.max_devices)

    def graph(self, granularity: str | None = None) -> TaskGraph:
        g = granularity or self.granularity
        if g not in self._graphs:
            if "op" not in self._graphs:
                self._graphs["op"] = load_graph(
                    self.model, phase=self.phase, batch=self.batch, seq=self.seq, context=self.context
                )
            if g != "op":
                from ..graphs import coarsen

                self._graphs[g] = coarsen(self._graphs["op"], g)
        return self._graphs[g]

    def evaluator(self, granularity: str | None = None) -> AnalyticEvaluator:
        g = granularity or self.granularity
        if g not in self._evaluators:
            self._evaluators[g] = AnalyticEvaluator(self.graph(g), self.resolved_platform)
        return self._evaluators[g]

    def simulator(self, granularity: str | None = None) -> Simulator:
        g = granularity or self.granularity
        if g not in self._simulators:
            self._simulators[g] = Simulator(self.graph(g), self.resolved_platform)
        return self._simulators[g]

    @property
    def n_layers(self) -> int:
        return self.graph().meta.n_layers

    @property
    def heads(self) -> int:
        return self.graph().meta.heads

    def tp_degrees(self) -> list[int]:
        """TP degrees a stage may use: divisors of the heads up to one node (TP across nodes is never worth it)."""
        limit = min(self.heads, self.resolved_platform.devices_per_node, self.max_devices)
        return [t for t in range(1, limit + 1) if self.heads % t == 0]

    # -- scoring --------------------------------------------------------------
    def evaluate(self, plan: Plan) -> Metrics:
        """Metrics of ``plan``: the analytic evaluator for layer ranges on layered graphs, else the simulator."""
        graph = self.graph(plan.granularity)
        if plan.is_layered and graph.is_layered:
            return self.evaluator(plan.granularity).evaluate(plan)
        problems = plan.problems(graph, self.resolved_platform)
        if problems:
            return Metrics(False, "invalid plan: " + "; ".join(problems), self.phase, float("inf"))
        return self.simulator(plan.granularity).evaluate(plan)

    def score(self, plan: Plan, metrics: Metrics | None = None) -> Evaluation:
        """Evaluate ``plan`` (unless ``metrics`` are given) and check it against the limits."""
        m = metrics if metrics is not None else self.evaluate(plan)
        obj = self.resolved_objective
        if m.reason.startswith("invalid plan") or m.latency_s == float("inf"):
            bad = tuple(float("nan") for _ in obj.directions)
            return Evaluation(plan, m, False, bad, (1.0, 1.0, 1.0, 1.0, 1.0), (m.reason,))
        limit = self.memory_limit_bytes
        lim = self.limits
        checks = [
            (
                m.max_memory_bytes / limit - 1.0,
                f"peak memory {m.max_memory_bytes / GIB:.1f} GiB > {limit / GIB:.1f} GiB",
            ),
            (_over(m.tbt_s, lim.tbt_ms), f"TBT {1e3 * (m.tbt_s or 0):.2f} ms > SLO {lim.tbt_ms} ms"),
            (_over(m.ttft_s, lim.ttft_ms), f"TTFT {1e3 * (m.ttft_s or 0):.1f} ms > SLO {lim.ttft_ms} ms"),
            (m.devices_used / self.max_devices - 1.0, f"uses {m.devices_used} devices > {self.max_devices}"),
            (0.0 if m.calibrated or not lim.calibrated_only else 1.0, "outside the calibrated range"),
        ]
        constraints = tuple(c for c, _ in checks)
        violations = tuple(text for c, text in checks if c > 0)
        return Evaluation(plan, m, not violations, obj.values(m), constraints, violations)

    # -- reading and writing ----------------------------------------------------
    def with_(self, **changes: Any) -> Problem:
        """A copy with some fields changed (caches are not shared)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "platform": self.platform,
            "phase": self.phase,
            "objective": self.objective,
            "batch": self.batch,
            "seq": self.seq,
            "context": self.context,
            "granularity": self.granularity,
        }
        limits = self.limits.to_dict()
        if limits:
            out["limits"] = limits
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "problem") -> Problem:
        """Read a problem (a scenario); every error names ``where`` and the field."""
        r = FieldReader(data, where)
        limits = Limits()
        if r.has("limits"):
            lr = r.child("limits")
            only = lr.raw("calibrated_only", False)
            if not isinstance(only, bool):
                raise lr.error("calibrated_only", f"must be true or false, got {only!r}")
            limits = Limits(
                memory_gib=_opt(lr, "memory_gib", lr.number),
                tbt_ms=_opt(lr, "tbt_ms", lr.number),
                ttft_ms=_opt(lr, "ttft_ms", lr.number),
                max_devices=_opt(lr, "max_devices", lr.integer),
                calibrated_only=only,
            )
            lr.finish()
        kwargs: dict[str, Any] = dict(
            model=r.text("model"),
            platform=r.text("platform"),
            phase=r.text("phase", "decode", choices=PHASES),
            objective=r.text("objective", ""),
            batch=r.integer("batch", 1, minimum=1, maximum=MAX_BATCH),
            seq=r.integer("seq", 2048, minimum=1, maximum=MAX_SEQ),
            context=r.integer("context", 0, minimum=0, maximum=MAX_SEQ),
            granularity=r.text("granularity", "layer"),
            name=r.text("name", ""),
            limits=limits,
        )
        r.raw("description", None)
        r.finish()
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Problem:
        return cls.from_dict(load_yaml(Path(path)), where=str(path))


def _over(value: float | None, bound_ms: float | None) -> float:
    if bound_ms is None or value is None:
        return 0.0
    return value * 1e3 / bound_ms - 1.0


def _opt(r: FieldReader, name: str, read: Any) -> Any:
    if r.raw(name, None) is None:  # marks the field as known, so typos list it among the allowed
        return None
    if read == r.integer:
        return read(name, minimum=1, maximum=MAX_DEVICES)
    return read(name, positive=True)
