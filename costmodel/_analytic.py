"""The fast analytic evaluator: closed-form pipeline formulas over per-unit prefix sums.

For layered graphs only (the discrete-event simulator prices any DAG and must
agree with these formulas within 1% on layered graphs). Kernels are priced by
:meth:`KernelPricer.op_times`, collectives by :func:`allreduce_time` /
:func:`p2p_time` on :func:`group_link` / :func:`pair_link`, memory by
:mod:`._memory`; this module only adds them up.

Notation: a plan has p stages, m micro-batches, r replicas; stage s has TP
degree t_s on devices D_s (replica k uses D_s shifted by k x devices per replica).

* Batch split: each replica runs batch/r sequences; a micro-batch is batch/(r m)
  sequences; kernels are priced with ``scale = 1/(r m)`` (weights are read whole
  by every micro-batch).
* Stage time: tau_s = sum of the kernel times of its units + its TP all-reduces
  on ``group_link(D_s)``. Stage 0 also holds the pre-layer unit (embedding), the
  last stage the post-layer unit (final norm, LM head, loss). The all-reduces of
  a unit are sum over ops of allreduce_time(bytes_op x scale, t, alpha, B) =
  allreduce_time(sum bytes x scale, t, n_ops x alpha, B) (ring formula is linear);
  with fitted collectives, :func:`tp_allreduce_time` of the sum and the count (exact
  for all-reduces of equal sizes, as a transformer's are).
* Boundary s -> s+1: c_s = p2p_time(boundary_bytes x scale, *pair_link(D_s, D_s+1)),
  boundary_bytes = the forward activations crossing the cut, from the graph's
  edges, each tensor once (x feeds two ops of the next layer but is sent once):
  the hidden state leaving the stage's last layer.
* prefill: TTFT = sum tau_s + sum c_s + (m-1) max(max tau_s, max c_s) (flow shop
  of identical jobs; links are machines too). tokens/s = batch x seq / TTFT.
* decode: one step of all m micro-batches; path = sum tau_s + sum c_s;
  TBT = max(path, m max(max tau_s, max c_s)); tokens/s = batch / TBT.
* train: tau_s = tauf_s + taub_s (backward kernels and backward all-reduces; with
  recompute, backward also re-runs the forward kernels and forward all-reduces).
  1F1B and GPipe alike: pipeline = sum tau_s + 2 sum c_s + (m-1) max tau_s.
  dp_s = allreduce_time(stage weight bytes per device, r, *group_link({d + k x dpr}))
  with d the stage's first device, opt_s = the stage's optimizer kernels at
  scale 1 (once per step); step = pipeline + max_s(dp_s + opt_s).
  tokens/s = batch x seq / step; mfu = forward+backward FLOPs as counted in the
  graph (causal not halved) / (step x devices used x peak(dtype)).
* Breakdown (the path the latency formula follows): compute = sum of stage
  kernel times + (m-1) x the bottleneck stage's kernels (+ the optimizer of the
  stage that sets max(dp+opt)); communication = TP all-reduces + p2p (+ DP) on
  the same path, (m-1) x the slowest link's transfer when a link is the
  bottleneck; idle = latency - both. For decode the path is one micro-batch's,
  so idle = TBT - path: the wait when m x bottleneck > path.

Training techniques (plan-wide fields, :mod:`._analytic_train`; a plan without them takes
the fast path above, and the general path gives it the same numbers):

* ZeRO ``zero`` z, shard degree N_d (``shard_group`` g, else all DP ranks N = replicas x cp):
  model state per device W (weights) + W (gradients) + K/elem W (optimizer, K = 12), z >= 1
  divides the optimizer state by N_d, z >= 2 the gradients, z = 3 the weights (+ one layer's
  gathered weights as a buffer, two with ``overlap``). DP traffic per physical stage:
  z = 0 all-reduce of W over N; z = 1, 2 reduce-scatter + all-gather inside the shard group
  (+ all-reduce of W/g across groups when hybrid), once per step; z = 3 per micro-batch an
  all-gather per layer in the forward slot and all-gather + reduce-scatter in the backward
  slot. The optimizer kernels run on 1/N_d of the parameters.
* ``overlap``: tail DP = max(reduction - the stage's backward slot, one layer's bucket) +
  the weight all-gather (z = 1, 2); z = 3 gathers in a slot: max(first layer's, gathers -
  the slot's kernels).
* ``sequence_parallel``: TP collective time unchanged (reduce-scatter + all-gather = one
  all-reduce in the ring model); replicated ops (norms, residuals) priced on 1/t of the
  tokens (their kernel tables at share x t); activations from the ``stash_sp`` column
  (layer inputs / t and one rebuilt unit of ``stash_sp`` with full recomputation); a pipeline
  hop moves 1/min(t, t') of the tensor per TP rank pair, the pairs in parallel (:mod:`._analytic_train`).
* ``selective_recompute`` (stages without full recompute): backward += the attention
  core's forward kernels; activations from ``stash_sel`` / ``stash_sel_sp``.
* ``tp_overlap``: each direction's TP collectives hidden behind the stage's TP-split GEMMs,
  up to their time: comm -= min(comm, GEMM kernels).
* ``virtual_stages`` v: ``stages`` lists p x v chunks; slot times per chunk, p x v - 1 hops
  (chunk k -> k + 1), tails and memory per physical stage (the sum of its chunks); stage s
  holds min(m v, 2(p - s - 1) + (v - 1) p + 1) chunk-micro-batches of stash (Megatron-Core's
  warm-up + 1; p (1 + (p-1)/(p v)) micro-batches' worth on stage 0, Korthikanti et al.).
* ``cp``: kernels priced at share x cp (each rank 1/cp of the sequence); ring attention per
  layer sends (cp - 1) K,V chunks of 2 kv_dim elem / min(t, kv_heads) bytes per token in
  the forward, twice that in the backward, each on the CP ring's link, exposed = max(0,
  ring - attention-core kernels); DP over replicas x cp ranks.
* ``ep``: expert weights / ep (expert GEMMs priced with 1/ep of the weights for the same
  routed tokens); 2 all-to-alls forward + 2 backward per MoE layer and micro-batch of
  tokens x top_k x hidden x elem (/ t with SP) on the EP group (ep consecutive DP ranks);
  expert gradients reduced over the N / ep ranks holding the same experts. Dropless routing with
  balanced load: no capacity factor (tokens dropped or padded) is modelled.
* Refused by name (``technique_refusals``): ``zero`` 3 or ``shard_group`` with ``ep`` > 1.
* DP, CP, EP and shard groups are priced on :func:`group_link` (the slowest link, one NIC's
  bandwidth when the group spans nodes), like today's data-parallel all-reduce.

Memory per device (the same for every device of a stage and every replica):
weights + [train: gradients and optimizer state + activation stash] + [prefill /
decode: KV cache of batch/r sequences of seq (prefill) or context+1 (decode)
tokens] + workspace. Stash per micro-batch = sum of the stage's forward op
outputs / split x scale. 1F1B stage i (0-based) keeps min(m, p-i) micro-batches
in flight, GPipe keeps m. With recompute each micro-batch in flight keeps only the
inputs of each unit (the bytes entering it, each tensor once), and the largest
unit's full stash is rebuilt once, for the micro-batch being backpropagated (a unit
is one layer, or one merged task of k layers at granularity layers:k, whose cuts
must fall where a task starts). Workspace = 2 x the largest forward op output / split x scale
(input and output of the biggest op live at once). The simulator tracks tensor
lifetimes instead, so its peaks differ; latency must agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graphs import Phase, TaskGraph
from ._analytic_eval import evaluate_plan
from ._analytic_train import evaluate_techniques, technique_refusals
from ._batch import BatchResult, PlanBatch, random_plans
from ._batch_eval import evaluate_batch
from ._bounds import lower_bound_s
from ._layer_tables import ScaledTables, TpTables, UnitIndex, contiguous_links
from ._metrics import Metrics
from ._plan import SCHEDULES, Plan
from ._platform import GIB, Platform
from ._pricing import GroupLink, KernelPricer, group_link, group_terms, pair_link, tp_allreduce_time
from ._technique_tables import TechScaled, TechUnits
from ._techniques import uses_techniques


class AnalyticEvaluator:
    """Prices layered plans in microseconds; tables are built lazily per TP degree and batch share.

    Example:
        >>> from paratune.costmodel import Plan, get_platform
        >>> from paratune.graphs import build_graph, coarsen
        >>> g = coarsen(build_graph("llama2-7b", phase="decode", batch=8, seq=1024), "layer")
        >>> ev = AnalyticEvaluator(g, get_platform("dgx-h100"))
        >>> m = ev.evaluate(Plan.uniform(32, tp=2, pp=2))
        >>> m.feasible and m.tbt_s > m.lower_bound_s
        True
    """

    def __init__(self, graph: TaskGraph, platform: Platform) -> None:
        if not graph.is_layered:
            raise ValueError(
                f"graph {graph.meta.model!r} ({graph.meta.granularity}) is not layered: "
                "the analytic evaluator needs layer ranges; use the discrete-event simulator"
            )
        self.graph, self.platform = graph, platform
        meta = graph.meta
        self.phase, self.n_layers, self.batch = meta.phase, meta.n_layers, meta.batch
        self.kv_len = meta.seq if meta.phase == Phase.PREFILL else meta.context + 1
        self.tokens = meta.batch * meta.seq
        self.pricer = KernelPricer.for_graph(platform, meta)
        self.units = UnitIndex(graph)
        self.cut = self.units.cut.tolist()
        self._starts = self.units.allowed_start.tolist()
        self.usable = platform.device.usable_memory
        self.candidates = [t for t in range(1, min(meta.heads, platform.num_devices) + 1) if meta.heads % t == 0]
        self._tp: dict[int, TpTables] = {}
        self._scaled: dict[tuple[int, int], ScaledTables] = {}
        self._links: dict[tuple[int, ...], GroupLink] = {}
        self._pairs: dict[tuple[int, int], tuple[float, float]] = {}
        self._dp_links: dict[tuple[int, int, int], tuple[float, float]] = {}
        self._lower: float | None = None
        self._contiguous: dict[str, np.ndarray] | None = None
        self._batch: dict[Any, Any] = {}  # stacked tables of the batched evaluator
        self._tech_scaled: dict[tuple[int, int, int], TechScaled] = {}
        self._tech_units: dict[int, TechUnits] = {}
        self._groups: dict[tuple[int, ...], tuple[float, float]] = {}

    # -- cached tables ----------------------------------------------------
    def tp_tables(self, tp: int) -> TpTables:
        tables = self._tp.get(tp)
        if tables is None:
            tables = self._tp[tp] = TpTables.build(self.units, self.pricer, tp, self.graph.meta.dtype)
        return tables

    def scaled_tables(self, tp: int, share: int) -> ScaledTables:
        """Kernel tables for TP ``tp`` and micro-batches of batch/``share`` (share = replicas x micro_batches)."""
        tables = self._scaled.get((tp, share))
        if tables is None:
            tables = self._scaled[(tp, share)] = ScaledTables.build(self.units, self.pricer, tp, 1.0 / share)
        return tables

    def tech_scaled(self, tp: int, share: int, ep: int = 1) -> TechScaled:
        """Kernel tables the training techniques read (:class:`TechScaled`), cached by (tp, share, ep)."""
        key = (tp, share, ep)
        tables = self._tech_scaled.get(key)
        if tables is None:
            tables = TechScaled.build(self.units, self.pricer, tp, share, ep)
            self._tech_scaled[key] = tables
        return tables

    def tech_units(self, tp: int) -> TechUnits:
        """Per-unit facts the training techniques read (:class:`TechUnits`), cached by TP degree."""
        tables = self._tech_units.get(tp)
        if tables is None:
            tables = self._tech_units[tp] = TechUnits.build(self.units, tp)
        return tables

    def group(self, devices: tuple[int, ...]) -> tuple[float, float]:
        """(alpha, bytes/s) of any device group (:func:`group_link`): DP, CP, EP and shard groups."""
        terms = self._groups.get(devices)
        if terms is None:
            terms = self._groups[devices] = group_link(self.platform, devices)
        return terms

    def link(self, devices: tuple[int, ...]) -> GroupLink:
        """Collective terms of a TP group (:func:`group_terms`), cached by its devices."""
        terms = self._links.get(devices)
        if terms is None:
            terms = self._links[devices] = group_terms(self.platform, devices)
        return terms

    def pair(self, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[float, float]:
        """Link of a pipeline boundary (``pair_link``), cached by the two devices it joins."""
        key = (src[-1], dst[0])
        terms = self._pairs.get(key)
        if terms is None:
            terms = self._pairs[key] = pair_link(self.platform, src, dst)
        return terms

    def dp_link(self, first: int, stride: int, replicas: int) -> tuple[float, float]:
        """Link of the data-parallel group of device ``first``: its copies in every replica."""
        key = (first, stride, replicas)
        terms = self._dp_links.get(key)
        if terms is None:
            group = tuple(first + k * stride for k in range(replicas))
            terms = self._dp_links[key] = group_link(self.platform, group)
        return terms

    @property
    def lower_bound(self) -> float:
        if self._lower is None:
            self._lower = lower_bound_s(self.graph, self.platform)
        return self._lower

    def contiguous_links(self) -> dict[str, np.ndarray]:
        if self._contiguous is None:
            self._contiguous = contiguous_links(self.platform, self.candidates)
        return self._contiguous

    def unit_forward_times(self, tp: int, devices: tuple[int, ...], *, share: int = 1) -> list[float]:
        """Forward seconds of each unit (kernels + TP all-reduces) on ``devices``; unit i+1 is layer i."""
        sc, tt = self.scaled_tables(tp, share), self.tp_tables(tp).lists
        link = self.link(devices)
        out = []
        for u in range(self.n_layers + 2):
            n_ar = tt["ar_fwd_n"][u + 1] - tt["ar_fwd_n"][u]
            ar_bytes = (tt["ar_fwd_b"][u + 1] - tt["ar_fwd_b"][u]) / share
            ar = tp_allreduce_time(ar_bytes, n_ar, tp, link) if n_ar > 0.5 else 0.0
            out.append(sc.fwd_l[u + 1] - sc.fwd_l[u] + ar)
        return out

    # -- validity ---------------------------------------------------------
    def problems(self, plan: Plan) -> list[str]:
        """``plan.problems`` plus what only the analytic evaluator needs (layer ranges, merged-task cuts)."""
        out = plan.problems(self.graph, self.platform)  # a malformed plan gives reasons, a bug raises
        if not out and not plan.is_layered:
            out.append("the analytic evaluator prices layer ranges: give each stage 'layers' or use the simulator")
        if not out:
            out.extend(technique_refusals(plan))
        if not out:
            starts = self.units.allowed_start
            for i, st in enumerate(plan.stages):
                if not starts[st.layers[0]]:  # type: ignore[index]
                    out.append(
                        f"stage {i}: starts at layer {st.layers[0]} inside a merged task of a "  # type: ignore[index]
                        f"{self.graph.meta.granularity} graph; cut where a task starts"
                    )
        return out

    def _valid_fast(self, plan: Plan, tech: bool | None = None) -> bool:
        try:
            return self._quick_valid(plan, uses_techniques(plan) if tech is None else tech)
        except (TypeError, ValueError, IndexError):  # malformed: let problems() say what is wrong
            return False

    def _quick_valid(self, plan: Plan, tech: bool) -> bool:
        """True only when :meth:`problems` would find nothing (its checks, without the graph walk it repeats)."""
        cp, p = 1, len(plan.stages)
        if tech:  # the plan's own technique checks (no graph walk), then what this evaluator refuses
            if plan._technique_problems(self.graph) or technique_refusals(plan):
                return False
            cp, p = plan.cp, plan.pp
        stages = plan.stages
        m, r = plan.micro_batches, plan.replicas
        if not stages or plan.schedule not in SCHEDULES or m < 1 or r < 1 or self.batch % (m * r):
            return False
        heads, starts, expected, dpr = self.graph.meta.heads, self._starts, 0, 0
        seen: set[int] = set()
        for i, st in enumerate(stages):
            t, layers = st.tp, st.layers
            if t < 1 or heads % t or len(st.devices) != t * cp or layers is None:
                return False
            a, b = layers
            if a != expected or b < a or not starts[a]:
                return False
            expected = b + 1
            if i < p:
                seen.update(st.devices)
                dpr += t * cp
            elif st.devices != stages[i % p].devices or t != stages[i % p].tp:  # a later interleaved chunk
                return False
        n_dev = self.platform.num_devices
        return (
            expected == self.n_layers
            and len(seen) == dpr
            and dpr * r <= n_dev
            and min(seen) >= 0
            and max(seen) + (r - 1) * dpr < n_dev
        )

    # -- single plan --------------------------------------------------------
    def evaluate(self, plan: Plan, *, check: bool = True) -> Metrics:
        """Metrics of ``plan``; an invalid plan gives ``feasible=False`` with its problems as the reason.

        ``check=False`` skips validation (for tuners whose plans are valid by construction).
        """
        tech = uses_techniques(plan)
        if check and not self._valid_fast(plan, tech):
            problems = self.problems(plan)
            if problems:
                return Metrics(
                    feasible=False, reason="invalid plan: " + "; ".join(problems), phase=self.phase,
                    latency_s=float("inf"), memory_capacity_bytes=self.usable, lower_bound_s=self.lower_bound,
                    devices_used=plan.num_devices,
                )  # fmt: skip
        return evaluate_techniques(self, plan) if tech else evaluate_plan(self, plan)

    # -- many plans ---------------------------------------------------------
    def evaluate_batch(self, batch: PlanBatch) -> BatchResult:
        """Vectorised evaluation of contiguous plans (see :class:`PlanBatch`); same numbers as :meth:`evaluate`."""
        return evaluate_batch(self, batch)

    def random_plans(
        self, n: int, rng: np.random.Generator, *, max_stages: int = 8, max_micro_batches: int | None = None
    ) -> PlanBatch:
        """``n`` random valid contiguous plans (see :func:`random_plans`)."""
        return random_plans(
            self.graph, self.platform, n, rng, max_stages=max_stages, max_micro_batches=max_micro_batches
        )

    def over_reason(self, device: int, stage: int, need: float) -> str:
        over = need - self.usable
        return (
            f"device {device} (stage {stage}) needs {need / GIB:.1f} GiB > {self.usable / GIB:.1f} GiB usable "
            f"(over by {over / GIB:.1f} GiB)"
        )
