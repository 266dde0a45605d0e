"""The ops of a Llama-style layer in plain torch, shared by the microbenchmarks and the end-to-end model.

Why one module: the calibration is only as good as the match between what was
measured and what runs. The microbenchmarks (:mod:`._measure`) time exactly these
functions, one per Vidur op name, and the end-to-end model (:mod:`._e2e_model`)
is built from the same functions, so a fitted profile describes the computation
the validation runs, op for op.

Layouts: activations are ``[tokens, features]`` (tokens = batch x sequence);
the fused QKV projection gives ``[q | k | v]`` along the features; attention
takes ``[batch, seq, heads, head_dim]`` views and the KV cache is head-major
``[batch, kv_heads, context, head_dim]`` so scaled-dot-product attention reads
it without a copy.

This module imports torch at the top: import it only inside functions (the cost
model must stay importable without torch).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

#: dtype names of the cost model -> torch dtypes.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RMS_EPS = 1e-5


def set_threads(n: int) -> int:
    """Set torch's intra-op threads; return the previous value (callers restore it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


def embed(ids: torch.Tensor, table: torch.Tensor, vocab_start: int = 0, sharded: bool = False) -> torch.Tensor:
    """Token embedding; ``sharded``: a vocab-parallel slice starting at ``vocab_start`` (rows of other ranks -> 0).

    The sharded form is Megatron's: every rank looks up all tokens in its slice of the
    table and the ranks' outputs are summed by an all-reduce (done by the caller).
    """
    if not sharded:
        return F.embedding(ids, table)
    local = ids - vocab_start
    inside = (local >= 0) & (local < table.shape[0])
    out = F.embedding(local.clamp(0, table.shape[0] - 1), table)
    return out.mul_(inside.unsqueeze(-1))  # 5x faster than masked_fill_ in bf16 on CPU


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, RMS_EPS)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` (weights stored ``[out, in]`` like ``nn.Linear``)."""
    return F.linear(x, weight, bias)


def rope_tables(positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of rotary embedding for ``positions``, shaped ``[len, 1, head_dim]`` (broadcast over heads)."""
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    ang = positions.to(torch.float32)[:, None] * inv[None, :]
    ang = torch.cat((ang, ang), dim=-1)[:, None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rope(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of q and k at once: ``qk`` is ``[batch, seq, q_heads + kv_heads, head_dim]``."""
    x1, x2 = qk.chunk(2, dim=-1)
    return qk * cos + torch.cat((-x2, x1), dim=-1) * sin


def split_qkv(
    qkv: torch.Tensor, batch: int, heads: int, kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of a fused projection output: ``qk`` ``[b, s, heads + kv_heads, d]`` (for :func:`rope`) and ``v``."""
    qk_width = (heads + kv_heads) * head_dim
    seq = qkv.shape[0] // batch
    qk = qkv[:, :qk_width].reshape(batch, seq, heads + kv_heads, head_dim)
    v = qkv[:, qk_width:].reshape(batch, seq, kv_heads, head_dim)
    return qk, v


def attention_prefill(qk: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Causal attention over the prompt; ``qk`` after rotary. Returns ``[batch x seq, heads x head_dim]``."""
    b, s, _, d = qk.shape
    q = qk[:, :, :heads].transpose(1, 2)
    k = qk[:, :, heads:].transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, enable_gqa=k.shape[1] != heads)
    return out.transpose(1, 2).reshape(b * s, heads * d)


def attention_decode(
    qk: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: int, heads: int
) -> torch.Tensor:
    """One new token per sequence: write its k, v at ``pos`` of the cache and attend over ``pos + 1`` tokens.

    Grouped-query attention folds each KV head's group of query heads into the query
    length (``[b, kv, group, d]``), so the cache is read once per KV head, as the cost
    model counts it (``enable_gqa`` would expand K and V to every query head). With
    one query row per KV head (multi-head attention) the row is doubled and the copy
    dropped: torch's CPU flash kernel takes a 3x slower path for a single bf16 query
    row than for two, so every decode runs the same fast path.
    """
    b, _, _, d = qk.shape
    kv = k_cache.shape[1]
    group = heads // kv
    k_cache[:, :, pos] = qk[:, 0, heads:]
    v_cache[:, :, pos] = v[:, 0]
    q = qk[:, 0, :heads].reshape(b, kv, group, d)
    if group == 1:
        q = q.expand(b, kv, 2, d).contiguous()
    out = F.scaled_dot_product_attention(q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1])
    return out[:, :, :group].reshape(b, heads * d)


def activation(up: torch.Tensor, gated: bool) -> torch.Tensor:
    """SwiGLU on a fused ``[gate | up]`` projection, or tanh-GeLU on a plain one."""
    if gated:
        gate, val = up.chunk(2, dim=-1)
        return F.silu(gate) * val
    return F.gelu(up, approximate="tanh")


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


# -- timing ----------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(
    fn: Callable[[], object],
    device: str,
    *,
    budget_s: float,
    min_reps: int,
    max_reps: int,
    before: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of each of several calls of ``fn`` after warm-up (CPU: wall clock; CUDA: events).

    The number of repeats fits ``budget_s`` from the first (warm) call, within
    ``[min_reps, max_reps]``: tiny kernels get many repeats for a stable median,
    large GEMMs a few. ``before`` runs, untimed, before every call (the op a model
    would have run just before this one; see ``_measure_ops``). Python's garbage
    collector is off meanwhile, as ``timeit`` does (see :func:`no_gc`).
    """
    with no_gc():
        fn()  # warm-up: allocator, oneDNN/cuBLAS heuristics, caches
        first = _one(fn, device, before)
        if first < budget_s / 4:
            fn()
        reps = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-7))))
        return [_one(fn, device, before) for _ in range(reps)]


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Python's garbage collector off inside the block (on again after, if it was on).

    Why: a collection of the older generations in a big process (a test run holds
    many objects) takes milliseconds and lands at random in a timed loop.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _one(fn: Callable[[], object], device: str, before: Callable[[], object] | None = None) -> float:
    if before is not None:
        before()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) * 1e-3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
