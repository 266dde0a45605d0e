"""Per-scenario tables of the Mapping env, built once per (scenario, granularity, batch split) and cached.

A stage's memory and time are differences of prefix sums over units (see
:mod:`paratune.costmodel._layer_tables`), so the env knows a partial stage's memory in
O(1) per step. The memory here follows :func:`~paratune.costmodel._analytic_eval.evaluate_plan`
term by term, in-flight micro-batches included (:meth:`StageTables.need` takes
their count). A 1F1B stage keeps ``min(m, p - i)`` of them, which depends on
stages still to come, so the fit tables count the fewest that can follow: for
training the masks built on them are necessary conditions (they never forbid an
action that could lead to a feasible plan), and the final evaluation prices the
exact memory.

Times (for observations only) are kernel seconds plus TP all-reduces on a group
inside one node, at the batch share the episode chose.

A split may carry a technique bundle (:data:`._features.TECHNIQUE_BUNDLES`,
training only): the model state is then divided over the replicas as ZeRO
divides it (:func:`~paratune.costmodel._techniques.model_state`, the evaluator's
function), the stash is the layer tables' column for sequence parallelism and
selective recomputation (``stash_sp``, ``stash_sel``, ``stash_sel_sp``; recomputed
inputs split over TP under SP), and ZeRO-3 holds the largest gathered unit's
weights (twice with overlap's prefetch), as the analytic evaluator prices them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..costmodel._layer_tables import range_max
from ..costmodel._memory import OPTIMIZER_STATE_BYTES_PER_PARAM
from ..costmodel._pricing import p2p_time, tp_allreduce_time
from ..costmodel._techniques import model_state
from ..graphs import DTYPE_BYTES, Phase
from ..problem import Problem
from ._features import BLOCK_FEATURES, LOOKAHEAD, TECHNIQUE_BUNDLES, TP_MENU, clip_array, context_features
from ._reward import Reference, reference

#: ``min_devices`` of blocks no number of devices can hold.
UNREACHABLE = 1 << 30


@dataclass
class StageTables:
    """Prefix lists of one TP degree at one batch split (index = unit boundary, as in ``TpTables``)."""

    tp: int
    add: list[float]  # additive memory per device: weights, KV or training state and one stash
    out_max: list[list[float]]  # sparse table of the largest forward output per device, whole batch
    stash_max: list[list[float]] | None  # recompute: sparse table of per-unit stash (one rebuilt at a time)
    time: list[float]  # forward (+ backward) kernel + TP all-reduce seconds
    scale: float
    flight: list[float] | None = None  # training: what one more micro-batch in flight keeps (stash or inputs)
    buffer_max: list[list[float]] | None = None  # ZeRO-3: sparse table of per-unit weights (gathered buffer)
    buffers: float = 0.0  # how many gathered units ZeRO-3 holds (2 with overlap's prefetch)

    def need(self, lo: int, hi: int, kept: int = 1) -> float:
        """Memory per device of a stage holding units [lo, hi) with ``kept`` micro-batches in flight.

        Exact for inference; when training, exact for a stage keeping ``kept``
        micro-batches (1F1B keeps ``min(m, p - i)``, see the module doc).
        """
        n = self.add[hi] - self.add[lo] + 2.0 * range_max(self.out_max, lo, hi) * self.scale
        if self.stash_max is not None:
            n += range_max(self.stash_max, lo, hi) * self.scale
        if kept > 1 and self.flight is not None:
            n += (kept - 1) * (self.flight[hi] - self.flight[lo])
        if self.buffer_max is not None:
            n += range_max(self.buffer_max, lo, hi) * self.buffers
        return n


class ScenarioTables:
    """What every episode on one scenario at one granularity shares: blocks, TP choices, reference."""

    def __init__(self, problem: Problem, granularity: str) -> None:
        graph = problem.graph(granularity)
        if not graph.is_layered:
            raise ValueError(
                f"scenario {problem.name!r}: the {granularity} graph of {problem.model!r} is not layered; "
                "Mapping-v0 cuts layer ranges (use paratune/Placement-v0 for any DAG)"
            )
        self.problem, self.granularity = problem, granularity
        self.ev = ev = problem.evaluator(granularity)
        self.n_layers = n = ev.n_layers
        self.starts = [layer for layer in range(n) if ev.units.allowed_start[layer]]
        ends = [s - 1 for s in self.starts[1:]] + [n - 1]
        self.ends = ends
        self.n_blocks = len(self.starts)
        #: Unit bounds of each block: a stage of blocks a..b covers units [lo[a], hi[b]).
        self.lo = [0 if s == 0 else s + 1 for s in self.starts]
        self.hi = [n + 2 if e == n - 1 else e + 2 for e in ends]
        allowed = set(problem.tp_degrees())
        self.max_devices = problem.max_devices
        self.tps = [t for t in TP_MENU if t in allowed and t <= self.max_devices]
        self.limit = problem.memory_limit_bytes
        self.per_node = max(1, min(problem.resolved_platform.devices_per_node, self.max_devices))
        self.batch = graph.meta.batch
        self.k_ratio = OPTIMIZER_STATE_BYTES_PER_PARAM / DTYPE_BYTES[graph.meta.dtype]
        self.train = problem.phase == Phase.TRAIN
        self.reference: Reference = reference(problem)
        self._splits: dict[tuple[int, int, bool, int], SplitTables] = {}
        base = self.split(1, 1, False)
        self.context = clip_array(np.array(context_features(problem, total_need=base.total_need1, kv_len=ev.kv_len)))

    def split(self, replicas: int, micro_batches: int, recompute: bool, bundle: int = 0) -> SplitTables:
        """The tables of one batch split and technique bundle (an index into ``TECHNIQUE_BUNDLES``, training)."""
        key = (replicas, micro_batches, recompute and self.train, bundle if self.train else 0)
        tables = self._splits.get(key)
        if tables is None:
            tables = self._splits[key] = SplitTables(self, *key)
        return tables


class SplitTables:
    """Tables of one batch split (replicas x micro-batches, recompute, technique bundle): stage tables and
    block features."""

    def __init__(self, sc: ScenarioTables, replicas: int, micro_batches: int, recompute: bool, bundle: int = 0) -> None:
        ev = sc.ev
        tech = TECHNIQUE_BUNDLES[bundle][1]
        zero = int(tech.get("zero", 0))  # type: ignore[call-overload]
        sp, sel, overlap = (bool(tech.get(k)) for k in ("sequence_parallel", "selective_recompute", "overlap"))
        share = replicas * micro_batches
        scale = 1.0 / share
        sequences = sc.batch / replicas
        self.stages: dict[int, StageTables] = {}
        for t in sc.tps:
            tt, st = ev.tp_tables(t), ev.scaled_tables(t, share)
            tl = tt.lists
            devices = tuple(range(t))
            link = ev.link(devices)
            add = tt.weights.copy()
            flight = None
            buffer_max, buffers = None, 0.0
            if sc.train and not tech:
                flight = (tt.inputs if recompute else tt.stash) * scale
                add = add + tt.state + flight
                kern = st.fwd + st.bwd + (st.fwd if recompute else 0.0)
            elif sc.train:  # the analytic evaluator's terms (costmodel/_analytic_train.py), ZeRO over the replicas
                if recompute:
                    flight = tt.inputs * scale / (t if sp else 1)
                else:
                    flight = getattr(tt, "stash" + ("_sel" if sel else "") + ("_sp" if sp else "")) * scale
                weights: Any = tt.weights  # model_state is linear: it divides prefix arrays as it divides bytes
                state_w, state_g, state_o = model_state(weights, 0.0, sc.k_ratio, zero, replicas, replicas)
                add = state_w + state_g + state_o + flight
                kern = st.fwd + st.bwd + (st.fwd if recompute else 0.0)
                if sel and not recompute:  # the attention core's forward re-runs in backward
                    kern = kern + np.asarray(ev.tech_scaled(t, share).attn_f_l)
                if zero == 3 and replicas > 1:
                    buffer_max, buffers = ev.tech_units(t).weight_max_l, 2.0 if overlap else 1.0
            else:
                add = add + tt.kv * (sequences * ev.kv_len)
                kern = st.fwd
            units = ev.units.n_units
            ar = np.zeros(units + 1)
            for u in range(units):
                for nkey, bkey in (
                    (("ar_fwd_n", "ar_fwd_b"), ("ar_bwd_n", "ar_bwd_b")) if sc.train else (("ar_fwd_n", "ar_fwd_b"),)
                ):
                    cnt = tl[nkey][u + 1] - tl[nkey][u]
                    if cnt > 0.5:
                        ar[u + 1] += tp_allreduce_time((tl[bkey][u + 1] - tl[bkey][u]) * scale, cnt, t, link)
            time = kern + np.cumsum(ar)
            self.stages[t] = StageTables(
                t,
                add.tolist(),
                tt.out_max_l,
                (tt.stash_sp_max_l if sp else tt.stash_max_l) if recompute and sc.train else None,
                time.tolist(),
                scale,
                None if flight is None else flight.tolist(),
                buffer_max,
                buffers,
            )
        one = self.stages[1]
        nb = sc.n_blocks
        lo, hi = sc.lo, sc.hi
        block_time = np.array([one.time[hi[j]] - one.time[lo[j]] for j in range(nb)])
        w = ev.tp_tables(1).weights
        block_w = np.array([w[hi[j]] - w[lo[j]] for j in range(nb)])
        block_need1 = np.array([one.add[hi[j]] - one.add[lo[j]] for j in range(nb)])
        top = self.stages[sc.tps[-1]]
        block_need_top = np.array([top.need(lo[j], hi[j]) for j in range(nb)])
        total_time = max(float(block_time.sum()), 1e-30)
        total_w = max(float(block_w.sum()), 1.0)
        mean_time = total_time / nb
        p_alpha, p_bw = ev.pair((0,), (1,)) if sc.problem.resolved_platform.num_devices > 1 else (0.0, 1.0)
        boundary = np.array(
            [p2p_time(ev.cut[sc.ends[j] + 1] * scale, p_alpha, p_bw) if j < nb - 1 else 0.0 for j in range(nb)]
        )
        layers = np.array([sc.ends[j] - sc.starts[j] + 1 for j in range(nb)], dtype=float)
        edge = np.zeros(nb)
        edge[0] = edge[-1] = 1.0
        feats = np.zeros((nb + LOOKAHEAD + 1, len(BLOCK_FEATURES)))  # zero rows past the end
        feats[:nb] = np.stack(
            [
                np.ones(nb),
                block_time / total_time,
                block_w / total_w,
                block_need1 / sc.limit,
                block_need_top / sc.limit,
                boundary / mean_time,
                layers / sc.n_layers,
                edge,
            ],
            axis=1,
        )
        self.block_features = clip_array(feats)
        self.total_time = total_time
        self.total_need1 = float(block_need1.sum())
        #: Suffix sums from block j on (index n_blocks: 0): time and weight fractions, TP-1 additive memory.
        self.rem_time = (np.concatenate([np.cumsum(block_time[::-1])[::-1], [0.0]]) / total_time).tolist()
        self.rem_weight = (np.concatenate([np.cumsum(block_w[::-1])[::-1], [0.0]]) / total_w).tolist()
        self.rem_need1 = np.concatenate([np.cumsum(block_need1[::-1])[::-1], [0.0]]).tolist()
        self._fit_tables(sc, micro_batches)

    def _fit_tables(self, sc: ScenarioTables, micro_batches: int) -> None:
        """``reach``, ``reach_mid``, ``min_devices`` and ``min_stages``: which stages and completions fit memory.

        ``reach[t][j]`` is the last block a stage of TP ``t`` opened at block
        ``j`` can hold within the memory limit (``j - 1``: not even block ``j``),
        ``reach_mid[t][j]`` the same for a stage that more stages follow.
        ``min_devices[j]`` and ``min_stages[j]`` are the fewest devices and the
        fewest stages that hold blocks ``j..`` to the end. A stage should take
        all the blocks it can, since fewer blocks never need more devices or
        stages, so ``min_devices[j] = min_t t + min_devices[reach[t][j] + 1]``
        (and likewise for stages), filled from the last block back.

        Training: a 1F1B stage ``i`` of ``p`` keeps ``min(m, p - i)``
        micro-batches in flight, and a stage ending at block ``k`` has at least
        ``min_stages[k + 1]`` stages after it, so it keeps at least ``min(m, 1 +
        min_stages[k + 1])`` (one for the last stage). Since that count falls as
        ``k`` grows, the reach is found by scanning down from the reach at one
        micro-batch. The stage memory is :meth:`StageTables.need`, exact term by
        term, so a mask built on these tables forbids exactly the actions after
        which no plan fits for inference, and only such actions for training.
        """
        nb, lo, hi, limit = sc.n_blocks, sc.lo, sc.hi, sc.limit
        upper: dict[int, list[int]] = {}  # reach at one micro-batch in flight: an upper bound of any reach
        for t in sc.tps:
            need = self.stages[t].need
            reach, k = [], -1
            for j in range(nb):  # two pointers: the reach never moves back as the start moves on
                k = max(k, j - 1)
                while k + 1 < nb and need(lo[j], hi[k + 1]) <= limit:
                    k += 1
                reach.append(k)
            upper[t] = reach
        self.reach: dict[int, list[int]] = {t: [0] * nb for t in sc.tps}
        self.reach_mid: dict[int, list[int]] = {t: [0] * nb for t in sc.tps}
        best = [UNREACHABLE] * (nb + 1)
        fewest = [UNREACHABLE] * (nb + 1)
        best[nb] = fewest[nb] = 0
        m = micro_batches if sc.train else 1

        def fits(need: Any, j: int, k: int) -> bool:
            if k == nb - 1:
                return bool(need(lo[j], hi[k]) <= limit)
            after = fewest[k + 1]
            return after < UNREACHABLE and need(lo[j], hi[k], min(m, 1 + after)) <= limit

        for j in range(nb - 1, -1, -1):
            for t in sc.tps:
                need = self.stages[t].need
                k = upper[t][j]
                mid = min(k, nb - 2)
                while mid >= j and not fits(need, j, mid):
                    mid -= 1
                self.reach_mid[t][j] = mid
                k = k if k == nb - 1 and fits(need, j, k) else mid
                self.reach[t][j] = k
                if k >= j:
                    best[j] = min(best[j], t + best[k + 1])
                    fewest[j] = min(fewest[j], 1 + fewest[k + 1])
        self.min_devices = best
        #: The fewest stages that hold blocks j.. (whatever their devices): 1F1B memory caps the depth.
        self.min_stages = fewest
