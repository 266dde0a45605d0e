"""The cost of one serving-engine iteration as a function of its mix: no graph rebuild per workload.

A serving search evaluates thousands of workloads (batch, context, prompt lengths); rebuilding the task
graph for each costs milliseconds. An :class:`IterationModel` builds one-layer graphs of the model once, at
grid points of the few quantities an iteration's cost depends on, prices them with the real
:class:`~._pricing.KernelPricer`, and answers each iteration by interpolation:

* **token ops** (GEMMs, norms, element-wise, rotary, MoE experts, the embedding): a function of the
  iteration's tokens T = prefill tokens + decode sequences, on a grid of 8 points per octave (1 .. 2^20),
  log-log interpolated; per layer and for the embedding;
* **TP all-reduces**: two per layer of T x hidden activations (one for the embedding), priced exactly per
  call by :func:`~._pricing.tp_allreduce_time` on the stage's group (algorithm switches do not interpolate);
* **prefill attention**: the chunks' T_p tokens and causal work W (``Mix.prefill_attention``) are read as
  B_eff whole prompts of s_eff tokens, s_eff = 2W / T_p - 1 and B_eff = T_p / s_eff (exact for whole
  prompts), priced on a grid of lengths (4 points per octave) and of sequence counts, linear between counts
  (:class:`~._iteration_grid.AttentionGrid`: the fitted attention terms are affine in the sequences, two counts suffice;
  the hand-set curves get powers of two). A chunk of q tokens after c cached ones keeps its causal FLOPs
  but reads only the KV of its own q tokens: compute-bound, so slightly low;
* **decode attention**: n sequences reading C cached tokens in all: the same grid over the mean context
  C / n;
* **LM head and final norm** on the ``sampled`` rows only (the engines compute logits for them alone);
* **pipeline**: layers split evenly over ``pp`` stages, earlier stages taking the remainder (as
  ``problem.even_cuts``), stage s on devices s*tp .. s*tp+tp-1; a point-to-point of T x hidden activations
  between stages (:func:`~._pricing.pair_link`); ``latency_s`` = sum of the stages and transfers (one
  batch crosses every stage), ``interval_s`` = the slowest stage or transfer: vLLM and TRT-LLM keep ``pp``
  batches in flight (vLLM's virtual engines), so an instance starts an iteration every ``interval_s``;
* a per-iteration **engine overhead** (scheduler, sampling, host): ``iteration_overhead_s +
  sequence_overhead_s x sampled``, given by the caller (:mod:`paratune.serving._engines` holds the table),
  added to both.

Without the overhead the model reproduces :class:`~._analytic.AnalyticEvaluator` on the graph of the same
workload within 2% (tests check off-grid points). One ``latency_s`` costs a few microseconds: plain floats,
``bisect`` and ``math`` only.

KV capacity (``kv_capacity_tokens``): per stage, (device memory x ``memory_fraction`` - the runtime's
reserve - weights per GPU - activation workspace for the token budget) / KV bytes per token per GPU, the
smallest over stages, rounded down to whole pages. vLLM's ``gpu_memory_utilization`` (0.9) caps all the
process's memory, CUDA context included, hence the reserve. Workspace: twice the largest op output of the
budget's tokens (the evaluator's rule, input and output of the biggest op alive at once).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np

from ..graphs import DTYPE_BYTES, ModelSpec
from ._iteration_grid import AttentionGrid, Curve, Workloads, sum_by_group, workloads
from ._memory import kv_cache_memory, weight_memory
from ._platform import Platform
from ._pricing import GroupLink, KernelPricer, group_terms, p2p_time, pair_link, tp_allreduce_time


def kv_shard_bytes_per_token(spec: ModelSpec, *, tp: int, pp: int, kv_dtype: str | None = None) -> float:
    """KV bytes per token on the most loaded GPU of a TP x PP instance (KV heads replicated past their count)."""
    per_layer = 2.0 * spec.kv_dim * DTYPE_BYTES[kv_dtype or spec.kv_dtype or spec.dtype] / min(tp, spec.kv_heads)
    return per_layer * -(-spec.layers // pp)


class IterationModel:
    """Seconds of one engine iteration of one instance (TP x PP GPUs), and the instance's KV capacity.

    Implements ``paratune.serving.IterationCost`` structurally: ``latency_s(mix)`` / ``interval_s(mix)``
    accept any object with ``prefill_tokens``, ``prefill_attention``, ``decode_seqs``, ``decode_context``
    and ``sampled`` (see ``serving.Mix``). Build once per (model, platform, TP, PP, dtypes); a search reuses
    it for every workload. :meth:`with_limits` gives a copy whose KV capacity is that of another memory
    fraction, token budget or page size, sharing the tables.

    Example:
        >>> from paratune.costmodel import get_platform
        >>> from paratune.graphs import get_model
        >>> from types import SimpleNamespace as Mix
        >>> m = IterationModel(get_model("llama3-8b"), get_platform("dgx-h100"), tp=1)
        >>> step = Mix(prefill_tokens=0, prefill_attention=0.0, decode_seqs=16, decode_context=16 * 1024, sampled=16)
        >>> 0.005 < m.latency_s(step) < 0.02 and m.kv_capacity_tokens > 100_000
        True
    """

    def __init__(
        self,
        spec: ModelSpec,
        platform: Platform,
        *,
        tp: int = 1,
        pp: int = 1,
        dtype: str | None = None,
        kv_dtype: str | None = None,
        iteration_overhead_s: float = 0.0,
        sequence_overhead_s: float = 0.0,
        memory_fraction: float = 0.9,
        budget_tokens: int = 8192,
        max_seqs: int = 256,
        page_tokens: int = 1,
        engine: str | None = None,
    ) -> None:
        dtype = dtype or spec.dtype
        kv_dtype = kv_dtype or spec.kv_dtype or dtype
        spec = replace(spec, dtype=dtype, kv_dtype=kv_dtype)
        where = f"model {spec.name!r} on {platform.name} with TP {tp} x PP {pp}"
        for name, value in (("tp", tp), ("pp", pp)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        if spec.heads % tp:
            raise ValueError(f"{where}: tp ({tp}) must divide the model's heads ({spec.heads})")
        if pp > spec.layers:
            raise ValueError(f"{where}: pp ({pp}) exceeds the model's layers ({spec.layers})")
        if tp * pp > platform.num_devices:
            raise ValueError(f"{where}: needs {tp * pp} devices, the platform has {platform.num_devices}")
        self.spec, self.platform, self.tp, self.pp = spec, platform, tp, pp
        self.where = where
        self.iteration_overhead_s = float(iteration_overhead_s)
        #: The serving engine whose own kernels price the step where the profile has them (MoE experts).
        self.engine = engine
        self.sequence_overhead_s = float(sequence_overhead_s)
        base, extra = divmod(spec.layers, pp)
        #: Layers of each pipeline stage (earlier stages take the remainder).
        self.stage_layers = [base + (1 if s < extra else 0) for s in range(pp)]
        self._links: list[GroupLink] = [group_terms(platform, tuple(range(s * tp, (s + 1) * tp))) for s in range(pp)]
        self._pairs = [pair_link(platform, (s * tp + tp - 1,), ((s + 1) * tp,)) for s in range(pp - 1)]
        w = workloads(spec)
        self._memory_tables(w)
        self.kv_capacity_tokens = 0
        self._set_capacity(memory_fraction, budget_tokens, max_seqs, page_tokens)  # raises before pricing
        #: Largest KV shard per token a transfer moves, and whether the peer instance shares the node.
        self.kv_transfer_bytes_per_token = self.kv_bytes_per_token
        self.kv_same_node = True
        self._price(w, dtype, kv_dtype)

    # -- construction -------------------------------------------------------------------------------
    def _price(self, w: Workloads, dtype: str, kv_dtype: str) -> None:
        platform, tp = self.platform, self.tp
        pricer = KernelPricer(platform, dtype, phase="decode", kv_dtype=kv_dtype, engine=self.engine)
        layer = sum_by_group(pricer.op_times(w.layer, tp), w.layer_group, len(w.tokens))
        embed = sum_by_group(pricer.op_times(w.embed, tp), w.embed_group, len(w.tokens))
        self._head = Curve.fit(w.heads, sum_by_group(pricer.op_times(w.head, tp), w.head_group, len(w.heads)))

        self._prefill_attention = AttentionGrid.price(platform, dtype, kv_dtype, tp, "prefill", w)
        self._decode_attention = AttentionGrid.price(platform, dtype, kv_dtype, tp, "decode", w)
        ref, unit, t_ref = w.reference, w.reference_unit, float(w.reference_tokens)
        # All-reduces per token (bytes of one token's all-reduced activations) and their count per unit.
        ar = ref.allreduce_bytes
        self._ar_layer_bytes = float(ar[unit == 1].sum()) / t_ref
        self._ar_layer_count = float(((ar > 0) & (unit == 1)).sum())
        self._ar_embed_bytes = float(ar[unit == 0].sum()) / t_ref
        self._ar_embed_count = float(((ar > 0) & (unit == 0)).sum())
        # Per stage: its layers, token ops (its layers' and the embedding's, one curve), all-reduces, link.
        self._stages: list[tuple[float, Curve, float, float, GroupLink]] = []
        for s, n in enumerate(self.stage_layers):
            first = s == 0
            curve = Curve.fit(w.tokens, n * layer + (embed if first else 0.0))
            count = n * self._ar_layer_count + (self._ar_embed_count if first else 0.0)
            per_token = n * self._ar_layer_bytes + (self._ar_embed_bytes if first else 0.0)
            self._stages.append((float(n), curve, count if tp > 1 else 0.0, per_token, self._links[s]))
        #: Bytes per token crossing a pipeline boundary: the residual stream.
        self._cut_bytes = float(self.spec.hidden * self.spec.dtype_bytes)
        #: The links a KV cache leaves an instance by: within a node, across nodes.
        self._kv_links = {name: platform.p2p_terms(name) for name in platform.links if name != "host"}

    def _memory_tables(self, w: Workloads) -> None:
        ref, unit, tp = w.reference, w.reference_unit, self.tp
        rows = [np.flatnonzero(unit == u) for u in range(3)]
        weights = [weight_memory(ref.rows(r), tp) for r in rows]
        kv_layer = kv_cache_memory(ref.rows(rows[1]), tp, sequences=1, kv_len=1)
        out = ref.output_bytes / ref.split(tp) / w.reference_tokens
        # The head of the reference graph runs on one row (prefill samples the last token only).
        self._out_token = float(max(out[rows[0]].max(), out[rows[1]].max()))
        self._out_row = float(out[rows[2]].max() * w.reference_tokens)
        last = self.pp - 1
        #: Weight bytes per GPU of each stage, KV bytes per token per GPU of each stage.
        self.stage_weights = [
            n * weights[1] + (weights[0] if s == 0 else 0.0) + (weights[2] if s == last else 0.0)
            for s, n in enumerate(self.stage_layers)
        ]
        self.stage_kv_per_token = [n * kv_layer for n in self.stage_layers]

    def _set_capacity(self, memory_fraction: float, budget_tokens: int, max_seqs: int, page_tokens: int) -> None:
        if not 0.0 < memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
        for name, value in (("budget_tokens", budget_tokens), ("max_seqs", max_seqs), ("page_tokens", page_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        dev = self.platform.device
        budget = dev.memory_bytes * memory_fraction - dev.reserved_bytes
        workspace = 2.0 * max(self._out_token * budget_tokens, self._out_row * min(max_seqs, budget_tokens))
        tokens = math.inf
        for s, (weights, kv) in enumerate(zip(self.stage_weights, self.stage_kv_per_token, strict=True)):
            free = budget - weights - workspace
            if free <= 0.0:
                gib = 1024.0**3
                raise ValueError(
                    f"{self.where}: the weights do not fit: stage {s} needs {weights / gib:.1f} GiB of weights + "
                    f"{workspace / gib:.1f} GiB of workspace per GPU, {budget / gib:.1f} GiB usable at memory "
                    f"fraction {memory_fraction}"
                )
            tokens = min(tokens, free / kv)
        pages = int(tokens // page_tokens)
        if pages < 1:
            raise ValueError(f"{self.where}: no room for one KV page of {page_tokens} tokens after the weights")
        self.memory_fraction, self.budget_tokens, self.max_seqs = memory_fraction, budget_tokens, max_seqs
        self.page_tokens = page_tokens
        self.kv_capacity_tokens = pages * page_tokens

    def with_limits(
        self,
        *,
        memory_fraction: float | None = None,
        budget_tokens: int | None = None,
        max_seqs: int | None = None,
        page_tokens: int | None = None,
    ) -> IterationModel:
        """A copy sharing the cost tables, with the KV capacity of other memory limits (None: keep)."""
        out = copy.copy(self)
        out._set_capacity(
            self.memory_fraction if memory_fraction is None else memory_fraction,
            self.budget_tokens if budget_tokens is None else budget_tokens,
            self.max_seqs if max_seqs is None else max_seqs,
            self.page_tokens if page_tokens is None else page_tokens,
        )
        return out

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token occupies on the GPU of the instance that holds the most of it."""
        return max(self.stage_kv_per_token)

    def kv_transfer_s(self, tokens: float, *, same_node: bool | None = None) -> float:
        """Seconds to send ``tokens`` tokens' KV cache between a prefill and a decode instance (disaggregated).

        Every GPU sends its own shard at once (the engines' NIXL / NCCL transfers run per rank), so the
        time is that of the largest shard (``kv_transfer_bytes_per_token``: this instance's, or the larger of
        the pair's when ``serving.instance_cost`` knows the other pool) over one link: NVLink when both
        instances sit in one node, the network otherwise (the platform's point-to-point terms).
        ``same_node`` None: ``kv_same_node`` (set by ``instance_cost`` from the deployment; True by default).
        """
        if tokens <= 0:
            return 0.0
        same = self.kv_same_node if same_node is None else same_node
        links = self._kv_links
        terms = links.get("intra" if same else "inter") or links.get("intra") or next(iter(links.values()))
        alpha, bw = terms
        return p2p_time(tokens * self.kv_transfer_bytes_per_token, alpha, bw)

    # -- per iteration ------------------------------------------------------------------------------
    def _per_layer_attention(self, mix: Any) -> float:
        """Seconds of one layer's attention kernels: the prefill chunks' and the decodes'."""
        out = 0.0
        tp_ = mix.prefill_tokens
        if tp_ > 0:
            s = 2.0 * mix.prefill_attention / tp_ - 1.0
            if s < 1.0:
                s = 1.0
            out += self._prefill_attention(tp_ / s, s)
        n = mix.decode_seqs
        if n > 0:
            c = mix.decode_context / n
            if c < 1.0:
                c = 1.0
            out += self._decode_attention(n, c)
        return out

    def stage_times(self, mix: Any) -> tuple[list[float], list[float]]:
        """Seconds of each stage (kernels and TP all-reduces) and of each boundary transfer, no overhead."""
        tokens = mix.prefill_tokens + mix.decode_seqs
        if tokens <= 0:
            return [0.0] * self.pp, [0.0] * (self.pp - 1)
        attention = self._per_layer_attention(mix)
        tp = self.tp
        stages = []
        for n, curve, count, per_token, link in self._stages:
            t = curve(tokens) + n * attention
            if count > 0.5:
                t += tp_allreduce_time(per_token * tokens, count, tp, link)
            stages.append(t)
        if mix.sampled > 0:
            stages[-1] += self._head(mix.sampled)
        if self.pp == 1:
            return stages, []
        cut = self._cut_bytes * tokens
        return stages, [p2p_time(cut, alpha, bw) for alpha, bw in self._pairs]

    def overhead_s(self, mix: Any) -> float:
        """The engine's per-iteration time outside the GPU kernels (scheduler, sampling, host)."""
        return self.iteration_overhead_s + self.sequence_overhead_s * mix.sampled

    def latency_s(self, mix: Any) -> float:
        """Seconds from the iteration's start to its sampled tokens: every stage and transfer in turn."""
        if self.pp == 1:  # the common case, without the lists
            tokens = mix.prefill_tokens + mix.decode_seqs
            sampled = mix.sampled
            overhead = self.iteration_overhead_s + self.sequence_overhead_s * sampled
            if tokens <= 0:
                return overhead
            n, curve, count, per_token, link = self._stages[0]
            t = curve(tokens) + n * self._per_layer_attention(mix)
            if count > 0.5:
                t += tp_allreduce_time(per_token * tokens, count, self.tp, link)
            if sampled > 0:
                t += self._head(sampled)
            return t + overhead
        stages, hops = self.stage_times(mix)
        return sum(stages) + sum(hops) + self.overhead_s(mix)

    def interval_s(self, mix: Any) -> float:
        """Seconds between two iterations' starts with ``pp`` batches in flight: the slowest stage or transfer."""
        stages, hops = self.stage_times(mix)
        top = max(stages)
        if hops and max(hops) > top:
            top = max(hops)
        return top + self.overhead_s(mix)
