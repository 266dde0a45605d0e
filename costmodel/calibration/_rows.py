"""Measured rows as the cost model sees them: the zoo's own ops, priced by the evaluators' own code.

A row of ``mlp.csv`` is one op of one decoder layer for ``num_tokens`` tokens on
one device of a TP group of ``num_tensor_parallel_workers``. It is turned into
the op the builder makes for that model shape (a one-layer ``ModelSpec`` from the
row's shape columns, prefill, batch 1, ``seq = num_tokens``) and priced with
:meth:`KernelPricer.op_times` at ``tp``; a collective row is priced with
:func:`allreduce_time` / :func:`p2p_time` on :func:`group_link` / :func:`pair_link`
of a device group laid out as the row says. So what the fit adjusts is exactly
what the analytic evaluator and the simulator compute, and a fitted profile
needs no translation.

Vidur op -> zoo op: emb -> embed, input_layernorm -> attn_norm, attn_pre_proj ->
attn_qkv, attn_rope -> attn_rope, attn_post_proj -> attn_out,
post_attention_layernorm -> mlp_norm, mlp_up_proj -> mlp_up (gate and up fused
when gated), mlp_act -> mlp_act, mlp_down_proj -> mlp_down, add -> a residual add.
Non-gated shapes (phi-2) are GPT-style: LayerNorm and biases. An LLMCompass GEMM
M x K x N is the builder's ``mlp_down`` of a shape with ``ffn = K``, ``hidden = N``
for ``seq = M`` (a plain linear layer).

The vocab-parallel embedding writes its whole (masked) output on every rank;
``OpTable.per_device`` prices it so (Vidur's ``emb`` time hardly falls with TP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...graphs import ModelSpec, Op, build_spec_graph
from .._platform import Platform
from .._pricing import KernelPricer, OpTable, allreduce_time, group_link, p2p_time, pair_link
from ._read import ComputeFile, Measurements, NetworkFile

#: Vidur op column -> (op class reported, task id in the one-layer zoo graph).
OP_MAP = {
    "emb": ("embed", "embed"),
    "input_layernorm": ("attn_norm", "L0.attn_norm"),
    "attn_pre_proj": ("attn_qkv", "L0.attn_qkv"),
    "attn_rope": ("attn_rope", "L0.attn_rope"),
    "attn_post_proj": ("attn_out", "L0.attn_out"),
    "post_attention_layernorm": ("mlp_norm", "L0.mlp_norm"),
    "mlp_up_proj": ("mlp_up", "L0.mlp_up"),
    "mlp_act": ("mlp_act", "L0.mlp_act"),
    "mlp_down_proj": ("mlp_down", "L0.mlp_down"),
    "add": ("residual", "L0.attn_residual"),
}
GEMM_OPS = ("attn_qkv", "attn_out", "mlp_up", "mlp_down")
LLMCOMPASS_OP = "gemm_llmcompass"


@dataclass(frozen=True)
class KernelRows:
    """One row per measured kernel: its zoo op, where it comes from, and the measured seconds."""

    ops: tuple[Op, ...]
    op_class: np.ndarray  # str: attn_qkv, ..., gemm_llmcompass
    model: np.ndarray  # str
    tokens: np.ndarray
    tp: np.ndarray
    seconds: np.ndarray
    dtype: str

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def kinds(self) -> np.ndarray:
        return np.array([o.kind for o in self.ops])

    def subset(self, mask: np.ndarray) -> KernelRows:
        idx = np.flatnonzero(mask)
        return dataclasses.replace(
            self,
            ops=tuple(self.ops[i] for i in idx),
            op_class=self.op_class[idx],
            model=self.model[idx],
            tokens=self.tokens[idx],
            tp=self.tp[idx],
            seconds=self.seconds[idx],
        )

    def pricer(self) -> Callable[[Platform], np.ndarray]:
        """A function pricing every row on a platform; the op tables are built once, per TP degree."""
        groups = [(int(t), np.flatnonzero(self.tp == t)) for t in np.unique(self.tp)]
        tables = [(t, idx, OpTable.from_ops([self.ops[i] for i in idx])) for t, idx in groups]
        n, dtype = len(self), self.dtype

        def price(platform: Platform) -> np.ndarray:
            out = np.empty(n)
            kp = KernelPricer(platform, dtype)
            for t, idx, table in tables:
                out[idx] = kp.op_times(table, t)
            return out

        return price

    def work_per_device(self) -> tuple[np.ndarray, np.ndarray]:
        """(FLOPs, bytes) per device as the pricer counts them (split by TP, causal halved)."""
        flops, nbytes = np.empty(len(self)), np.empty(len(self))
        for t in np.unique(self.tp):
            idx = np.flatnonzero(self.tp == t)
            flops[idx], nbytes[idx] = OpTable.from_ops([self.ops[i] for i in idx]).per_device(int(t))
        return flops, nbytes


def kernel_rows(meas: Measurements) -> KernelRows:
    """Every compute row of ``meas`` (and its LLMCompass GEMMs) as zoo ops."""
    ops: list[Op] = []
    cols: dict[str, list[object]] = {"op_class": [], "model": [], "tokens": [], "tp": [], "seconds": []}

    def add(op: Op, op_class: str, model: str, tokens: int, tp: int, seconds: float) -> None:
        ops.append(op)
        for k, v in zip(cols, (op_class, model, tokens, tp, seconds), strict=True):
            cols[k].append(v)

    for f in meas.compute:
        for (op_class, op), tokens, tp, seconds in _compute_ops(f, meas.dtype):
            add(op, op_class, f.model, tokens, tp, seconds)
    for g in meas.gemms:
        for (m, k, n), seconds in zip(g.mkn, g.seconds, strict=True):
            add(_gemm_op(int(m), int(k), int(n)), LLMCOMPASS_OP, "llmcompass", int(m), 1, float(seconds))
    return KernelRows(
        ops=tuple(ops),
        op_class=np.array(cols["op_class"], dtype=object).astype(str),
        model=np.array(cols["model"], dtype=object).astype(str),
        tokens=np.array(cols["tokens"], dtype=np.int64),
        tp=np.array(cols["tp"], dtype=np.int64),
        seconds=np.array(cols["seconds"], dtype=float),
        dtype=meas.dtype,
    )


def _compute_ops(f: ComputeFile, dtype: str) -> list[tuple[tuple[str, Op], int, int, float]]:
    """(op class and op, tokens, tp, seconds) for every non-empty cell of a Vidur file."""
    cache: dict[tuple[int, ...], dict[str, Op]] = {}
    out = []
    for i in range(len(f)):
        key = (*f.shapes[i].tolist(), int(f.tokens[i]))
        layer = cache.get(key)
        if layer is None:
            layer = cache[key] = _layer_ops(f, i, dtype)
        for vidur_op, secs in f.seconds.items():
            if np.isfinite(secs[i]) and secs[i] > 0:
                name, task_id = OP_MAP[vidur_op]
                out.append(((name, layer[task_id]), int(f.tokens[i]), int(f.tp[i]), float(secs[i])))
    return out


def _layer_ops(f: ComputeFile, i: int, dtype: str) -> dict[str, Op]:
    heads, kv, hidden, ffn, vocab, gated = (int(v) for v in f.shapes[i])
    try:
        spec = ModelSpec(
            name=f.model, layers=1, hidden=hidden, heads=heads, kv_heads=kv, ffn=ffn, vocab=vocab,
            gated_mlp=bool(gated), dtype=dtype, norm="rmsnorm" if gated else "layernorm", bias=not gated,
        )  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"{f.path}: shape columns do not describe a model: {exc}") from None
    graph = build_spec_graph(spec, phase="prefill", batch=1, seq=int(f.tokens[i]))
    return {t.id: t.ops[0] for t in graph.tasks}


def _gemm_op(m: int, k: int, n: int) -> Op:
    spec = ModelSpec(name="gemm", layers=1, hidden=n, heads=1, kv_heads=1, ffn=k, vocab=1, gated_mlp=False,
                     dtype="fp16")  # fmt: skip
    return build_spec_graph(spec, phase="prefill", batch=1, seq=m).task("L0.mlp_down").ops[0]


@dataclass(frozen=True)
class CollectiveRows:
    """One row per measured collective: cluster, kind, bytes, group layout, seconds."""

    cluster: np.ndarray  # str
    collective: np.ndarray  # str: all_reduce | send_recv
    size_bytes: np.ndarray
    workers: np.ndarray
    devices_per_node: np.ndarray
    seconds: np.ndarray
    node_size: np.ndarray  # the cluster's devices per node (0: unknown)

    def __len__(self) -> int:
        return len(self.seconds)

    def on(self, platform: Platform) -> np.ndarray:
        """Rows of clusters built like ``platform``'s nodes (same devices per node, or unknown)."""
        return (self.node_size == 0) | (self.node_size == platform.devices_per_node)

    @property
    def link_class(self) -> np.ndarray:
        return np.where(self.workers > self.devices_per_node, "inter", "intra")

    def subset(self, mask: np.ndarray) -> CollectiveRows:
        return CollectiveRows(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))

    def predict(self, platform: Platform) -> np.ndarray:
        """Seconds of every row on ``platform`` (NaN where it has no such group, e.g. no inter link)."""
        out = np.full(len(self), np.nan)
        keys = np.stack([self.workers, self.devices_per_node, self.collective == "send_recv"], axis=1)
        for key in np.unique(keys, axis=0):
            workers, per_node, is_p2p = (int(v) for v in key)
            idx = np.flatnonzero((keys == key).all(axis=1))
            devices = _layout(platform, workers, per_node)
            if devices is None:
                continue
            size = self.size_bytes[idx]
            if is_p2p:
                alpha, bw = pair_link(platform, devices[:1], devices[1:2])
                out[idx] = [p2p_time(s, alpha, bw) for s in size]
            else:
                alpha, bw = group_link(platform, devices)
                out[idx] = [allreduce_time(s, workers, alpha, bw) for s in size]
        return out


def _layout(platform: Platform, workers: int, per_node: int) -> tuple[int, ...] | None:
    """Device ids of ``workers`` ranks, ``per_node`` on each node, or None if the platform cannot host them."""
    if per_node > platform.devices_per_node or workers < 2:
        return None
    nodes = -(-workers // per_node)
    if nodes > 1 and "inter" not in platform.links:
        return None
    p = platform.devices_per_node
    return tuple(node * p + i for node in range(nodes) for i in range(per_node))[:workers]


def collective_rows(meas: Measurements) -> CollectiveRows:
    """Every network row of ``meas``."""
    files: tuple[NetworkFile, ...] = meas.network

    def cat(get: Callable[[NetworkFile], np.ndarray]) -> np.ndarray:
        return np.concatenate([get(f) for f in files]) if files else np.array([])

    return CollectiveRows(
        cluster=cat(lambda f: np.full(len(f.seconds), f.cluster)).astype(str),
        collective=cat(lambda f: np.full(len(f.seconds), f.collective)).astype(str),
        size_bytes=cat(lambda f: f.size_bytes),
        workers=cat(lambda f: f.workers).astype(np.int64),
        devices_per_node=cat(lambda f: f.devices_per_node).astype(np.int64),
        seconds=cat(lambda f: f.seconds),
        node_size=cat(lambda f: np.full(len(f.seconds), f.node_size)).astype(np.int64),
    )


def with_nodes(platform: Platform, nodes: int) -> Platform:
    """``platform`` with at least ``nodes`` nodes (for collective rows spanning several)."""
    return platform if platform.nodes >= nodes else dataclasses.replace(platform, nodes=nodes)
