"""The op microbenchmarks of ``calibrate measure``: one layer's Vidur ops, and attention.

Why weights (and KV caches) are read cold: in a model every layer's weights
pass through the caches once per step, and a model is larger than the last-level
cache (the validated one holds 69 MB of bf16 weights; this CPU has 32 MB of L3).
Timing a GEMM again and again on the same weight matrix would time it from
cache: a decode GEMV then looks 30% faster than it runs in the model. So each
call takes the next of several copies of its weights (or KV cache), views of one
:class:`ColdPool` whose copies together span :data:`COLD_BYTES` (four times this
CPU's L3; 2 GiB on a GPU, many times its L2, and room for the largest operand of
the GPU grid). Activations stay hot: in a model the previous op has just written them.

Why, on CPU, every timed call follows an untimed GEMV on cold weights
(:meth:`ColdPool.disturb`): in a model an op runs right after another op (often a
GEMM) has streamed megabytes through the caches, so its code, data and the
allocator's state are no longer in L1/L2. Timed back to back, small ops look 2-3x
faster than they run in a model (this CPU: RMSNorm of one token 22-33 us hot,
65 us right after a GEMV, as in the end-to-end model; rotary 18 -> 42 us, add 2-3
-> 6 us); large ops are unaffected. GPUs are timed back to back, as Vidur does
(their kernel times do not depend on the host's caches).

Imported by :func:`._measure.measure` only (it imports torch at the top).
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import _torchops as ops
from ._measure_spec import ATTN_COLUMNS, STATS, VIDUR_OPS, Grid, LayerShape, progress

torch = ops.torch
#: Bytes the copies of one operand span, per device type (see the module docstring).
COLD_BYTES = {"cpu": 128 * 2**20, "cuda": 2 * 2**30}
MAX_COPIES = 1024


class ColdPool:
    """One random buffer of :data:`COLD_BYTES`; :meth:`cycle` hands out views at distinct offsets, round robin."""

    def __init__(self, device: str, dtype: Any) -> None:
        self.device, self.dtype = device, dtype
        elems = COLD_BYTES[device] * 8 // torch.finfo(dtype).bits
        self.buf = torch.randn(elems, device=device, dtype=dtype).mul_(0.02)
        self.offset = 0
        self.before = self.disturber()

    def cycle(self, *shape: int) -> Iterator[Any]:
        """An endless iterator over copies of a ``shape`` tensor that together span the pool."""
        numel = math.prod(shape)
        total = self.buf.numel()
        if numel > total:
            raise ValueError(f"an operand of {numel} elements exceeds the cold pool ({total})")
        count = max(1, min(MAX_COPIES, total // numel))
        views = []
        for _ in range(count):
            if self.offset + numel > total:
                self.offset = 0
            views.append(self.buf[self.offset : self.offset + numel].view(*shape))
            self.offset += numel
        return itertools.cycle(views)

    def rnd(self, *shape: int) -> Any:
        """A hot (ordinary) random tensor."""
        return torch.randn(*shape, device=self.device, dtype=self.dtype) * 0.02

    def disturber(self) -> Callable[[], object] | None:
        """What runs before each timed call: a GEMV on cold 4 MB weights (CPU), nothing (GPU)."""
        if self.device != "cpu":
            return None
        x, weights = self.rnd(1, 1024), self.cycle(2048, 1024)
        return lambda: ops.linear(x, next(weights))


def _stats(times_s: Sequence[float], prefix: str) -> dict[str, float]:
    ms = [t * 1e3 for t in times_s]
    values = {"min": min(ms), "max": max(ms), "mean": statistics.fmean(ms), "median": statistics.median(ms),
              "std": statistics.pstdev(ms)}  # fmt: skip
    return {f"time_stats.{prefix}.{k}": values[k] for k in STATS}


def valid_tp(shape: LayerShape, t: int) -> bool:
    return shape.n_head % t == 0 and shape.n_kv_head % t == 0 and shape.n_expanded_embd % t == 0


def _time(fn: Callable[[], object], pool: ColdPool, grid: Grid) -> list[float]:
    return ops.time_calls(fn, pool.device, budget_s=grid.budget_s, min_reps=grid.min_reps, max_reps=grid.max_reps,
                          before=pool.before)  # fmt: skip


def layer_rows(shape: LayerShape, grid: Grid, pool: ColdPool) -> list[dict[str, Any]]:
    """One row per (tokens, tp) with every op of a layer sharded by tp, timed one by one."""
    rows = []
    up_n = (2 if shape.use_gated_mlp else 1) * shape.n_expanded_embd
    tps = [t for t in grid.tp if valid_tp(shape, t)]
    total = len(tps) * len(grid.tokens)
    for i, t in enumerate(tps):
        weights = _layer_weights(shape, t, pool)
        for j, n in enumerate(grid.tokens):
            if 2.0 * n * shape.n_embd * up_n / t > grid.max_gemm_flops:
                continue
            t0 = time.perf_counter()
            fns = _layer_ops(shape, t, n, pool, weights)
            row: dict[str, Any] = {}
            for op in VIDUR_OPS:
                row.update(_stats(_time(fns[op], pool, grid), op))
            row.update(shape.columns())
            row.update(num_tokens=n, num_tensor_parallel_workers=t)
            rows.append(row)
            k = i * len(grid.tokens) + j + 1
            progress(f"{shape.org}/{shape.model} tp={t} tokens={n} ({k}/{total}) {time.perf_counter() - t0:.1f} s")
    return rows


def _layer_weights(shape: LayerShape, t: int, pool: ColdPool) -> dict[str, Any]:
    """Cold copies of a layer's weight matrices for TP ``t`` (biases, norms, table: hot)."""
    h, d, f = shape.n_embd, shape.head_dim, shape.n_expanded_embd
    heads, kv = shape.n_head // t, shape.n_kv_head // t
    up_n = (2 if shape.use_gated_mlp else 1) * f // t
    dims = {"qkv": ((heads + 2 * kv) * d, h), "o": (h, heads * d), "up": (up_n, h), "down": (h, f // t)}
    out: dict[str, Any] = {name: pool.cycle(*dim) for name, dim in dims.items()}
    gpt = not shape.use_gated_mlp  # GPT-style: biases, as the fit reads non-gated shapes
    out.update({f"b_{name}": pool.rnd(dim[0]) if gpt else None for name, dim in dims.items()})
    out["table"] = pool.rnd(shape.vocab_size // t, h)
    return out


def _layer_ops(shape: LayerShape, t: int, n: int, pool: ColdPool, w: dict[str, Any]) -> dict[str, Callable[[], object]]:
    """Closures running each Vidur op of a layer on one device of a TP group of ``t``, ``n`` tokens.

    Gated shapes are Llama-style (no biases, SwiGLU), non-gated ones GPT-style
    (biases, tanh-GeLU), as the fit reads them. Every shape's norms are RMSNorm:
    torch's bf16 RMSNorm on CPU is 2-5x slower than its LayerNorm, one ``norm`` curve
    cannot follow both, and the profile is for the Llama-style models it validates.
    """
    h, d, f = shape.n_embd, shape.head_dim, shape.n_expanded_embd
    heads, kv = shape.n_head // t, shape.n_kv_head // t
    up_n = (2 if shape.use_gated_mlp else 1) * f // t
    rnd = pool.rnd
    ids = torch.randint(0, shape.vocab_size, (n,), device=pool.device)
    x, y, norm_w = rnd(n, h), rnd(n, h), torch.ones(h, device=pool.device, dtype=pool.dtype)
    qkv, attn_out, up, act = rnd(n, (heads + 2 * kv) * d), rnd(n, heads * d), rnd(n, up_n), rnd(n, f // t)
    qk, _ = ops.split_qkv(qkv, 1, heads, kv, d)
    cos, sin = ops.rope_tables(torch.arange(n, device=pool.device), d, pool.dtype)
    return {
        "emb": lambda: ops.embed(ids, w["table"], 0, sharded=t > 1),
        "input_layernorm": lambda: ops.rms_norm(x, norm_w),
        "attn_pre_proj": lambda: ops.linear(x, next(w["qkv"]), w["b_qkv"]),
        "attn_rope": lambda: ops.rope(qk, cos, sin),
        "attn_post_proj": lambda: ops.linear(attn_out, next(w["o"]), w["b_o"]),
        "post_attention_layernorm": lambda: ops.rms_norm(y, norm_w),
        "mlp_up_proj": lambda: ops.linear(x, next(w["up"]), w["b_up"]),
        "mlp_act": lambda: ops.activation(up, shape.use_gated_mlp),
        "mlp_down_proj": lambda: ops.linear(act, next(w["down"]), w["b_down"]),
        "add": lambda: ops.add(x, y),
    }


def attention_rows(shape: LayerShape, grid: Grid, pool: ColdPool) -> list[dict[str, Any]]:
    """Prefill (hot q, k, v) and decode (cold KV cache) attention of ``shape`` for TP degrees 1 and 2."""
    rows: list[dict[str, Any]] = []
    d = shape.head_dim
    empty_prefill = {f"time_stats.attn_prefill.{k}": "" for k in STATS}
    empty_decode = {f"time_stats.attn_decode.{k}": "" for k in STATS}
    for t in [t for t in grid.tp if t <= 2 and valid_tp(shape, t)]:
        heads, kv = shape.n_head // t, shape.n_kv_head // t
        for b, s in grid.prefill:
            fn = functools.partial(ops.attention_prefill, pool.rnd(b, s, heads + kv, d), pool.rnd(b, s, kv, d), heads)
            rows.append({**_stats(_time(fn, pool, grid), "attn_prefill"), **empty_decode,
                         **_attn_cols(shape, t, b, s, 0, True)})  # fmt: skip
        for b, ctx in grid.decode:
            step = _decode_step(pool.rnd(b, 1, heads + kv, d), pool.rnd(b, 1, kv, d),
                                pool.cycle(2, b, kv, ctx + 1, d), ctx, heads)  # fmt: skip
            rows.append({**empty_prefill, **_stats(_time(step, pool, grid), "attn_decode"),
                         **_attn_cols(shape, t, b, 0, ctx, False)})  # fmt: skip
        progress(f"{shape.org}/{shape.model} attention tp={t}: {len(grid.prefill)} prefill, {len(grid.decode)} decode")
    return rows


def _decode_step(qk: Any, v: Any, caches: Iterator[Any], ctx: int, heads: int) -> Callable[[], object]:
    def step() -> object:
        kc, vc = next(caches)
        return ops.attention_decode(qk, v, kc, vc, ctx, heads)

    return step


def _attn_cols(shape: LayerShape, t: int, batch: int, chunk: int, ctx: int, prefill: bool) -> dict[str, Any]:
    values = (shape.n_embd, shape.n_head, shape.n_kv_head, t, batch, chunk, ctx, prefill)
    return dict(zip(ATTN_COLUMNS, values, strict=True))


def peak_rates(dtype: str, *, budget_s: float = 0.3) -> dict[str, float]:
    """This CPU's best GEMM rate (FLOP/s) in ``dtype`` and in fp32, and its copy bandwidth (bytes/s), one thread.

    What ``calibrate local`` writes as the ``cpu-local`` device's datasheet (the
    shipped preset's is another CPU's: a CPU with avx512_bf16 runs bf16 GEMMs several
    times faster than the fp32 FMA rate of an AVX2-only one). A 256 x 2048 x 2048
    GEMM is past every curve's knee; the copy of 256 MB is far beyond the caches
    (read and write counted).
    """
    out: dict[str, float] = {}
    for name in dict.fromkeys(("fp32", dtype)):
        a = torch.randn(256, 2048, dtype=ops.DTYPES[name])
        b = torch.randn(2048, 2048, dtype=ops.DTYPES[name])
        times = ops.time_calls(functools.partial(ops.linear, a, b), "cpu", budget_s=budget_s, min_reps=3, max_reps=20)
        out[f"gemm_{name}_flops"] = 2.0 * 256 * 2048 * 2048 / min(times)
    src = torch.ones(64 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = ops.time_calls(lambda: dst.copy_(src), "cpu", budget_s=budget_s, min_reps=3, max_reps=20)
    out["copy_bytes_per_s"] = 2.0 * src.numel() * src.element_size() / min(times)
    return out
