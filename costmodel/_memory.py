"""Memory that does not depend on scheduling: weights, training state, KV cache.

Both evaluators take these from here; only activations differ between them
(the analytic evaluator uses per-stage formulas, the simulator tensor lifetimes).
"""

from __future__ import annotations

from ..graphs import DTYPE_BYTES
from ._pricing import OpTable

#: fp32 master weights and Adam's two moments, per parameter (mixed precision, ZeRO paper's K=12).
OPTIMIZER_STATE_BYTES_PER_PARAM = 12.0


def weight_memory(table: OpTable, tp: int) -> float:
    """Bytes of weights one device of a TP group of ``tp`` holds for these ops."""
    return float((table.param_bytes / table.split(tp)).sum())


def training_state_memory(table: OpTable, tp: int, dtype: str) -> float:
    """Gradients (weight dtype) and optimizer state (fp32) per device, beyond the weights."""
    per_device_params_bytes = weight_memory(table, tp)
    return per_device_params_bytes * (1.0 + OPTIMIZER_STATE_BYTES_PER_PARAM / DTYPE_BYTES[dtype])


def kv_cache_memory(table: OpTable, tp: int, sequences: int, kv_len: int) -> float:
    """KV cache per device for ``sequences`` resident sequences of ``kv_len`` tokens."""
    return float((table.kv_bytes_per_token / table.split(tp)).sum()) * sequences * kv_len
