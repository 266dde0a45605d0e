"""Turn an exported program (``torch.export.export(..., strict=False)``) into an operator-level TaskGraph.

One walk over the FX nodes folds views and records every other op with its
kind and FLOPs (:mod:`._fxops`) and its bytes; blocks and tensor-parallel rules
follow (:mod:`._fxlayout`), template layers are cloned when the model was
exported with three (:mod:`._replicate`), then tasks and edges are built.

* View-like ops (view, reshape, transpose, expand, slice, getitem, detach,
  alias, dtype casts to the same dtype, concatenation with empty tensors, ...)
  are folded into their producer: edges pass through them. A value read
  through a chain of views is charged ``min(its size, its producer's output)``
  bytes, so an ``expand`` for grouped-query attention does not inflate reads.
  Copies (contiguous, clone, real dtype casts) stay ops: they move memory.
* Bytes: inputs + outputs with dtype sizes. Parameters, buffers and constants
  read count in ``bytes`` and ``weight_bytes``; a parameter counts in
  ``param_bytes`` once, at its first use (tied embeddings count once). An
  embedding reads only the gathered rows (``weight_bytes`` 0, as in the zoo).
  Attention bytes leave out the mask (kernels build causal masks on the fly).
  Grouped matmuls read only the experts the tokens are expected to touch.
  Appending the new token to the KV cache charges the new token's bytes (read
  and write), not the copy ``DynamicCache``'s concatenation makes.
* Training: integer and boolean ops (masks, positions) get no backward task;
  the others get the zoo's backward and optimizer tasks
  (:func:`._builder.add_backward_and_optimizer`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

from ._builder import add_backward_and_optimizer
from ._export import CACHE_INPUTS, Prepared
from ._fxlayout import LayerLocator, assign_blocks, assign_shards, block_label, name_shard
from ._fxops import (
    CAST_OPS,
    NO_READ_OPS,
    VIEW_OPS,
    FlopCounter,
    OpRecord,
    first_value,
    is_tensor,
    nbytes,
    op_kind,
    opname,
    touched_fraction,
)
from ._replicate import replicate_layers
from ._task import Op, Task
from ._taskgraph import GraphMeta, Phase, TaskGraph
from ._zoo import DTYPE_BYTES


@dataclass
class _Source:
    """Where a folded value comes from: its producing op (or placeholder) and the bytes a reader moves."""

    root: Any  # torch.fx.Node: an op node or a placeholder
    nbytes: float


class Converter:
    """Walks the exported graph once, folding views, then builds tasks and edges."""

    def __init__(self, program: Any, prep: Prepared, meta: GraphMeta) -> None:
        self.flops = FlopCounter()
        self.program = program
        self.prep = prep
        self.meta = meta
        sig = program.graph_signature
        self.params = set(sig.inputs_to_parameters)
        self.weights = self.params | set(sig.inputs_to_buffers) | set(sig.inputs_to_lifted_tensor_constants)
        self.cache_inputs = {name for name in sig.user_inputs if str(name).startswith(CACHE_INPUTS)}
        self.source: dict[Any, _Source] = {}
        self.recs: list[OpRecord] = []
        self.rec_of: dict[Any, OpRecord] = {}
        self.seen_params: set[Any] = set()
        self.cache_nodes: set[Any] = set()
        self.locator = LayerLocator(prep.layer_prefix, prep.n_layers, prep.strip)

    def run(self) -> TaskGraph | None:
        """The graph, or None when replicating template layers is unsafe (the caller exports all layers)."""
        for node in self.program.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self._placeholder(node)
            elif node.op == "call_function":
                self._call(node)
        assign_blocks(self.recs, self.prep.n_layers)
        assign_shards(self.recs)
        if self.prep.full_layers > self.prep.n_layers:
            recs = replicate_layers(
                self.recs,
                template_layers=self.prep.n_layers,
                full_layers=self.prep.full_layers,
                layer_prefix=self.prep.layer_prefix,
            )
            if recs is None:
                return None
            self.recs = recs
        return self._build()

    # -- fold views, classify and cost each op ------------------------------------------------------
    def _placeholder(self, node: Any) -> None:
        val = node.meta.get("val")
        self.source[node] = _Source(node, nbytes(val))
        if node.op == "placeholder" and node.name in self.cache_inputs:
            self.cache_nodes.add(node)

    def _tensor_args(self, node: Any) -> list[Any]:
        """fx Nodes among the args (flattened), deduplicated, in order."""
        out: list[Any] = []

        def visit(a: Any) -> None:
            if isinstance(a, list | tuple):
                for x in a:
                    visit(x)
            elif hasattr(a, "op") and hasattr(a, "meta") and a not in out and a in self.source:
                out.append(a)

        visit(node.args)
        visit(list(node.kwargs.values()))
        return out

    def _call(self, node: Any) -> None:
        target = node.target
        name = opname(target)
        val = node.meta.get("val")
        args = self._tensor_args(node)
        if target is operator.getitem:
            parent = self.source.get(node.args[0])
            if parent is not None:
                self.source[node] = _Source(parent.root, min(nbytes(val), parent.nbytes) or parent.nbytes)
            return
        has_tensor_out = is_tensor(val) or (isinstance(val, list | tuple) and any(is_tensor(v) for v in val))
        if not has_tensor_out:
            return  # asserts, symbolic sizes: nothing moves
        if args and self._is_alias(node, name, val, args):
            first = self._nonempty_source(node) if name == "cat" else self.source[args[0]]
            if first is not None:
                self.source[node] = _Source(first.root, min(nbytes(val), first.nbytes))
                return
        self.source[node] = _Source(node, nbytes(val))
        self._record(node, name, val, args)

    def _is_alias(self, node: Any, name: str, val: Any, args: list[Any]) -> bool:
        if name in VIEW_OPS:
            return True
        if name == "contiguous" and is_tensor(val) and val.is_contiguous():
            src = args[0].meta.get("val")
            return bool(is_tensor(src) and src.is_contiguous())
        if name in CAST_OPS:
            src = args[0].meta.get("val")
            return is_tensor(src) and is_tensor(val) and src.dtype == val.dtype
        if name in ("dropout", "feature_dropout", "alpha_dropout"):
            return len(node.args) > 2 and node.args[2] is False
        if name == "cat":
            return self._nonempty_source(node) is not None
        return False

    def _nonempty_source(self, node: Any) -> _Source | None:
        """The single non-empty input of a concatenation, if all others are empty (cache rebuilt in a wrapper)."""
        parts = node.args[0] if node.args and isinstance(node.args[0], list | tuple) else []
        nonempty = [p for p in parts if nbytes(p.meta.get("val")) > 0]
        if len(nonempty) == 1 and nonempty[0] in self.source:
            return self.source[nonempty[0]]
        return None

    def _record(self, node: Any, name: str, val: Any, args: list[Any]) -> None:
        path, cls_name = self.locator.path(node)
        layer, rel = self.locator.layer_of(path)
        kind = op_kind(name, cls_name)
        if kind == "matmul" and "expert" in path.lower() and any(self._is_expert_weight(a) for a in args):
            kind = "moe"  # batched matmul over stacked expert weights (e.g. Llama 4)
        out_bytes = written = nbytes(val)
        read = weight_bytes = param_bytes = 0.0
        producers: dict[OpRecord, float] = {}
        cache_append = name == "cat" and any(self.source[a].root in self.cache_nodes for a in args)
        for pos, arg in enumerate([] if name in NO_READ_OPS else args):
            src = self.source[arg]
            root, arg_bytes = src.root, src.nbytes
            if kind == "attention" and pos >= 3:
                arg_bytes = 0.0  # the mask: causal kernels generate it on the fly
            if root.op in ("placeholder", "get_attr") and root.name in self.weights:
                if root.name in self.params and root not in self.seen_params:
                    self.seen_params.add(root)
                    param_bytes += nbytes(root.meta.get("val"))
                if kind == "embedding":
                    continue  # an embedding reads the gathered rows only (charged below)
                arg_bytes *= touched_fraction(name, arg, args, self.prep.top_k)
                weight_bytes += arg_bytes
            elif root in self.cache_nodes and cache_append:
                continue  # appending to the cache does not read it
            producer = self.rec_of.get(root)
            if producer is not None:
                producers[producer] = producers.get(producer, 0.0) + src.nbytes
            read += arg_bytes
        if kind == "embedding":
            read += out_bytes
        if cache_append:
            written = read  # the new token is written in place; DynamicCache's copy is not charged
        kv_per_token = 0.0
        if kind == "attention" and self.meta.phase != Phase.TRAIN and len(args) >= 3:
            q, k = args[0].meta.get("val"), args[1].meta.get("val")
            tokens = float(q.shape[0] * k.shape[-2]) if is_tensor(q) and is_tensor(k) else 0.0
            kv_per_token = (self.source[args[1]].nbytes + self.source[args[2]].nbytes) / tokens if tokens else 0.0
        rec = OpRecord(
            node=node, opname=name, path=path, rel=rel, layer=layer, label=block_label(rel, cls_name, kind),
            kind=kind, flops=self.flops(node, name, val), bytes=read + written, weight_bytes=weight_bytes,
            param_bytes=param_bytes, out_bytes=out_bytes, kv_per_token=kv_per_token, producers=producers,
            name_shard=name_shard(kind, node, path, val, layer, vocab=self.prep.vocab, n_layers=self.prep.n_layers),
            floating=bool(is_tensor(first_value(val)) and first_value(val).is_floating_point()),
            gemm_nk=self._gemm_nk(name, kind, args),
        )  # fmt: skip
        self.recs.append(rec)
        self.rec_of[node] = rec

    def _gemm_nk(self, name: str, kind: str, args: Any) -> tuple[int, int]:
        """(n, k) of a ``linear`` whose weight is a parameter (its ``[n, k]`` shape); (0, 0) otherwise."""
        if name != "linear" or kind != "matmul" or len(args) < 2:
            return (0, 0)
        w = self.source[args[1]].root if args[1] in self.source else None
        val: Any = w.meta.get("val") if w is not None else None
        if w is None or w.name not in self.params or not is_tensor(val) or val.dim() != 2:
            return (0, 0)
        return (int(val.shape[0]), int(val.shape[1]))

    def _is_expert_weight(self, arg: Any) -> bool:
        root = self.source[arg].root
        val = root.meta.get("val")
        return root.name in self.params and is_tensor(val) and val.dim() == 3

    # -- tasks and edges ----------------------------------------------------------------------------
    def _build(self) -> TaskGraph:
        n = self.prep.full_layers
        kv_heads = self.prep.kv_heads
        graph = TaskGraph(self.meta)
        forward: list[Task] = []
        ids: dict[OpRecord, str] = {}
        used: dict[str, int] = {}
        for rec in self.recs:
            base = self._task_id(rec, n)
            count = used.get(base, 0)
            used[base] = count + 1
            task_id = base if not count else f"{base}#{count}"
            ids[rec] = task_id
            op = Op(
                name=task_id, kind=rec.kind, flops=rec.flops, bytes=rec.bytes,
                weight_bytes=rec.weight_bytes, param_bytes=rec.param_bytes, output_bytes=rec.out_bytes,
                kv_bytes_per_token=rec.kv_per_token, allreduce_bytes=rec.allreduce, shard=rec.shard,
                shard_max=kv_heads if rec.kind == "attention" else 0, gemm_n=rec.gemm_nk[0], gemm_k=rec.gemm_nk[1],
            )  # fmt: skip
            task = Task.from_op(op, layer=rec.layer, block=rec.block, scope=rec.path or "model")
            graph.add_task(task)
            if rec.floating or rec.param_bytes:
                forward.append(task)  # integer/bool ops (masks, positions) get no gradient
            for producer, edge_bytes in rec.producers.items():
                cap = producer.out_bytes or edge_bytes
                graph.add_edge(ids[producer], task_id, min(edge_bytes, cap))
        if self.meta.phase == Phase.TRAIN:
            add_backward_and_optimizer(graph, forward, dtype_bytes=DTYPE_BYTES.get(self.meta.dtype, 2), n_layers=n)
        return graph

    @staticmethod
    def _task_id(rec: OpRecord, n: int) -> str:
        inside = 0 <= rec.layer < n
        return ".".join(p for p in (f"L{rec.layer}" if inside else rec.block, rec.rel, rec.opname) if p)
