"""What ``calibrate measure`` measures and writes: Vidur's column names, the grids, progress on stderr.

A leaf module (no imports from the package): the driver (:mod:`._measure`) and the
op and collective benchmarks (:mod:`._measure_ops`, :mod:`._measure_net`) all read
these definitions, so the imports between them go one way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

VIDUR_OPS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)  # fmt: skip
STATS = ("min", "max", "mean", "median", "std")
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
ATTN_COLUMNS = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
                "prefill_chunk_size", "kv_cache_size", "is_prefill")  # fmt: skip
DEVICES = ("cpu", "cuda")
PARTS = ("compute", "network")


@dataclass(frozen=True)
class LayerShape:
    """A model shape to benchmark: one folder ``<org>/<model>`` of the profile tree."""

    org: str
    model: str
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool = True

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def columns(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SHAPE_COLUMNS}


@dataclass(frozen=True)
class Grid:
    """What to measure: shapes x tokens x TP degrees, attention cases, collective sizes, time per point."""

    shapes: tuple[LayerShape, ...]
    tokens: tuple[int, ...]
    tp: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]  # (batch, prompt length)
    decode: tuple[tuple[int, int], ...]  # (batch, cached tokens)
    attention_shapes: int  # the first N shapes get an attention profile
    sizes: tuple[int, ...]  # collective sizes in elements of the dtype (written as bytes)
    budget_s: float  # target seconds of repeats per point
    min_reps: int
    max_reps: int
    max_gemm_flops: float  # skip (tokens, tp) rows whose biggest GEMM exceeds this (bf16 on CPU is slow)


_FULL_SHAPES = (
    LayerShape("synthetic", "llama-h512", 8, 8, 512, 1408, 8000),
    LayerShape("synthetic", "llama-h1024-gqa", 16, 4, 1024, 2816, 16000),
    LayerShape("synthetic", "gpt-h640", 10, 10, 640, 2560, 8000, use_gated_mlp=False),
)
FULL = Grid(
    shapes=_FULL_SHAPES,
    tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    tp=(1, 2, 4),
    prefill=((1, 16), (1, 64), (1, 128), (1, 256), (1, 512), (2, 128), (4, 64), (2, 512)),
    decode=((1, 64), (1, 512), (4, 128), (4, 512), (8, 256), (8, 1024), (16, 64), (16, 512)),
    attention_shapes=2,
    sizes=tuple(2**k for k in range(8, 25)),
    budget_s=0.25,
    min_reps=3,
    max_reps=40,
    max_gemm_flops=6e9,
)
#: GPUs: Vidur's shapes (Llama-2-7B, CodeLlama-34B with GQA, phi-2 non-gated), tokens up to 4096, TP up to 8.
GPU_FULL = Grid(
    shapes=(
        LayerShape("meta-llama", "Llama-2-7b-hf", 32, 32, 4096, 11008, 32768),
        LayerShape("codellama", "CodeLlama-34b-Instruct-hf", 64, 8, 8192, 22016, 32768),
        LayerShape("microsoft", "phi-2", 32, 32, 2560, 10240, 51200, use_gated_mlp=False),
    ),
    tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096),
    tp=(1, 2, 4, 8),
    prefill=((1, 128), (1, 512), (1, 1024), (1, 2048), (1, 4096), (4, 512), (8, 1024), (16, 256)),
    decode=((1, 512), (1, 4096), (8, 1024), (16, 2048), (32, 512), (64, 1024), (128, 256), (32, 2048)),
    attention_shapes=2,
    sizes=tuple(2**k for k in range(10, 27)),
    budget_s=0.1,
    min_reps=5,
    max_reps=50,
    max_gemm_flops=1e13,
)
#: ``paratune calibrate local``: this CPU in about 30 s on 2 cores; shapes around the validated model
#: (hidden 768), tokens up to 256 per device, TP 1 and 2 (the two cpu-local devices).
LOCAL = Grid(
    shapes=(_FULL_SHAPES[0], _FULL_SHAPES[1]),
    tokens=(1, 4, 16, 64, 256),
    tp=(1, 2),
    prefill=((1, 64), (1, 256), (4, 128)),
    decode=((1, 128), (4, 512), (16, 256)),
    attention_shapes=2,
    sizes=tuple(4**k for k in range(4, 13)),
    budget_s=0.05,
    min_reps=3,
    max_reps=20,
    max_gemm_flops=3e9,
)
QUICK = Grid(
    shapes=(LayerShape("synthetic", "llama-h256", 4, 4, 256, 704, 2000),),
    tokens=(1, 16, 128),
    tp=(1, 2),
    prefill=((1, 32), (2, 64)),
    decode=((1, 64), (4, 128)),
    attention_shapes=1,
    sizes=(256, 16384, 262144),
    budget_s=0.01,
    min_reps=3,
    max_reps=10,
    max_gemm_flops=1e9,
)


def progress(message: str) -> None:
    """Progress of a long measurement, on stderr (stdout stays clean for ``--json`` users)."""
    print(f"[measure] {message}", file=sys.stderr, flush=True)
