"""Build the operator-level TaskGraph of a zoo transformer for one phase.

Counting conventions (the importer follows the same ones, so both agree):

* A linear layer costs 2 x params x tokens FLOPs (bias adds are not counted).
* Attention scores and weighted values cost 4 x batch x q_len x kv_len x hidden
  FLOPs, *not* halved for causal masking: that is what
  ``torch.utils.flop_counter`` reports for scaled-dot-product attention. Causal
  kernels (FlashAttention) skip about half of the prefill score blocks; the
  cost model prices what the kernel runs, not this count.
* Element-wise ops and norms count 0 FLOPs: they are priced by their bytes.
* In prefill the LM head runs on the last token of each sequence only (what
  serving engines do); in training on every token, followed by the loss.
* A decode step reads each MoE expert at most once; with B tokens routed to
  top_k of E experts, the expected number of experts touched is
  E x (1 - (1 - top_k/E)^B).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from .._limits import check_workload
from ._task import Op, Task
from ._taskgraph import GraphMeta, Phase, TaskGraph
from ._zoo import ModelSpec, get_model

#: Backward costs twice the forward FLOPs (input and weight gradients).
BACKWARD_FLOP_FACTOR = 2.0
#: Adam with fp32 master weights: bytes moved per parameter by the optimizer step
#: (read grad, master, m, v; write master, m, v and the low-precision copy).
OPTIMIZER_BYTES_PER_PARAM = 30.0
OPTIMIZER_FLOPS_PER_PARAM = 12.0


def _add_task(graph: TaskGraph, op: Op, *, layer: int, block: str, scope: str, inputs: Iterable[str]) -> Task:
    """Append ``op`` as a one-op task reading the whole output of each task in ``inputs``."""
    task = Task.from_op(op, layer=layer, block=block, scope=scope)
    graph.add_task(task)
    for src in inputs:
        graph.add_edge(src, task.id, graph.task(src).output_bytes)
    return task


class _Builder:
    """Appends ops as tasks in program order and wires the data edges."""

    def __init__(self, spec: ModelSpec, meta: GraphMeta) -> None:
        self.spec = spec
        self.meta = meta
        self.graph = TaskGraph(meta)
        self.forward: list[Task] = []

    def add(self, op: Op, *, layer: int, block: str, scope: str, inputs: Iterable[str]) -> str:
        task = _add_task(self.graph, op, layer=layer, block=block, scope=scope, inputs=inputs)
        if op.step == "forward":
            self.forward.append(task)
        return task.id


def _matmul(
    name: str,
    tokens: float,
    k: int,
    n: int,
    dt: int,
    *,
    shard: str,
    params: int | None = None,
    allreduce: bool = False,
    weight_bytes: float | None = None,
    kind: str = "matmul",
) -> Op:
    params = k * n if params is None else params
    wbytes = params * dt if weight_bytes is None else weight_bytes
    out = tokens * n * dt
    return Op(
        name=name,
        kind=kind,
        flops=2.0 * tokens * k * n,
        bytes=wbytes + tokens * k * dt + out,
        weight_bytes=wbytes,
        param_bytes=params * dt,
        output_bytes=out,
        allreduce_bytes=out if allreduce else 0.0,
        shard=shard,
        gemm_k=k,
        gemm_n=n,
    )


def _pointwise(name: str, kind: str, elems_in: float, elems_out: float, dt: int, *, shard: str, params: int = 0) -> Op:
    return Op(
        name=name,
        kind=kind,
        bytes=(elems_in + elems_out) * dt + params * dt,
        weight_bytes=params * dt,
        param_bytes=params * dt,
        output_bytes=elems_out * dt,
        shard=shard,
    )


def _dropout(name: str, elems: float, dt: int, *, shard: str, shard_max: int = 0) -> Op:
    """A training dropout: reads x, writes the result and a 1-byte mask (what its backward reads)."""
    op = _pointwise(name, "elementwise", elems, elems, dt, shard=shard)
    return _with(op, bytes=op.bytes + elems, shard_max=shard_max)


def _attention(b: _Builder, i: int, inputs: list[str], tokens: float, q_len: int, kv_len: int) -> str:
    """Attention core of layer ``i``: one fused kernel (flash) or scores, softmax and context (unfused).

    Unfused attention (Megatron-LM before FlashAttention) materialises the scores,
    batch x heads x q_len x kv_len elements: the score and context bmm's write and read
    them, the fused scale-mask-softmax reads and writes them, and training stashes the
    probabilities for backward. It computes the masked half too (no causal saving).
    """
    s, dt = b.spec, b.spec.dtype_bytes
    h, kvd, batch, phase = s.hidden, s.kv_dim, b.meta.batch, b.meta.phase
    th = tokens * h
    kv_per_token = 2.0 * kvd * s.kv_dtype_bytes  # K and V as cached (an fp8 cache: half)
    kv_read = batch * kv_len * kv_per_token if phase == Phase.DECODE else tokens * kv_per_token
    kv_store = 0.0 if phase == Phase.TRAIN else kv_per_token
    scope = f"layers.{i}.attn"
    if s.attention == "flash":
        op = Op(
            name=f"L{i}.attention",
            kind="attention",
            flops=4.0 * batch * q_len * kv_len * h,
            bytes=kv_read + 2 * th * dt,
            output_bytes=th * dt,
            kv_bytes_per_token=kv_store,
            causal=s.arch == "decoder" and q_len > 1,
            shard="heads",
            shard_max=s.kv_heads,
        )
        return b.add(op, layer=i, block="attn", scope=scope + ".core", inputs=inputs)
    scores = batch * s.heads * q_len * kv_len * dt
    half_kv = kv_read / 2  # K for the scores, V for the context
    ops: tuple[Op, ...] = (
        Op(
            name=f"L{i}.attn_scores",
            kind="matmul",
            flops=2.0 * batch * q_len * kv_len * h,
            bytes=th * dt + half_kv + scores,
            output_bytes=scores,
            kv_bytes_per_token=kv_store,
            shard="heads",
            shard_max=s.kv_heads,
        ),
        Op(
            name=f"L{i}.attn_softmax",
            kind="elementwise",
            bytes=2 * scores,
            output_bytes=scores,
            shard="heads",
            shard_max=s.kv_heads,
        ),
        Op(
            name=f"L{i}.attn_context",
            kind="matmul",
            flops=2.0 * batch * q_len * kv_len * h,
            bytes=scores + half_kv + th * dt,
            output_bytes=th * dt,
            shard="heads",
            shard_max=s.kv_heads,
        ),
    )
    names: tuple[str, ...] = ("scores", "softmax", "context")
    if b.spec.dropout and phase == Phase.TRAIN:
        elems = scores / dt
        drop = _dropout(f"L{i}.attn_probs_dropout", elems, dt, shard="heads", shard_max=s.kv_heads)
        ops = (ops[0], ops[1], drop, ops[2])
        names = ("scores", "softmax", "attn_dropout", "context")
    for op, name in zip(ops, names, strict=True):
        inputs = [b.add(op, layer=i, block="attn", scope=f"{scope}.{name}", inputs=inputs)]
    return inputs[0]


def _layer(b: _Builder, i: int, x: str, tokens: float, q_len: int, kv_len: int) -> str:
    """Append one transformer layer reading activation task ``x``; return its output task."""
    s, dt = b.spec, b.spec.dtype_bytes
    h, kvd = s.hidden, s.kv_dim
    p = f"L{i}."
    scope = f"layers.{i}"
    norm_p = s.norm_params()
    th = tokens * h
    # -- attention block ----------------------------------------------------
    n1 = b.add(
        _pointwise(p + "attn_norm", "norm", th, th, dt, shard="replicated", params=norm_p),
        layer=i,
        block="attn",
        scope=scope + ".input_norm",
        inputs=[x],
    )
    qkv_n = h + 2 * kvd
    qkv = b.add(
        _matmul(p + "attn_qkv", tokens, h, qkv_n, dt, shard="column", params=h * qkv_n + int(s.bias) * qkv_n),
        layer=i,
        block="attn",
        scope=scope + ".attn.qkv_proj",
        inputs=[n1],
    )
    prev = qkv
    if not s.positions:  # rotary embedding on q and k
        prev = b.add(
            _pointwise(p + "attn_rope", "elementwise", tokens * (h + kvd), tokens * (h + kvd), dt, shard="heads"),
            layer=i,
            block="attn",
            scope=scope + ".attn.rotary",
            inputs=[qkv],
        )
    core = _attention(b, i, [prev, qkv] if prev != qkv else [qkv], tokens, q_len, kv_len)
    out = b.add(
        _matmul(p + "attn_out", tokens, h, h, dt, shard="row", params=h * h + int(s.bias) * h, allreduce=True),
        layer=i,
        block="attn",
        scope=scope + ".attn.o_proj",
        inputs=[core],
    )
    dropout = s.dropout and b.meta.phase == Phase.TRAIN
    if dropout:
        out = b.add(
            _dropout(p + "attn_dropout", th, dt, shard="replicated"),
            layer=i,
            block="attn",
            scope=scope + ".attn.resid_dropout",
            inputs=[out],
        )
    res1 = b.add(
        _pointwise(p + "attn_residual", "elementwise", 2 * th, th, dt, shard="replicated"),
        layer=i,
        block="attn",
        scope=scope + ".attn.residual",
        inputs=[out, x],
    )
    # -- MLP block ----------------------------------------------------------
    n2 = b.add(
        _pointwise(p + "mlp_norm", "norm", th, th, dt, shard="replicated", params=norm_p),
        layer=i,
        block="mlp",
        scope=scope + ".post_attention_norm",
        inputs=[res1],
    )
    up_n = (2 if s.gated_mlp else 1) * s.ffn
    bias = int(s.bias)
    if s.experts:
        e, k = s.experts, s.top_k
        touched = e * (1.0 - (1.0 - k / e) ** tokens)
        router = b.add(
            _matmul(p + "moe_router", tokens, h, e, dt, shard="replicated"),
            layer=i,
            block="mlp",
            scope=scope + ".moe.gate",
            inputs=[n2],
        )
        routed = tokens * k
        up = b.add(
            _matmul(
                p + "moe_up",
                routed,
                h,
                up_n,
                dt,
                shard="experts",
                kind="moe",
                params=e * h * up_n,
                weight_bytes=touched * h * up_n * dt,
            ),
            layer=i,
            block="mlp",
            scope=scope + ".moe.experts.up",
            inputs=[n2, router],
        )
        act = b.add(
            _pointwise(p + "moe_act", "elementwise", routed * up_n, routed * s.ffn, dt, shard="experts"),
            layer=i,
            block="mlp",
            scope=scope + ".moe.experts.act",
            inputs=[up],
        )
        down_op = _matmul(
            p + "moe_down",
            routed,
            s.ffn,
            h,
            dt,
            shard="experts",
            kind="moe",
            params=e * s.ffn * h,
            weight_bytes=touched * s.ffn * h * dt,
        )
        # Expert outputs are combined per token (top_k weighted sum): th elements leave the block.
        down_op = _with(down_op, output_bytes=th * dt, allreduce_bytes=th * dt)
        down = b.add(down_op, layer=i, block="mlp", scope=scope + ".moe.experts.down", inputs=[act])
    else:
        up = b.add(
            _matmul(p + "mlp_up", tokens, h, up_n, dt, shard="column", params=h * up_n + bias * up_n),
            layer=i,
            block="mlp",
            scope=scope + ".mlp.up_proj",
            inputs=[n2],
        )
        act = b.add(
            _pointwise(p + "mlp_act", "elementwise", tokens * up_n, tokens * s.ffn, dt, shard="column"),
            layer=i,
            block="mlp",
            scope=scope + ".mlp.act",
            inputs=[up],
        )
        down = b.add(
            _matmul(p + "mlp_down", tokens, s.ffn, h, dt, shard="row", params=s.ffn * h + bias * h, allreduce=True),
            layer=i,
            block="mlp",
            scope=scope + ".mlp.down_proj",
            inputs=[act],
        )
    if dropout:
        down = b.add(
            _dropout(p + "mlp_dropout", th, dt, shard="replicated"),
            layer=i,
            block="mlp",
            scope=scope + ".mlp.dropout",
            inputs=[down],
        )
    return b.add(
        _pointwise(p + "mlp_residual", "elementwise", 2 * th, th, dt, shard="replicated"),
        layer=i,
        block="mlp",
        scope=scope + ".mlp.residual",
        inputs=[down, res1],
    )


def _with(op: Op, **changes: Any) -> Op:
    return replace(op, **changes)


def add_backward_and_optimizer(graph: TaskGraph, forward: Sequence[Task], *, dtype_bytes: int, n_layers: int) -> None:
    """Mirror the forward tasks in reverse with 2x FLOPs, then add one optimizer step per layer.

    Shared by the zoo and the importer, so both price training alike. ``forward``
    holds the one-op tasks that get a gradient, in program order; ``dtype_bytes``
    turns their ``param_bytes`` into parameters; optimizer tasks outside layers
    ``0..n_layers-1`` are named after their block (``embed.optimizer``).
    Backward of a column-parallel matmul all-reduces its input gradient (the
    Megatron ``f`` operator), so training pays four all-reduces per layer.
    """
    grad_of: dict[str, str] = {}
    consumers: dict[str, list[str]] = {t.id: list(graph.nx.successors(t.id)) for t in forward}
    for task in reversed(forward):
        (op,) = task.ops
        in_bytes = max(op.bytes - op.weight_bytes - op.output_bytes, 0.0)
        # Column-parallel linears (and the vocab-parallel head) all-reduce their input gradient: the
        # Megatron "f" operator. Per-head attention bmm's need nothing: each rank owns its heads.
        ar = in_bytes if op.shard in ("column", "vocab") and op.kind == "matmul" else 0.0
        bwd = Op(
            name=op.name + ".bwd",
            kind=op.kind,
            flops=BACKWARD_FLOP_FACTOR * op.flops,
            bytes=2.0 * op.bytes,
            weight_bytes=op.weight_bytes,
            output_bytes=in_bytes or op.output_bytes,
            allreduce_bytes=ar,
            shard=op.shard,
            shard_max=op.shard_max,
            step="backward",
            causal=op.causal,
        )
        inputs = [task.id] + [grad_of[c] for c in consumers[task.id] if c in grad_of]
        grad = _add_task(graph, bwd, layer=task.layer, block=task.block, scope=task.scope + ".grad", inputs=inputs)
        grad_of[task.id] = grad.id
    # One optimizer task per layer (and embedding, head) updates that layer's weights.
    by_layer: dict[int, list[Task]] = {}
    for task in forward:
        if task.param_bytes:
            by_layer.setdefault(task.layer, []).append(task)
    for layer, tasks in sorted(by_layer.items()):
        n_params = sum(t.param_bytes for t in tasks) / dtype_bytes
        opt = Op(
            name=f"L{layer}.optimizer" if 0 <= layer < n_layers else f"{tasks[0].block}.optimizer",
            kind="optimizer",
            flops=OPTIMIZER_FLOPS_PER_PARAM * n_params,
            bytes=OPTIMIZER_BYTES_PER_PARAM * n_params,
            shard="column",
            step="optimizer",
        )
        _add_task(graph, opt, layer=layer, block="optimizer", scope="optimizer", inputs=[grad_of[t.id] for t in tasks])


def build_spec_graph(spec: ModelSpec, *, phase: str, batch: int, seq: int, context: int = 0) -> TaskGraph:
    """Operator-level graph of ``spec`` for ``phase`` and the workload shape.

    Args:
        spec: the model.
        phase: ``prefill`` (batch x prompt ``seq``), ``decode`` (one new token per
            sequence reading a KV cache of ``context`` tokens) or ``train``
            (batch x ``seq``, forward + backward + optimizer).
        batch: sequences in the batch.
        seq: prompt (prefill) or sequence (train) length; ignored by decode.
        context: KV length of a decode step (defaults to ``seq``).
    """
    check_workload(batch, seq, context)
    if spec.arch == "encoder" and phase == Phase.DECODE:
        raise ValueError(f"model {spec.name!r} is an encoder: phase 'decode' is not defined (use prefill or train)")
    context = context or (seq if phase == Phase.DECODE else 0)
    meta = GraphMeta(
        model=spec.name,
        phase=phase,
        batch=batch,
        seq=seq,
        context=context,
        n_layers=spec.layers,
        heads=spec.heads,
        kv_heads=spec.kv_heads,
        hidden=spec.hidden,
        dtype=spec.dtype,
        spec=spec.to_dict(),
    )
    b = _Builder(spec, meta)
    s, dt = spec, spec.dtype_bytes
    q_len = 1 if phase == Phase.DECODE else seq
    kv_len = context + 1 if phase == Phase.DECODE else seq
    tokens = float(batch * q_len)
    th = tokens * s.hidden
    emb_params = s.vocab * s.hidden
    emb = Op(
        name="embed",
        kind="embedding",
        bytes=2 * th * dt,
        weight_bytes=0.0,
        param_bytes=emb_params * dt,
        output_bytes=th * dt,
        allreduce_bytes=th * dt,
        shard="vocab",
    )
    x = b.add(emb, layer=-1, block="embed", scope="embed_tokens", inputs=[])
    extra = (s.positions + s.type_vocab) * s.hidden
    if extra:
        x = b.add(
            _pointwise("embed_positions", "embedding", th, th, dt, shard="replicated", params=extra),
            layer=-1,
            block="embed",
            scope="embed_positions",
            inputs=[x],
        )
    if s.arch == "encoder":
        x = b.add(
            _pointwise("embed_norm", "norm", th, th, dt, shard="replicated", params=s.norm_params()),
            layer=-1,
            block="embed",
            scope="embed_norm",
            inputs=[x],
        )
    for i in range(s.layers):
        x = _layer(b, i, x, tokens, q_len, kv_len)
    n = s.layers
    head_tokens = float(batch) if phase == Phase.PREFILL and s.arch == "decoder" else tokens
    fn = b.add(
        _pointwise(
            "final_norm",
            "norm",
            head_tokens * s.hidden,
            head_tokens * s.hidden,
            dt,
            shard="replicated",
            params=s.norm_params(),
        ),
        layer=n,
        block="head",
        scope="final_norm",
        inputs=[x],
    )
    head = _matmul(
        "lm_head",
        head_tokens,
        s.hidden,
        s.vocab,
        dt,
        shard="vocab",
        params=0 if s.tied_embeddings else emb_params,
        weight_bytes=emb_params * dt,
    )
    x = b.add(head, layer=n, block="head", scope="lm_head", inputs=[fn])
    if phase == Phase.TRAIN:
        loss = _pointwise("loss", "loss", head_tokens * s.vocab, head_tokens, 4, shard="vocab")
        b.add(_with(loss, flops=5.0 * head_tokens * s.vocab), layer=n, block="head", scope="loss", inputs=[x])
        add_backward_and_optimizer(b.graph, b.forward, dtype_bytes=dt, n_layers=s.layers)
    return b.graph


def build_graph(model: str | ModelSpec, *, phase: str, batch: int, seq: int, context: int = 0) -> TaskGraph:
    """Build the op-level graph of a zoo model (name, ``name:field=v``, YAML path or spec)."""
    spec = get_model(model) if isinstance(model, str) else model
    return build_spec_graph(spec, phase=phase, batch=batch, seq=seq, context=context)
