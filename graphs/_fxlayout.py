"""Where an imported op sits (layer, block, scope) and how tensor parallelism splits it.

* Layers: the ``nn.ModuleList`` (or ``nn.Sequential``) holding most parameters is the layer stack;
  an op's ``layer`` comes from its module path (``nn_module_stack``),
  ``-1`` before the first layer (embedding, rotary tables, masks) and
  ``n_layers`` after the last (final norm, head, loss). ``block`` is ``attn`` or
  ``mlp`` from the path inside the layer; a norm directly under the layer joins
  the block it feeds (pre-norm), other layer-level ops (residual adds) the
  block before them. ``scope`` is the module path.
* Tensor parallelism (best effort, Megatron-style): a linear whose module is
  named like an output projection (o_proj, down_proj, c_proj, out_proj, fc2,
  w2, wo, dense_4h_to_h, a ``dense`` under an attention or ``output`` module)
  is ``row`` and all-reduces its output; input projections (q/k/v/qkv, up/gate,
  c_attn, c_fc, fc1, w1/w3, q_b/kv_b of MLA, BERT's query/key/value and
  ``intermediate.dense``) are ``column``; a matmul
  producing vocab-sized logits in the head is ``vocab``; attention is
  ``heads`` (capped by the KV heads); grouped matmuls are ``experts`` and the
  last op of an experts module all-reduces the combined tokens; the token
  embedding is ``vocab`` and all-reduces its output. Other ops follow their
  inputs: an op reading a split activation is split the same way (``heads`` in
  an attention block, ``column`` in an MLP), otherwise ``replicated``.
"""

from __future__ import annotations

import re
from typing import Any

from ._fxops import OpRecord, first_value, is_tensor, value_of

# -- tensor-parallel naming heuristics (last module name) ------------------------------------------
_ROW_NAMES = frozenset({"o_proj", "down_proj", "c_proj", "out_proj", "dense_4h_to_h", "fc2", "w2", "wo", "proj_out"})
_COLUMN_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "query", "key", "value", "up_proj",
     "gate_proj", "gate_up_proj", "c_fc", "fc1", "w1", "w3", "wi", "wq", "wk", "wv", "wqkv", "Wqkv",
     "dense_h_to_4h", "in_proj", "q_b_proj", "kv_b_proj"}
)  # fmt: skip
#: Projection names that tell the block when the module path has no attn/mlp segment.
_ATTN_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "query", "key", "value",
     "out_proj", "wq", "wk", "wv", "wqkv", "Wqkv", "in_proj"}
)  # fmt: skip
_MLP_NAMES = frozenset(
    {"up_proj", "down_proj", "gate_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3", "wi", "wo",
     "dense_h_to_4h", "dense_4h_to_h"}
)  # fmt: skip
_SPLIT = ("column", "heads", "experts", "vocab")
_ATTN_SEG = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_SEG = re.compile(r"mlp|ffn|feed_forward|feedforward|moe|expert", re.IGNORECASE)


class LayerLocator:
    """Module path, class and layer of op nodes, read from ``nn_module_stack`` in program order.

    Ops outside the layer stack are placed by what came before them: ``-1``
    until the first layer, ``n_layers`` once the last layer has been seen.
    """

    def __init__(self, layer_prefix: str | None, n_layers: int, strip: str) -> None:
        self.n_layers = n_layers
        self.strip = strip
        self.layer_re = (
            re.compile(rf"^{re.escape(layer_prefix + '.') if layer_prefix else ''}(\d+)(?:\.|$)")
            if layer_prefix is not None
            else None
        )
        self.max_layer = -1

    def path(self, node: Any) -> tuple[str, str]:
        """Innermost module path (wrapper prefix stripped) and its class name."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", ""
        path, cls = list(stack.values())[-1]
        strip = self.strip
        if strip and path.startswith(strip):
            path = path[len(strip) :]
        elif strip and path == strip.rstrip("."):
            path = ""
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
        return path, cls_name.rsplit(".", 1)[-1]

    def layer_of(self, path: str) -> tuple[int, str]:
        """Layer index and the path inside the layer (``""`` outside layers)."""
        n = self.n_layers
        if self.layer_re is not None:
            m = self.layer_re.match(path)
            if m:
                i = int(m.group(1))
                self.max_layer = max(self.max_layer, i)
                return i, path[m.end() :]
        if self.max_layer < 0:
            return -1, path
        return (n if self.max_layer >= n - 1 else self.max_layer), path


def block_label(rel: str, cls_name: str, kind: str) -> str | None:
    """Block of an op inside a layer from its path there (or its kind); None when neither says."""
    if kind == "attention":
        return "attn"
    if not rel:
        return None
    segments = rel.split(".")
    if len(segments) == 1 and "norm" in cls_name.lower():
        return None  # a norm directly under the layer joins the block it feeds
    if any(_ATTN_SEG.search(s) for s in segments):
        return "attn"
    if any(_MLP_SEG.search(s) for s in segments) or segments[0] in ("intermediate", "output"):
        return "mlp"
    if segments[-1] in _ATTN_NAMES:
        return "attn"
    if segments[-1] in _MLP_NAMES:
        return "mlp"
    return None


def name_shard(kind: str, node: Any, path: str, val: Any, layer: int, *, vocab: int, n_layers: int) -> str | None:
    """Shard rule that the op's own name or kind fixes (None: follow the inputs)."""
    if kind == "attention":
        return "heads"
    if kind == "moe":
        return "experts"
    if kind == "embedding":  # the token table splits by vocab; position tables are replicated
        table: Any = value_of(node.args[0]) if node.args else None
        rows = int(table.shape[0]) if is_tensor(table) else 0
        return "vocab" if layer < 0 and (not vocab or rows == vocab) else "replicated"
    if kind != "matmul":
        return None
    segments = path.split(".") if path else []
    leaf = segments[-1] if segments else ""
    parent = segments[-2] if len(segments) > 1 else ""
    out = first_value(val)
    if vocab and is_tensor(out) and out.shape[-1] == vocab and layer >= n_layers:
        return "vocab"
    if leaf in _ROW_NAMES or (leaf == "dense" and (parent == "output" or _ATTN_SEG.search(parent))):
        return "row"
    if leaf in _COLUMN_NAMES or (leaf == "dense" and parent == "intermediate"):
        return "column"
    return None


def assign_blocks(recs: list[OpRecord], n_layers: int) -> None:
    """Set each record's block: ``embed``/``head`` outside layers, else its label or a neighbour's."""
    by_layer: dict[int, list[OpRecord]] = {}
    for rec in recs:
        if rec.layer < 0:
            rec.block = "embed"
        elif rec.layer >= n_layers:
            rec.block = "head"
        else:
            by_layer.setdefault(rec.layer, []).append(rec)
    for layer_recs in by_layer.values():
        labels = [r.label for r in layer_recs]
        nxt: list[str | None] = [None] * len(layer_recs)
        upcoming: str | None = None
        for i in range(len(layer_recs) - 1, -1, -1):
            nxt[i] = upcoming
            upcoming = labels[i] or upcoming
        previous: str | None = None
        for i, rec in enumerate(layer_recs):
            if labels[i]:
                rec.block = labels[i] or "attn"
            elif rec.kind == "norm":
                rec.block = nxt[i] or previous or "attn"
            else:
                rec.block = previous or nxt[i] or "attn"
            if labels[i] or rec.kind != "norm":
                previous = rec.block


def assign_shards(recs: list[OpRecord]) -> None:
    """Apply the name rules, then propagate split activations in program order.

    An op's output stays split while it is produced by a split op without
    an all-reduce; the last op of an experts module combines the tokens
    (all-reduce), as the zoo's ``moe_down`` does.
    """
    moe_scopes = {r.path for r in recs if r.kind == "moe"}
    last_of_experts: dict[str, OpRecord] = {}
    for rec in recs:
        for scope in moe_scopes:
            if rec.path == scope or rec.path.startswith(scope + "."):
                last_of_experts[scope] = rec
    combiners = set(last_of_experts.values())
    for rec in recs:
        shard = rec.name_shard
        if shard is None:
            split = [p.state for p in rec.producers if p.state]
            if "experts" in split:
                shard = "experts"
            elif "vocab" in split:
                shard = "vocab"
            elif split:
                shard = "heads" if rec.block == "attn" else "column"
            else:
                shard = "replicated"
        rec.shard = shard
        if shard == "row" or (shard == "vocab" and rec.kind == "embedding") or rec in combiners:
            rec.allreduce = rec.out_bytes
        rec.state = shard if shard in _SPLIT and not rec.allreduce else None
