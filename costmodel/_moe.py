"""MoE expert GEMMs priced as the engines' grouped-GEMM MoE kernels measure (a profile's ``moe`` section).

Why: a MoE block is not two dense GEMMs. Measured on H100 / H200 / B200 / GB200 (NVIDIA
AIConfigurator's ``moe_perf`` tables: TensorRT-LLM's fused MoE, both expert GEMMs, the
activation and the routing's permute / finalize), three things the ``moe`` roofline curves
of FLOPs and bytes miss set its time:

* each expert touched is a GEMM of its own: with few tokens per expert the tiles run
  mostly empty, so compute efficiency follows the tokens per expert ``m_e`` (``half_tokens``
  padding tokens per expert), not the op's FLOPs;
* a shard narrowed by tensor parallelism (the intermediate size / t) runs a short k loop or
  narrow tiles (``half_split``);
* the tokens are permuted to the experts and combined back at full hidden size on every
  rank, whatever the TP degree: a term per routed-token byte that TP does not divide.

Per expert-GEMM op (kind ``moe``) on one device, with F and B its FLOPs and bytes there, W its
weight bytes there, ``d`` the dimension TP splits (n of the up GEMM, k of the combining down
GEMM) and ``h`` the one it does not::

    m_e = F * elem / (2 W)                         tokens per touched expert
    c = F / (P * compute_peak) * (1 + half_tokens / m_e) * (1 + half_split / d)
    m = B / (BW * memory_peak)
    t = overhead + (c^e + m^e)^(1/e) + token_s_per_byte * routed_tokens * h * elem

The element-wise activation between the two GEMMs (``shard="experts"``) is fused into the
first GEMM's epilogue, as the engines run it: the measured block time includes it.

In a profile (one entry per dtype; fp16 uses bf16's)::

    moe:
      bf16: {compute_peak: 0.93, half_tokens: 48, half_split: 370, memory_peak: 0.94,
             exponent: 2.1, overhead_us: 16, token_ns_per_byte: 0.00044}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._fields import FieldReader

#: Dtypes a ``moe`` section may describe.
MOE_DTYPES = ("bf16", "fp16", "fp8")
#: Serving engines a profile's ``moe_engines`` may give their own terms (their MoE kernel is not TensorRT-LLM's).
MOE_ENGINES = ("sglang", "vllm")


@dataclass(frozen=True)
class MoeFeatures:
    """What the model needs of each expert-GEMM op on one device (arrays, one entry per op)."""

    flops: np.ndarray
    nbytes: np.ndarray
    tokens_per_expert: np.ndarray
    split_dim: np.ndarray
    token_bytes: np.ndarray


@dataclass(frozen=True)
class MoeModel:
    """Grouped-GEMM terms of one dtype on one device type (see the module docstring)."""

    compute_peak: float
    half_tokens: float
    half_split: float
    memory_peak: float
    exponent: float
    overhead_s: float
    token_s_per_byte: float

    def times(self, x: MoeFeatures, peak: float, bw: float) -> np.ndarray:
        """Seconds of each expert-GEMM op on one device (without the profile's host overhead)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            pad = 1.0 + self.half_tokens / np.maximum(x.tokens_per_expert, 1e-9)
            narrow = 1.0 + self.half_split / np.maximum(x.split_dim, 1.0)
            comp = x.flops / (peak * self.compute_peak) * pad * narrow
            mem = x.nbytes / (bw * self.memory_peak)
            hi, lo = np.maximum(comp, mem), np.minimum(comp, mem)
            ratio = np.where(hi > 0, lo / hi, 0.0)
        join = hi * (1.0 + ratio**self.exponent) ** (1.0 / self.exponent)
        return self.overhead_s + join + self.token_s_per_byte * x.token_bytes

    def to_dict(self) -> dict[str, float]:
        return {
            "compute_peak": _num(self.compute_peak),
            "half_tokens": _num(self.half_tokens),
            "half_split": _num(self.half_split),
            "memory_peak": _num(self.memory_peak),
            "exponent": _num(self.exponent),
            "overhead_us": _num(self.overhead_s * 1e6),
            "token_ns_per_byte": _num(self.token_s_per_byte * 1e9),
        }

    @classmethod
    def from_reader(cls, r: FieldReader) -> MoeModel:
        model = cls(
            compute_peak=r.fraction("compute_peak"),
            half_tokens=r.number("half_tokens", minimum=0.0),
            half_split=r.number("half_split", 0.0, minimum=0.0),
            memory_peak=r.fraction("memory_peak"),
            exponent=r.number("exponent", minimum=1.0),
            overhead_s=r.number("overhead_us", minimum=0.0) * 1e-6,
            token_s_per_byte=r.number("token_ns_per_byte", 0.0, minimum=0.0) * 1e-9,
        )
        r.finish()
        return model


def moe_features(
    flops: np.ndarray,
    nbytes: np.ndarray,
    weight_bytes: np.ndarray,
    gemm_k: np.ndarray,
    gemm_n: np.ndarray,
    combiner: np.ndarray,
    split: np.ndarray,
    elem_bytes: float,
) -> MoeFeatures:
    """Features of expert-GEMM ops from their per-device FLOPs and bytes and whole-op fields.

    ``weight_bytes``, ``gemm_k`` and ``gemm_n`` are those of the whole op (all TP ranks),
    ``combiner`` marks the down GEMM (its output is combined over the group: TP splits its
    k, and its n is the hidden size), ``split`` the op's TP split. ``flops`` already
    carry the micro-batch share, so the routed tokens are those of one micro-batch.
    """
    w_dev = weight_bytes / split
    with np.errstate(divide="ignore", invalid="ignore"):
        per_expert = np.where(w_dev > 0, flops * elem_bytes / (2.0 * w_dev), np.inf)
        routed = np.where((gemm_k > 0) & (gemm_n > 0), flops * split / (2.0 * gemm_k * gemm_n), 0.0)
    hidden = np.where(combiner, gemm_n, gemm_k)
    split_dim = np.where(combiner, gemm_k, gemm_n) / split
    return MoeFeatures(flops, nbytes, per_expert, split_dim, routed * hidden * elem_bytes)


def _num(x: float) -> float:
    return float(f"{float(x):.6g}")
