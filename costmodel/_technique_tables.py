"""Per-unit tables the training techniques read beyond :mod:`._layer_tables` (prefix sums, like those).

* :class:`TechScaled` (per TP degree, micro-batch share and ep): forward / backward kernel
  seconds with expert weights split over ep ranks (an expert GEMM then reads 1/ep of the
  weights for the same routed tokens: ep x the tokens per local expert, which the MoE
  model prices), and the parts some techniques move: the attention core (selective
  recomputation re-runs its forward; ring attention hides behind it), the GEMMs of the TP
  group (TP overlap hides collectives behind them), and replicated ops (norms, residuals:
  sequence parallelism runs them on 1/t of the tokens).
* :class:`TechUnits` (per TP degree): expert weight bytes per device, which units hold a
  MoE block, transformer-layer units, and a range-maximum table of one unit's weights
  (ZeRO-3's gathered layer, one gradient bucket).

The attention core and the replicated ops are :class:`UnitIndex`'s ``core`` and ``repl``
masks (:mod:`._stash`), as in :class:`ScaledTables`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._layer_tables import UnitIndex, _prefix, sparse_table
from ._pricing import KernelPricer, OpTable


def expert_split_table(table: OpTable, ep: int) -> OpTable:
    """``table`` with the expert ops' weights split over ``ep`` ranks (their bytes read shrink accordingly)."""
    if ep <= 1 or table.experts is None or not table.experts.any():
        return table
    e = table.experts
    cut = np.where(e, table.weight_bytes * (1.0 - 1.0 / ep), 0.0)
    return replace(
        table,
        weight_bytes=table.weight_bytes - cut,
        bytes=table.bytes - cut,
        param_bytes=np.where(e, table.param_bytes / ep, table.param_bytes),
    )


@dataclass
class TechScaled:
    """Kernel seconds per unit for one (TP degree, share, ep): prefix lists of length L+3."""

    fwd_l: list[float]
    bwd_l: list[float]
    attn_f_l: list[float]
    attn_b_l: list[float]
    gemm_f_l: list[float]
    gemm_b_l: list[float]
    repl_f_l: list[float]
    repl_b_l: list[float]

    @classmethod
    def build(cls, idx: UnitIndex, pricer: KernelPricer, tp: int, share: int, ep: int) -> TechScaled:
        table, core, repl = expert_split_table(idx.table, ep), idx.core, idx.repl
        times = pricer.op_times(table, tp, 1.0 / share)
        kinds = np.array(table.kinds)
        gemm = ((kinds == "matmul") | (kinds == "moe")) & ~table.replicated & ~core
        n, unit = idx.n_units, idx.unit

        def col(mask: np.ndarray) -> list[float]:
            return _prefix(np.bincount(unit[mask], weights=times[mask], minlength=n)).tolist()

        f, b = idx.fwd, idx.bwd
        return cls(
            col(f), col(b), col(f & core), col(b & core), col(f & gemm), col(b & gemm),
            col(f & repl), col(b & repl),
        )  # fmt: skip


@dataclass
class TechUnits:
    """Per-TP-degree unit facts: expert weights, MoE and layer units, largest unit's weights."""

    expert_w_l: list[float]  # expert weight bytes per device (before ep), prefix
    moe_l: list[float]  # prefix count of units holding expert ops
    layer_l: list[float]  # prefix count of transformer-layer units
    weight_max_l: list[list[float]]  # sparse table of per-unit weight bytes per device

    @classmethod
    def build(cls, idx: UnitIndex, tp: int) -> TechUnits:
        n = idx.n_units
        weights = np.zeros(n)
        expert = np.zeros(n)
        moe = np.zeros(n)
        for u, t in enumerate(idx.fwd_tables):
            if len(t) == 0:
                continue
            per = t.param_bytes / t.split(tp)
            weights[u] = float(per.sum())
            if t.experts is not None and t.experts.any():
                expert[u] = float(per[t.experts].sum())
                moe[u] = 1.0
        layer = np.zeros(n)
        layer[1 : n - 1] = 1.0
        return cls(
            _prefix(expert).tolist(), _prefix(moe).tolist(), _prefix(layer).tolist(), sparse_table(weights).tolist()
        )
