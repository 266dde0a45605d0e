"""Deployment search for serving: the most output tokens/s per GPU under TTFT / TPOT targets, and the Pareto front.

The question operators ask (NVIDIA AIConfigurator's, DistServe's): given a model, GPUs, a traffic shape and
service-level objectives, which deployment serves the most tokens per second per GPU, and what does the trade-off
between tokens/s per GPU and tokens/s per user look like.

How it searches (exhaustive over a grid, so the answer is the optimum *of that grid*, and says so):

1. **Capacity of an instance.** For each instance shape (TP, PP, batch cap, token budget), the largest load (Poisson
   rate, or concurrency for a closed loop) at which one instance is not saturated and meets the SLO, by doubling then
   geometric bisection. Meeting the SLO is assumed monotone in the load (more load never lowers a latency
   percentile), which both evaluators satisfy.
2. **Aggregated**: replicas of the best instance shapes fill the GPU budget (no rate given: tokens/s/GPU is the
   instance's) or the fewest replicas that carry the traffic's rate.
3. **Disaggregated**: prefill and decode sides are sized apart (TTFT is the prefill side's and the KV transfer's,
   TPOT the decode side's), each side's capacity measured with the other side made ample, then every pair and every
   ratio x:y of instances within the budget is scored by min(x·cap_prefill, y·cap_decode) per GPU; the best
   pairs are re-checked as whole deployments.
4. **Pareto fronts**: every candidate at its capacity and at lighter loads: tokens/s/GPU against tokens/s/user, and
   against TTFT.

With a planning headroom (``slo_margin``, :mod:`paratune.serving._margin`) every "within the SLO" above means: at
the load x (1 + margin), within SLO / (1 + margin), so the choice survives steps that much slower than priced.

The evaluator is a parameter: the analytic steady-state model by default (thousands of evaluations a second), the
request-level simulator to check the chosen deployment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._limits import MAX_DEVICES, MAX_SEQ
from ..costmodel import Platform
from ..costmodel._fields import FieldReader
from ..graphs import ModelSpec, get_model
from ..serving import ENGINES, Deployment, IterationCost, Lengths, Pool, ServingMetrics, Slo, Traffic, instance_cost
from ..serving import analytic as analytic_model
from ..serving._margin import MAX_MARGIN_PCT, Margins, SloMargin, check_margin, deployment_margins

Evaluate = Callable[[Deployment, Traffic, Mapping[str, IterationCost], Slo | None], ServingMetrics]

#: Most values of an ``empirical`` length distribution read from a mapping; most closed-loop users.
MAX_LENGTH_VALUES = 1_000_000
MAX_CONCURRENCY = 1 << 20
#: Loads, as fractions of a candidate's capacity, at which the Pareto fronts sample it.
FRONT_LOADS: tuple[float, ...] = (1.0, 0.5, 0.25)
#: Disaggregated pairs re-checked as whole deployments after the per-side sizing.
RECHECK = 8
#: Replicas that make one side of a disaggregated deployment ample while the other side's capacity is measured.
AMPLE = 64


@dataclass(frozen=True)
class ServingSpace:
    """The grid searched: instance shapes and the deployment modes."""

    tp: tuple[int, ...]
    pp: tuple[int, ...] = (1, 2, 4)
    max_num_seqs: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    max_batched_tokens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)
    modes: tuple[str, ...] = ("agg", "disagg")

    @classmethod
    def default(cls, spec: ModelSpec, platform: Platform, gpus: int) -> ServingSpace:
        """TP degrees dividing the heads, up to one NVLink domain (72 on NVL72) and the budget; PP up to 4."""
        limit = min(gpus, platform.devices_per_node, spec.heads)
        tps = tuple(t for t in (1, 2, 4, 8, 16, 32, 64) if t <= limit and spec.heads % t == 0)
        pps = tuple(p for p in (1, 2, 4) if p <= gpus and spec.layers >= p)
        return cls(tp=tps, pp=pps)

    def size(self) -> int:
        return len(self.tp) * len(self.pp) * len(self.max_num_seqs) * len(self.max_batched_tokens)


@dataclass(frozen=True)
class ServingProblem:
    """A serving question as one value: model, platform, traffic, SLO, GPU budget, engine and dtypes.

    ``carry``: the traffic's load must be carried (else every deployment runs at its capacity). What the RL
    environment draws episodes from, and what a benchmark or a campaign names.
    """

    model: str
    platform: str
    traffic: Traffic
    slo: Slo | None = None
    gpus: int = 8
    engine: str = "vllm"
    dtype: str = "bf16"
    kv_dtype: str = "bf16"
    carry: bool = False
    name: str = ""
    modes: tuple[str, ...] = ("agg", "disagg")
    #: Planning headroom (:mod:`paratune.serving._margin`): "auto" or a percent; 0 plans at the SLO itself, what
    #: a problem written before the field means.
    slo_margin: SloMargin = 0.0

    def __post_init__(self) -> None:
        if not self.modes or any(m not in ("agg", "disagg") for m in self.modes):
            raise ValueError(f"modes {list(self.modes)}; allowed: agg, disagg (one or both)")
        object.__setattr__(self, "slo_margin", check_margin(self.slo_margin))

    def resolved_platform(self) -> Platform:
        from ..costmodel import get_platform

        return get_platform(self.platform)

    def spec(self) -> ModelSpec:
        return get_model(self.model)

    def target(self) -> float | None:
        if not self.carry:
            return None
        return self.traffic.rate if self.traffic.rate is not None else self.traffic.concurrency

    def evaluator(self, evaluate: Evaluate | None = None) -> Evaluator:
        proto = Deployment((Pool(),), engine=self.engine, dtype=self.dtype, kv_dtype=self.kv_dtype)
        return Evaluator(
            self.model, self.resolved_platform(), self.traffic, self.slo, gpus=self.gpus, target=self.target(),
            proto=proto, evaluate=evaluate or analytic_model, slo_margin=self.slo_margin,
        )  # fmt: skip

    def space(self) -> ServingSpace:
        """The default grid of this problem's model, platform and budget, in its modes."""
        return replace(ServingSpace.default(self.spec(), self.resolved_platform(), self.gpus), modes=self.modes)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (JSON / YAML) that :meth:`from_dict` reads back."""
        t = self.traffic
        return {
            "name": self.name,
            "model": self.model,
            "platform": self.platform,
            "prompt": asdict(t.prompt),
            "output": asdict(t.output),
            "rate": t.rate,
            "concurrency": t.concurrency,
            "slo": None if self.slo is None else asdict(self.slo),
            "gpus": self.gpus,
            "engine": self.engine,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "carry": self.carry,
            "modes": list(self.modes),
            "slo_margin": self.slo_margin,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "serving problem") -> ServingProblem:
        """Read :meth:`to_dict`'s mapping; errors name the field."""
        r = FieldReader(data, where)

        def lengths(name: str) -> Lengths:
            raw = r.child(name)
            values = raw.raw("values", [])
            if not isinstance(values, list | tuple) or len(values) > MAX_LENGTH_VALUES:
                raise raw.error("values", f"must be a list of at most {MAX_LENGTH_VALUES:,} token counts")
            try:
                return Lengths(
                    kind=raw.text("kind", "fixed"),
                    mean=raw.number("mean", positive=True),
                    low=raw.integer("low", 1, minimum=1),
                    high=raw.integer("high", MAX_SEQ, minimum=1, maximum=MAX_SEQ),
                    sigma=raw.number("sigma", 0.0, minimum=0.0),
                    values=tuple(int(v) for v in values),
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: field '{name}': {exc}") from None

        prompt, output = lengths("prompt"), lengths("output")
        rate = r.raw("rate", None)
        concurrency = r.raw("concurrency", None)
        rate = None if rate is None else r.number("rate", positive=True)
        concurrency = None if concurrency is None else r.integer("concurrency", minimum=1, maximum=MAX_CONCURRENCY)
        slo = None
        if r.raw("slo", None) is not None:
            s = r.child("slo")
            ttft = s.raw("ttft_ms", None)
            tpot = s.raw("tpot_ms", None)
            slo = Slo(
                ttft_ms=None if ttft is None else s.number("ttft_ms", positive=True),
                tpot_ms=None if tpot is None else s.number("tpot_ms", positive=True),
                percentile=s.number("percentile", 90.0, positive=True, maximum=99.99),
            )
            s.finish()
        try:
            traffic = Traffic(prompt, output, rate=rate, concurrency=concurrency)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        problem = cls(
            model=r.text("model"),
            platform=r.text("platform"),
            traffic=traffic,
            slo=slo,
            gpus=r.integer("gpus", 8, minimum=1, maximum=MAX_DEVICES),
            engine=r.text("engine", "vllm", choices=ENGINES),
            dtype=r.text("dtype", "bf16", choices=("bf16", "fp16", "fp8")),
            kv_dtype=r.text("kv_dtype", "bf16", choices=("bf16", "fp16", "fp8")),
            carry=bool(r.raw("carry", False) is True),
            name=r.text("name", ""),
            modes=_modes(r),
            slo_margin=_margin(r),
        )
        r.finish()
        return problem


@dataclass(frozen=True)
class Candidate:
    """A deployment with its metrics at ``load`` (requests/s, or requests in flight for a closed loop)."""

    deployment: Deployment
    metrics: ServingMetrics
    load: float

    def to_dict(self) -> dict[str, Any]:
        return {"deployment": self.deployment.to_dict(), "load": self.load, "metrics": self.metrics.to_dict()}


@dataclass
class ServingSearchResult:
    """The best deployment (None when nothing meets the SLO), the fronts, and how much was evaluated."""

    best: Candidate | None
    front: list[Candidate]  # tokens/s/GPU against tokens/s/user, both maximised
    ttft_front: list[Candidate]  # tokens/s/GPU maximised against TTFT (the SLO's percentile) minimised
    evaluations: int
    wall_s: float
    space: ServingSpace
    reason: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    #: The headroom asked for ("auto" or a percent) and what it gave the best deployment (ttft_pct, tpot_pct,
    #: source, planning_slo); None without an SLO or a best deployment.
    slo_margin: SloMargin = 0.0
    margins: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": None if self.best is None else self.best.to_dict(),
            "slo_margin": {"requested": self.slo_margin, **(self.margins or {})},
            "pareto_front": [c.to_dict() for c in self.front],
            "ttft_front": [c.to_dict() for c in self.ttft_front],
            "evaluations": self.evaluations,
            "wall_s": self.wall_s,
            "reason": self.reason,
            "skipped": dict(self.skipped),
            "space": {
                "tp": list(self.space.tp),
                "pp": list(self.space.pp),
                "max_num_seqs": list(self.space.max_num_seqs),
                "max_batched_tokens": list(self.space.max_batched_tokens),
                "modes": list(self.space.modes),
            },
        }


class Evaluator:
    """Evaluations of one search: the model, platform, traffic, SLO and budget fixed; instance costs cached by shape.

    It counts its calls (the figure searches are compared by), and holds the steps every tuner of this space shares:
    the capacity of a deployment, an aggregated candidate, the capacity of one side of a disaggregated deployment
    and the best prefill:decode ratio of a pair.
    """

    def __init__(
        self,
        model: str | ModelSpec,
        platform: Platform,
        traffic: Traffic,
        slo: Slo | None,
        *,
        gpus: int,
        target: float | None,
        proto: Deployment,
        evaluate: Evaluate = analytic_model,
        fill_budget: bool = False,
        slo_margin: SloMargin = 0.0,
    ) -> None:
        self.model, self.platform, self.traffic, self.slo = model, platform, traffic, slo
        self.gpus, self.target, self.proto, self.evaluate = gpus, target, proto, evaluate
        self.fill_budget = fill_budget  # rank per GPU of the budget (idle GPUs count): see search_deployments
        #: Headroom below the SLO every check plans with (``slo`` stays the user's targets).
        self.slo_margin = check_margin(slo_margin)
        self.calls = 0
        self.skipped: dict[str, int] = {}
        self._costs: dict[Pool, IterationCost | None] = {}
        self._sides: dict[tuple[Pool, Pool], float | None] = {}
        self._margins: dict[tuple[Pool, ...], Margins] = {}

    def deployment(self, *pools: Pool) -> Deployment:
        return replace(self.proto, pools=pools)

    def cost(self, pool: Pool) -> IterationCost | None:
        key = replace(pool, replicas=1)
        if key not in self._costs:
            try:
                self._costs[key] = instance_cost(self.model, self.platform, key, self.proto)
            except ValueError as exc:
                reason = str(exc).split(":")[0][:80]
                self.skipped[reason] = self.skipped.get(reason, 0) + 1
                self._costs[key] = None
        return self._costs[key]

    def costs(self, deployment: Deployment) -> dict[str, IterationCost] | None:
        out: dict[str, IterationCost] = {}
        for pool in deployment.pools:
            c = self.cost(pool)
            if c is None:
                return None
            out[pool.role] = c
        return out

    def margins(self, deployment: Deployment, costs: Mapping[str, IterationCost] | None = None) -> Margins | None:
        """The headroom ``deployment`` is planned with (per shape: replicas do not change a step's error)."""
        key = tuple(replace(p, replicas=1) for p in deployment.pools)
        hit = self._margins.get(key)
        if hit is None:
            costs = costs if costs is not None else self.costs(deployment)
            if costs is None:
                return None
            hit = self._margins[key] = deployment_margins(self.slo_margin, deployment, dict(costs), self.traffic)
        return hit

    def planning_slo(self, deployment: Deployment, costs: Mapping[str, IterationCost] | None = None) -> Slo | None:
        """The targets ``deployment`` must meet: the SLO's, each divided by 1 + its margin."""
        if self.slo is None or self.slo_margin == 0.0:
            return self.slo
        margins = self.margins(deployment, costs)
        return self.slo if margins is None else margins.planning(self.slo)

    def load_factor(self, deployment: Deployment, costs: Mapping[str, IterationCost] | None = None) -> float:
        """How much more load the headroom check runs ``deployment`` at: 1 + its larger margin (open loop).

        Every step ``e`` slower at load L is the model's steps at load L (1 + e) with every time (1 + e) longer
        (time dilation): the check at L (1 + e) against SLO / (1 + e) is then exact for a uniform error. A closed
        loop dilates at the same users. No SLO, no margin.
        """
        if self.slo is None or self.slo_margin == 0.0 or self.traffic.concurrency is not None:
            return 1.0
        margins = self.margins(deployment, costs)
        return 1.0 if margins is None else 1.0 + max(margins.ttft_pct, margins.tpot_pct) / 100.0

    def at(self, deployment: Deployment, load: float) -> ServingMetrics | None:
        """The metrics at ``load``; with a margin, ``meets_slo`` is the headroom check's (:meth:`ok`)."""
        costs = self.costs(deployment)
        if costs is None:
            return None
        m = self._evaluate(deployment, load, costs)
        factor = self.load_factor(deployment, costs)
        if factor > 1.0 and m.meets_slo is not False:
            check = self._evaluate(deployment, load * factor, costs)
            m = replace(m, meets_slo=check.meets_slo is not False and not check.saturated)
        return m

    def _evaluate(self, deployment: Deployment, load: float, costs: Mapping[str, IterationCost]) -> ServingMetrics:
        self.calls += 1
        return self.evaluate(deployment, with_load(self.traffic, load), costs, self.planning_slo(deployment, costs))

    def ok(self, deployment: Deployment, load: float) -> ServingMetrics | None:
        """The metrics at ``load`` when the deployment sustains it within the SLO, else None.

        With a margin (:mod:`paratune.serving._margin`), within it: the deployment must also sustain
        ``load`` x :meth:`load_factor` within the planning targets, checked first (the cheaper answer when it fails).
        """
        costs = self.costs(deployment)
        if costs is None:
            return None
        factor = self.load_factor(deployment, costs)
        if factor > 1.0:
            check = self._evaluate(deployment, load * factor, costs)
            if check.saturated or check.meets_slo is False:
                return None
        m = self._evaluate(deployment, load, costs)
        if m.saturated or (self.slo is not None and m.meets_slo is False):
            return None
        return m

    def capacity(self, deployment: Deployment) -> Candidate | None:
        """The largest load the deployment sustains within the SLO (doubling, then geometric bisection).

        A closed loop's load is its users: past the deployment's caps more users only wait (the throughput stops
        growing), and without a latency target nothing would stop the doubling, so its capacity is the fewest
        users that reach the most throughput (more than 0.1% gained per step).
        """
        closed = self.traffic.concurrency is not None
        load = 1.0
        m = self.ok(deployment, load)
        if m is None:
            for _ in range(24):  # down to ~1e-7 requests/s: below that the SLO is unreachable at any load
                if closed:
                    return None
                load /= 4.0
                m = self.ok(deployment, load)
                if m is not None:
                    break
            else:
                return None
        lo_load, best = load, m
        hi_load = lo_load
        for _ in range(40):
            hi_load = lo_load * 2.0
            m = self.ok(deployment, hi_load)
            if m is None or (closed and not _more(m, best)):
                break
            lo_load, best = hi_load, m
        else:
            raise ValueError(f"deployment {deployment.to_dict()} sustains over 2^40 times the starting load")
        for _ in range(8 if not closed else 20):
            mid = math.sqrt(lo_load * hi_load) if not closed else float(int((lo_load + hi_load) / 2))
            if closed and mid <= lo_load:
                break
            m = self.ok(deployment, mid)
            if m is None or (closed and not _more(m, best)):
                hi_load = mid
            else:
                lo_load, best = mid, m
        assert best is not None
        return Candidate(deployment, best, lo_load)

    def aggregated(self, pool: Pool) -> Candidate | None:
        """One instance shape, aggregated: its capacity, then replicas filling the budget or carrying the target."""
        cap = self.capacity(self.deployment(replace(pool, replicas=1)))
        if cap is None:
            return None
        most = self.gpus // pool.gpus_per_instance
        if most < 1:
            return None
        if self.target is None:
            dep = self.deployment(replace(pool, replicas=most))
            m = self.at(dep, cap.load * most)
            return None if m is None else Candidate(dep, m, cap.load * most)
        replicas = math.ceil(self.target / cap.load - 1e-9)
        if replicas > most:
            return None
        dep = self.deployment(replace(pool, replicas=replicas))
        m = self.at(dep, self.target)
        return None if m is None else Candidate(dep, m, self.target)

    def side_capacity(self, pool: Pool, ample: Pool) -> float | None:
        """Load one instance of ``pool`` (one side of a disaggregated deployment) sustains, the other side ample."""
        key = (pool, ample)
        if key not in self._sides:
            pools = (
                (pool, replace(ample, replicas=AMPLE))
                if pool.role == "prefill"
                else (replace(ample, replicas=AMPLE), pool)
            )
            cap = self.capacity(self.deployment(*pools))
            self._sides[key] = None if cap is None else cap.load
        return self._sides[key]

    def disaggregated(self, prefill: Pool, decode: Pool, x: int, y: int) -> Candidate | None:
        """``x`` prefill and ``y`` decode instances as one deployment: at the target, or at its capacity."""
        dep = self.deployment(replace(prefill, replicas=x), replace(decode, replicas=y))
        if self.target is not None:
            m = self.at(dep, self.target)
            return None if m is None else Candidate(dep, m, self.target)
        return self.capacity(dep)


def _more(m: ServingMetrics, than: ServingMetrics) -> bool:
    """Whether ``m`` serves meaningfully more requests/s than ``than`` (a closed loop's users still pay)."""
    return m.requests_per_s > than.requests_per_s * 1.001


def with_load(traffic: Traffic, load: float) -> Traffic:
    """The traffic's shape at another load: a Poisson rate, or a (whole) concurrency for a closed loop."""
    if traffic.concurrency is not None:
        return replace(traffic, concurrency=max(1, int(load)))
    return replace(traffic, rate=load, concurrency=None)


def instances(space: ServingSpace, role: str, gpus: int) -> list[Pool]:
    """Instance shapes of one role within the budget (the prefill side ignores the batch cap; decode the chunk)."""
    seqs = space.max_num_seqs if role != "prefill" else (max(space.max_num_seqs),)
    chunks = space.max_batched_tokens if role != "decode" else (max(space.max_batched_tokens),)
    pools = []
    for tp in space.tp:
        for pp in space.pp:
            if tp * pp > gpus:
                continue
            for s in seqs:
                for c in chunks:
                    pools.append(Pool(role, tp=tp, pp=pp, max_num_seqs=s, max_batched_tokens=c))
    return pools


def search_deployments(
    model: str | ModelSpec,
    platform: Platform,
    traffic: Traffic,
    slo: Slo | None,
    *,
    gpus: int,
    engine: str = "vllm",
    dtype: str = "bf16",
    kv_dtype: str = "bf16",
    carry: bool = False,
    space: ServingSpace | None = None,
    evaluate: Evaluate = analytic_model,
    progress: Callable[[str], None] | None = None,
    fill_budget: bool = False,
    slo_margin: SloMargin = 0.0,
) -> ServingSearchResult:
    """The deployment of at most ``gpus`` GPUs with the most output tokens/s per GPU within the SLO, and the fronts.

    ``traffic`` gives the lengths and the kind of arrivals (Poisson rate, or closed-loop concurrency). With
    ``carry`` its load (the rate, or the concurrency) must be carried: each candidate gets the fewest replicas that
    carry it within the SLO, and tokens/s per GPU counts the GPUs used. Without, every candidate runs at its
    capacity and fills the budget with replicas. ``fill_budget``: rank by output tokens/s per GPU of the whole
    budget, idle GPUs counted (AIConfigurator's ``tokens/s/gpu_cluster``: the GPUs are bought, what do they serve),
    rather than per GPU used (idle ones can serve something else); a disaggregated pair then takes the ratio x:y
    that serves the most within the budget. ``slo_margin``: planning headroom, "auto" (the cost model's held-out
    error of each deployment's steps) or a percent; every candidate must meet SLO / (1 + margin)
    (:mod:`paratune.serving._margin`); 0 plans at the SLO itself.
    """
    started = time.perf_counter()
    spec = get_model(model) if isinstance(model, str) else model
    space = space or ServingSpace.default(spec, platform, gpus)
    target = (traffic.rate if traffic.rate is not None else traffic.concurrency) if carry else None
    proto = Deployment((Pool(),), engine=engine, dtype=dtype, kv_dtype=kv_dtype)
    ev = Evaluator(
        model, platform, traffic, slo, gpus=gpus, target=target, proto=proto, evaluate=evaluate,
        fill_budget=fill_budget, slo_margin=slo_margin,
    )  # fmt: skip
    say = progress or (lambda _msg: None)

    candidates: list[Candidate] = []
    if "agg" in space.modes:
        shapes = instances(space, "mixed", gpus)
        say(f"aggregated: {len(shapes)} instance shapes")
        candidates.extend(c for pool in shapes if (c := ev.aggregated(pool)) is not None)
    if "disagg" in space.modes and gpus >= 2:
        candidates.extend(_disaggregated(ev, space, say))
    return finish(ev, candidates, space, started)


def _modes(r: FieldReader) -> tuple[str, ...]:
    raw = r.raw("modes", ["agg", "disagg"])
    if not isinstance(raw, list) or not raw or any(m not in ("agg", "disagg") for m in raw):
        raise r.error("modes", f"must be a list of agg and/or disagg, got {raw!r}")
    return tuple(raw)


def _margin(r: FieldReader) -> SloMargin:
    raw = r.raw("slo_margin", 0.0)
    try:
        return check_margin(raw)
    except ValueError:
        raise r.error("slo_margin", f"must be auto or a percent in 0..{MAX_MARGIN_PCT:g}, got {raw!r}") from None


def finish(ev: Evaluator, candidates: list[Candidate], space: ServingSpace, started: float) -> ServingSearchResult:
    """The best feasible candidate and the fronts, from every candidate a search evaluated."""
    slo, target, gpus = ev.slo, ev.target, ev.gpus
    feasible = [c for c in candidates if not c.metrics.saturated and c.metrics.meets_slo is not False]
    if ev.fill_budget:  # per GPU of the budget: a deployment leaving GPUs idle is worth less
        best = max(feasible, key=lambda c: c.metrics.tokens_per_s_per_gpu * c.deployment.gpus, default=None)
    else:
        best = max(feasible, key=lambda c: c.metrics.tokens_per_s_per_gpu, default=None)
    points = _front_points(ev, feasible)
    reason = ""
    if best is None:
        reason = (
            "no deployment in the grid meets the SLO"
            if slo is not None
            else "no deployment in the grid fits the GPUs and carries the traffic"
        )
        if target is not None:
            reason += f" at {target:g} requests/s within {gpus} GPUs"
    margins = None if best is None or slo is None else ev.margins(best.deployment)
    return ServingSearchResult(
        best=best,
        slo_margin=ev.slo_margin,
        margins=None
        if margins is None or best is None
        else {**margins.to_dict(slo), "load_factor": ev.load_factor(best.deployment)},
        front=pareto(points, lambda c: (c.metrics.tokens_per_s_per_gpu, c.metrics.tokens_per_s_per_user)),
        ttft_front=pareto(
            points,
            lambda c: (c.metrics.tokens_per_s_per_gpu, -c.metrics.ttft_ms[_pkey(slo)]),
        ),
        evaluations=ev.calls,
        wall_s=time.perf_counter() - started,
        space=space,
        reason=reason,
        skipped=ev.skipped,
    )


def _pkey(slo: Slo | None) -> str:
    """The percentile key of the metrics the SLO reads ("p90" by default)."""
    pct = 90.0 if slo is None else slo.percentile
    return f"p{pct:g}"


def ample_shapes(space: ServingSpace, gpus: int) -> tuple[Pool, Pool] | None:
    """The fastest prefill and decode shapes: the other side of a disaggregated deployment while one is measured."""
    prefills, decodes = instances(space, "prefill", gpus - 1), instances(space, "decode", gpus - 1)
    if not prefills or not decodes:
        return None
    return (
        max(prefills, key=lambda p: (p.tp, -p.pp, p.max_batched_tokens)),
        max(decodes, key=lambda d: (d.tp, -d.pp, d.max_num_seqs)),
    )


def _disaggregated(ev: Evaluator, space: ServingSpace, say: Callable[[str], None]) -> list[Candidate]:
    ample = ample_shapes(space, ev.gpus)
    if ample is None:
        return []
    prefills, decodes = instances(space, "prefill", ev.gpus - 1), instances(space, "decode", ev.gpus - 1)
    say(f"disaggregated: {len(prefills)} prefill x {len(decodes)} decode shapes")
    cap_p = {p: load for p in prefills if (load := ev.side_capacity(p, ample[1])) is not None}
    cap_d = {d: load for d in decodes if (load := ev.side_capacity(d, ample[0])) is not None}
    scored: list[tuple[float, Pool, Pool, int, int]] = []
    for p, cp in cap_p.items():
        for d, cd in cap_d.items():
            gp, gd = p.gpus_per_instance, d.gpus_per_instance
            best = best_ratio(gp, cp, gd, cd, ev.gpus, ev.target, fill=ev.fill_budget)
            if best is not None:
                scored.append((best[0], p, d, best[1], best[2]))
    scored.sort(key=lambda s: -s[0])
    return [c for _score, p, d, x, y in scored[:RECHECK] if (c := ev.disaggregated(p, d, x, y)) is not None]


def best_ratio(
    gp: int, cp: float, gd: int, cd: float, gpus: int, target: float | None, *, fill: bool = False
) -> tuple[float, int, int] | None:
    """The instance counts (x prefill, y decode) within ``gpus`` with the most requests/s per GPU (or carrying
    ``target`` with the fewest GPUs), and that figure. ``fill``: per GPU of the budget, idle GPUs counted (the most
    requests/s the budget serves; of equal ones, the fewest GPUs)."""
    if target is not None:
        x, y = math.ceil(target / cp - 1e-9), math.ceil(target / cd - 1e-9)
        used = x * gp + y * gd
        return None if used > gpus else (target / used, x, y)
    if fill:
        filled: tuple[float, int, int] | None = None
        for x in range(1, (gpus - gd) // gp + 1):
            y = min((gpus - x * gp) // gd, max(1, math.ceil(x * cp / cd - 1e-9)))
            per_budget = min(x * cp, y * cd) / gpus
            if filled is None or per_budget > filled[0] * (1 + 1e-9):
                filled = (per_budget, x, y)
        return filled
    best: tuple[float, int, int] | None = None
    for x in range(1, (gpus - gd) // gp + 1):
        ideal = x * cp / cd
        for y in {max(1, math.floor(ideal)), max(1, math.ceil(ideal))}:
            used = x * gp + y * gd
            if used > gpus:
                continue
            per_gpu = min(x * cp, y * cd) / used
            if best is None or per_gpu > best[0] * (1 + 1e-9):
                best = (per_gpu, x, y)
    if best is not None:  # the same ratio repeated to fill the budget: the same figure per GPU, more GPUs used
        per_gpu, x, y = best
        k = gpus // (x * gp + y * gd)
        best = (per_gpu, k * x, k * y)
    return best


def _front_points(ev: Evaluator, feasible: list[Candidate]) -> list[Candidate]:
    """Every feasible candidate at its load and at lighter ones (a lighter load: faster per user, less per GPU)."""
    points = list(feasible)
    closed = ev.traffic.concurrency is not None
    for c in feasible:
        for frac in FRONT_LOADS[1:]:
            load = c.load * frac
            if closed and load < 1:
                continue
            m = ev.ok(c.deployment, load)
            if m is not None:
                points.append(Candidate(c.deployment, m, load))
    return points


def pareto(points: list[Candidate], key: Callable[[Candidate], tuple[float, float]]) -> list[Candidate]:
    """The points no other point beats on both coordinates of ``key`` (both maximised), by the first coordinate."""
    ranked = sorted(points, key=lambda c: (-key(c)[0], -key(c)[1]))
    front: list[Candidate] = []
    best_second = -math.inf
    for c in ranked:
        second = key(c)[1]
        if second > best_second:
            front.append(c)
            best_second = second
    return front


def engine_defaults(engine: str, memory_gib: float) -> tuple[int, int]:
    """(batch cap, token budget) an engine picks when the user sets neither, on a GPU of ``memory_gib``.

    - vLLM (``vllm serve``, V1 engine, ``EngineArgs.get_batch_defaults``): 1024 sequences and 8192 tokens on GPUs
      of at least 70 GiB other than the A100, else 256 and 2048; chunked prefill always on.
    - SGLang (``ServerArgs``): ``--chunked-prefill-size`` 2048 under 35 GiB, 8192 under 160 GiB, 16384 above;
      ``--max-running-requests`` follows the KV pool: the grid's largest cap (1024) stands for it.
    - TensorRT-LLM (``trtllm-serve``): ``--max_batch_size`` 2048 and ``--max_num_tokens`` 8192.
    """
    if engine == "vllm":
        return (1024, 8192) if memory_gib >= 70 else (256, 2048)
    if engine == "sglang":
        return 1024, 2048 if memory_gib < 35 else 8192 if memory_gib < 160 else 16384
    if engine == "trtllm":
        return 2048, 8192
    raise ValueError(f"engine {engine!r}; allowed: vllm, sglang, trtllm")


def default_deployment(
    model: str | ModelSpec,
    platform: Platform,
    *,
    gpus: int,
    engine: str = "vllm",
    dtype: str = "bf16",
    kv_dtype: str = "bf16",
    tp_rule: str = "smallest",
) -> Deployment | None:
    """What a practitioner launches without a search: the engine's defaults, aggregated, replicas filling the GPUs.

    ``tp_rule="smallest"``: the smallest TP (power of two dividing the heads, within a node) whose instance holds the
    weights with room for a KV cache, the usual advice; ``"node"``: the largest TP within one node (one instance per
    node, the serving engines' classic layout). None when no TP fits.
    """
    spec = get_model(model) if isinstance(model, str) else model
    memory_gib = platform.device.memory_bytes / 2**30
    seqs, tokens = engine_defaults(engine, memory_gib)
    tps = ServingSpace.default(spec, platform, gpus).tp
    order = tps if tp_rule == "smallest" else tuple(reversed(tps))
    proto = Deployment((Pool(),), engine=engine, dtype=dtype, kv_dtype=kv_dtype)
    for tp in order:
        pool = Pool("mixed", tp=tp, max_num_seqs=seqs, max_batched_tokens=tokens)
        try:
            cost = instance_cost(model, platform, pool, proto)
        except ValueError:
            continue
        if cost.kv_capacity_tokens <= 0:
            continue
        return replace(proto, pools=(replace(pool, replicas=gpus // tp),))
    return None


#: Requests the simulator serves when it checks a chosen deployment (fewer leave p90 tails noisy near capacity).
VERIFY_REQUESTS = 4000


def verify_with_simulator(
    problem: ServingProblem, candidate: Candidate, *, requests: int = VERIFY_REQUESTS, seed: int = 0, steps: int = 6
) -> tuple[Candidate | None, ServingMetrics]:
    """The candidate replayed request by request; when the simulator says it misses the SLO at the candidate's load,
    the largest load (geometric bisection down to a quarter of it) at which the simulator says it meets it.

    The search prices with the steady-state model, whose latency tails are approximations; the simulator's
    percentiles are measured on ``requests`` requests. Returns (the verified candidate, or None when even a
    quarter of the load misses; the simulator's metrics at the candidate's own load). A carried load is not
    lowered: the verified candidate is then None when the simulator says the target is missed.
    """
    from functools import partial

    from ..serving import simulate

    sim = problem.evaluator(evaluate=partial(simulate, requests=requests, seed=seed))
    at_load = sim.at(candidate.deployment, candidate.load)
    assert at_load is not None
    ok = not at_load.saturated and at_load.meets_slo is not False
    if ok:
        return Candidate(candidate.deployment, at_load, candidate.load), at_load
    if problem.carry:
        return None, at_load
    closed = problem.traffic.concurrency is not None
    lo, hi = candidate.load / 4.0, candidate.load
    best = sim.ok(candidate.deployment, lo)
    if best is None:
        return None, at_load
    for _ in range(steps):
        mid = math.sqrt(lo * hi) if not closed else float(int((lo + hi) / 2))
        if closed and mid <= lo:
            break
        m = sim.ok(candidate.deployment, mid)
        if m is None:
            hi = mid
        else:
            lo, best = mid, m
    return Candidate(candidate.deployment, best, lo), at_load
