"""``dp``: the exact optimum of layered graphs by dynamic programming with Pareto labels and bounds.

The search space is :mod:`._layered_space`'s (the same as ``enumerate``'s). For each
(replicas r, micro-batches m) the plan is built stage by stage over contiguous
devices; what makes it exact, and fast, differs by phase.

**Inference** (prefill, decode). With (r, m) fixed every latency is a monotone
function of S = sum of stage times + hop times and M = the largest stage or hop
time: TTFT = S + (m-1) M, TBT = max(S, m M), prefill pipelined throughput =
tokens / (m M). A stage's time depends on its layers, its TP degree and its
device group's link, a hop on the two devices it joins, so the state is
(next cut, devices used) and each state keeps the Pareto set of labels (S, M)
(plus the peak memory for the ``*+memory`` objectives; only the features the
objective reads). Dominated labels cannot lead to a better plan, so the DP is
exact. Stage memory depends only on the layers, t and r (KV cache of batch/r
sequences), so stages over the limit are never built. Labels are pruned when an
admissible bound (each remaining segment at its fastest TP and link, hops 0)
cannot beat the incumbent (a uniform plan scored first) or breaks an SLO.

**Training.** The step is the slot-level 1F1B makespan
(:func:`~paratune.costmodel._pipeline.training_makespan`), which is not a function
of (sum, max). The DP runs back to front per (r, m, D devices per replica): state
(first cut of the suffix, devices of the suffix, stages in the suffix), which
fixes each stage's 1F1B position (it keeps min(m, p - i) micro-batches, so its
memory is known) and its devices (the suffix occupies the last ones). Every
suffix carries the decomposable lower bound

    LB = max( max_k [F_k + m (f_k + b_k) + B_k] + tail_0 ,  max_k [F_k + m (f_k + b_k) + tail_k] )

with F_k = sum_{s<k} (f_s + h_s) and B_k = sum_{s<k} (h_s + b_s): micro-batch 0
reaches stage k after F_k, stage k is busy m (f_k + b_k), the last backward
returns to stage 0 after B_k, and every stage ends with its tail (DP all-reduce
+ optimizer). It is exact for uniform stages. Each stage's m (f_k + b_k) also counts
its 1F1B waits (:func:`._dp_train._waits`: the fill before its first backward and the
drain before its last, when micro-batches' round trips through the stages after it
are longer than its warm-up covers), and each pair of adjacent stages a steady-state
term (:func:`._dp_train._pair`: 1F1B alternates between them, crossing their link twice
per two micro-batches, so two bottleneck stages across a slow link cost more than
either alone), which brings the bound of heterogeneous plans within a fraction of a
percent of their makespan. Suffixes whose bound (completed by
an admissible prefix: the cheapest sums, and prefix tables that price the prefix's
own pipeline terms with its stages' memory at their 1F1B positions, and in the exact
pass their waits with a floor on the suffix's round trip) reaches the
incumbent are dropped; every complete plan left is priced exactly (the makespan
recursion on numpy arrays, many plans at once) in increasing bound order until the
next bound reaches the best value. Nothing is dropped except by a valid bound, so
the result is certified optimal; when the label cap (option ``max_labels``) is hit
the search stops and the result is reported uncertified with the gap that is proven:
gap passes then prune against best / 1.05, 1.02, 1.01 (coarsest first, sharing one label
cap, until the cap cuts one short), and the finest that finishes proves the plan within
that gap of the optimum.

**Never wrong about infeasibility.** When the cap stops the search, or the space
(micro-batches <= ``max_micro_batches``, the problem's granularity) holds no
feasible plan, the heuristics' plans and a uniform TP x PP sweep of every batch
split (:func:`._dp_common.fallback`) are scored too: the best feasible plan found
is returned, not certified. "No feasible plan" is said only when nothing was found
at all, and "proven" only for what was proven.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .._limits import DOC, MAX_DP_CELLS
from ..costmodel import Plan
from ..problem import Evaluation, Problem
from ._dp_common import SLACK, add_front, fallback, pareto, seed_plans
from ._dp_train import TrainDP
from ._layered_space import LayeredSpace
from ._options import LayeredOptions, TunerOptions, about
from ._tuner import Family, Recorder, Tuner


@dataclass(frozen=True)
class DPOptions(LayeredOptions):
    """``dp``'s options: the layered space's, and the training label cap."""

    max_labels: int = field(
        default=300_000, metadata=about("training: labels kept before giving up certification", minimum=1)
    )


class DPSolver(Tuner):
    """Exact dynamic programming over (cut, devices, TP) for layered graphs; see the module docstring.

    Options: ``max_micro_batches`` (64), ``recompute`` ("search" | "off" | "on"), ``max_labels``
    (training: labels kept before giving up certification, 300,000), ``replicas`` and
    ``micro_batches`` (fix them: the optimum under that batch split, e.g. to clone it).
    """

    name: ClassVar[str] = "dp"
    family: ClassVar[Family] = Family.EXACT
    exact: ClassVar[bool] = True
    description: ClassVar[str] = (
        "dynamic programming over (layer, devices, TP): the optimum of layered graphs, hybrids included"
    )
    Options: ClassVar[type[TunerOptions]] = DPOptions
    config: DPOptions

    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str]:
        opts = self.config
        max_micro, replicas, micro_batches = opts.max_micro_batches, opts.replicas, opts.micro_batches
        layers, devices = problem.n_layers, problem.max_devices
        if layers * layers * devices > MAX_DP_CELLS:  # its tables grow as layers^2 x devices: refuse, never swap
            raise ValueError(
                f"dp: {layers:,} layers x {devices:,} devices is too large for the exact solver (layers^2 x devices = "
                f"{layers * layers * devices:,} > {MAX_DP_CELLS:,}, see {DOC}); use --max-devices, --no-optimum "
                "or another tuner"
            )
        space = LayeredSpace.build(
            problem,
            max_micro_batches=max_micro,
            recompute=opts.recompute,
            replicas=replicas,
            micro_batches=micro_batches,
        )
        if problem.limits.calibrated_only and problem.evaluator().pricer.errors is None:
            recorder.certified = True
            plat = problem.resolved_platform
            why = plat.uncalibrated or f"profile {plat.profile.name} has no held-out errors"
            return [f"no plan can be calibrated: {why}"]
        memo: list[Evaluation | None] = []

        def run_fallback() -> Evaluation | None:
            if not memo:
                memo.append(fallback(space, recorder, replicas, micro_batches))
            return memo[0]

        train: TrainDP | None = None
        if problem.phase == "train":
            train = TrainDP(space, recorder, opts.max_labels, incumbent=run_fallback)
            notes = train.run()
            if train.proven_static:  # infeasible for every plan, not only those of the space
                return notes
        else:
            notes = InferenceDP(space, recorder).run()
        finished = recorder.certified is True
        best = recorder.best
        own = best is not None and (not memo or best is not memo[0] or _in_space(space, best))
        if finished and own:
            return notes  # the space's optimum, certified
        # Not finished, or no plan of the space: the fallback's plans (possibly outside the space) are the answer.
        before = recorder.best if own else None
        found = run_fallback()
        recorder.certified = False
        where = (
            f"{space.max_devices} devices, {space.limit / 2**30:.3g} GiB per device, micro-batches <= {max_micro}, "
            f"granularity {problem.granularity!r}"
        )
        source = "the fallback (heuristics and a uniform sweep of every batch split)"
        if finished:
            if found is None:
                return [
                    f"no feasible plan: none in dp's space, proven ({where}), and none from the heuristics or a "
                    "uniform TP x PP sweep of every batch split",
                    *notes,
                ]
            return [
                f"no plan of dp's space beats this one, proven ({where}); it comes from {source} with "
                f"{found.plan.micro_batches} micro-batches and {found.plan.replicas} replica(s), outside the space: "
                "not certified (raise option 'max_micro_batches' to search such plans)",
                *notes,
            ]
        if train is not None and train.stopped:
            notes.insert(0, train.cap_note(None if recorder.best is None else recorder.best.metrics.latency_s))
        if recorder.best is None:
            return [
                "no feasible plan found, and none proven impossible: the search stopped at its cap and neither the "
                "heuristics nor a uniform TP x PP sweep of every batch split found one",
                *notes,
            ]
        if recorder.best is not before:
            notes.append(f"the best plan comes from {source}")
        return notes


def _in_space(space: LayeredSpace, e: Evaluation) -> bool:
    """Whether ``e``'s plan is one dp searches (its batch split, granularity, TP degrees and recompute flags)."""
    plan = e.plan
    return (
        (plan.replicas, plan.micro_batches) in space.pairs
        and plan.granularity == space.problem.granularity
        and all(st.tp in space.tps and st.recompute in space.recompute for st in plan.stages)
        and all(st.layers is not None and st.layers[0] in space.cuts for st in plan.stages)
    )


# -- inference ----------------------------------------------------------------------


class InferenceDP:
    """Forward DP over (cut, devices used) with Pareto labels (S, M[, memory]) for prefill and decode."""

    def __init__(self, space: LayeredSpace, recorder: Recorder) -> None:
        self.space, self.recorder = space, recorder
        self.problem = space.problem
        self.obj = self.problem.resolved_objective
        self.multi = self.obj.multi
        self.throughput = self.obj.name == "throughput"
        self.prefill = self.problem.phase == "prefill"
        lim = self.problem.limits
        slo_ms = lim.ttft_ms if self.prefill else lim.tbt_ms
        self.slo = None if slo_ms is None else slo_ms * 1e-3
        self.priced = 0
        self.slo_ms = slo_ms

    # the primary key (minimised) and the SLO'd latency of (S, M) at m micro-batches
    def latency(self, s: Any, mx: Any, m: int) -> Any:
        if self.prefill:
            return s + (m - 1) * mx if m > 1 else s
        return np.maximum(s, m * mx)

    def key(self, s: Any, mx: Any, m: int) -> Any:
        if self.throughput and self.prefill:
            return m * mx
        return self.latency(s, mx, m)

    def run(self) -> list[str]:
        space = self.space
        seeds = [] if self.multi else seed_plans(space)
        incumbent = math.inf
        if seeds:
            best = seeds[0]
            incumbent = self._key_of(best)
            self.recorder.record(best, count=len(seeds))
        finals: list[tuple[float, float, float, int, int, Any]] = []  # (key, S, M, mem, r, m, label)
        front: list[tuple[float, float]] = []
        for r, m in self._order():
            incumbent = self._solve(r, m, incumbent, finals, front)
        notes: list[str] = []
        if self.multi:
            self._record_front(finals)
        else:
            self._record_best(finals, seeds)
        self.recorder.certified = True
        notes.append(f"dp priced {self.priced} stage labels over {len(space.pairs)} (replicas, micro-batches) pairs")
        return notes

    def _key_of(self, e: Evaluation) -> float:
        mt = e.metrics
        if self.throughput and self.prefill:
            return self.problem.evaluator().tokens / mt.pipelined_tokens_per_s
        return mt.latency_s

    def _order(self) -> list[tuple[int, int]]:
        """(r, m) pairs, most promising first (fewer micro-batches of a larger share first is arbitrary: all run)."""
        return sorted(self.space.pairs, key=lambda rm: (-rm[0], rm[1]))

    def _segment_bounds(self, share: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Admissible (sum, max) of covering cuts[i:] : each segment at its fastest TP and link."""
        space = self.space
        n = space.n_cuts
        seg = np.full(n, np.inf)
        for t in space.tps:
            if t > budget or not space.tp_allowed(t):
                continue
            for link in {space.group_link(t, d) for d in range(budget - t + 1)}:
                seg = np.minimum(seg, np.diag(space.inference_tau(t, share, link)))
        seg = seg * (1.0 - SLACK)
        rest_s = np.concatenate((np.cumsum(seg[::-1])[::-1], [0.0]))
        rest_m = np.concatenate((np.maximum.accumulate(seg[::-1])[::-1], [0.0]))
        return rest_s, rest_m

    def _solve(self, r: int, m: int, incumbent: float, finals: list[Any], front: list[tuple[float, float]]) -> float:
        space = self.space
        share, budget, n = r * m, space.max_devices // r, space.n_cuts
        rest_s, rest_m = self._segment_bounds(share, budget)
        if not np.isfinite(rest_s[0]):
            return incumbent
        lb0 = self.key(rest_s[0], rest_m[0], m)
        if lb0 * (1 - SLACK) >= incumbent or (
            self.slo is not None and self.latency(rest_s[0], rest_m[0], m) > self.slo
        ):
            return incumbent
        # stage options per (t, first device): time matrix with inf where the stage is not allowed
        opts: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {d: [] for d in range(budget)}
        for t in space.tps:
            if t > budget:
                continue
            need = space.inference_need(t, r, m)
            ok = space.allowed(t, share) & (need / space.limit - 1.0 <= 0)
            if not ok.any():
                continue
            for d in range(budget - t + 1):
                tau = np.where(ok, space.inference_tau(t, share, space.group_link(t, d)), np.inf)
                opts[d].append((t, tau, need))
        use_m = m > 1 or (self.throughput and self.prefill)
        use_s = not (self.throughput and self.prefill) or self.slo is not None
        # label: (f1, f2, f3, S, M, mem, parent, move) where f* are the dominance features
        labels: dict[tuple[int, int], list[tuple[Any, ...]]] = {(0, 0): [(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None)]}
        dims = int(use_s) + int(use_m) + int(self.multi)
        for i in range(n):
            for d in range(budget):
                items = labels.pop((i, d), None)
                if not items:
                    continue
                items = pareto(items, dims)
                hop = space.hop(i, d, share) if i > 0 else 0.0
                S = np.array([x[3] for x in items])[:, None] + hop
                M = np.maximum(np.array([x[4] for x in items]), hop)[:, None]
                MEM = np.array([x[5] for x in items])[:, None]
                for t, tau, need in opts[d]:
                    row = tau[i, i:][None, :]
                    s2 = S + row
                    m2 = np.maximum(M, row)
                    mem2 = np.maximum(MEM, need[i, i:][None, :])
                    self.priced += s2.size
                    lb_s = s2 + rest_s[i + 1 :][None, :]
                    lb_m = np.maximum(m2, rest_m[i + 1 :][None, :])
                    lb = self.key(lb_s, lb_m, m)
                    keep = np.isfinite(s2)
                    if not self.multi:
                        keep &= lb * (1 - SLACK) < incumbent
                    elif front:
                        lat = self.key(lb_s, lb_m, m)
                        for fl, fm in front:
                            keep &= ~((fl <= lat * (1 - SLACK)) & (fm <= mem2))
                    if self.slo is not None:
                        keep &= self.latency(lb_s, lb_m, m) * (1 - SLACK) <= self.slo
                    for a, jj in zip(*np.nonzero(keep), strict=True):
                        j = i + int(jj)
                        sv, mv, me = float(s2[a, jj]), float(m2[a, jj]), float(mem2[a, jj])
                        feats = [v for v, u in ((sv, use_s), (mv, use_m), (me, self.multi)) if u]
                        feats += [0.0] * (3 - len(feats))
                        lab = (*feats, sv, mv, me, items[a], (i, j, t))
                        if j + 1 == n:
                            k = float(self.key(sv, mv, m))
                            if self.slo_ms is not None and self.latency(sv, mv, m) * 1e3 / self.slo_ms - 1.0 > 0:
                                continue
                            finals.append((k, sv, mv, me, r, m, lab))
                            if self.multi:
                                add_front(front, (k, me))
                            elif k < incumbent:
                                incumbent = k
                        else:
                            labels.setdefault((j + 1, d + t), []).append(lab)
        return incumbent

    def _plan(self, r: int, m: int, label: tuple[Any, ...]) -> Plan:
        stages = []
        while label is not None and label[7] is not None:
            stages.append(label[7])
            label = label[6]
        return self.space.plan(stages[::-1], r, m)

    def _record_best(self, finals: list[Any], seeds: list[Evaluation]) -> None:
        finals.sort(key=lambda x: x[0])
        for _k, _s, _mx, _me, r, m, lab in finals[:16]:
            e = self.problem.score(self._plan(r, m, lab))
            if e.feasible:
                self.recorder.record(e)
                break
        self.recorder.evaluations += self.priced
        if self.recorder.best is not None:
            self.recorder.evaluate(self.recorder.best.plan)

    def _record_front(self, finals: list[Any]) -> None:
        pts = pareto([(k, me, r, m, lab) for k, _s, _mx, me, r, m, lab in finals], 2)
        self.recorder.evaluations += self.priced
        for _k, _me, r, m, lab in pts:
            self.recorder.evaluate(self._plan(r, m, lab))
