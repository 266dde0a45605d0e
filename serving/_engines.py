"""What each serving engine adds to an iteration beyond its kernels, and how it pages its KV cache.

``iteration_overhead_s`` is the host time per engine iteration that the GPU does not hide (scheduling,
input preparation, sampling launch, output processing); ``sequence_overhead_s`` the part that grows with
the sequences sampled in it (per-request bookkeeping, detokenisation). These are estimates, not fits:

* NVIDIA AIConfigurator (aiconfigurator-core 0.12.0, ``sdk/backends``) carries no per-iteration term for
  any backend; it adds to vLLM's TTFT a per-request CPU dispatch of 0.8 ms per layer
  (``VLLMBackend._prefill_dispatch_overhead_ms``), calibrated on its silicon corpus, and nothing to TPOT.
* Srivatsa et al., "Can scheduling overhead dominate LLM inference performance?" (mlsys.wuklab.io, 2024):
  vLLM's per-iteration scheduling and tensor pre/post-processing reached half of the step time on small
  models; SGLang's, with simpler tensor handling (and since v0.4 its overlap scheduler), far less.
* TensorRT-LLM's executor is C++ with an overlap scheduler: the smallest host share of the three.

We take 1 ms + 5 us per sampled sequence for vLLM (V1 engine with CUDA graphs), 0.5 ms + 2 us for SGLang
and 0.3 ms + 1 us for TRT-LLM: a few percent of a decode step of a large batch, 10-25% of a small one,
which is the size of the vLLM end-to-end gap the issue measured (2-28% low). A request-level measurement
(the serving simulator's CPU check) should replace them.

Page sizes (tokens per KV block, the engines' defaults): vLLM ``--block-size`` 16 on CUDA; SGLang
``--page-size`` 1 (its radix cache pages by token); TensorRT-LLM ``KvCacheConfig.tokens_per_block`` 32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineProfile:
    """The per-iteration host cost and the KV page of one engine."""

    name: str
    iteration_overhead_s: float
    sequence_overhead_s: float
    page_tokens: int
    source: str


ENGINE_PROFILES: dict[str, EngineProfile] = {
    p.name: p
    for p in (
        EngineProfile("vllm", 1.0e-3, 5.0e-6, 16, "estimate: wuklab scheduling-overhead study; vLLM block-size 16"),
        EngineProfile("sglang", 0.5e-3, 2.0e-6, 1, "estimate: wuklab study, SGLang overlap scheduler; page-size 1"),
        EngineProfile("trtllm", 0.3e-3, 1.0e-6, 32, "estimate: C++ executor, overlap scheduler; tokens_per_block 32"),
    )
}


def engine_profile(engine: str) -> EngineProfile:
    """The profile of ``engine`` (vllm, sglang, trtllm)."""
    try:
        return ENGINE_PROFILES[engine]
    except KeyError:
        raise ValueError(f"engine {engine!r}; known: {', '.join(ENGINE_PROFILES)}") from None
