"""A Llama-style transformer in plain torch with random weights, shardable for TP and PP.

Why hand-written: it must run exactly the computation the cost model describes for
a zoo :class:`~paratune.graphs.ModelSpec` (the op list of ``graphs._builder``: embedding,
per layer norm -> fused QKV -> rotary -> attention -> output projection (+ all-reduce)
-> residual -> norm -> fused up/gate -> activation -> down projection (+ all-reduce)
-> residual, then final norm and LM head on the last token in prefill), built from
the very op functions the microbenchmarks time (:mod:`._torchops`). transformers'
models add ops (masks, dtype casts, cache bookkeeping) the graph does not count.

Tensor parallelism is Megatron's: QKV and up/gate split by columns (heads, FFN),
output and down projections by rows with an all-reduce of their output,
vocab-parallel embedding (masked lookup + all-reduce) and LM head (each rank keeps
its vocabulary slice of the logits; no gather, as in the cost model's graph).
Weights are drawn per tensor from ``seed`` and sliced, so a TP or PP shard holds
exactly the corresponding part of the unsharded model (tests compare logits).

Imports torch at the top: import it lazily (the cost model stays torch-free).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...graphs import ModelSpec
from . import _torchops as ops


def check_llama_style(spec: ModelSpec) -> None:
    """Refuse a zoo model this hand-written transformer does not implement (it is Llama-style only)."""
    if spec.arch != "decoder" or spec.norm != "rmsnorm" or spec.bias or spec.positions or spec.experts:
        raise ValueError(f"model {spec.name!r}: the e2e model is Llama-style (rmsnorm, rotary, no bias or MoE)")


AllReduce = Callable[[torch.Tensor], None]


def _no_reduce(x: torch.Tensor) -> None:
    return None


class Shard:
    """The weights one process holds: layers ``first..last`` (inclusive) of TP rank ``rank`` of ``tp``.

    ``embed`` is present on the shard holding layer 0, the final norm and LM head on the
    one holding the last layer. ``allreduce`` sums a tensor over the TP group in place.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        layers: tuple[int, int] | None = None,
        tp: int = 1,
        rank: int = 0,
        seed: int = 0,
        allreduce: AllReduce | None = None,
    ) -> None:
        check_llama_style(spec)
        s = spec
        if s.heads % tp or s.kv_heads % tp or s.ffn % tp or s.vocab % tp:
            raise ValueError(f"tp={tp} must divide heads ({s.heads}), kv_heads, ffn and vocab")
        self.spec, self.tp, self.rank, self.seed = s, tp, rank, seed
        self.first, self.last = layers if layers is not None else (0, s.layers - 1)
        self.dtype = ops.DTYPES[s.dtype]
        self.allreduce = allreduce or _no_reduce
        self.heads, self.kv = s.heads // tp, s.kv_heads // tp
        d, h, f = s.head_dim, s.hidden, s.ffn
        rows = s.vocab // tp
        self.vocab_start = rank * rows
        self.has_embed, self.has_head = self.first == 0, self.last == s.layers - 1
        self._rope: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        if self.has_embed:
            self.emb = self._draw(-1, 0, (s.vocab, h))[self.vocab_start : self.vocab_start + rows].contiguous()
        self.layers: list[dict[str, torch.Tensor]] = []
        for i in range(self.first, self.last + 1):
            qkv = self._draw(i, 0, ((s.heads + 2 * s.kv_heads) * d, h))
            q, k, v = qkv.split([s.heads * d, s.kv_heads * d, s.kv_heads * d])
            up_rows = 2 * f if s.gated_mlp else f
            up = self._draw(i, 1, (up_rows, h))
            ups = up.chunk(2) if s.gated_mlp else (up,)
            self.layers.append({
                "n1": self._norm(i, 2),
                "qkv": torch.cat([self._rows(q, self.heads * d), self._rows(k, self.kv * d),
                                  self._rows(v, self.kv * d)]),
                "o": self._cols(self._draw(i, 3, (h, s.heads * d)), self.heads * d),
                "n2": self._norm(i, 4),
                "up": torch.cat([self._rows(u, f // tp) for u in ups]),
                "down": self._cols(self._draw(i, 5, (h, f)), f // tp),
            })  # fmt: skip
        if self.has_head:
            self.final_norm = self._norm(s.layers, 0)
            self.head = self._draw(s.layers, 1, (s.vocab, h))[self.vocab_start : self.vocab_start + rows].contiguous()

    # -- weights ---------------------------------------------------------------
    def _draw(self, layer: int, index: int, size: tuple[int, int]) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + (layer + 1) * 16 + index)
        return (torch.randn(size, generator=gen) * size[1] ** -0.5).to(self.dtype)

    def _norm(self, layer: int, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + (layer + 1) * 16 + index)
        return (1.0 + 0.1 * torch.randn(self.spec.hidden, generator=gen)).to(self.dtype)

    def _rows(self, w: torch.Tensor, n: int) -> torch.Tensor:
        return w[self.rank * n : (self.rank + 1) * n].contiguous()

    def _cols(self, w: torch.Tensor, n: int) -> torch.Tensor:
        return w[:, self.rank * n : (self.rank + 1) * n].contiguous()

    # -- forward ---------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[tokens, hidden]`` for flat token ids (all-reduced over the TP group)."""
        x = ops.embed(ids, self.emb, self.vocab_start, sharded=self.tp > 1)
        if self.tp > 1:
            self.allreduce(x)
        return x

    def layer(self, w: dict[str, torch.Tensor], x: torch.Tensor, batch: int, cos: torch.Tensor, sin: torch.Tensor,
              cache: tuple[torch.Tensor, torch.Tensor] | None, pos: int) -> torch.Tensor:  # fmt: skip
        """One decoder layer; ``cache`` (k, v) means decode (one token per sequence at ``pos``)."""
        qkv = ops.linear(ops.rms_norm(x, w["n1"]), w["qkv"])
        qk, v = ops.split_qkv(qkv, batch, self.heads, self.kv, self.spec.head_dim)
        qk = ops.rope(qk, cos, sin)
        if cache is None:
            a = ops.attention_prefill(qk, v, self.heads)
        else:
            a = ops.attention_decode(qk, v, cache[0], cache[1], pos, self.heads)
        o = ops.linear(a, w["o"])
        self.allreduce(o)
        x = ops.add(x, o)
        u = ops.linear(ops.rms_norm(x, w["n2"]), w["up"])
        dn = ops.linear(ops.activation(u, self.spec.gated_mlp), w["down"])
        self.allreduce(dn)
        return ops.add(x, dn)

    def run_layers(self, x: torch.Tensor, batch: int, *, caches: list[Any] | None = None, pos: int = 0) -> torch.Tensor:
        """This shard's layers on ``x`` ``[tokens, hidden]``: prefill when ``caches`` is None, else a decode step."""
        seq = x.shape[0] // batch
        key = (seq, -1) if caches is None else (1, pos)
        tables = self._rope.get(key)
        if tables is None:  # computed once per shape, as engines keep a rotary cache
            positions = torch.arange(seq) if caches is None else torch.tensor([pos])
            tables = self._rope[key] = ops.rope_tables(positions, self.spec.head_dim, self.dtype)
        cos, sin = tables
        for j, w in enumerate(self.layers):
            x = self.layer(w, x, batch, cos, sin, None if caches is None else caches[j], pos)
        return x

    def logits(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """Final norm and LM head on the last token of each sequence (this rank's vocabulary slice)."""
        last = x.view(batch, -1, self.spec.hidden)[:, -1]
        return ops.linear(ops.rms_norm(last, self.final_norm), self.head)

    def new_caches(self, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """KV caches of this shard's layers holding ``context`` (random) tokens, room for one more."""
        size = (batch, self.kv, context + 1, self.spec.head_dim)
        return [(torch.randn(size).to(self.dtype), torch.randn(size).to(self.dtype)) for _ in self.layers]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole model (a shard holding every layer): ``ids`` ``[batch, seq]`` -> last-token logits."""
        batch = ids.shape[0]
        return self.logits(self.run_layers(self.embed(ids.reshape(-1)), batch), batch)

    def decode(self, ids: torch.Tensor, caches: list[Any], pos: int) -> torch.Tensor:
        """One decode step of the whole model: ``ids`` ``[batch]`` at position ``pos`` -> logits."""
        batch = ids.shape[0]
        return self.logits(self.run_layers(self.embed(ids), batch, caches=caches, pos=pos), batch)
