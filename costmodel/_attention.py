"""Fitted attention's shape residual: the kernels' steps over context, sequences x KV heads and GQA.

Why: the engines' attention kernels are not smooth in their work. TensorRT-LLM's Hopper
generation kernel (XQA) runs one thread block per sequence and KV head, splits long contexts
over more blocks when those are fewer than the SMs (multi-block mode), and steps with the
context's tile count: times jump by +-30% where the FLOPs and bytes of
:class:`~._profile.AttentionPhase`'s smooth terms move by a few percent (its terms alone:
16-20% MAPE on H100 / H200 decode, held out). Like the GEMM model (:mod:`._gemm`), the phase's
terms are kept as a base, so the time extrapolates sanely, and multiplied by
``exp(r(kv_len, kv_elems, gqa))``, a residual on a grid in log2 of

* ``kv_len``: tokens each query attends to (decode: the context; prefill: the prompt);
* ``kv_elems``: sequences x KV elements per token on the device (K and V, ``2 x kv_heads x
  head_dim``), the work the kernels spread over thread blocks;
* ``gqa``: query heads per KV head (the kernel groups them in one block),

interpolated trilinearly and clamped at the grid's edges. The residual is a property of the
kernels and the SM count, so it carries between GPUs of one architecture (fitted on H100,
checked on H200: decode 17.8% -> about 6%).

All three come from an op table's attention row and the pricer's (batch, q_len, dtypes)
(:func:`row_features`): kv_len from the counted FLOPs over the output,
``4 x sequences x q_len x kv_len x hidden`` over ``sequences x q_len x hidden`` elements, so a
serving model that builds the row for any (batch, q_len, context) gets its residual.

In a profile (``attention_phases.<key>.residual``)::

    residual:
      log2_kv_len: [0, 1, ..., 17]
      log2_kv_elems: [8, 9, ..., 25]
      log2_gqa: [0, 1, 2, 3, 4]
      values: ["0.012 -0.034 ...", ...]  # one string of len(log2_gqa) numbers per (kv_len, kv_elems) pair
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._fields import FieldReader
from ._gemm import grid_axis, read_grid_values, read_log2_grid, six_digits

#: Grid names in a profile, in the order of :meth:`AttentionResidual.correction`'s arguments.
AXES = ("log2_kv_len", "log2_kv_elems", "log2_gqa")
#: Largest residual grid accepted from a profile file (cells).
MAX_CELLS = 1 << 14
#: Largest |residual| accepted (natural log: a factor of e^3, about 20).
MAX_ABS = 3.0


@dataclass(frozen=True, eq=False)
class AttentionResidual:
    """Log residual of one attention phase over (kv_len, kv_elems, gqa); equal when the profile sections are."""

    log2_kv_len: np.ndarray
    log2_kv_elems: np.ndarray
    log2_gqa: np.ndarray
    values: np.ndarray  # shape (len(log2_kv_len), len(log2_kv_elems), len(log2_gqa)), natural log

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttentionResidual) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def grids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.log2_kv_len, self.log2_kv_elems, self.log2_gqa

    def corners(self, kv_len: Any, kv_elems: Any, gqa: Any) -> tuple[np.ndarray, np.ndarray]:
        """Flat cell indices and trilinear weights, each of shape (8, rows): what :meth:`correction` sums.

        The fit (:mod:`.calibration._aic_attention`) builds its design matrix from the same corners.
        """
        _, s1, s2 = self.values.shape
        (i0, w0), (i1, w1), (i2, w2) = (
            grid_axis(g, np.asarray(v, dtype=float)) for g, v in zip(self.grids, (kv_len, kv_elems, gqa), strict=True)
        )
        offsets = np.array([a * s1 * s2 + b * s2 + c for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        idx = ((i0 * s1 + i1) * s2 + i2)[None, :] + offsets[:, None]
        f0, f1, f2 = (np.stack([1.0 - w, w]) for w in (w0, w1, w2))
        wts = (f0[:, None, None, :] * f1[None, :, None, :] * f2[None, None, :, :]).reshape(8, -1)
        return idx, wts

    def correction(self, kv_len: Any, kv_elems: Any, gqa: Any) -> np.ndarray:
        """``r``: the fitted log residual at each row (multiply the phase's time by ``exp(r)``)."""
        idx, wts = self.corners(kv_len, kv_elems, gqa)
        return np.asarray((self.values.ravel()[idx] * wts).sum(axis=0))

    def to_dict(self) -> dict[str, Any]:
        rows = self.values.reshape(-1, self.values.shape[-1])
        out: dict[str, Any] = {name: [six_digits(x) for x in g] for name, g in zip(AXES, self.grids, strict=True)}
        out["values"] = [" ".join(f"{x:.4f}" for x in row) for row in rows]
        return out

    @classmethod
    def from_reader(cls, r: FieldReader) -> AttentionResidual:
        """The residual a profile's ``attention_phases.<key>.residual`` describes (errors name the field)."""
        grids = [read_log2_grid(r, name) for name in AXES]
        shape = (len(grids[0]), len(grids[1]), len(grids[2]))
        cells = int(np.prod(shape))
        if cells > MAX_CELLS:
            raise r.error("values", f"has {cells} cells; at most {MAX_CELLS} are allowed")
        out = cls(
            grids[0], grids[1], grids[2], read_grid_values(r, "values", shape, limit=MAX_ABS, pair="(kv_len, kv_elems)")
        )
        r.finish()
        return out


def row_features(
    flops: np.ndarray,
    output_bytes: np.ndarray,
    sequence_kv_bytes: np.ndarray,
    sequences: Any,
    q_len: Any,
    elem_bytes: float,
    kv_elem_bytes: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kv_len, kv_elems, gqa) of attention rows from their work, all on one device.

    ``flops`` are the counted ones (``4 x sequences x q_len x kv_len x hidden``; not halved for
    causal prefill), ``output_bytes`` the output (``sequences x q_len x hidden`` elements of
    ``elem_bytes``), ``sequence_kv_bytes`` sequences x KV bytes per token (``kv_elem_bytes``
    each). Rows without output or sequences fall on the grid's first cells.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = sequences * q_len
        hidden = np.where(tokens > 0, output_bytes / (tokens * elem_bytes), 0.0)  # query elements per token
        kv_len = np.where(output_bytes > 0, flops * elem_bytes / (4.0 * output_bytes), 0.0)
        kv_elems = sequence_kv_bytes / kv_elem_bytes
        kv_per_token = np.where(sequences > 0, kv_elems / sequences, 0.0)
        gqa = np.where(kv_per_token > 0, 2.0 * hidden / kv_per_token, 1.0)
    return kv_len, kv_elems, gqa
