"""Practitioners' heuristics: the mappings people launch today without a tuner.

Each heuristic encodes one published practice as a rule and evaluates only the
one or few plans the rule names (a probe for memory, a fallback with activation
recomputation), so the gap of the best tuner to these rules is the value of
tuning. The rules never crash: when a rule cannot produce a feasible plan, the
plan it would launch is recorded as infeasible and a note says why (the result
then has no best plan).

Shared conventions (documented once, used by every rule):

* Plans are built at ``layer`` granularity with contiguous device groups
  (:func:`~paratune.search.contiguous_plan`), the layout Megatron-LM and vLLM use.
* "Nodes" are ``problem.max_devices // devices per node`` (at least one); the
  ``mesh`` accelerator is one node of ``rows x cols`` chips.
* Micro-batches: ``4 x PP`` for training (Megatron-LM's guidance that the
  number of micro-batches be a multiple of the stages, here 4x, to shrink the
  1F1B bubble), ``PP`` for inference (one batch in flight per stage, which is
  what vLLM's pipeline "virtual engines" do); both clipped to the largest
  divisor of the per-replica batch. The data-parallel recipes (``fsdp``,
  ``deepspeed-zero3``) have no pipeline and state their own (gradient accumulation).
* A plan "fits" when its peak memory per device is within the problem's memory
  limit (SLOs are not part of the rule: a plan that fits but misses an SLO is
  what the practitioner would launch, and is reported infeasible).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._limits import MAX_MICRO_BATCHES
from ..costmodel import Plan
from ..graphs import Phase
from ..problem import Evaluation, Problem, contiguous_plan, divisors, even_cuts
from ..problem._problem import GIB
from ._tuner import Family, Recorder, Tuner

GRANULARITY = "layer"


class _NoPlan(Exception):
    """The rule cannot even build a plan (the message is the note for the user)."""


@dataclass(frozen=True)
class _Shape:
    """What every rule reads off the problem: layers, TP choices, node structure, batch."""

    n_layers: int
    tps: list[int]
    per_node: int
    nodes: int
    devices: int
    batch: int
    train: bool


def _shape(problem: Problem) -> _Shape:
    graph = problem.graph(GRANULARITY)
    if not graph.is_layered or graph.meta.n_layers < 1:
        raise _NoPlan(f"{problem.model}: heuristics cut layer ranges, but its graph is not layered")
    devices = problem.max_devices
    per_node = min(problem.resolved_platform.devices_per_node, devices)
    tps = problem.tp_degrees()
    if not tps:
        raise _NoPlan(f"{problem.model}: no TP degree divides its {problem.heads} heads within one node")
    return _Shape(
        n_layers=graph.meta.n_layers,
        tps=tps,
        per_node=per_node,
        nodes=max(1, devices // per_node),
        devices=devices,
        batch=graph.meta.batch,
        train=problem.phase == Phase.TRAIN,
    )


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is <= ``limit`` (1 at least)."""
    return max(d for d in divisors(n) if d <= max(1, limit))


def _micro_batches(shape: _Shape, pp: int, replicas: int) -> int:
    """4 x PP when training, PP for inference, clipped to a divisor of the per-replica batch (and to the plan bound)."""
    target = min(4 * pp if shape.train else pp, MAX_MICRO_BATCHES)
    return _largest_divisor(shape.batch // replicas, target)


def _fill_replicas(shape: _Shape, devices_per_replica: int) -> int:
    """As many replicas as the devices hold, reduced until they divide the batch."""
    return _largest_divisor(shape.batch, shape.devices // devices_per_replica)


def _variants(shape: _Shape, stages: list[tuple[int, int, int]], micro_batches: int, replicas: int) -> list[Plan]:
    """The plan, and when training the same plan with full activation recomputation (the fallback)."""
    flags = [False, True] if shape.train else [False]
    return [
        contiguous_plan(
            stages, micro_batches=micro_batches, replicas=replicas, granularity=GRANULARITY, recompute=recompute
        )
        for recompute in flags
    ]


#: Activation-memory fallbacks in the order practitioners turn them on: none, then Megatron's selective
#: recomputation of the attention core (Korthikanti et al. 2022), then full recomputation of every layer.
_NO_AC, _SELECTIVE_AC, _FULL_AC = "none", "selective", "full"


def _training_plan(
    shape: _Shape, tp: int, pp: int, micro_batches: int, replicas: int, ac: str, **techniques: Any
) -> Plan:
    """A uniform training plan (even layers, contiguous devices) with activation checkpointing ``ac``."""
    if ac == _SELECTIVE_AC:
        techniques["selective_recompute"] = True
    return Plan.uniform(
        shape.n_layers,
        tp=tp,
        pp=pp,
        micro_batches=micro_batches,
        replicas=replicas,
        recompute=ac == _FULL_AC,
        **techniques,
    )


def interleave_degree(n_layers: int, pp: int, micro_batches: int) -> int:
    """Virtual stages per pipeline stage for interleaved 1F1B, or 1 where the layer count does not allow it.

    Megatron-Core's ``--num-layers-per-virtual-pipeline-stage`` needs the layers to split evenly over the
    ``pp`` stages and each stage's layers evenly over its chunks, and the micro-batches to be a multiple of
    ``pp``. Among the degrees that allow, the largest that keeps at least 4 layers per chunk (NeMo's
    Llama-3 70B recipe: 80 layers, PP 4, 5 virtual stages of 4 layers), else at least 2: the bubble shrinks
    as ``(p - 1) / (v m)`` while each extra chunk adds pipeline point-to-point hops.
    """
    if pp < 2 or n_layers % pp or micro_batches % pp:
        return 1
    per_stage = n_layers // pp
    for min_chunk in (4, 2):
        allowed = [v for v in divisors(per_stage) if v >= 2 and per_stage // v >= min_chunk]
        if allowed:
            return max(allowed)
    return 1


def _fits(problem: Problem, ev: Evaluation) -> bool:
    m = ev.metrics
    if m.reason.startswith("invalid plan") or m.latency_s == float("inf"):
        return False
    return m.max_memory_bytes <= problem.memory_limit_bytes


def _miss(problem: Problem, plan: Plan, ev: Evaluation, rule: str) -> str:
    """Why the rule's plan is not feasible, in words a user can act on."""
    tp = "/".join(str(t) for t in sorted({s.tp for s in plan.stages}))
    where = f"TP {tp} x PP {plan.pp} x {plan.replicas} replica(s) ({plan.num_devices} devices)"
    if plan.techniques():
        where += " with " + ", ".join(f"{k} {v}" for k, v in plan.techniques().items())
    if any(s.recompute for s in plan.stages):
        where += " and full recomputation"
    if not _fits(problem, ev):
        if ev.metrics.reason.startswith("invalid plan"):
            return f"{rule}: {where} is not a valid plan: {ev.metrics.reason}"
        need = ev.metrics.max_memory_bytes / GIB
        limit = problem.memory_limit_bytes / GIB
        total = sum(ev.metrics.peak_memory_bytes) / plan.replicas / GIB
        return (
            f"{rule}: {problem.model} does not fit at {where}: the busiest device needs {need:.1f} GiB > "
            f"{limit:.1f} GiB ({total:.0f} GiB per replica on {plan.devices_per_replica} devices holding "
            f"{limit * plan.devices_per_replica:.0f} GiB)"
        )
    return f"{rule}: {where} fits in memory but misses a limit: " + "; ".join(ev.violations)


class _Heuristic(Tuner):
    """Shared driver: ask the rule for candidate plans, record each, stop at the rule's choice."""

    #: Whether its training plans use plan-wide techniques (ZeRO, SP, interleaving...): an Optuna study that
    #: does not search them does not start from such plans (its space could not hold them).
    uses_techniques: ClassVar[bool] = False

    family = Family.HEURISTIC
    stochastic = False
    exact = False
    default_budget = None

    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str] | None:
        try:
            shape = _shape(problem)
            return self._rule(problem, shape, recorder)
        except _NoPlan as exc:
            return [str(exc)]

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        raise NotImplementedError

    def _probe(self, problem: Problem, recorder: Recorder, plans: list[Plan]) -> list[str]:
        """Evaluate ``plans`` in order and stop at the first that fits memory (the rule's choice).

        When none fits, the last one (the rule's last resort) stays recorded as
        infeasible and the note says why.
        """
        last: tuple[Plan, Evaluation] | None = None
        for plan in plans:
            if recorder.done:
                return [f"{self.name}: the budget ran out after {recorder.evaluations} evaluation(s)"]
            ev = recorder.evaluate(plan)
            last = (plan, ev)
            if _fits(problem, ev):
                return [] if ev.feasible else [_miss(problem, plan, ev, self.name)]
        if last is None:
            return [f"{self.name}: the rule names no plan for {problem.resolved_platform.num_devices} devices"]
        return [_miss(problem, last[0], last[1], self.name)]


class Megatron(_Heuristic):
    """Megatron-LM's recipe with Megatron-Core's training defaults: TP inside a node, PP across nodes.

    Source: Narayanan et al., "Efficient Large-Scale Language Model Training on
    GPU Clusters Using Megatron-LM" (SC'21), takeaways 1-3 (tensor parallelism
    up to the GPUs of a server, pipeline parallelism across servers, data
    parallelism for the rest; micro-batches a multiple of the stages; the
    interleaved schedule), the Megatron-LM README (``--tensor-model-parallel-size 8``,
    ``--pipeline-model-parallel-size`` = servers, layers divided evenly), and
    Megatron-Core's and NeMo's training recipes (``--sequence-parallel`` with TP > 1,
    ``--use-distributed-optimizer``, ``--overlap-grad-reduce`` and
    ``--overlap-param-gather``, ``--recompute-granularity selective`` before
    ``full``: Korthikanti et al., "Reducing Activation Recomputation in Large
    Transformer Models", MLSys 2023).

    Rule: TP = the GPUs per node reduced to the largest degree dividing the heads
    (``problem.tp_degrees()[-1]``); PP = the number of nodes (capped at the
    layers); layers split evenly (earlier stages take the remainder). Inference
    runs one replica with PP micro-batches. Training uses ``4 x PP``
    micro-batches, replicates over the devices left (data parallel; none are
    left when TP is the full node), and turns on what Megatron-Core's recipes do:
    sequence parallelism when TP > 1, the distributed optimizer (``zero`` 1),
    gradient-reduce and parameter-gather overlap, and the interleaved schedule
    when PP > 1 and the layer count allows (:func:`interleave_degree`). If that
    does not fit memory: selective recomputation, then full recomputation
    (``--recompute-granularity full``) on the same layout, then more stages while
    the devices allow it (only when TP < GPUs per node), each with the same fallbacks.
    """

    name = "megatron"
    uses_techniques = True
    description = (
        "TP = GPUs per node (dividing the heads), PP across nodes, even layers; training: 4 x PP micro-batches, "
        "SP, distributed optimizer, overlap, interleaving, selective then full recomputation"
    )

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        tp = shape.tps[-1]
        plans = []
        for pp in range(min(shape.nodes, shape.n_layers), shape.n_layers + 1):
            if tp * pp > shape.devices:
                break
            replicas = _fill_replicas(shape, tp * pp) if shape.train else 1
            m = _micro_batches(shape, pp, replicas)
            if not shape.train:
                plans += _variants(shape, even_cuts(shape.n_layers, pp, tp), m, replicas)
                continue
            techniques = {
                "zero": 1,
                "sequence_parallel": tp > 1,
                "overlap": True,
                "virtual_stages": interleave_degree(shape.n_layers, pp, m),
            }
            plans += [
                _training_plan(shape, tp, pp, m, replicas, ac, **techniques) for ac in (_NO_AC, _SELECTIVE_AC, _FULL_AC)
            ]
        return self._probe(problem, recorder, plans)


class ServingDefault(_Heuristic):
    """vLLM's documented default: TP = the GPUs of a node, PP = the nodes needed, one instance.

    Source: vLLM documentation, "Distributed inference and serving": a model
    that fits one node uses tensor parallelism over its GPUs; a model too large
    for one node uses tensor parallelism of the GPUs per node and pipeline
    parallelism of the number of nodes. One ``vllm serve`` launch is one model
    instance, so replicas = 1 (data-parallel serving is a separate choice).

    Rule: TP = the largest degree inside one node that divides the heads; PP =
    the smallest number of nodes (1, 2, ... up to the nodes available) at which
    the model fits memory; layers split evenly (vLLM's default partition);
    micro-batches = PP (vLLM runs one batch per pipeline stage in flight, its
    "virtual engines"), 1 without PP. Training problems get the same layout
    with Megatron's 4 x PP micro-batches and the recomputation fallback (vLLM
    does not train; the rule is kept so the heuristic answers every problem).
    """

    name = "serving-default"
    description = "largest TP inside one node that fits memory, PP only across nodes (vLLM's default)"

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        tp = shape.tps[-1]
        plans = []
        for pp in range(1, min(shape.nodes, shape.n_layers) + 1):
            plans += _variants(shape, even_cuts(shape.n_layers, pp, tp), _micro_batches(shape, pp, 1), 1)
        return self._probe(problem, recorder, plans)


class MinTpReplicas(_Heuristic):
    """MLPerf-style throughput serving: the smallest model-parallel group that fits, replicated.

    Source: MLPerf Inference submissions (e.g. NVIDIA's Llama-2-70B and GPT-J
    entries run one model copy per GPU or per small TP group and scale with data
    parallel copies, since every TP all-reduce costs throughput); the same
    practice as "data parallelism first" in training guides (ZeRO/FSDP papers).

    Rule: the smallest TP (dividing the heads, within a node) at PP = 1 that
    fits memory; if none does, the smallest PP with the smallest TP that fits
    (PP grows first, TP within it, so the group stays as small as possible);
    layers split evenly; the group is replicated over the remaining devices,
    taking the largest replica count that divides the batch; micro-batches
    as in the module conventions (4 x PP training, PP inference). When
    training, activation recomputation is tried at a group size before the
    group grows (a smaller group with recomputation is still "the smallest").
    """

    name = "min-tp-replicas"
    description = "smallest TP that fits memory, replicated over the remaining devices (MLPerf throughput)"

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        plans = []
        for pp in range(1, shape.n_layers + 1):
            for tp in shape.tps:
                if tp * pp > shape.devices:
                    continue
                replicas = _fill_replicas(shape, tp * pp)
                m = _micro_batches(shape, pp, replicas)
                plans += _variants(shape, even_cuts(shape.n_layers, pp, tp), m, replicas)
            if shape.tps[0] * (pp + 1) > shape.devices:
                break
        return self._probe(problem, recorder, plans)


def _sharded_fallbacks(
    shape: _Shape, tp: int, replicas: int, checkpointing: tuple[str, ...], layouts: list[dict[str, Any]]
) -> list[Plan]:
    """ZeRO-3 plans: each activation-checkpointing mode over every layout, then one sequence per micro-batch.

    The whole per-rank batch runs as one micro-batch first (torchtitan's and DeepSpeed's default: no
    gradient accumulation); the last resort keeps the strongest checkpointing and accumulates gradients
    over micro-batches of one sequence (``gradient_accumulation_steps`` = the per-rank batch). Layouts
    (the techniques of each sharding choice) are tried in order at each step, so a preferred layout
    never costs more recomputation than the next one needs.
    """
    per_rank = shape.batch // replicas
    steps = [(ac, 1) for ac in checkpointing]
    if per_rank > 1:
        steps.append((checkpointing[-1], min(per_rank, MAX_MICRO_BATCHES)))
    return [_training_plan(shape, tp, 1, m, replicas, ac, **techniques) for ac, m in steps for techniques in layouts]


def _training_only(shape: _Shape, problem: Problem, name: str) -> None:
    if not shape.train:
        raise _NoPlan(
            f"{name}: a training recipe (it shards optimizer state, gradients and weights); "
            f"this is a {problem.phase} problem: use megatron, serving-default or min-tp-replicas"
        )


class Fsdp(_Heuristic):
    """torchtitan's FSDP2 recipe: shard everything over the data-parallel ranks, TP only when needed.

    Source: Liang et al., "TorchTitan: One-stop PyTorch native solution for
    production ready LLM pre-training" (ICLR 2025) and torchtitan's training
    configs: FSDP2 (``fully_shard``, i.e. ZeRO-3) over ``data_parallel_shard_degree``
    ranks, HSDP (``data_parallel_replicate_degree`` > 1) to keep the parameter
    all-gathers inside a node on multi-node jobs, tensor parallelism (always with
    sequence parallelism, torchtitan's TP plan) added inside a node only for
    models FSDP alone cannot hold, and ``[activation_checkpoint] mode`` =
    ``selective`` or ``full`` when memory is short; FSDP2 prefetches the next
    layer's all-gather during compute (overlap on).

    Rule (training only): TP = 1, PP = 1, every device a data-parallel rank
    (the largest count dividing the batch), the whole per-rank batch as one
    micro-batch, ``zero`` 3 with overlap. Memory fallbacks in order: no
    checkpointing, selective, full, then full with one sequence per micro-batch
    (gradient accumulation); at each, on more than one node, hybrid sharding
    first (``shard_group`` = the GPUs of a node: all-gathers stay on NVLink),
    then sharding over all ranks (less memory, all-gathers across nodes). If
    nothing fits, the next TP degree inside a node (dividing the heads), with
    sequence parallelism.
    """

    name = "fsdp"
    uses_techniques = True
    description = "torchtitan FSDP2: ZeRO-3 over all ranks (HSDP across nodes first), TP in a node only when needed"

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        _training_only(shape, problem, self.name)
        plans = []
        for tp in shape.tps:
            replicas = _fill_replicas(shape, tp)
            group = shape.per_node // tp
            groups = [group] if shape.nodes > 1 and 1 < group < replicas and replicas % group == 0 else []
            layouts = [
                {"zero": 3, "shard_group": shard_group, "overlap": True, "sequence_parallel": tp > 1}
                for shard_group in [*groups, 0]
            ]
            plans += _sharded_fallbacks(shape, tp, replicas, (_NO_AC, _SELECTIVE_AC, _FULL_AC), layouts)
        return self._probe(problem, recorder, plans)


class DeepSpeedZero3(_Heuristic):
    """DeepSpeed ZeRO-3: pure data parallelism with everything sharded, full checkpointing when short.

    Source: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training
    Trillion Parameter Models" (SC'20) and DeepSpeed's configuration docs
    (``zero_optimization.stage`` 3 with ``overlap_comm`` and
    ``contiguous_gradients``; ``activation_checkpointing`` through
    ``deepspeed.checkpointing``, which checkpoints whole layers), the setup of the
    Hugging Face ``Trainer`` / Accelerate integration most DeepSpeed users run.

    Rule (training only): no TP, no PP; every device a data-parallel rank (the
    largest count dividing the batch); ``zero`` 3 over all ranks with overlap; the
    whole per-rank batch as one micro-batch. If that does not fit: full
    activation checkpointing, then one sequence per micro-batch with gradient
    accumulation. There is no fallback beyond: DeepSpeed's ZeRO-3 has no model
    parallelism of its own, so a model whose layer does not fit is reported infeasible.
    """

    name = "deepspeed-zero3"
    uses_techniques = True
    description = "DeepSpeed ZeRO-3 over all ranks, no TP/PP, full activation checkpointing when short of memory"

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        _training_only(shape, problem, self.name)
        replicas = _fill_replicas(shape, 1)
        plans = _sharded_fallbacks(shape, 1, replicas, (_NO_AC, _FULL_AC), [{"zero": 3, "overlap": True}])
        return self._probe(problem, recorder, plans)


def layer_flops(problem: Problem) -> list[float]:
    """FLOPs per layer unit, the embedding added to the first layer and the LM head to the last.

    Training graphs count forward, backward and optimizer work, so the
    balance is of the whole step. Used by :class:`BalancedPP` (and its tests).
    """
    graph = problem.graph(GRANULARITY)
    n = graph.meta.n_layers
    flops = [0.0] * n
    for task in graph.tasks:
        flops[min(max(task.layer, 0), n - 1)] += task.flops
    return flops


def balanced_cuts(flops: list[float], pp: int) -> list[tuple[int, int]]:
    """Split layers into ``pp`` contiguous non-empty stages minimising the largest stage's FLOPs.

    The classic linear-partition dynamic programme (the partitioner of GPipe
    and DeepSpeed's ``partition_method``, here exact): the heaviest stage is at
    most the mean plus one layer unit.
    """
    n = len(flops)
    if not 1 <= pp <= n:
        raise ValueError(f"pp must be in 1..{n} (the number of layers), got {pp}")
    prefix = np.concatenate([[0.0], np.cumsum(flops)])
    inf = float("inf")
    best = np.full((pp + 1, n + 1), inf)  # best[k][j]: max stage FLOPs of layers 0..j-1 in k stages
    arg = np.zeros((pp + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for k in range(1, pp + 1):
        for j in range(k, n - (pp - k) + 1):
            starts = np.arange(k - 1, j)
            costs = np.maximum(best[k - 1][starts], prefix[j] - prefix[starts])
            i = int(np.argmin(costs))
            best[k][j], arg[k][j] = costs[i], starts[i]
    cuts, j = [], n
    for k in range(pp, 0, -1):
        i = int(arg[k][j])
        cuts.append((i, j - 1))
        j = i
    return cuts[::-1]


class BalancedPP(_Heuristic):
    """Pipeline stages balanced by FLOPs with one TP degree; the best (TP, PP) pair by the objective.

    Source: GPipe (Huang et al., NeurIPS 2019) partitions a sequential model to
    balance the estimated cost per stage; DeepSpeed's ``PipelineModule``
    (``partition_method``) and PipeDream (Narayanan et al., SOSP 2019) do the
    same. Balancing by FLOPs is what a practitioner can compute without a cost
    model; it ignores memory-bound decode, communication and memory skew, which
    is where tuners gain.

    Rule: for every TP degree (dividing the heads, within a node) and every PP
    with TP x PP within the devices, cut the layers into PP stages minimising
    the largest stage's FLOPs (the first stage carries the embedding, the last
    the LM head), replicate over the devices left (largest count dividing the
    batch), micro-batches as in the module conventions; when training and the
    plan does not fit, the same plan with activation recomputation. Every plan
    is recorded; the best feasible one by the objective is the answer.
    """

    name = "balanced-pp"
    description = "stages balanced by FLOPs, one TP degree (best of the TP/PP pairs that fit)"

    def _rule(self, problem: Problem, shape: _Shape, recorder: Recorder) -> list[str]:
        flops = layer_flops(problem)
        cache: dict[int, list[tuple[int, int]]] = {}
        fitted = 0
        last: tuple[Plan, Evaluation] | None = None
        for tp in reversed(shape.tps):
            for pp in range(1, min(shape.n_layers, shape.devices // tp) + 1):
                if pp not in cache:
                    cache[pp] = balanced_cuts(flops, pp)
                replicas = _fill_replicas(shape, tp * pp)
                m = _micro_batches(shape, pp, replicas)
                for plan in _variants(shape, [(a, b, tp) for a, b in cache[pp]], m, replicas):
                    if recorder.done:
                        return [f"{self.name}: the budget ran out after {recorder.evaluations} evaluation(s)"]
                    ev = recorder.evaluate(plan)
                    last = (plan, ev)
                    if _fits(problem, ev):
                        fitted += 1
                        break
        if recorder.best is not None:
            return []
        if last is None:
            return [f"{self.name}: no TP x PP pair fits {shape.devices} devices"]
        if fitted:
            return [
                f"{self.name}: {fitted} plan(s) fit in memory but none meets the limits; last: {last[1].violations}"
            ]
        return [_miss(problem, last[0], last[1], self.name) + " (and no other TP x PP pair fits)"]
