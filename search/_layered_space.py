"""The search space of the exact solvers ``dp`` and ``enumerate`` on layered graphs, and its stage tables.

Both solvers search exactly this space, so ``dp == enumerate`` is a meaningful test:

* **Cuts.** The graph at ``problem.granularity`` is cut into contiguous stages; a stage
  may start only where a task starts (``UnitIndex.allowed_start``: at granularity
  ``layers:k`` a merged task is never split). ``cuts`` are the allowed first layers,
  ``ends`` the matching last layers (a stage from ``cuts[i]`` to ``ends[j]``, j >= i).
* **Stages.** Each stage has a TP degree from ``problem.tp_degrees()`` and the next
  contiguous devices (:func:`~paratune.search.contiguous_plan`: stage s of replica 0
  starts where stage s-1 ends; replica k is shifted by k x devices per replica D).
  Hybrid plans (different TP per stage) are included.
* **Replicas and micro-batches.** r replicas and m micro-batches with r x m dividing
  the batch, m <= ``max_micro_batches`` (all phases: prefill and decode pipelines may
  use m > 1), r x D <= ``problem.max_devices``.
* **Training.** Schedule 1F1B; recomputation per stage on or off (option
  ``recompute``: ``"search"`` both, ``"off"``, ``"on"``).
* **Limits.** A plan counts only when ``problem.score`` calls it feasible: memory per
  device <= ``problem.memory_limit_bytes``, the TBT / TTFT SLOs, the device cap and
  ``calibrated_only``.

The stage tables reproduce :func:`paratune.costmodel._analytic_eval.evaluate_plan`
operation by operation (the same prefix-sum differences, the same float order), on
numpy matrices indexed by (first cut, last end), so a plan priced from them has
the evaluator's numbers; the solvers still re-score their answer with
``problem.score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..costmodel import AnalyticEvaluator, Plan
from ..costmodel._pricing import GroupLink, tp_allreduce_array
from ..costmodel._trust import in_calibrated_tp
from ..problem import Problem, contiguous_plan, divisors

RECOMPUTE_MODES = ("search", "off", "on")


def _allreduce(nbytes: np.ndarray, ranks: int, alpha: np.ndarray | float, bw: float) -> np.ndarray:
    """:func:`allreduce_time` on arrays (same float order)."""
    if ranks <= 1:
        return np.zeros(np.shape(nbytes))
    out = 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / bw
    return np.where(nbytes > 0, out, 0.0)


def _p2p(nbytes: float, alpha: float, bw: float) -> float:
    return 0.0 if nbytes <= 0 else alpha + nbytes / bw


@dataclass
class LayeredSpace:
    """The dp / enumerate search space of one problem (see the module docstring)."""

    problem: Problem
    ev: AnalyticEvaluator
    cuts: list[int]
    ends: list[int]
    tps: list[int]
    pairs: list[tuple[int, int]]  # (replicas, micro_batches)
    recompute: tuple[bool, ...]
    max_devices: int
    limit: float
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        problem: Problem,
        *,
        max_micro_batches: int = 64,
        recompute: str = "search",
        replicas: int | None = None,
        micro_batches: int | None = None,
    ) -> LayeredSpace:
        """The space of ``problem``; ``replicas`` / ``micro_batches`` fix those counts (None: every divisor)."""
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"option 'recompute' is {recompute!r}; allowed: {', '.join(RECOMPUTE_MODES)}")
        if max_micro_batches < 1:
            raise ValueError(f"option 'max_micro_batches' must be >= 1, got {max_micro_batches}")
        graph = problem.graph()
        if not graph.is_layered:
            raise ValueError(
                f"dp/enumerate need a layered graph; {problem.model!r} at granularity {problem.granularity!r} "
                "is not (use the 'dag-exact' tuner for any DAG)"
            )
        ev = problem.evaluator()
        n = ev.n_layers
        cuts = [int(a) for a in np.flatnonzero(ev.units.allowed_start)]
        ends = [c - 1 for c in cuts[1:]] + [n - 1]
        max_dev = problem.max_devices
        pairs = [
            (r, m)
            for r in divisors(problem.batch)
            if r <= max_dev
            for m in divisors(problem.batch // r)
            if m <= max_micro_batches and replicas in (None, r) and micro_batches in (None, m)
        ]
        if not pairs:
            raise ValueError(
                f"no (replicas, micro_batches) pair left: replicas={replicas}, micro_batches={micro_batches} must "
                f"divide the batch ({problem.batch}) together, with replicas <= {max_dev} devices and "
                f"micro_batches <= max_micro_batches ({max_micro_batches})"
            )
        rc = (
            {"search": (False, True), "off": (False,), "on": (True,)}[recompute]
            if problem.phase == "train"
            else (False,)
        )
        return cls(problem, ev, cuts, ends, problem.tp_degrees(), pairs, rc, max_dev, problem.memory_limit_bytes)

    # -- geometry -------------------------------------------------------------
    @property
    def n_cuts(self) -> int:
        return len(self.cuts)

    @property
    def train(self) -> bool:
        return self.problem.phase == "train"

    def lo_hi(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit range [lo, hi) of a stage from cuts[i] (lo[i]) to ends[j] (hi[j])."""
        n = self.ev.n_layers
        lo = np.array([0 if a == 0 else a + 1 for a in self.cuts])
        hi = np.array([n + 2 if b == n - 1 else b + 2 for b in self.ends])
        return lo, hi

    def tp_allowed(self, t: int) -> bool:
        """Whether TP ``t`` can appear in a feasible plan (``calibrated_only`` needs it in the profile's TP range)."""
        if not self.problem.limits.calibrated_only:
            return True
        return self.ev.pricer.errors is not None and in_calibrated_tp(self.ev.platform.profile, [t])

    def group_link(self, t: int, first: int) -> GroupLink:
        return self.ev.link(tuple(range(first, first + t)))

    def hop(self, i: int, device: int, share: int) -> float:
        """Transfer into the stage that starts at cuts[i] on ``device`` (from ``device - 1``)."""
        alpha, bw = self.ev.pair((device - 1,), (device,))
        return _p2p(self.ev.cut[self.cuts[i]] * (1.0 / share), alpha, bw)

    def plan(self, stages: list[tuple[int, int, int]], r: int, m: int, recompute: list[bool] | None = None) -> Plan:
        """A plan from (first cut index, last end index, tp) per stage."""
        spec = [(self.cuts[i], self.ends[j], t) for i, j, t in stages]
        return contiguous_plan(
            spec,
            micro_batches=m,
            replicas=r,
            granularity=self.problem.granularity,
            recompute=recompute if recompute is not None else False,
        )

    def min_replica_devices(self) -> int:
        """Fewest devices per replica whose memory can hold the weights (and, training, the optimizer state).

        Each device of a TP-t stage holds at least 1/t of the stage's weights and state, so
        a replica of D devices needs D x limit >= the whole model's (TP 1) static memory.
        """
        b = self.base(1, 1)
        static = float(b["weights"][0, -1]) + (float(b["state"][0, -1]) if self.train else 0.0)
        return max(1, math.ceil(static / self.limit))

    # -- stage tables ---------------------------------------------------------
    def base(self, t: int, share: int) -> dict[str, np.ndarray]:
        """Link-independent stage quantities over (i, j) for TP ``t`` and share r x m (inf where j < i)."""
        key = ("base", t, share)
        out = self._cache.get(key)
        if out is not None:
            return out
        ev = self.ev
        lo, hi = self.lo_hi()
        L, H = lo[:, None], hi[None, :]
        tt, sc = ev.tp_tables(t), ev.scaled_tables(t, share)
        scale = 1.0 / share

        def diff(arr: Any) -> np.ndarray:
            a = np.asarray(arr, dtype=float)
            return a[H] - a[L]

        valid = np.arange(self.n_cuts)[:, None] <= np.arange(self.n_cuts)[None, :]
        out = {
            "valid": valid,
            "kern": diff(sc.fwd),
            "ar_n": diff(tt.ar_fwd_n),
            "ar_b": diff(tt.ar_fwd_b) * scale,
            "weights": diff(tt.weights),
            "rmax": self._range_max(tt.out_max[0], lo, hi),
            "outside": diff(sc.outside_l),
        }
        out["need0"] = out["weights"] + 2.0 * out["rmax"] * scale
        if self.train:
            out["kern_b"] = diff(sc.bwd)
            out["arb_n"] = diff(tt.ar_bwd_n)
            out["arb_b"] = diff(tt.ar_bwd_b) * scale
            out["state"] = diff(tt.state)
            out["stash"] = diff(tt.stash)
            out["inputs"] = diff(tt.inputs)
            out["smax"] = self._range_max(tt.stash_max[0], lo, hi)
            out["opt"] = diff(tt.opt)
        else:  # KV cache per token; the resident sequences (batch / r) are applied in inference_need
            out["kv"] = diff(tt.kv)
        self._cache[key] = out
        return out

    @staticmethod
    def _range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        out = np.zeros((len(lo), len(hi)))
        for i, a in enumerate(lo):
            acc = np.maximum.accumulate(values[a:])
            idx = np.clip(hi - a - 1, 0, len(acc) - 1)
            out[i] = acc[idx]
        return out

    def allowed(self, t: int, share: int) -> np.ndarray:
        """Stages that can appear in a feasible plan regardless of memory: j >= i, calibrated when required."""
        b = self.base(t, share)
        ok = b["valid"].copy()
        if self.problem.limits.calibrated_only:
            ok &= b["outside"] <= 0.5
            if not self.tp_allowed(t):
                ok[:] = False
        return ok

    def inference_need(self, t: int, r: int, m: int) -> np.ndarray:
        """Memory per device of each inference stage (weights, workspace, KV cache of batch/r sequences)."""
        key = ("need", t, r, m)
        out = self._cache.get(key)
        if out is None:
            b = self.base(t, r * m)
            sequences = self.ev.batch / r
            out = self._cache[key] = b["need0"] + b["kv"] * sequences * self.ev.kv_len
        return out

    def inference_tau(self, t: int, share: int, link: GroupLink) -> np.ndarray:
        """Stage time (kernels + TP all-reduces) of each inference stage on a group with ``link``."""
        key = ("tau", t, share, link)
        out = self._cache.get(key)
        if out is None:
            b = self.base(t, share)
            comm = tp_allreduce_array(b["ar_b"], b["ar_n"], t, link)
            out = self._cache[key] = b["kern"] + comm
        return out

    def train_times(self, t: int, share: int, link: GroupLink, rc: bool) -> tuple[np.ndarray, np.ndarray]:
        """(forward slot, backward slot) of each training stage, as the evaluator derives them from tau."""
        key = ("train", t, share, link, rc)
        out = self._cache.get(key)
        if out is None:
            b = self.base(t, share)
            comm = tp_allreduce_array(b["ar_b"], b["ar_n"], t, link)
            kern = b["kern"]
            kern_b = b["kern_b"]
            comm_b = tp_allreduce_array(b["arb_b"], b["arb_n"], t, link)
            if rc:
                kern_b = kern_b + kern
                comm_b = comm_b + comm
            tau = (kern + kern_b) + (comm + comm_b)
            back = kern_b + comm_b
            out = self._cache[key] = (tau - back, back)
        return out

    def train_need(self, t: int, share: int, m: int, kept: int, rc: bool) -> np.ndarray:
        """Memory per device of each training stage keeping ``kept`` micro-batches in flight."""
        key = ("tneed", t, share, kept, rc)
        out = self._cache.get(key)
        if out is None:
            b = self.base(t, share)
            scale = 1.0 / share
            stash = (b["inputs"] * kept + b["smax"]) * scale if rc else b["stash"] * scale * kept
            out = self._cache[key] = b["need0"] + (b["state"] + stash)
        return out

    def train_tail(self, t: int, share: int, first: int, dpr: int, r: int) -> np.ndarray:
        """Work after a stage's last backward: DP all-reduce of its weights (r > 1) + optimizer."""
        b = self.base(t, share)
        if r > 1:
            alpha, bw = self.ev.dp_link(first, dpr, r)
            dp = _allreduce(b["weights"], r, alpha, bw)
        else:
            dp = np.zeros_like(b["weights"])
        return dp + b["opt"]

    # -- counting (for enumerate) -----------------------------------------------
    def count_plans(self) -> int:
        """Number of plans in the space (compositions x TP per stage x recompute flags x (r, m))."""
        k = len(self.recompute)
        total = 0
        for r, _m in self.pairs:
            budget = self.max_devices // r
            # ways[i][d]: ways to cover cuts[i:] with exactly... any devices <= budget
            ways = [[0] * (budget + 1) for _ in range(self.n_cuts + 1)]
            ways[self.n_cuts] = [1] * (budget + 1)
            for i in range(self.n_cuts - 1, -1, -1):
                for d in range(budget + 1):
                    s = 0
                    for t in self.tps:
                        if t <= d:
                            for j in range(i, self.n_cuts):
                                s += k * ways[j + 1][d - t]
                    ways[i][d] = s
            total += ways[0][budget]
        return total
