"""The iteration cost of one engine instance of a pool: built once per instance shape, reused by a search."""

from __future__ import annotations

from ..costmodel import Platform
from ..costmodel._iteration import IterationModel, kv_shard_bytes_per_token
from ..graphs import ModelSpec, get_model
from ._engines import engine_profile
from ._types import Deployment, Pool

#: Instance shapes kept (each holds a few hundred grid points of floats; a search touches tens of them).
CACHE_SIZE = 256
_CACHE: dict[tuple[object, ...], IterationModel] = {}


def instance_cost(
    model: str | ModelSpec,
    platform: Platform,
    pool: Pool,
    deployment: Deployment,
    *,
    memory_fraction: float = 0.9,
) -> IterationModel:
    """The :class:`~paratune.serving.IterationCost` of one instance of ``pool`` (TP x PP GPUs).

    Iteration times are those of the deployment's dtypes on ``platform`` plus the engine's per-iteration
    overhead (:mod:`._engines`); the KV capacity is that left at ``memory_fraction`` of device memory
    (vLLM's ``gpu_memory_utilization``) after the weights and the workspace of the pool's token budget,
    in the engine's pages. In a disaggregated deployment its ``kv_transfer_s(tokens)`` is that of the pair
    (the larger KV shard, NVLink when a prefill and a decode instance fit one node). The tables are cached
    per (model, platform, TP, PP, dtypes, engine), so a search over batch caps, budgets and traffic never
    rebuilds them.

    Raises:
        ValueError: the weights do not fit one instance (naming model, platform and TP x PP), or TP does
            not divide the heads, or the instance needs more devices than the platform has.
    """
    spec = get_model(model) if isinstance(model, str) else model
    engine = engine_profile(deployment.engine)
    key = (spec, platform.name, platform.profile.name, pool.tp, pool.pp, deployment.dtype, deployment.kv_dtype,
           engine.name)  # fmt: skip
    base = _CACHE.get(key)
    if base is None:
        base = IterationModel(
            spec,
            platform,
            tp=pool.tp,
            pp=pool.pp,
            dtype=deployment.dtype,
            kv_dtype=deployment.kv_dtype,
            iteration_overhead_s=engine.iteration_overhead_s,
            sequence_overhead_s=engine.sequence_overhead_s,
            memory_fraction=memory_fraction,
            budget_tokens=pool.max_batched_tokens,
            max_seqs=pool.max_num_seqs,
            page_tokens=engine.page_tokens,
            engine=engine.name,
        )
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = base
    out = base.with_limits(
        memory_fraction=memory_fraction, budget_tokens=pool.max_batched_tokens, max_seqs=pool.max_num_seqs
    )
    if deployment.disaggregated:
        # The KV transfer between the pools: the larger shard of the pair, NVLink when both fit one node.
        pre, dec = deployment.pool("prefill"), deployment.pool("decode")
        shards = (kv_shard_bytes_per_token(spec, tp=p.tp, pp=p.pp, kv_dtype=deployment.kv_dtype) for p in (pre, dec))
        out.kv_transfer_bytes_per_token = max(shards)
        out.kv_same_node = pre.gpus_per_instance + dec.gpus_per_instance <= platform.devices_per_node
    return out
