"""What a training step keeps of each forward op for its backward: the activation stash.

The stash is what the backward ops *read*, each tensor once, as Korthikanti et
al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
section 4 / eq. 1-5) count it: with 16-bit activations and dropout, a GPT layer
keeps s b h (34 + 5 a s / h) bytes; with TP t, s b h (10 + 24/t + 5 a s / (h t));
with sequence parallelism s b h (34/t + 5 a s / (h t)); with selective
recomputation and SP, 34 s b h / t. Not the sum of every forward output (what
paratune counted before): a residual add or a rotary embedding needs nothing of
its forward, a dropout only its 1-byte mask, a GEMM its input.

Each op saves one of (zoo op names first, then the op's kind for imported graphs):

* its input: GEMMs (the input for the weight gradient), attention bmm's (Q, K;
  probabilities, V), a fused attention kernel (Q, K, V: its output is the next
  GEMM's input), norms, activations (GeLU / SwiGLU), the loss (the logits);
  a GEMM's input is ``flops / (2 n)`` elements when its shape is known, else the
  op's bytes less its weights and output;
* nothing: residual adds, rotary embedding, embedding lookups, and the softmax
  (its output is stashed once by the op reading it next: the attention dropout,
  or the context bmm when there is no dropout);
* a 1-byte mask per output element: hidden dropouts;
* mask and input: attention-probability dropout (its input is the softmax output,
  which softmax's backward needs);
* its output: any other op (an imported element-wise op of unknown nature), as
  before.

Splits under TP t: a tensor that every TP rank holds whole (the input of a
replicated op, of a column- or vocab-parallel GEMM, a hidden dropout's mask) is
divided by 1, and by t with sequence parallelism (Megatron SP keeps norms,
residuals and dropouts on 1/t of the sequence, and the GEMMs' inputs before
the all-gather); other tensors follow their op's split (heads, columns, experts).
Selective recomputation drops the attention core's internal tensors (softmax
output, attention dropout mask and output, the probabilities the context bmm
reads); its inputs (Q, K, V) stay, as the checkpoint the core is recomputed
from. A fused attention kernel stashes no score-sized tensor, so selective
recomputation saves nothing there (its output and logsumexp are small next to
the layer: the logsumexp is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graphs import DTYPE_BYTES, GraphMeta, Op
from ._pricing import OpTable

#: Zoo op names (after ``L{i}.``) whose backward reads nothing of the forward.
NOTHING = frozenset({"attn_residual", "mlp_residual", "attn_rope", "attn_softmax", "embed", "embed_positions"})
#: Zoo op names that keep only a 1-byte mask per output element.
MASK = frozenset({"attn_dropout", "mlp_dropout", "embed_dropout"})
#: Zoo op names that keep their mask and their input (the softmax output).
MASK_AND_INPUT = frozenset({"attn_probs_dropout"})
#: Zoo element-wise ops that keep their input (activation functions).
INPUT_NAMES = frozenset({"mlp_act", "moe_act"})
#: Op kinds that keep their input.
INPUT_KINDS = frozenset({"matmul", "moe", "norm", "attention", "loss"})
#: Zoo ops of the unfused attention core (selective recomputation re-runs them).
CORE_NAMES = frozenset({"attn_scores", "attn_softmax", "attn_probs_dropout", "attn_context"})


def _short(op: Op) -> str:
    return op.name.rsplit(".", 1)[-1]


def is_attention_core(op: Op) -> bool:
    """A forward op of the attention core: a fused attention kernel, or the unfused scores .. context."""
    return op.kind == "attention" or _short(op) in CORE_NAMES


def is_replicated(op: Op) -> bool:
    """An op every TP rank runs whole (norms, residuals, hidden dropouts): SP runs it on 1/t of the tokens."""
    return op.shard == "replicated"


def _input_bytes(op: Op, dtype_bytes: int) -> float:
    if op.gemm_k > 0 and op.gemm_n > 0:
        return op.flops / (2.0 * op.gemm_n) * dtype_bytes
    return max(op.bytes - op.weight_bytes - op.output_bytes, 0.0)


@dataclass(frozen=True)
class StashColumns:
    """Per-op stash bytes for the whole batch, by how TP divides them.

    ``whole``: held whole by every TP rank (divided by t only with SP);
    ``split``: divided by the op's split; ``core``: the part of ``split`` that
    selective recomputation does not keep.
    """

    whole: np.ndarray
    split: np.ndarray
    core: np.ndarray

    @classmethod
    def from_ops(cls, ops: list[Op], *, dtype_bytes: int, head_dim: int) -> StashColumns:
        """Classify every op (backward and optimizer ops keep nothing: only forward ops are stashed)."""
        whole, split, core = (np.zeros(len(ops)) for _ in range(3))
        for i, op in enumerate(ops):
            if op.step != "forward":
                continue
            name = _short(op)
            if name in NOTHING or op.kind == "embedding":
                continue
            rep = is_replicated(op)
            if name in MASK:
                nbytes = op.output_bytes / dtype_bytes
            elif name in MASK_AND_INPUT:
                nbytes = op.output_bytes / dtype_bytes + op.output_bytes  # input: the output's shape
                core[i] = nbytes
            elif name in INPUT_NAMES or op.kind in INPUT_KINDS:
                nbytes = _input_bytes(op, dtype_bytes)
                # a column/vocab-parallel GEMM reads the whole input on every rank; the loss reads split logits
                rep = rep or (op.kind in ("matmul", "moe") and op.shard in ("column", "vocab"))
                if name == "attn_context":
                    core[i] = min(op.flops / (2.0 * head_dim) * dtype_bytes, nbytes)  # the probabilities
            else:
                nbytes = op.output_bytes
            if rep:
                whole[i] = nbytes
            else:
                split[i] = nbytes
        return cls(whole, split, core)

    @classmethod
    def for_graph(cls, ops: list[Op], meta: GraphMeta) -> StashColumns:
        """:meth:`from_ops` with the element size and head width of ``meta``."""
        head_dim = meta.hidden // meta.heads if meta.heads > 0 and meta.hidden > 0 else 1
        return cls.from_ops(ops, dtype_bytes=DTYPE_BYTES.get(meta.dtype, 2), head_dim=max(head_dim, 1))

    def per_device(
        self, table: OpTable, tp: int, *, sequence_parallel: bool = False, selective: bool = False
    ) -> np.ndarray:
        """Stash bytes of each op on one device of a TP group of ``tp`` (whole batch)."""
        div = table.split(tp)
        out = self.whole / (tp if sequence_parallel else 1) + (self.split - (self.core if selective else 0.0)) / div
        return np.asarray(out, dtype=float)
