"""What one node of an exported FX graph is: its op name, kind and FLOPs, and the record it becomes.

Ops are told apart by their aten overload packet name (``aten.mm.default`` ->
``mm``), so one table covers every overload.

* Kinds: matmul (linear, mm, bmm, matmul, ...), attention (SDPA; a model with
  only eager attention shows its score and value matmuls as ``matmul``), moe
  (grouped matmuls, and batched matmuls over stacked expert weights),
  embedding, norm (norm ops and every op inside a ``*Norm`` module), loss
  (cross-entropy, log-softmax), elementwise otherwise.
* FLOPs: ``torch.utils.flop_counter.flop_registry`` where it has a formula,
  plus formulas for what it misses: ``aten.linear`` and ``aten.matmul``
  (training IR keeps them whole), every scaled-dot-product-attention variant,
  CPU flash included (``sdpa_flop_count``: 4 x batch x heads x q_len x kv_len
  x head_dim, *not* halved for causal masking, like the zoo) and MoE
  ``aten._grouped_mm`` (2 x routed rows x K x N).
  Bias adds, element-wise ops and norms count 0 (priced by bytes); the loss's
  ``log_softmax`` counts 5 per logit, the zoo's loss convention.
* A grouped matmul reads each expert's weights at most once: of E experts with
  T tokens routed to k, E x (1 - (1 - k/E)^T) are expected to be touched (the
  zoo's rule; k from the config, all experts when unknown).

Nothing here imports torch at module level: :class:`FlopCounter` loads torch's
formulas when the importer builds one.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

#: Ops that only re-interpret their first input: folded into the producer.
VIEW_OPS = frozenset(
    {
        "view", "_unsafe_view", "reshape", "transpose", "t", "permute", "unsqueeze", "squeeze", "expand",
        "expand_as", "slice", "select", "narrow", "alias", "detach", "detach_", "lift_fresh_copy", "as_strided",
        "view_as", "unflatten", "flatten", "split", "split_with_sizes", "chunk", "unbind", "tensor_split",
        "movedim", "swapaxes", "diagonal", "_reshape_alias", "view_as_real", "view_as_complex", "unsafe_split",
        "numpy_T", "mT", "mH", "adjoint", "matrix_H", "T", "H", "squeeze_", "unsqueeze_",
    }
)  # fmt: skip
#: Casts: folded when the dtype does not change, a copy op otherwise.
CAST_OPS = frozenset({"to", "_to_copy", "type_as", "_to_dtype", "type"})
MATMUL_OPS = frozenset(
    {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "addbmm", "mv", "addmv", "dot", "einsum",
     "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "_scaled_mm"}
)  # fmt: skip
MOE_OPS = frozenset({"_grouped_mm", "_scaled_grouped_mm"})
NORM_OPS = frozenset(
    {"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm", "native_group_norm",
     "batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "instance_norm"}
)  # fmt: skip
LOSS_OPS = frozenset(
    {"log_softmax", "_log_softmax", "nll_loss", "nll_loss_forward", "nll_loss2d_forward", "cross_entropy_loss",
     "nll_loss_nd", "binary_cross_entropy_with_logits", "mse_loss"}
)  # fmt: skip
EMBED_OPS = frozenset({"embedding", "_embedding_bag", "embedding_bag"})
#: Ops that take a tensor only for its shape, dtype or device.
NO_READ_OPS = frozenset(
    {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "new_ones", "new_zeros",
     "new_empty", "new_full"}
)  # fmt: skip
#: Element-wise FLOPs per logit of the loss (exp, sum, log, subtract, gather), as the zoo counts it.
LOSS_FLOPS_PER_LOGIT = 5.0


@dataclass(eq=False)
class OpRecord:
    """One op node, before it becomes a Task (hashed by identity: records key the edges).

    The converter fills the costs; :mod:`._fxlayout` the block and the
    tensor-parallel fields (``shard``, ``allreduce``, ``state``: the split an
    output carries to its readers).
    """

    node: Any
    opname: str
    path: str
    rel: str
    layer: int
    label: str | None
    kind: str
    flops: float
    bytes: float
    weight_bytes: float
    param_bytes: float
    out_bytes: float
    kv_per_token: float = 0.0
    producers: dict[OpRecord, float] = field(default_factory=dict)
    floating: bool = True
    name_shard: str | None = None
    block: str = ""
    shard: str = "replicated"
    allreduce: float = 0.0
    state: str | None = None
    gemm_nk: tuple[int, int] = (0, 0)


def nbytes(val: Any) -> float:
    """Bytes of a tensor value (or the sum over a tuple/list of them)."""
    if isinstance(val, list | tuple):
        return sum(nbytes(v) for v in val)
    numel = getattr(val, "numel", None)
    dtype = getattr(val, "dtype", None)
    if numel is None or dtype is None:
        return 0.0
    return float(numel()) * dtype.itemsize


def value_of(arg: Any) -> Any:
    """The example value of an fx Node argument (the argument itself when it is a constant)."""
    if isinstance(arg, list | tuple):
        return type(arg)(value_of(a) for a in arg)
    meta = getattr(arg, "meta", None)
    return meta.get("val") if isinstance(meta, dict) else arg


def is_tensor(val: Any) -> bool:
    return hasattr(val, "dtype") and hasattr(val, "shape")


def first_value(val: Any) -> Any:
    """The first output of an op returning several, else its only one."""
    return val[0] if isinstance(val, list | tuple) else val


def opname(target: Any) -> str:
    """Overload packet name of a call target (``getitem`` for ``operator.getitem``)."""
    name = getattr(target, "_opname", None)
    if isinstance(name, str):
        return name
    if target is operator.getitem:
        return "getitem"
    return str(getattr(target, "__name__", target)).split(".")[0]


def op_kind(name: str, cls_name: str) -> str:
    """Kind of op ``name`` run inside a module of class ``cls_name``."""
    if name in MOE_OPS:
        return "moe"
    if name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in name or name in ("_flash_attention_forward", "_efficient_attention_forward"):
        return "attention"
    if name in EMBED_OPS:
        return "embedding"
    if name in LOSS_OPS:
        return "loss"
    if name in NORM_OPS or "norm" in cls_name.lower():
        return "norm"
    return "elementwise"


def touched_fraction(name: str, arg: Any, args: list[Any], top_k: int) -> float:
    """Share of a grouped matmul's expert weights (``arg``) the routed tokens touch (1 for other ops)."""
    k = top_k
    if name not in MOE_OPS or not k or len(args) < 2 or arg is not args[1]:
        return 1.0
    a, b = args[0].meta.get("val"), arg.meta.get("val")
    if not (is_tensor(a) and is_tensor(b)) or b.dim() != 3 or a.dim() != 2:
        return 1.0
    experts = int(b.shape[0])
    tokens = int(a.shape[0]) / k
    k = min(k, experts)
    return 1.0 - (1.0 - k / experts) ** tokens


class FlopCounter:
    """FLOPs of one op node: the formulas above, else ``torch.utils.flop_counter``'s registry."""

    def __init__(self) -> None:
        from torch.utils.flop_counter import flop_registry, sdpa_flop_count

        self.flop_registry = flop_registry
        self.sdpa_flop_count = sdpa_flop_count

    def __call__(self, node: Any, name: str, val: Any) -> float:
        vals = [value_of(a) for a in node.args]
        if name == "linear":
            x, w = vals[0], vals[1]
            return 2.0 * float(x.numel()) * float(w.shape[0])
        if name in MOE_OPS:
            a, b = vals[0], vals[1]
            out = first_value(val)
            groups = int(b.shape[0]) if a.dim() == 2 and b.dim() == 2 and out.dim() == 3 else 1
            return 2.0 * float(out.numel()) * float(a.shape[-1]) / groups
        if "scaled_dot_product" in name and "backward" not in name:
            q, k, v = vals[0], vals[1], vals[2]  # sdpa_flop_count broadcasts grouped KV heads
            return float(self.sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        if name == "matmul" and is_tensor(vals[0]) and vals[0].dim() >= 1:  # composite: kept whole in training IR
            return 2.0 * float(first_value(val).numel()) * float(vals[0].shape[-1])
        if name in ("log_softmax", "_log_softmax", "cross_entropy_loss"):
            return LOSS_FLOPS_PER_LOGIT * float(vals[0].numel())
        formula = self.flop_registry.get(node.target.overloadpacket) if hasattr(node.target, "overloadpacket") else None
        if formula is None:
            return 0.0
        try:
            return float(formula(*vals, out_val=val, **{k: value_of(v) for k, v in node.kwargs.items()}))
        except Exception:  # a formula that cannot read this overload: count 0 rather than fail the import
            return 0.0
