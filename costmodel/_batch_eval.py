"""The vectorised arithmetic behind :func:`evaluate_batch`: the formulas of :mod:`._analytic` on arrays.

Only the stages that exist are computed: they are flattened plan by plan (plan
0's stages, then plan 1's, ...), per-plan values are gathered to them through
``owner``, and sums and maxima over a plan's stages are ``reduceat`` over the
offsets where each plan starts (added in stage order, like the single path).
Every per-stage quantity is a gather from a [TP degree, unit] prefix table at
the stage's unit range. Invalid plans are swapped for a trivial valid one before
the arithmetic (so no index is out of range) and masked afterwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graphs import Phase
from ._batch import BatchResult, PlanBatch
from ._pipeline import training_makespan
from ._pricing import chosen_allreduce

if TYPE_CHECKING:
    from ._analytic import AnalyticEvaluator

#: Plans evaluated per numpy pass: small enough that the temporaries stay in cache (measured on 100k
#: plans: about 2x faster than one pass).
CHUNK = 16384

_FIT_KEYS = ("fit_lat", "fit_per_byte", "fit_upto")
_TP_KEYS = ("weights", "state", "kv", "stash", "inputs", "ar_fwd_n", "ar_fwd_b", "ar_bwd_n", "ar_bwd_b", "opt")


def evaluate_batch(ev: AnalyticEvaluator, batch: PlanBatch) -> BatchResult:
    """Vectorised :meth:`AnalyticEvaluator.evaluate` (see :mod:`._batch` for the conventions)."""
    n = len(batch)
    if n <= CHUNK:
        return evaluate_arrays(ev, batch)
    parts = [evaluate_arrays(ev, batch.slice(i, min(i + CHUNK, n))) for i in range(0, n, CHUNK)]

    def join(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    out = BatchResult(*(join(k) for k in ("latency_s", "tokens_per_s", "max_memory_bytes", "feasible", "valid")))
    if parts[0].step_s is not None:
        out.step_s, out.mfu = join("step_s"), join("mfu")
    return out


def _stacked(ev: AnalyticEvaluator) -> dict[str, Any]:
    """Per-TP tables of every candidate degree stacked to [n_tp, ...] (built once per evaluator)."""
    cache = ev._batch
    if "lut" not in cache:
        tables = [ev.tp_tables(t) for t in ev.candidates]
        for key in _TP_KEYS:  # flat [tp index x (units + 1)] so a gather is one take()
            cache[key] = np.stack([getattr(t, key) for t in tables]).ravel()
        cache["out_max"] = np.stack([t.out_max for t in tables])  # [tp index, level, unit]
        cache["stash_max"] = np.stack([t.stash_max for t in tables])
        lut = np.full(max(ev.candidates) + 1, -1, dtype=np.int64)
        lut[ev.candidates] = np.arange(len(ev.candidates))
        cache["lut"] = lut
        cache["log2"] = np.array([max(int(x).bit_length() - 1, 0) for x in range(ev.n_layers + 3)], dtype=np.int64)
        cache["cut"] = np.asarray(ev.cut)
        cache["starts"] = ev.units.allowed_start
        cache["links"] = ev.contiguous_links()
    return cache


class _Flat:
    """The existing stages of a batch, flattened plan-major, with what ties them to their plan."""

    def __init__(self, batch: PlanBatch) -> None:
        n, width = batch.tp.shape
        present = batch.tp > 0
        index = np.flatnonzero(present)
        self.owner = index // width
        self.tp = batch.tp.ravel().take(index)
        self.first = batch.first_layer.ravel().take(index)
        self.last = batch.last_layer.ravel().take(index)
        self.recompute = batch.recompute.ravel().take(index)
        self.pp = np.bincount(self.owner, minlength=n)
        self.offsets = np.cumsum(self.pp) - self.pp  # first stage of each plan
        self.gaps = (present[:, 1:] & ~present[:, :-1]).any(1)
        self.pos = np.arange(len(index)) - self.offsets.take(self.owner)  # stage index within its plan
        self.is_last = self.pos == self.pp.take(self.owner) - 1


def _validity(ev: AnalyticEvaluator, f: _Flat, b: PlanBatch) -> np.ndarray:
    """What ``Plan.problems`` checks, for contiguous plans: TP degrees, devices, batch split, coverage."""
    cache, n_layers = ev._batch, ev.n_layers
    lut = cache["lut"]
    r, m = b.replicas, b.micro_batches
    tp, first, last = f.tp, f.first, f.last
    ok = (tp < len(lut)) & (lut.take(tp, mode="clip") >= 0) & (last >= first) & (first >= 0) & (last < n_layers)
    ok &= cache["starts"].take(first, mode="clip")
    prev_last = np.concatenate(([-1], last[:-1]))
    ok &= np.where(f.pos == 0, first == 0, first == prev_last + 1)
    ok &= ~f.is_last | (last == n_layers - 1)
    bad_stages = np.bincount(f.owner, weights=~ok, minlength=len(r))
    dpr = np.bincount(f.owner, weights=tp, minlength=len(r))
    valid = (f.pp >= 1) & ~f.gaps & (bad_stages == 0) & (r >= 1) & (m >= 1)
    valid &= ev.batch % np.maximum(r * m, 1) == 0
    valid &= dpr * r <= ev.platform.num_devices
    return valid


def _sanitised(batch: PlanBatch, valid: np.ndarray, n_layers: int) -> PlanBatch:
    """``batch`` with each invalid plan replaced by one stage of TP 1 holding every layer."""
    bad = ~valid
    tp, first, last = batch.tp.copy(), batch.first_layer.copy(), batch.last_layer.copy()
    tp[bad], first[bad], last[bad] = 0, 0, 0
    tp[bad, 0], last[bad, 0] = 1, n_layers - 1
    r, m = np.where(bad, 1, batch.replicas), np.where(bad, 1, batch.micro_batches)
    return PlanBatch(first, last, tp, m, r, batch.recompute, batch.gpipe)


def evaluate_arrays(ev: AnalyticEvaluator, batch: PlanBatch) -> BatchResult:
    cache = _stacked(ev)
    n_layers, train, n_units = ev.n_layers, ev.phase == Phase.TRAIN, ev.n_layers + 3
    f = _Flat(batch)
    valid = _validity(ev, f, batch)
    if not valid.all():
        batch = _sanitised(batch, valid, n_layers)
        f = _Flat(batch)
    owner, offsets, tp, first, last = f.owner, f.offsets, f.tp, f.first, f.last
    r, m = batch.replicas, batch.micro_batches
    ti = cache["lut"].take(tp)
    lo = first + (first > 0)  # unit range [lo, hi): + the pre unit on the first stage, the post unit on the last
    hi = last + 2 + (last == n_layers - 1)
    share = r * m
    shares, inv = np.unique(share, return_inverse=True)
    scale = (1.0 / share).take(owner)
    row = ti * n_units
    at_hi, at_lo = row + hi, row + lo

    def diff(key: str) -> np.ndarray:
        flat = cache[key]
        return flat.take(at_hi) - flat.take(at_lo)

    k_row = (ti * len(shares) + inv.reshape(-1).take(owner)) * n_units

    def kernels(attr: str) -> np.ndarray:
        flat = _kernel_table(ev, attr, shares)
        return flat.take(k_row + hi) - flat.take(k_row + lo)

    levels = cache["out_max"].shape[1]
    k = cache["log2"].take(hi - lo)
    m_lo = (ti * levels + k) * (n_units - 1)
    m_hi = m_lo + hi - (1 << k)
    m_lo += lo

    def rmax(key: str) -> np.ndarray:
        flat = cache[key]
        return np.maximum(flat.take(m_lo), flat.take(m_hi))

    def per_plan(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(values, offsets)

    links = cache["links"]
    n_dev = ev.platform.num_devices
    ends = np.cumsum(tp)
    start = ends - tp
    start -= start.take(offsets).take(owner)  # devices from 0 in every plan
    at_start = ti * n_dev + start
    alpha, bw = links["group_alpha"].take(at_start), links["group_bw"].take(at_start)
    tpf = tp.astype(float)

    fit_on = links["fit_on"].take(at_start) if links["fit_on"].any() else None

    def allreduce(count: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        on = (count > 0.5) & (tp > 1) & (nbytes > 0)
        ring = 2 * (tpf - 1) * (count * alpha) + 2 * (tpf - 1) / tpf * nbytes / bw
        if fit_on is not None:  # fitted collectives: the algorithm the message size selects (tp_allreduce_time)
            terms = [tuple(links[key][j].take(at_start) for key in _FIT_KEYS) for j in range(len(links["fit_lat"]))]
            ring = np.where(fit_on, chosen_allreduce(nbytes, count, terms), ring)
        return np.where(on, ring, 0.0)

    kern = kernels("fwd")
    comm = allreduce(diff("ar_fwd_n"), diff("ar_fwd_b") * scale)
    weights = diff("weights")
    need = weights + 2.0 * rmax("out_max") * scale
    # Boundaries: a stage that is not its plan's last sends from its last device to the next stage's first.
    e = start + tp - 1
    nbytes = cache["cut"].take(last + 1, mode="clip") * scale
    p2p_alpha, p2p_bw = links["p2p_alpha"].take(e, mode="clip"), links["p2p_bw"].take(e, mode="clip")
    hops = np.where(~f.is_last & (nbytes > 0), p2p_alpha + nbytes / p2p_bw, 0.0)
    mf = m.astype(float)
    if train:
        kern_b = kernels("bwd")
        comm_b = allreduce(diff("ar_bwd_n"), diff("ar_bwd_b") * scale)
        rec = f.recompute
        kern_b = np.where(rec, kern_b + kern, kern_b)
        comm_b = np.where(rec, comm_b + comm, comm_b)
        ms = m.take(owner)
        kept = np.where(batch.gpipe.take(owner), ms, np.minimum(ms, f.pp.take(owner) - f.pos))  # 1F1B: min(m, p-i)
        # Recomputation keeps the layer inputs of every micro-batch in flight and one layer's full activations.
        stash = np.where(rec, diff("inputs") * kept + rmax("stash_max"), diff("stash") * kept) * scale
        need += diff("state") + stash
        kern += kern_b
        comm += comm_b
        dpr = per_plan(np.add, tp)
        dp = _dp_allreduce(ev, weights, start, dpr.take(owner), r.take(owner))
        back = kern_b + comm_b
        latency = _training_steps(f, m, batch.gpipe, kern + comm - back, back, hops, dp + diff("opt"))
        tokens = ev.tokens / latency
        mfu = ev.units.train_flops / (latency * dpr * r * ev.pricer.peak)
    else:
        need += diff("kv") * (ev.batch / r).take(owner) * ev.kv_len
        tau = kern + comm
        path = per_plan(np.add, tau) + per_plan(np.add, hops)
        bottleneck = np.maximum(per_plan(np.maximum, tau), per_plan(np.maximum, hops))
        if ev.phase == Phase.PREFILL:
            latency = path + (mf - 1) * bottleneck
            tokens = ev.tokens / latency
        else:
            latency = np.maximum(path, mf * bottleneck)
            tokens = ev.batch / latency
    max_mem = per_plan(np.maximum, need)
    latency = np.where(valid, latency, np.inf)
    out = BatchResult(
        latency_s=latency,
        tokens_per_s=np.where(valid, tokens, 0.0),
        max_memory_bytes=np.where(valid, max_mem, np.nan),
        feasible=valid & (max_mem <= ev.usable),
        valid=valid,
    )
    if train:
        out.step_s, out.mfu = latency, np.where(valid, mfu, np.nan)
    return out


def _kernel_table(ev: AnalyticEvaluator, attr: str, shares: np.ndarray) -> np.ndarray:
    """Kernel prefix sums of every candidate TP degree and the batch's shares, flat [tp, share, unit + 1]."""
    key = (attr, tuple(shares.tolist()))
    table = ev._batch.get(key)
    if table is None:
        rows = [[getattr(ev.scaled_tables(t, int(s)), attr) for s in shares] for t in ev.candidates]
        table = ev._batch[key] = np.stack(rows).ravel()
    return table


def _dp_allreduce(
    ev: AnalyticEvaluator, weights: np.ndarray, start: np.ndarray, stride: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """Gradient all-reduce of each stage over its copies {start + k x stride}, links looked up per distinct group."""
    alpha, bw = np.zeros(start.shape), np.ones(start.shape)
    multi = r > 1
    if multi.any():
        keys = np.stack([start[multi], stride[multi], r[multi]], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        terms = np.array([ev.dp_link(int(a), int(b), int(c)) for a, b, c in uniq])
        alpha[multi], bw[multi] = terms[inv.reshape(-1), 0], terms[inv.reshape(-1), 1]
    rf = r.astype(float)
    on = multi & (weights > 0)
    r1 = np.maximum(rf, 1.0)
    return np.where(on, 2 * (r1 - 1) * alpha + 2 * (r1 - 1) / r1 * weights / bw, 0.0)


def _training_steps(
    f: _Flat, m: np.ndarray, gpipe: np.ndarray, fwd: np.ndarray, back: np.ndarray, hops: np.ndarray, tail: np.ndarray
) -> np.ndarray:
    """:func:`training_makespan` of every plan, vectorised over the plans of each (p, m, schedule)."""
    out = np.empty(len(f.pp))
    keys = np.stack([f.pp, m, gpipe.astype(np.int64)], axis=1)
    groups, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    for g, (p, mg, gp) in enumerate(groups.tolist()):
        idx = np.flatnonzero(inv == g)
        base = f.offsets.take(idx)
        out[idx] = training_makespan(
            [fwd.take(base + s) for s in range(p)],
            [back.take(base + s) for s in range(p)],
            [hops.take(base + s) for s in range(p - 1)],
            [tail.take(base + s) for s in range(p)],
            mg,
            bool(gp),
            np.maximum,
            np.zeros(len(idx)),
        )
    return out
