"""Per-unit cost tables of a layered graph: what the analytic evaluator sums over a stage.

A layered graph is cut into *units*: unit 0 holds the tasks before the first
layer (layer -1: embedding), units 1..L the transformer layers 0..L-1, unit L+1
the tasks after the last layer (layer L: final norm, LM head, loss). A stage
holding layers [a, b] covers units [a+1, b+1], plus unit 0 when a == 0 and unit
L+1 when b == L-1, so every per-stage quantity is a difference of two prefix
sums (or a range maximum, answered in O(1) by a sparse table).

Tables that depend only on the TP degree t (memory, all-reduce counts and
bytes, optimizer time) are built once per t; kernel times depend nonlinearly on
the micro-batch share (the efficiency curves), so they are built per
(t, replicas x micro_batches). Everything a plan reads is a Python list, so the
per-plan path is float arithmetic with no numpy scalars; the numpy arrays are
kept for the batched evaluator.

Bytes that scale with the micro-batch (activations, boundaries, all-reduce
buffers) are stored for the whole batch and multiplied by the share at use.

The activation stash is what backward reads, each tensor once (:mod:`._stash`,
Korthikanti et al. 2022), in four columns: ``stash`` (plain), ``stash_sp``
(sequence parallelism: every stashed tensor split over TP), ``stash_sel`` /
``stash_sel_sp`` (selective recomputation: without the attention core's
internal tensors). For the time of selective recomputation and SP,
:class:`ScaledTables` adds ``attn_fwd_l`` (forward kernels of the attention
core, re-run in backward) and ``repl_fwd_l`` / ``repl_bwd_l`` (kernels of
replicated ops, norms, residuals, dropouts: SP runs them on 1/t of the tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graphs import TaskGraph
from ._memory import kv_cache_memory, training_state_memory, weight_memory
from ._platform import Platform
from ._pricing import KernelPricer, OpTable, group_terms, pair_link
from ._stash import StashColumns, is_attention_core, is_replicated

#: Profile range keys checked for extrapolation, and the per-device quantity each bounds.
RANGE_KEYS = ("flops_per_device", "bytes_per_device")


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading 0: sum of units [lo, hi) is p[hi] - p[lo]."""
    return np.concatenate(([0.0], np.cumsum(values, dtype=float)))


def sparse_table(values: np.ndarray) -> np.ndarray:
    """Range-maximum table: row k holds max(values[i : i + 2**k]) (padded with the last valid row)."""
    n = len(values)
    levels = max(1, n.bit_length())
    table = np.zeros((levels, n))
    table[0] = values
    for k in range(1, levels):
        half = 1 << (k - 1)
        row = table[k - 1].copy()
        row[: n - half] = np.maximum(table[k - 1][: n - half], table[k - 1][half:])
        table[k] = row
    return table


def range_max(table: list[list[float]], lo: int, hi: int) -> float:
    """max(values[lo:hi]) from a :func:`sparse_table` converted to lists (hi > lo)."""
    k = (hi - lo).bit_length() - 1
    row = table[k]
    a, b = row[lo], row[hi - (1 << k)]
    return a if a >= b else b


class UnitIndex:
    """The graph's ops grouped by unit and step, and the activation bytes crossing each cut."""

    def __init__(self, graph: TaskGraph) -> None:
        n = graph.meta.n_layers
        self.n_layers = n
        self.n_units = n + 2
        ops, units, steps = [], [], []
        unit_of: dict[str, int] = {}
        starts = np.zeros(n, dtype=bool)
        starts[0] = True
        for task in graph.tasks:
            u = task.layer + 1
            unit_of[task.id] = u
            if task.step == "forward" and 0 <= task.layer < n:
                starts[task.layer] = True
            for op in task.ops:
                ops.append(op)
                units.append(u)
                steps.append(op.step)
        self.table = OpTable.from_ops(ops)
        #: Per-op stash bytes by split rule (see :mod:`._stash`).
        self.stash_cols = StashColumns.for_graph(ops, graph.meta)
        self.core = np.array([is_attention_core(op) for op in ops], dtype=bool)
        self.repl = np.array([is_replicated(op) for op in ops], dtype=bool)
        self.unit = np.array(units, dtype=np.intp)
        step = np.array(steps)
        self.fwd = step == "forward"
        self.bwd = step == "backward"
        self.opt = step == "optimizer"
        #: Layers a stage may start at: a merged task (granularity layers:k) cannot be split.
        self.allowed_start = starts
        self.fwd_tables = [self.table.rows(np.flatnonzero(self.fwd & (self.unit == u))) for u in range(n + 2)]
        self.train_flops = float(self.table.flops[self.fwd | self.bwd].sum())
        self._cut_bytes(graph, unit_of)

    def _cut_bytes(self, graph: TaskGraph, unit_of: dict[str, int]) -> None:
        """Activation bytes crossing each cut and entering each unit (forward edges, each tensor once).

        A tensor with several consumers beyond a cut (x feeds both the norm and
        the residual add of the next layer) is sent once, so a source task
        counts its ``output_bytes`` once per cut, not once per edge.
        """
        furthest: dict[str, int] = {}
        entering: dict[tuple[str, int], None] = {}
        for u, v, _ in graph.edges():
            tu, tv = graph.task(u), graph.task(v)
            if tu.step != "forward" or tv.step != "forward" or unit_of[v] <= unit_of[u]:
                continue
            furthest[u] = max(furthest.get(u, 0), unit_of[v])
            entering[(u, unit_of[v])] = None
        diff = np.zeros(self.n_units + 1)
        for src, far in furthest.items():
            nbytes = graph.task(src).output_bytes
            diff[unit_of[src]] += nbytes
            diff[far] -= nbytes
        #: cut[c]: bytes between unit c and unit c+1; a stage ending at layer b sends cut[b + 1].
        self.cut = np.cumsum(diff)[: self.n_units - 1]
        inputs = np.zeros(self.n_units)
        for src, dst_unit in entering:
            inputs[dst_unit] += graph.task(src).output_bytes
        #: Bytes entering each unit from earlier units (what recomputation keeps per layer).
        self.inputs = inputs


@dataclass
class TpTables:
    """Per-TP-degree tables that do not depend on the micro-batch share (prefix arrays of length L+3)."""

    tp: int
    weights: np.ndarray  # weight bytes per device
    state: np.ndarray  # gradients + optimizer state bytes per device (train)
    kv: np.ndarray  # KV bytes per token per device
    stash: np.ndarray  # what backward reads per device, whole batch (see _stash)
    stash_sp: np.ndarray  # the same with sequence parallelism (every stashed tensor split over TP)
    stash_sel: np.ndarray  # selective recomputation: without the attention core's internal tensors
    stash_sel_sp: np.ndarray  # selective recomputation and SP
    inputs: np.ndarray  # bytes entering each unit, whole batch (recompute keeps these)
    ar_fwd_n: np.ndarray  # forward ops that all-reduce
    ar_fwd_b: np.ndarray  # their bytes, whole batch
    ar_bwd_n: np.ndarray
    ar_bwd_b: np.ndarray
    opt: np.ndarray  # optimizer kernel seconds (runs once per step: scale 1)
    out_max: np.ndarray  # sparse table of the largest forward output per device, whole batch
    stash_max: np.ndarray  # sparse table of per-unit stash
    lists: dict[str, list[float]]
    out_max_l: list[list[float]]
    stash_max_l: list[list[float]]
    #: Sparse tables of per-unit ``stash_sp`` (full recomputation with SP rebuilds one unit at a time).
    stash_sp_max_l: list[list[float]]

    @classmethod
    def build(cls, idx: UnitIndex, pricer: KernelPricer, tp: int, dtype: str) -> TpTables:
        n = idx.n_units
        table, unit = idx.table, idx.unit
        split = table.split(tp)

        def per_unit(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return np.bincount(unit[mask], weights=values[mask], minlength=n)

        weights = np.array([weight_memory(t, tp) for t in idx.fwd_tables])
        state = np.array([training_state_memory(t, tp, dtype) for t in idx.fwd_tables])
        kv = np.array([kv_cache_memory(t, tp, sequences=1, kv_len=1) for t in idx.fwd_tables])
        out = table.output_bytes / split
        cols = idx.stash_cols
        stash = per_unit(cols.per_device(table, tp), idx.fwd)
        stash_sp = per_unit(cols.per_device(table, tp, sequence_parallel=True), idx.fwd)
        stash_sel = per_unit(cols.per_device(table, tp, selective=True), idx.fwd)
        stash_sel_sp = per_unit(cols.per_device(table, tp, sequence_parallel=True, selective=True), idx.fwd)
        out_max = np.zeros(n)
        np.maximum.at(out_max, unit[idx.fwd], out[idx.fwd])
        has_ar = (table.allreduce_bytes > 0).astype(float)
        opt_times = pricer.op_times(table, tp, 1.0) if idx.opt.any() else np.zeros(len(table))
        arrays = {
            "weights": _prefix(weights),
            "state": _prefix(state),
            "kv": _prefix(kv),
            "stash": _prefix(stash),
            "stash_sp": _prefix(stash_sp),
            "stash_sel": _prefix(stash_sel),
            "stash_sel_sp": _prefix(stash_sel_sp),
            "inputs": _prefix(idx.inputs),
            "ar_fwd_n": _prefix(per_unit(has_ar, idx.fwd)),
            "ar_fwd_b": _prefix(per_unit(table.allreduce_bytes, idx.fwd)),
            "ar_bwd_n": _prefix(per_unit(has_ar, idx.bwd)),
            "ar_bwd_b": _prefix(per_unit(table.allreduce_bytes, idx.bwd)),
            "opt": _prefix(per_unit(opt_times, idx.opt)),
        }
        om, sm = sparse_table(out_max), sparse_table(stash)
        return cls(
            tp=tp,
            **arrays,
            out_max=om,
            stash_max=sm,
            lists={k: v.tolist() for k, v in arrays.items()},
            out_max_l=om.tolist(),
            stash_max_l=sm.tolist(),
            stash_sp_max_l=sparse_table(stash_sp).tolist(),
        )


@dataclass
class ScaledTables:
    """Kernel seconds per unit for one TP degree and micro-batch share (prefix arrays of length L+3)."""

    fwd: np.ndarray
    bwd: np.ndarray
    fwd_l: list[float]
    bwd_l: list[float]
    #: Prefix count of ops whose per-device work lies outside the profile's calibrated ranges.
    outside_l: list[float]
    #: Prefix sums of kernel seconds x held-out error of their kind (forward + backward).
    error_l: list[float]
    #: Forward kernel seconds of the attention core (selective recomputation re-runs them in backward).
    attn_fwd_l: list[float]
    #: Forward / backward kernel seconds of replicated ops (norms, residuals, dropouts; SP divides them by t).
    repl_fwd_l: list[float]
    repl_bwd_l: list[float]

    @classmethod
    def build(cls, idx: UnitIndex, pricer: KernelPricer, tp: int, scale: float) -> ScaledTables:
        n, unit, table = idx.n_units, idx.unit, idx.table
        times = pricer.op_times(table, tp, scale)
        fwd = _prefix(np.bincount(unit[idx.fwd], weights=times[idx.fwd], minlength=n))
        bwd = _prefix(np.bincount(unit[idx.bwd], weights=times[idx.bwd], minlength=n))
        outside = np.zeros(n)
        prof = pricer.platform.profile
        if any(k in prof.ranges for k in RANGE_KEYS):
            flops, nbytes = table.per_device(tp, scale)
            work = idx.fwd | idx.bwd
            for key, values in zip(RANGE_KEYS, (flops, nbytes), strict=True):
                span = prof.ranges.get(key)
                if span is None:
                    continue
                # in_range's test, on every op at once
                off = work & (values > 0) & ((values < span[0] * 0.999) | (values > span[1] * 1.001))
                outside += np.bincount(unit[off], minlength=n)
        weighted = times * pricer.error_weights(table)
        work = idx.fwd | idx.bwd
        error = _prefix(np.bincount(unit[work], weights=weighted[work], minlength=n))
        attn = _prefix(np.bincount(unit[idx.fwd & idx.core], weights=times[idx.fwd & idx.core], minlength=n))
        repl_f = _prefix(np.bincount(unit[idx.fwd & idx.repl], weights=times[idx.fwd & idx.repl], minlength=n))
        repl_b = _prefix(np.bincount(unit[idx.bwd & idx.repl], weights=times[idx.bwd & idx.repl], minlength=n))
        return cls(
            fwd,
            bwd,
            fwd.tolist(),
            bwd.tolist(),
            _prefix(outside).tolist(),
            error.tolist(),
            attn.tolist(),
            repl_f.tolist(),
            repl_b.tolist(),
        )


def contiguous_links(platform: Platform, candidates: list[int]) -> dict[str, np.ndarray]:
    """Link terms of contiguous device ranges, for the batched evaluator.

    ``group_alpha[t_index, start]`` / ``group_bw`` price the collectives of the
    group ``start .. start+t-1``; ``p2p_alpha[e]`` / ``p2p_bw`` the transfer
    from device e to e+1 (a boundary between contiguous stages). With fitted
    collectives, ``fit_lat[k, t_index, start]`` / ``fit_per_byte`` / ``fit_upto`` are
    the group's k-th all-reduce algorithm (``fit_on`` says which groups have them;
    slots after a group's last, unbounded one are never chosen).
    """
    n = platform.num_devices
    ga = np.zeros((len(candidates), n))
    gb = np.ones((len(candidates), n))
    fitted: dict[tuple[int, int], tuple[tuple[float, float, float], ...]] = {}
    for i, t in enumerate(candidates):
        for start in range(n - t + 1):
            terms = group_terms(platform, tuple(range(start, start + t)))
            ga[i, start], gb[i, start] = terms.alpha, terms.bandwidth
            if terms.allreduce:
                fitted[(i, start)] = terms.allreduce
    k = max((len(v) for v in fitted.values()), default=0)
    on = np.zeros((len(candidates), n), dtype=bool)
    lat, per_byte = np.zeros((k, len(candidates), n)), np.zeros((k, len(candidates), n))
    upto = np.full((k, len(candidates), n), np.inf)
    for (i, start), algs in fitted.items():
        on[i, start] = True
        for j, (a, b, u) in enumerate(algs):
            lat[j, i, start], per_byte[j, i, start], upto[j, i, start] = a, b, u
    pa, pb = np.zeros(max(n, 1)), np.ones(max(n, 1))
    for e in range(n - 1):
        pa[e], pb[e] = pair_link(platform, (e,), (e + 1,))
    return {
        "group_alpha": ga,
        "group_bw": gb,
        "p2p_alpha": pa,
        "p2p_bw": pb,
        "fit_on": on,
        "fit_lat": lat.reshape(k, on.size),
        "fit_per_byte": per_byte.reshape(k, on.size),
        "fit_upto": upto.reshape(k, on.size),
    }
