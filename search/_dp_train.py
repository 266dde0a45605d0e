"""The training half of ``dp``: back-to-front branch and bound on the 1F1B makespan (see :mod:`._dp`).

Per (replicas r, micro-batches m, devices per replica D) the plan is built from its
last stage backwards: the state (first cut of the suffix, devices of the suffix,
stages in the suffix) fixes every stage's devices (the suffix holds the last ones
of 0..D-1), its data-parallel link (stride D) and its 1F1B position, hence the
micro-batches it keeps in flight and its memory. A suffix carries (P, Q), the two
maxima of the decomposable lower bound of :mod:`._dp`; prepending a stage
(f, b, hop h to the suffix, tail) gives

    P' = max(m (f + b) + W, (f + h) + (h + b) + P),   Q' = max(m (f + b) + W + tail, (f + h) + Q)

with W the stage's 1F1B waits (:func:`_waits`, from the suffix's round trip, which
labels carry too), and a complete plan's bound is max(P + tail_0, Q). Complete plans whose bound is
below the incumbent are priced exactly by
:func:`~paratune.costmodel._pipeline.training_makespan` on numpy arrays (the
evaluator's own recursion, so the same numbers), cheapest bound first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..costmodel._pipeline import training_makespan
from ..costmodel._pricing import GroupLink
from ..problem import Evaluation
from ._dp_common import SLACK, add_front, pareto, seed_plans
from ._layered_space import LayeredSpace
from ._tuner import Recorder

#: Complete plans priced per numpy pass.
CHUNK = 512
#: Relative gaps that dp tries to prove, coarsest first, when the label cap stops the exact search (finer
#: rungs cost more than the exact pass itself on the 64-GPU cases: gpt3-175b's 0.5 % pass twice its 1 %).
GAPS = (0.05, 0.02, 0.01)
#: Prefix tables (see TrainDP._prefix_tables) kept apart per number of following stages up to this one.
EXACT_FOLLOWERS = 24
#: Floors on a suffix's round trip for which the exact pass keeps prefix tables, as fractions of the whole
#: model's cheapest traversal (see TrainDP._trip_tables); a label uses the highest floor below its trip.
TRIP_FLOORS = (0.0, 0.45, 0.9, 1.15, 1.4, 1.6)
#: The exact pass prices the trip floors (one prefix table each) only after a first pass of at least this many
#: labels: on small problems the extra tables cost more than the labels they save.
TRIP_MIN_LABELS = 5_000


def _waits(trip: Any, f: Any, b: Any, w: Any, m: int) -> Any:
    """Least idle time of a 1F1B stage (forward f, backward b, w warm-up forwards) beside its m (f + b).

    ``trip``: micro-batch 0's round trip through the stages after it (their f + b and
    both hops of each boundary from this stage on). The stage's first backward waits for
    that trip unless its w warm-up forwards cover it (the fill: trip - (w - 1) f), and its
    last backward waits for micro-batch m - 1's trip, which starts after its last forward,
    unless the w - 1 backwards between cover it (the drain: trip - (w - 1) b). With w < m
    the steady state lies between the two, so both add; with w = m (every forward before
    the first backward) only the larger counts. Zero for the last stage (trip 0, w 1).
    """
    fill = np.maximum(0.0, trip - (w - 1) * f)
    drain = np.maximum(0.0, trip - (w - 1) * b)
    return np.where(w < m, fill + drain, np.maximum(fill, drain))


def _pair(trip: Any, f: Any, b: Any, hop: Any, c_next: Any, w: int, m: int) -> Any:
    """A 1F1B path through a stage (f, b, w warm-up forwards) and the next one (f + b = ``c_next``, ``hop`` apart).

    In the steady state the stage's backward q is followed by its forward w + q, which the
    next stage runs after its backward q + 1 and before its backward q + 2, which the stage
    needs for its backward q + 2: a cycle of two micro-batches that costs both stages'
    f + b and the hop twice. Two adjacent bottleneck stages across a slow link thus take
    (c + c_next) / 2 + hop per micro-batch, which the single-stage terms miss. The path:
    the stage's first backward (after micro-batch 0's round trip ``trip`` through the
    stages after it, or after its own warm-up forwards), its second when the parity asks,
    the cycles up to backward m - 1 - w, then its last forward and the last micro-batch's
    round trip to its last backward. Measured from micro-batch 0's arrival at the stage
    (the caller adds the traversals before it and the tails); exact for uniform stages.
    """
    last = m - 1 - w  # the backward before the stage's last forward
    if last < 0:  # no steady state
        return np.zeros(np.shape(f + b + trip))
    q0 = last % 2
    round_trip = f + 2 * hop + trip + b
    first = np.maximum(f + 2 * hop + trip, w * f) + b + q0 * (f + b)
    return first + (last - q0) // 2 * (f + b + c_next + 2 * hop) + round_trip


def _prepend(
    P: Any, Q: Any, trip: Any, f: Any, b: Any, hop: Any, tail: Any, k: int, m: int, c_next: Any = None
) -> tuple[Any, Any, Any]:
    """A suffix of k stages with bound terms (P, Q) and round trip ``trip``, after prepending a stage.

    The stage has forward f, backward b, tail ``tail`` and ``hop`` into the suffix (k = 0:
    it is the last stage), whose first stage has f + b = ``c_next`` (None: no pair term,
    :func:`_pair`). Returns the new (P, Q, trip); a complete plan's bound is
    max(P + tail_0, Q) (the module docstring).
    """
    c = f + b
    if k == 0:
        return m * c, m * c + tail, c
    busy = m * c + _waits(2 * hop + trip, f, b, min(m, k + 1), m)
    if c_next is not None:
        busy = np.maximum(busy, _pair(trip, f, b, hop, c_next, min(m, k + 1), m))
    return np.maximum(busy, (f + hop) + (hop + b) + P), np.maximum(busy + tail, (f + hop) + Q), c + 2 * hop + trip


class TrainDP:
    """Branch and bound over suffixes for the training step (and step+memory, throughput)."""

    def __init__(
        self,
        space: LayeredSpace,
        recorder: Recorder,
        max_labels: int,
        incumbent: Callable[[], Evaluation | None] | None = None,
    ) -> None:
        """``incumbent``: a plan (possibly outside the space) to prune with when no uniform plan of it is feasible."""
        self.space, self.recorder, self.max_labels = space, recorder, max_labels
        self.incumbent = incumbent
        self.problem = space.problem
        self.multi = self.problem.resolved_objective.multi
        self.labels = 0
        self.priced = 0
        self.best = math.inf
        self.best_item: tuple[Any, ...] | None = None
        self.front: list[tuple[float, float]] = []
        self.front_items: list[tuple[Any, ...]] = []
        self.dominance = False  # the quick first pass (see run)
        self.first_pass = 0  # labels of that pass
        self.open_bound = math.inf  # smallest bound left unexplored when the label cap stopped the search
        self.proven_static = False  # infeasible for any plan: the weights and state exceed the devices
        self.stopped = False  # the label cap stopped the search (see cap_note)
        self.gap_labels = 0  # labels of the passes that prove a gap after the cap (see _gap_passes)
        self.floors = False  # the exact pass prices trip floors (see _trip_tables)
        self._caps: dict[tuple[int, int], float] = {}  # the cap of each (r, m)'s capped prefix tables

    # -- bounds -----------------------------------------------------------------------
    def _prefix_bounds(self, share: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Admissible (f + b, f) of covering cuts[:i]: each segment at its cheapest TP, link and recompute."""
        space = self.space
        n = space.n_cuts
        fb, ff = np.full(n, np.inf), np.full(n, np.inf)
        for t in space.tps:
            if t > budget or not space.tp_allowed(t):
                continue
            for link in {space.group_link(t, d) for d in range(budget - t + 1)}:
                for rc in space.recompute:
                    f, b = space.train_times(t, share, link, rc)
                    fb = np.minimum(fb, np.diag(f) + np.diag(b))
                    ff = np.minimum(ff, np.diag(f))
        fb, ff = fb * (1.0 - SLACK), ff * (1.0 - SLACK)
        return np.concatenate(([0.0], np.cumsum(fb))), np.concatenate(([0.0], np.cumsum(ff)))

    def _packed_sums(self, share: int) -> tuple[np.ndarray, np.ndarray]:
        """Admissible min sum of (f + b), and of f, over stages covering cuts[:i] on at most d devices: ``[i, d]``.

        Unlike :meth:`_prefix_bounds` the stages must fit memory (each keeping one micro-batch,
        which is optimistic) and share the d devices, so a prefix that memory forces onto
        small TP degrees or recomputation is priced as such; links at their fastest.
        """
        key = ("packed", share)
        if key in self.space._cache:
            return self.space._cache[key]
        space = self.space
        n, dev = space.n_cuts, space.max_devices
        stage_fb: dict[int, np.ndarray] = {}
        stage_f: dict[int, np.ndarray] = {}
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            allowed = space.allowed(t, share)
            best_fb, best_f = np.full((n, n), np.inf), np.full((n, n), np.inf)
            for link in {space.group_link(t, d) for d in range(dev - t + 1)}:
                for rc in space.recompute:
                    fits = allowed & (space.train_need(t, share, 1, 1, rc) / space.limit - 1.0 <= 0)
                    f, b = space.train_times(t, share, link, rc)
                    best_fb = np.minimum(best_fb, np.where(fits, f + b, np.inf))
                    best_f = np.minimum(best_f, np.where(fits, f, np.inf))
            stage_fb[t], stage_f[t] = best_fb, best_f
        out = []
        for table in (stage_fb, stage_f):
            g = np.full((n + 1, dev + 1), np.inf)
            g[0, :] = 0.0
            for i in range(1, n + 1):
                for t, c in table.items():
                    cand = (g[:i, : dev + 1 - t] + c[:i, i - 1][:, None]).min(axis=0)
                    g[i, t:] = np.minimum(g[i, t:], cand)
                g[i] = np.minimum.accumulate(g[i])  # at most d devices
            out.append(g * (1.0 - SLACK))
        result = (out[0], out[1])
        self.space._cache[key] = result
        return result

    def _rest_sums(self, share: int, dev: int) -> np.ndarray:
        """Admissible min sum of (f + b) over stages covering cuts[i:] on at most e devices: ``[i, e]``.

        The mirror of :meth:`_packed_sums` (stages fit memory keeping one micro-batch, links at
        their fastest): micro-batch 0's round trip through what follows a prefix on the
        devices the prefix leaves.
        """
        key = ("rest", share, dev)
        if key in self.space._cache:
            return self.space._cache[key]
        space = self.space
        n = space.n_cuts
        g = np.full((n + 1, dev + 1), np.inf)
        g[n, :] = 0.0
        cost: dict[int, np.ndarray] = {}
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            allowed = space.allowed(t, share)
            best = np.full((n, n), np.inf)
            for link in {space.group_link(t, d) for d in range(dev - t + 1)}:
                for rc in space.recompute:
                    fits = allowed & (space.train_need(t, share, 1, 1, rc) / space.limit - 1.0 <= 0)
                    f, b = space.train_times(t, share, link, rc)
                    best = np.minimum(best, np.where(fits, f + b, np.inf))
            cost[t] = best
        for i in range(n - 1, -1, -1):
            for t, c in cost.items():
                cand = (c[i, i:][:, None] + g[i + 1 :, : dev + 1 - t]).min(axis=0)
                g[i, t:] = np.minimum(g[i, t:], cand)
            g[i] = np.minimum.accumulate(g[i])
        out = g * (1.0 - SLACK)
        self.space._cache[key] = out
        return out

    def _rest_by_followers(self, share: int, m: int, dev: int, K: int) -> np.ndarray:
        """Admissible min sum of (f + b) of exactly k < K stages covering cuts[i:] on <= e devices: ``[k, i, e]``.

        The stage followed by j others keeps min(m, j + 1) micro-batches, so memory forces
        the recomputation and TP degrees of the stages after a prefix (links at their fastest;
        hops dropped). Row K (K or more stages) is :meth:`_rest_sums`.
        """
        key = ("rest_k", share, m, dev, K)
        if key in self.space._cache:
            return self.space._cache[key]
        space = self.space
        n = space.n_cuts
        cost: dict[tuple[int, int], np.ndarray] = {}  # (t, kept) -> [i, j]
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            allowed = space.allowed(t, share)
            links = {space.group_link(t, d) for d in range(dev - t + 1)}
            for kept in range(1, K):
                best = np.full((n, n), np.inf)
                for rc in space.recompute:
                    fits = allowed & (space.train_need(t, share, m, min(m, kept), rc) / space.limit - 1.0 <= 0)
                    for link in links:
                        f, b = space.train_times(t, share, link, rc)
                        best = np.minimum(best, np.where(fits, f + b, np.inf))
                cost[(t, kept)] = best
        out = np.full((K + 1, n + 1, dev + 1), np.inf)
        out[0, n, :] = 0.0
        for k in range(1, K):
            prev, cur = out[k - 1], out[k]
            for i in range(n - 1, -1, -1):
                for (t, kept), c in cost.items():
                    if kept != k:
                        continue
                    cand = (c[i, i:][:, None] + prev[i + 1 :, : dev + 1 - t]).min(axis=0)
                    cur[i, t:] = np.minimum(cur[i, t:], cand)
                cur[i] = np.minimum.accumulate(cur[i])
        out[:K] *= 1.0 - SLACK
        out[K] = self._rest_sums(share, dev)
        self.space._cache[key] = out
        return out

    def _min_devices(self, share: int, m: int, dev: int) -> np.ndarray:
        """Fewest devices that can hold cuts[:i] in stages that fit memory (each keeping at least one micro-batch).

        A stage's memory grows with the micro-batches it keeps, so pricing each with one
        is optimistic: a suffix that leaves fewer devices than this for its prefix is dropped.
        """
        space = self.space
        n = space.n_cuts
        fits = {}
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            ok = np.zeros((n, n), dtype=bool)
            for rc in space.recompute:
                ok |= space.train_need(t, share, m, 1, rc) / space.limit - 1.0 <= 0
            fits[t] = ok & space.allowed(t, share)
        best = np.full(n + 1, dev + 1)
        best[0] = 0
        for j in range(n):
            for t, ok in fits.items():
                cand = best[: j + 1] + t
                cand = np.where(ok[: j + 1, j], cand, dev + 1)
                best[j + 1] = min(best[j + 1], int(cand.min()))
        return best

    def _device_seconds(self, share: int) -> np.ndarray:
        """Admissible device-seconds of one micro-batch's forward + backward over cuts[:i], for each i.

        Sum over segments of min_t t (f + b): stages covering cuts[:i] on d devices satisfy
        sum_s t_s (f_s + b_s) >= this and sum_s t_s = d, so their slowest stage takes at
        least this / d, and the 1F1B step at least m times that.
        """
        key = ("device_seconds", share)
        if key in self.space._cache:
            return self.space._cache[key]
        space = self.space
        best = np.full(space.n_cuts, np.inf)
        for t in space.tps:
            if not space.tp_allowed(t):
                continue
            for link in {space.group_link(t, d) for d in range(space.max_devices - t + 1)}:
                for rc in space.recompute:
                    f, b = space.train_times(t, share, link, rc)
                    best = np.minimum(best, t * (np.diag(f) + np.diag(b)))
        out = np.concatenate(([0.0], np.cumsum(best))) * (1.0 - SLACK)
        self.space._cache[key] = out
        return out

    @staticmethod
    def _followers(m: int) -> int:
        """K: the prefix tables are exact for prefixes followed by k < K stages, and share one table beyond."""
        return min(m, EXACT_FOLLOWERS)

    def _prefix_tables(self, r: int, m: int, cap: float = math.inf, trip: float = 0.0) -> list[tuple[np.ndarray, ...]]:
        """Admissible completions of a suffix by any prefix of cuts[:i] on devices [0, d): ``(A, B, Aq, F)[i, d]``.

        ``trip``: a floor on the suffix's round trip (micro-batch 0 through its stages and
        hops); valid for suffixes whose trip is at least this (:meth:`_trip_tables`).

        Prepending a prefix to a suffix of bound terms (P, Q) gives the plan's bound
        max(A, B + P, Aq, F + Q): A and Aq are the prefix's own 1F1B terms (its stages'
        m (f + b) after the forward and backward of the stages before them, with the first
        stage's tail), B and F what it adds to the suffix's (the traversal of micro-batch 0).
        Each is minimised separately over prefixes (so their combination is a lower bound).
        A stage followed by k stages keeps min(m, k + 1) micro-batches: table k (for k < K,
        :meth:`_followers`) holds prefixes followed by k stages, whose last stage fits memory
        keeping min(m, k + 1), the stage before it min(m, k + 2), and so on; table K holds
        those followed by K or more, every stage keeping at least min(m, K + 1). Memory thus
        forces recomputation and wider TP where plans need them, and the prefix's pipeline
        bubble counts, which the sums of :meth:`_prefix_bounds` miss.
        Stage times use each group's own link and the hop into the next stage's first device,
        as plans do; tails are the optimizer's alone (the data-parallel all-reduce of r > 1
        depends on the replica's width; dropping it is optimistic).

        With a finite ``cap`` only prefixes whose own terms (A, Aq) stay within it count:
        the tables then bound B and F jointly with A and Aq below the cap (a prefix above
        it cannot complete a plan that beats a value <= cap), valid for pruning against
        any incumbent <= cap.
        """
        key = ("prefix_tables", r, m, cap, trip)
        if key in self.space._cache:
            return self.space._cache[key]
        space = self.space
        share, n, dev = r * m, space.n_cuts, space.max_devices // r
        K = self._followers(m)
        levels = [min(m, k + 1) for k in range(K + 1)]  # micro-batches kept by the prefix's last stage
        before = np.minimum(np.arange(K + 1) + 1, K)  # the table of the stage before it
        hops = np.zeros((n + 1, dev + 1))
        for d in range(1, min(dev, space.max_devices - 1) + 1):
            hops[1:n, d] = [space.hop(i, d, share) for i in range(1, n)]
        inf = np.inf
        tab = np.full((4, K + 1, n + 1, dev + 1), inf)  # A, B, Aq, F per number of following stages
        # micro-batch 0's cheapest round trip through cuts[i:] (what follows a prefix ending before cut i)
        cum_fb = self._prefix_bounds(share, dev)[0]
        rest = np.maximum(  # [followers, i, d used]
            (cum_fb[-1] - cum_fb)[None, :, None], self._rest_by_followers(share, m, dev, K)[:, :, ::-1]
        )
        rest = np.maximum(rest, trip)  # every prefix stage's round trip runs through the suffix
        # warm-up forwards per table (the last holds stages keeping min(m, K + 1) up to m: m is the least wait)
        warm = np.array([*levels[:-1], m])[:, None, None]
        #: (t, d values of one link class, fits per table, f, f + b, tail)
        stages: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            allowed = space.allowed(t, share)
            by_link: dict[GroupLink, list[int]] = {}
            for d in range(t, dev + 1):
                by_link.setdefault(space.group_link(t, d - t), []).append(d)
            opt = space.base(t, share)["opt"]
            for rc in space.recompute:
                fits = np.stack(
                    [allowed & (space.train_need(t, share, m, lv, rc) / space.limit - 1.0 <= 0) for lv in levels]
                )
                for link, devs in by_link.items():
                    fwd, bwd = space.train_times(t, share, link, rc)
                    stages.append((t, np.array(devs), fits, fwd, fwd + bwd, opt))
        for i in range(1, n + 1):
            for t, ds, fits, f_all, c_all, tail_all in stages:
                jj = np.flatnonzero(fits[0, :i, i - 1])  # first cuts of stages that fit at the lowest level
                if not len(jj):
                    continue
                f, c = f_all[jj, i - 1][None, :, None], c_all[jj, i - 1][None, :, None]
                tail = tail_all[jj, i - 1][None, :, None]
                h = hops[i, ds][None, None, :]
                mc = m * c + _waits(rest[:, i, ds][:, None, :], f, c - f, warm, m)  # busy and waits
                prev = ds - t
                first = (jj == 0)[None, :, None] & (prev == 0)[None, None, :]  # the plan's first stage: its tail
                ok = fits[:, jj, i - 1][:, :, None]
                a0, b0, aq0, f0 = tab[np.ix_(np.arange(4), before, jj, prev)]
                cands = (
                    np.where(first, mc + tail, np.maximum(a0, b0 + mc)),
                    np.where(first, c + 2 * h + tail, b0 + c + 2 * h),
                    np.where(first, mc + tail, np.maximum(aq0, f0 + mc + tail)),
                    np.where(first, f + h, f0 + f + h),
                )
                if cap < inf:
                    ok = ok & (cands[0] <= cap) & (cands[2] <= cap)
                for q, cand in enumerate(cands):
                    best = np.where(ok, cand, inf).min(axis=1)  # (tables, ds)
                    tab[q, :, i, ds] = np.minimum(tab[q, :, i, ds].T, best).T
        tab *= 1.0 - SLACK  # exactly d devices: the suffix holds the rest of the replica's
        tables = [tuple(tab[q, lv] for q in range(4)) for lv in range(len(levels))]
        self.space._cache[key] = tables
        return tables

    def _trip_tables(
        self, r: int, m: int, floors: tuple[float, ...]
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
        """Prefix tables at floors on the suffix's round trip: (floors in s, per table (A, B, Aq, F)[g, i, d]).

        A prefix stage waits for micro-batch 0's round trip through every stage after it
        (:func:`_waits`), the suffix's included, so a suffix whose trip is at least a floor
        completes only with prefixes whose own terms are priced with that floor: their A and
        Aq grow, and under the cap fewer prefixes remain for B and F. Deep suffixes of many
        small stages have long trips, and the prefixes that would complete them cheaply in the
        trip-free tables cannot (llama3-405b on 64 H200: 1.45M labels in the exact pass without
        floors, 0.27M with). ``floors`` are fractions of the whole model's cheapest traversal;
        the first must be 0 (every trip is at least 0).
        """
        cap = self._caps.get((r, m), math.inf) if not self.multi and math.isfinite(self.best) else math.inf
        key = ("trip_tables", r, m, cap, floors)
        if key in self.space._cache:
            return self.space._cache[key]
        scale = float(self._prefix_bounds(r * m, self.space.max_devices // r)[0][-1])
        grid = np.array([g * scale for g in floors])
        tabs = [self._prefix_tables(r, m, cap, float(g)) for g in grid]
        by_trip = [tuple(np.stack([t[lv][q] for t in tabs]) for q in range(4)) for lv in range(len(tabs[0]))]
        self.space._cache[key] = out = (grid, by_trip)
        return out

    def _drop_tables(self, r: int, m: int, cap: float) -> None:
        """Forget the prefix tables of one cap (they are large), at every trip floor."""
        for key in [k for k in self.space._cache if k[0] in ("prefix_tables", "trip_tables") and k[1:4] == (r, m, cap)]:
            del self.space._cache[key]

    def _capped_tables(self, r: int, m: int) -> list[tuple[np.ndarray, ...]]:
        """The prefix tables capped near the incumbent (recomputed when it has dropped by 1% since)."""
        if self.multi or not math.isfinite(self.best):
            return self._prefix_tables(r, m)
        cap = self._caps.get((r, m))
        if cap is None or self.best < 0.99 * cap:
            if cap is not None:  # tables are large: keep one cap's per batch split
                self._drop_tables(r, m, cap)
            cap = self._caps[(r, m)] = self.best * (1 + 1e-6)
        return self._prefix_tables(r, m, cap)

    def _combos(self) -> list[tuple[float, int, int, int]]:
        """(root bound, r, m, D) for every combination that memory allows, cheapest bound first."""
        out = []
        d_min = self.space.min_replica_devices()
        for r, m in self.space.pairs:
            share = r * m
            work = self._device_seconds(share)[-1]
            for d in range(d_min, self.space.max_devices // r + 1):
                pre_fb, _ = self._prefix_bounds(share, d)
                c = max(pre_fb[-1], self._packed_sums(share)[0][-1, d])
                if not np.isfinite(c):
                    continue
                c = max(c, m * work / d)
                if c * (1 - SLACK) < self.best or self.multi:  # worth the tables: the whole plan as a prefix
                    whole = self._capped_tables(r, m)[0]
                    # capped at the incumbent (x (1 + 1e-6)): a plan they miss is above the cap, so min with it
                    cap = self._caps.get((r, m), math.inf)
                    c = max(c, min(cap, max(whole[0][-1, d], whole[2][-1, d])))
                out.append((c, r, m, d))
        out.sort()
        return out

    def _key(self, value: float, mem: float) -> bool:
        """True when a plan of step >= ``value`` and memory >= ``mem`` cannot improve the answer."""
        if self.multi:
            return any(a <= value and b <= mem for a, b in self.front)
        return value >= self.best

    # -- search -----------------------------------------------------------------------
    def run(self) -> list[str]:
        space = self.space
        d_min = space.min_replica_devices()
        if d_min > space.max_devices:
            self.recorder.certified = self.proven_static = True
            self._finish([])
            static = d_min * space.limit / 2**40
            return [
                f"no feasible plan, proven: the weights and training state need at least {d_min} devices of "
                f"{space.limit / 2**30:.1f} GiB (~{static:.1f} TiB) but at most {space.max_devices} may be used"
            ]
        seeds = seed_plans(space, few=True)
        if self.multi:  # the uniform plans' (step, memory) points prune what they dominate
            for e in seeds:
                self.recorder.record(e)
                add_front(self.front, (e.metrics.latency_s, e.metrics.max_memory_bytes))
            seeds = []
        if seeds:
            self.best = seeds[0].metrics.latency_s
            self.recorder.record(seeds[0], count=len(seeds))
        elif not self.multi and self.incumbent is not None:
            found = self.incumbent()  # without one, nothing prunes and the cap decides
            if found is not None:
                self.best = found.metrics.latency_s
        stopped = False
        combos = self._combos()
        # A first pass keeps only the labels of each state that no other beats on (P, Q, memory): not exact
        # (the makespan is not a function of them) but it reaches complete near-optimal plans quickly, whose
        # exact step time makes the incumbent that the exact pass below prunes with.
        self.dominance = True
        for root, r, m, d in combos:
            if self.multi or root * (1 - SLACK) < self.best:
                self._solve(r, m, d)
        self.dominance = False
        self.first_pass, self.labels = self.labels, 0
        # gap passes prune against lower thresholds, where the floors' extra tables (one per cap) cost more than
        # the labels they save (gpt3-175b on 64 A100)
        self.floors = self.first_pass >= TRIP_MIN_LABELS
        for k, (root, r, m, d) in enumerate(combos):
            if not self.multi and root * (1 - SLACK) >= self.best:
                continue
            if self.labels > self.max_labels:
                stopped = True
                self.open_bound = min([self.open_bound] + [c[0] for c in combos[k:]])
                break
            self._solve(r, m, d)
            if self.labels > self.max_labels:  # this combination was cut short: only its root bound holds
                self.open_bound = min(self.open_bound, root * (1 - SLACK))
        self.stopped = stopped or self.labels > self.max_labels
        if self.stopped and not self.multi and math.isfinite(self.best):
            self._gap_passes(combos)
        notes = self._finish(seeds)
        self.recorder.certified = not self.stopped
        labels = self.first_pass + self.labels + self.gap_labels
        notes.append(f"dp priced {labels} suffix labels and {self.priced} complete plans exactly")
        return notes

    def _gap_passes(self, combos: list[tuple[float, int, int, int]]) -> None:
        """After the cap: prove the best plan within a gap of the optimum, down GAPS while passes finish.

        A pass prunes against best / (1 + gap) instead of the best: near-optimal plans, whose
        bounds lie within a fraction of a percent of their step and of each other, are what
        the exact pass cannot exhaust, and they are pruned here. When the pass finishes, every
        plan was pruned by a bound at or above that threshold or priced at or above it, so
        it is a proven lower bound (``open_bound``). A plan found below it is the optimum
        (everything else was pruned against it or priced), which certifies the search.

        GAPS run coarsest first: the labels a pass needs grow steeply as its threshold nears
        the optimum (llama3-405b on 64 H200: 0 at 5 %, 1.7k at 2 %, 183k at 1 %, over 300k at
        0.5 %), so the coarse passes cost little. The passes share one label cap (``max_labels``,
        so a capped search costs at most twice the cap), and the ladder stops at the first pass
        the cap cuts short with the finest gap proven so far.
        """
        exact_labels = self.labels
        self.floors = False
        saved = self.best, self.best_item
        spent = 0
        for gap in GAPS:
            threshold = saved[0] / (1.0 + gap)
            if threshold <= self.open_bound:  # already proven
                continue
            self.best, self.best_item, self.labels = threshold, None, 0
            for (r, m), cap in self._caps.items():  # prefix tables capped at the threshold prune far more
                self._drop_tables(r, m, cap)
            self._caps.clear()
            finished = True
            cap, self.max_labels = self.max_labels, self.max_labels - spent  # what the passes before left
            try:
                for root, r, m, d in combos:
                    if root * (1 - SLACK) >= self.best:
                        continue
                    self._solve(r, m, d)
                    if self.labels > self.max_labels:
                        finished = False
                        break
            finally:
                self.max_labels = cap
            spent += self.labels
            self.gap_labels += self.labels
            if self.best_item is not None:  # a plan below the threshold: the optimum if the pass finished
                self.stopped = self.stopped and not finished
                break
            self.best, self.best_item = saved
            if not finished:
                break
            self.open_bound = max(self.open_bound, threshold)
        self.labels = exact_labels

    def cap_note(self, value: float | None) -> str:
        """What the label cap left proven, against the best plan's step time ``value`` (None: no plan)."""
        low = self.open_bound
        if self.multi:  # finished batch splits count through the front they left
            low = min([low] + [a for a, _b in self.front])
        bound = f"proven lower bound {low:.6g} s over dp's space"
        head = f"label cap {self.max_labels} reached: not certified; {bound}"
        tail = "(raise option 'max_labels')"
        if self.multi:
            why = "a step+memory front has no single value to prune with, so no gap is proven"
            return f"{head} on the step; {why} {tail}"
        if value is None:
            return f"{head} {tail}"
        if value < self.open_bound:
            return f"{head}, above this plan's step: no plan of the space beats it {tail}"
        gap = value / self.open_bound - 1.0 if self.open_bound > 0 else math.inf
        return f"{head}, so the optimum is at most {gap * 100:.1f}% better than this plan {tail}"

    def _solve(self, r: int, m: int, dev: int) -> None:
        space = self.space
        share, n = r * m, space.n_cuts
        pre_fb, pre_f = self._prefix_bounds(share, dev)
        pre_w = self._device_seconds(share) * m  # the prefix's bottleneck on the devices left to it
        pack_fb, pack_f = self._packed_sums(share)
        min_dev = self._min_devices(share, m, dev)
        if min_dev[n] > dev:
            return
        prefix_tabs, followers = self._capped_tables(r, m), self._followers(m)
        if prefix_tabs[0][0][n, dev] * (1 - SLACK) >= self.best:  # no whole plan within the cap beats the best
            return
        grid, by_trip = self._trip_tables(r, m, TRIP_FLOORS if self.floors else (0.0,))
        # stage tables per (t, rc, first device)
        tables: dict[tuple[int, bool, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for t in space.tps:
            if t > dev or not space.tp_allowed(t):
                continue
            allowed = space.allowed(t, share)
            for d0 in range(dev - t + 1):
                link = space.group_link(t, d0)
                tail = space.train_tail(t, share, d0, dev, r)
                for rc in space.recompute:
                    f, b = space.train_times(t, share, link, rc)
                    tables[(t, rc, d0)] = (np.where(allowed, f, np.inf), b, tail)
        # suffix labels per state (first cut, devices of the suffix, stages): (P, Q, mem, parent, stage)
        states: dict[tuple[int, int, int], list[tuple[Any, ...]]] = {(n, 0, 0): [(0.0, 0.0, 0.0, None, None, 0.0)]}
        pending: list[tuple[float, float, int, Any]] = []
        for i_next in range(n, 0, -1):
            keys = sorted(k for k in states if k[0] == i_next)
            for key in keys:
                items = states.pop(key)
                if self.dominance and self.multi:
                    items = [x[-1] for x in pareto([(x[0], x[1], x[2], x) for x in items], 3)]
                elif self.dominance:  # memory only decides feasibility, stage by stage: (P, Q) suffice
                    items = [x[-1] for x in pareto([(x[0], x[1], x) for x in items], 2)]
                _, dsuf, k = key
                P = np.array([x[0] for x in items])[:, None]
                Q = np.array([x[1] for x in items])[:, None]
                MEM = np.array([x[2] for x in items])[:, None]
                TRIP = np.array([x[5] for x in items])[:, None]  # micro-batch 0's round trip through the suffix
                NEXT = np.array([0.0 if x[4] is None else x[4][4] + x[4][5] for x in items])[:, None]  # its first f + b
                kept = min(m, k + 1)
                j = i_next - 1
                for t in space.tps:
                    d0 = dev - dsuf - t
                    if d0 < 0 or (t, space.recompute[0], d0) not in tables:
                        continue
                    hop = space.hop(i_next, d0 + t, share) if k > 0 else 0.0
                    plain = None  # stages that fit without recomputation
                    for rc in space.recompute:
                        f_all, b_all, tail_all = tables[(t, rc, d0)]
                        need = space.train_need(t, share, m, kept, rc)[:i_next, j]
                        f = f_all[:i_next, j]
                        ok = np.isfinite(f) & (need / space.limit - 1.0 <= 0)
                        if rc and plain is not None and not self.multi:
                            # Same forward, tail and devices, a longer backward: the step can only grow, and
                            # no other stage depends on this one's memory. Only memory can call for it.
                            ok &= ~plain
                        if not rc:
                            plain = ok
                        # Only first cuts where the stage fits and leaves its prefix enough devices: the
                        # children are priced on those columns alone (a few of the i_next), same numbers.
                        cols = np.flatnonzero(ok & (min_dev[:i_next] <= d0))
                        if d0 > 0:
                            cols = cols[cols > 0]
                        if not len(cols):
                            continue
                        f, b, tail = f[cols], b_all[cols, j], tail_all[cols, j]
                        need = need[cols]
                        shape = (len(items), len(cols))
                        terms = _prepend(P, Q, TRIP, f, b, hop, tail, k, m, NEXT)
                        p2, q2, trip2 = (np.broadcast_to(x, shape) for x in terms)
                        mem2 = np.broadcast_to(need, shape) if k == 0 else np.maximum(MEM, need)
                        complete = cols == 0
                        rest = np.maximum(
                            p2 + np.maximum(pre_fb[cols], pack_fb[cols, d0]),
                            q2 + np.maximum(pre_f[cols], pack_f[cols, d0]),
                        )
                        if d0 > 0:
                            rest = np.maximum(rest, pre_w[cols] / d0)
                            ta, tb, taq, tf = by_trip[min(k + 1, followers)]
                            g = np.searchsorted(grid, trip2, side="right") - 1  # the highest floor <= the trip
                            cc = np.broadcast_to(cols, g.shape)
                            rest = np.maximum(
                                rest,
                                np.maximum(
                                    np.maximum(ta[g, cc, d0], taq[g, cc, d0]),
                                    np.maximum(tb[g, cc, d0] + p2, tf[g, cc, d0] + q2),
                                ),
                            )
                        lb = np.where(complete, np.maximum(p2 + tail, q2), rest)
                        keep = np.ones(lb.shape, dtype=bool)
                        if self.multi:
                            for fl, fm in self.front:
                                keep &= ~((fl <= lb * (1 - SLACK)) & (fm <= mem2))
                        else:
                            keep &= lb * (1 - SLACK) < self.best
                        self.labels += int(keep.sum())
                        rows, cs = np.nonzero(keep)
                        firsts = cols[cs].tolist()
                        fs, bs, tails = f[cs].tolist(), b[cs].tolist(), tail[cs].tolist()
                        ps, qs, mems = p2[rows, cs].tolist(), q2[rows, cs].tolist(), mem2[rows, cs].tolist()
                        trips, lbs = trip2[rows, cs].tolist(), lb[rows, cs].tolist()
                        for n_, a in enumerate(rows.tolist()):
                            i = firsts[n_]
                            stage = (i, j, t, rc, fs[n_], bs[n_], hop, tails[n_])
                            lab = (ps[n_], qs[n_], mems[n_], items[a], stage, trips[n_])
                            if i == 0:
                                pending.append((lbs[n_], mems[n_], m, lab))
                                if len(pending) >= CHUNK:
                                    self._price(pending, r, m, dev)
                                    pending = []
                            else:
                                states.setdefault((i, dsuf + t, k + 1), []).append(lab)
                if self.labels > self.max_labels:  # run() falls back on this combination's root bound
                    self._price(pending, r, m, dev)
                    return
        self._price(pending, r, m, dev)

    def _price(self, pending: list[tuple[float, float, int, Any]], r: int, m: int, dev: int) -> None:
        """Exact makespan of complete plans, cheapest bound first, until the bound reaches the best value."""
        pending.sort(key=lambda x: x[0])
        by_p: dict[int, list[tuple[float, float, list[tuple[Any, ...]]]]] = {}
        for lb, mem, _m, lab in pending:
            if not self.multi and lb * (1 - SLACK) >= self.best:
                break
            if self.multi and self._key(lb * (1 - SLACK), mem):
                continue
            chain = []
            node = lab
            while node is not None and node[4] is not None:
                chain.append(node[4])
                node = node[3]
            by_p.setdefault(len(chain), []).append((lb, mem, chain))
        for p, rows in by_p.items():
            fwd = [np.array([row[2][s][4] for row in rows]) for s in range(p)]
            back = [np.array([row[2][s][5] for row in rows]) for s in range(p)]
            hops = [np.array([row[2][s][6] for row in rows]) for s in range(p - 1)]
            tails = [np.array([row[2][s][7] for row in rows]) for s in range(p)]
            zero = np.zeros(len(rows))
            step = training_makespan(fwd, back, hops, tails, m, False, maximum=np.maximum, zero=zero)
            self.priced += len(rows)
            for value, (_lb, mem, chain) in zip(step.tolist(), rows, strict=True):
                item = (value, mem, r, m, chain)
                if self.multi:
                    if not any(a <= value and b <= mem for a, b in self.front):
                        add_front(self.front, (value, mem))
                        self.front_items.append(item)
                elif value < self.best or (self.best_item is None and value <= self.best):
                    self.best, self.best_item = value, item

    def _plan_of(self, item: tuple[Any, ...]) -> Any:
        _v, _mem, r, m, chain = item
        stages = [(s[0], s[1], s[2]) for s in chain]
        return self.space.plan(stages, r, m, [s[3] for s in chain])

    def _finish(self, seeds: list[Evaluation]) -> list[str]:
        count = self.first_pass + self.labels + self.priced
        notes: list[str] = []
        if self.multi:
            pts = pareto([(it[0], it[1], it) for it in self.front_items], 2)
            self.recorder.evaluations += count
            for _v, _mem, item in pts:
                self.recorder.evaluate(self._plan_of(item))
        elif self.best_item is not None:
            e = self.problem.score(self._plan_of(self.best_item))
            self.recorder.record(e, count=max(1, count))
            self.recorder.evaluate(e.plan)
        else:
            self.recorder.evaluations += count
            if self.recorder.best is not None:
                self.recorder.evaluate(self.recorder.best.plan)
        return notes
