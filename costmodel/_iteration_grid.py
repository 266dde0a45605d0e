"""Grids of one model's iteration costs, built once: the tables :class:`~._iteration.IterationModel` reads.

One-layer graphs of the model at grid points of tokens, sampled rows and attention lengths (cached per
model: TP and platform reuse them), and the log-log curves and the (sequences, length) attention grid that
interpolate the real pricer's times between those points.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_right
from dataclasses import dataclass, replace

import numpy as np

from ..graphs import ModelSpec, build_graph
from ..graphs._task import Op
from ._platform import Platform
from ._pricing import KernelPricer, OpTable

#: Grid points per octave of the token grid (GEMM efficiency has kinks; 8 keeps off-grid error < 0.5%).
TOKENS_PER_OCTAVE = 8
#: Grid points per octave of the attention grids (smooth in the length).
ATTENTION_PER_OCTAVE = 4
#: Largest tokens / context on the grids; beyond it the last segment is extended (log-log).
GRID_TOP = 1 << 20
#: Largest sampled rows on the head grid.
HEAD_TOP = 1 << 16


def _grid(top: int, per_octave: int) -> list[int]:
    """Distinct integers 1 .. ``top`` spaced ``per_octave`` to an octave."""
    steps = round(math.log2(top) * per_octave)
    return sorted({max(1, round(2.0 ** (i / per_octave))) for i in range(steps + 1)})


@dataclass(frozen=True)
class Curve:
    """A positive function of a positive variable, log-log interpolated on a grid (extended at both ends)."""

    xs: tuple[float, ...]  # log x of the segments' starts but the first (bisect finds the segment)
    intercepts: tuple[float, ...]  # segment i: log y = intercepts[i] + slopes[i] log x
    slopes: tuple[float, ...]

    @classmethod
    def fit(cls, x: list[int] | list[float], y: np.ndarray) -> Curve:
        lx = [math.log(v) for v in x]
        ly = [math.log(max(float(v), 1e-15)) for v in y]
        slopes = [(ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i]) for i in range(len(lx) - 1)]
        intercepts = [ly[i] - lx[i] * slopes[i] for i in range(len(slopes))]
        return cls(tuple(lx[1:-1]), tuple(intercepts), tuple(slopes))

    def __call__(self, x: float) -> float:
        lx = math.log(x)
        i = bisect_right(self.xs, lx)  # 0 .. len(slopes) - 1: the end segments extend beyond the grid
        return math.exp(self.intercepts[i] + self.slopes[i] * lx)


@dataclass(frozen=True)
class Workloads:
    """Ops of a one-layer copy of the model at every grid point (independent of platform and TP)."""

    tokens: list[int]
    layer: OpTable  # non-attention ops of the layer at each token grid point
    layer_group: np.ndarray  # grid index of each row
    embed: OpTable
    embed_group: np.ndarray
    heads: list[int]
    head: OpTable
    head_group: np.ndarray
    lengths: list[int]
    prefill_attention: list[Op]  # one sequence at each length (more sequences: the pricer's batch scale)
    decode_attention: list[Op]
    reference: OpTable  # every op of the one-layer graph at the reference tokens (memory, workspace)
    reference_unit: np.ndarray  # 0 embedding, 1 layer, 2 head
    reference_tokens: int


def _ops_by_layer(spec: ModelSpec, *, phase: str, batch: int, seq: int, context: int = 0) -> dict[int, list[Op]]:
    graph = build_graph(spec, phase=phase, batch=batch, seq=seq, context=context)
    out: dict[int, list[Op]] = {}
    for task in graph.tasks:
        out.setdefault(task.layer, []).extend(task.ops)
    return out


def _stack(rows: list[list[Op]]) -> tuple[OpTable, np.ndarray]:
    ops = [op for group in rows for op in group]
    group = np.repeat(np.arange(len(rows)), [len(g) for g in rows])
    return OpTable.from_ops(ops), group


@functools.lru_cache(maxsize=16)
def workloads(spec: ModelSpec) -> Workloads:
    """Build the one-layer graphs of every grid point once per model (cached: TP and platform reuse them)."""
    one = replace(spec, layers=1, attention="flash")
    tokens = _grid(GRID_TOP, TOKENS_PER_OCTAVE)
    layer_rows, embed_rows = [], []
    for t in tokens:
        by_layer = _ops_by_layer(one, phase="prefill", batch=1, seq=t)
        layer_rows.append([o for o in by_layer[0] if o.kind != "attention"])
        embed_rows.append(by_layer[-1])
    heads = _grid(HEAD_TOP, TOKENS_PER_OCTAVE)
    head_rows = [_ops_by_layer(one, phase="decode", batch=n, seq=1, context=1)[1] for n in heads]
    lengths = _grid(GRID_TOP, ATTENTION_PER_OCTAVE)

    def attention(phase: str, batch: int, length: int) -> Op:
        if phase == "prefill":
            ops = _ops_by_layer(one, phase=phase, batch=batch, seq=length)[0]
        else:
            ops = _ops_by_layer(one, phase=phase, batch=batch, seq=1, context=length)[0]
        return next(o for o in ops if o.kind == "attention")

    prefill = [attention("prefill", 1, s) for s in lengths]
    decode = [attention("decode", 1, c) for c in lengths]
    ref_tokens = 1024
    ref = _ops_by_layer(one, phase="prefill", batch=1, seq=ref_tokens)
    ref_ops = [*ref[-1], *ref[0], *ref[1]]
    unit = np.array([0] * len(ref[-1]) + [1] * len(ref[0]) + [2] * len(ref[1]))
    layer, lg = _stack(layer_rows)
    embed, eg = _stack(embed_rows)
    head, hg = _stack(head_rows)
    return Workloads(
        tokens, layer, lg, embed, eg, heads, head, hg, lengths, prefill, decode, OpTable.from_ops(ref_ops), unit,
        ref_tokens,
    )  # fmt: skip


@dataclass(frozen=True)
class AttentionGrid:
    """One layer's attention kernel over (sequences, length): a length curve per sequence count, linear between.

    The fitted attention terms of a phase are affine in the sequences at a fixed length (every term but the
    launch scales with the batch): then two counts (1 and 2) give it exactly. Where the kernel is not (the
    hand-set efficiency curves, or a fitted residual over sequences x KV), a probe at 2^16 sequences says
    so and the counts become the powers of two up to 2^16.
    """

    counts: tuple[float, ...]
    curves: tuple[Curve, ...]  # one per count, on the same lengths (one bisect serves them all)

    @classmethod
    def price(cls, platform: Platform, dtype: str, kv_dtype: str, tp: int, phase: str, w: Workloads) -> AttentionGrid:
        ops = w.prefill_attention if phase == "prefill" else w.decode_attention
        whole = KernelPricer(platform, dtype, phase=phase, batch=1, kv_dtype=kv_dtype)
        # Fitted prefill terms read the query length from the pricer: one pricer per length.
        per_length = phase == "prefill" and whole.attention is not None
        tables = [OpTable.from_ops([op]) for op in ops] if per_length else []
        pricers = [
            KernelPricer(platform, dtype, phase=phase, batch=1, q_len=length, kv_dtype=kv_dtype) for length in w.lengths
        ] if per_length else []  # fmt: skip
        table = OpTable.from_ops(ops)

        def times(counts: tuple[int, ...]) -> np.ndarray:
            """Seconds at each length (rows) and sequence count (columns): the batch as the pricer's scale."""
            if per_length:
                return np.array(
                    [
                        [float(p.op_times(t, tp, float(b))[0]) for b in counts]
                        for p, t in zip(pricers, tables, strict=True)
                    ]
                )
            return np.column_stack([whole.op_times(table, tp, float(b)) for b in counts])

        top = 1 << 16
        probe = times((1, 2, top))
        line = probe[:, 0] + (top - 1) * (probe[:, 1] - probe[:, 0])
        counts: tuple[int, ...] = (1, 2)
        if np.allclose(probe[:, 2], line, rtol=1e-6, atol=0.0):
            grid = probe[:, :2]
        else:
            counts = tuple(1 << i for i in range(17))
            grid = times(counts)
        curves = tuple(Curve.fit(w.lengths, grid[:, j]) for j in range(len(counts)))
        return cls(tuple(float(b) for b in counts), curves)

    def __call__(self, sequences: float, length: float) -> float:
        counts = self.counts
        j = bisect_right(counts, sequences) - 1
        if j < 0:
            j = 0
        elif j > len(counts) - 2:
            j = len(counts) - 2
        lo, hi = counts[j], counts[j + 1]
        c0, c1 = self.curves[j], self.curves[j + 1]
        lx = math.log(length)
        i = bisect_right(c0.xs, lx)
        a = math.exp(c0.intercepts[i] + c0.slopes[i] * lx)
        b = math.exp(c1.intercepts[i] + c1.slopes[i] * lx)
        return a + (sequences - lo) / (hi - lo) * (b - a)


def sum_by_group(times: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(group, weights=times, minlength=n)
