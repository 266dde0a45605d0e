"""The discrete-event simulator: any DAG, any placement, with a timeline a dashboard can draw.

Where the analytic evaluator applies closed-form pipeline formulas to layered
graphs, the simulator *runs* the plan: list scheduling of every task instance on
its stage (a TP group runs one task at a time) and of every cross-stage tensor on
its directed link (one transfer at a time), driven by a heap of events
(:mod:`._simengine`). The formulas are emergent: a pipeline of m micro-batches gives
``sum tau + sum c + (m-1) max(tau, c)``; m decode micro-batches cycling through the
stages give ``max(path, m max tau)``; 1F1B and GPipe give the same step as the
analytic for balanced stages. Both evaluators price with the same functions:
kernels through :meth:`KernelPricer.op_times` (one table of all the graph's ops,
summed per task with ``np.add.reduceat``), collectives through
:func:`allreduce_time` / :func:`p2p_time` on :func:`group_link` / :func:`pair_link`,
static memory through :mod:`._memory`, the bound through :mod:`._bounds`.

Semantics (the same as the analytic's where both apply):

* batch split: replicas are identical, so replica 0 is simulated; each instance is a
  micro-batch of batch/(r m) sequences (of one CP rank: 1/cp of each), kernels priced with scale 1/(r m cp);
* a task runs its ops back to back; an op with ``allreduce_bytes`` is followed by an
  all-reduce of those bytes x scale on its stage's group;
* a tensor crossing stages is sent once per consumer stage, a gradient summed over
  its producers on a stage before it is sent (see :mod:`._simbuild`);
* prefill: TTFT = makespan of the m instances; decode: ``decode_steps`` steps of each
  micro-batch, step k+1 of a micro-batch waiting for its step k; TBT = the time
  between the ends of the last two steps; train: forwards and backwards per
  micro-batch (1F1B or GPipe), then on each stage the data-parallel gradient
  all-reduce and the optimizer tasks (once, at full batch); recompute re-runs a
  backward's forward kernels and all-reduces first;
* interleaved 1F1B (``virtual_stages`` v > 1): the plan's p x v stages are model
  chunks; chunk k runs on the devices of chunk k mod p, so the event loop's stages are
  the p device groups, each running its chunks' slots in Megatron-Core's order
  (:func:`~._pipeline.stage_order`), as :func:`~._pipeline.training_makespan` does;
  a stage's memory, stage time and data-parallel all-reduce cover all its chunks;
* ZeRO (``zero``, ``shard_group``), ``overlap`` and ``tp_overlap``: model state by
  term, data-parallel tails, ZeRO-3's per-slot gathers, the sharded optimizer and the
  exposed TP collectives by the analytic evaluator's conventions (:mod:`._simtech`);
  ``sequence_parallel``: replicated ops' kernels on 1/t of the tokens, their stash split
  over TP, pipeline transfers sent as TP shards by the rank pairs in parallel (TP collectives
  keep their size, as the analytic's);
  ``selective_recompute``: a backward of a chunk that does not recompute fully re-runs
  its forward's attention-core kernels first, the stash leaves out the core's tensors;
  ``cp``: one CP rank at 1/cp of the sequence, ring attention's exposed exchange
  (:func:`._simtech.ring_attention`), gradients reduced over replicas x cp;
  ``ep``: expert ops priced with 1/ep of the experts' weights, 2 all-to-alls forward
  and 2 backward per MoE layer (:func:`._simtech.expert_alltoalls`), expert state / ep
  and its gradients reduced over the replicas x cp / ep ranks holding the same experts;
* combinations the analytic evaluator refuses (ZeRO-3 or ``shard_group`` with ``ep``)
  are refused here too, by name (:meth:`Simulator.unsupported`);
* breakdown: compute, communication and idle along the critical path (the chain of
  jobs that each started when the previous one ended), clipped to the measured
  window, so the three sum to the latency.

Activation memory comes from tensor lifetimes (:mod:`._simmemory`) instead of the
analytic's formulas, and is lower than them where the formulas are conservative:

* 1F1B: the analytic holds min(m, p-i) whole stashes on stage i for the whole step;
  here a micro-batch's stash is freed op by op as its backward runs, and the
  last micro-batches of the cool-down hold fewer;
* workspace: the analytic adds twice the largest op output of a micro-batch;
  here only tensors alive at the same time count (at layer granularity a task's
  largest inner output while it runs);
* recompute: the analytic keeps every unit's inputs plus the largest unit's stash;
  here the checkpoints are the stage's received inputs and one backward's forward
  outputs at a time.

It can be higher where the formula ignores tensors that are alive: the residual
stream held across a block while the MLP runs (op granularity: GPT-2 prefill peaks
at up + act + residual, above the analytic's 2 x up), a later micro-batch's input
received while the stage still works on an earlier one (m > 1), and on the last
training stage the gradients of the head next to its stash. Over the test grid
(tests/test_simulator.py: 3 models x 3 phases x layer/op x pp, tp, m, r) the excess
is at most two hidden-state tensors of a micro-batch per device; the totals (static
memory equal, activations within that slack) are what feasibility compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..graphs import Phase, TaskGraph
from ._bounds import lower_bound_s
from ._memory import kv_cache_memory, weight_memory
from ._metrics import Metrics
from ._plan import Plan
from ._platform import GIB, Platform
from ._pricing import GroupLink, KernelPricer, OpTable, tp_allreduce_time
from ._profile import in_range
from ._simbuild import Built, build_input
from ._simengine import BACKWARD, FORWARD, OPTIMIZER, SimOutput, simulate
from ._simmemory import TensorSizes, activation_peaks
from ._simtech import gemm_ops, model_states
from ._simtrace import critical_breakdown, timeline_events
from ._stash import StashColumns, is_attention_core, is_replicated
from ._technique_tables import expert_split_table
from ._trust import annotate

#: Profile range keys checked for extrapolation (as the analytic evaluator does).
RANGE_KEYS = ("flops_per_device", "bytes_per_device")
#: Plan-wide training techniques the simulator runs (the others are refused by name).
SIMULATED = frozenset(
    {
        "virtual_stages",
        "zero",
        "shard_group",
        "overlap",
        "tp_overlap",
        "sequence_parallel",
        "selective_recompute",
        "cp",
        "ep",
    }
)
STEP_CODE = {"forward": FORWARD, "backward": BACKWARD, "optimizer": OPTIMIZER}


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One bar of the timeline: a task's kernels, an all-reduce, or a transfer between stages.

    ``stage`` is the stage whose group does the work (the sender for a transfer,
    ``dst_stage`` the receiver); ``micro_batch`` is -1 for once-per-step work
    (data-parallel all-reduce, optimizer); ``step`` is the decode step. A task whose
    ops all-reduce is drawn as back-to-back bars (kernels, all-reduce, kernels, ...);
    a transfer is drawn under its producer (or, for a summed gradient, its consumer).
    """

    stage: int
    task: str
    micro_batch: int
    start: float
    end: float
    kind: str  # compute | allreduce (any collective: TP all-reduce, ZeRO-3 gather) | transfer
    step: int = 0
    dst_stage: int = -1


@dataclass
class SimulationResult:
    """Metrics, the timeline and, when asked, the live activation bytes of each stage over time."""

    metrics: Metrics
    timeline: list[TimelineEvent]
    memory_timeline: dict[int, list[tuple[float, float]]] | None = None
    static_memory_bytes: list[float] = field(default_factory=list)  # per stage: weights + training state or KV
    activation_bytes: list[float] = field(default_factory=list)  # per stage: peak of live activations


class Simulator:
    """Simulates plans of one graph on one platform; per-task prices are cached per (TP, batch share).

    Example:
        >>> from paratune.costmodel import Plan, Stage, toy_platform
        >>> from paratune.graphs import toy_graph
        >>> sim = Simulator(toy_graph(), toy_platform())
        >>> plan = Plan((Stage(1, (0,), tasks=("a", "b", "d")), Stage(1, (1,), tasks=("c",))), granularity="op")
        >>> res = sim.run(plan)
        >>> res.metrics.feasible, sorted({e.task for e in res.timeline if e.kind == "compute"})
        (True, ['a', 'b', 'c', 'd'])
    """

    def __init__(self, graph: TaskGraph, platform: Platform, *, decode_steps: int = 4) -> None:
        if decode_steps < 2:
            raise ValueError(f"decode_steps must be >= 2 (TBT is the gap between two steps), got {decode_steps}")
        self.graph, self.platform, self.decode_steps = graph, platform, decode_steps
        meta = graph.meta
        self.phase = meta.phase
        tasks = graph.tasks
        self.tasks = tasks
        self.ids = [t.id for t in tasks]
        self.index = {tid: i for i, tid in enumerate(self.ids)}
        ops = [op for t in tasks for op in t.ops]
        self.table = OpTable.from_ops(ops)
        self._stash_cols = StashColumns.for_graph(ops, meta)
        self._core = np.array([is_attention_core(op) for op in ops], dtype=bool)
        self._replicated = np.array([is_replicated(op) for op in ops], dtype=bool)
        counts = np.array([len(t.ops) for t in tasks], dtype=np.intp)
        self.offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.intp)
        self.last_op = self.offsets + counts - 1
        self.step = [STEP_CODE[t.step] for t in tasks]
        self.once = [s == OPTIMIZER for s in self.step]
        self.layer = [t.layer for t in tasks]
        self.edges = [(self.index[u], self.index[v], b) for u, v, b in graph.edges()]
        self.out_bytes = [t.output_bytes for t in tasks]
        self.bwd_of = [
            self.index.get(tid + ".bwd", -1) if s == FORWARD else -1 for tid, s in zip(self.ids, self.step, strict=True)
        ]
        self.fwd_of = [-1] * len(tasks)
        for f, b in enumerate(self.bwd_of):
            if b >= 0:
                self.fwd_of[b] = f
        op_task = np.repeat(np.arange(len(tasks)), counts)
        step_of_op = np.array(self.step, dtype=np.intp)[op_task]
        self.op_task, self.fwd_ops = op_task, step_of_op == FORWARD
        self.ar_ops = np.flatnonzero(self.table.allreduce_bytes > 0).tolist()
        self.pricer = KernelPricer.for_graph(platform, meta)
        self.kv_len = meta.seq if self.phase == Phase.PREFILL else meta.context + 1
        is_last = np.zeros(len(ops), dtype=bool)
        is_last[self.last_op] = True
        self._inner_mask = ~is_last
        self._kernels: dict[tuple[int, float] | tuple[int, float, int], tuple[np.ndarray, list[float]]] = {}
        self._ars: dict[tuple[int, float, GroupLink], tuple[np.ndarray, list[float]]] = {}
        self._sizes: dict[tuple[int, bool, bool], TensorSizes] = {}
        self._kernels_sp: dict[tuple[int, float, int], tuple[np.ndarray, list[float]]] = {}
        self._outside: dict[tuple[int, float], list[float]] = {}
        self._task_weights: dict[tuple[int, bool], list[float]] = {}
        self._gemm_mask: np.ndarray | None = None  # built on the first tp_overlap plan
        self._gemm_sums: dict[tuple[int, float], list[float]] = {}
        self._work_ops = step_of_op != OPTIMIZER
        self._lower: float | None = None

    # -- cached prices ------------------------------------------------------------
    @property
    def lower_bound(self) -> float:
        if self._lower is None:
            self._lower = lower_bound_s(self.graph, self.platform)
        return self._lower

    def kernels(self, tp: int, scale: float, ep: int = 1) -> tuple[np.ndarray, list[float]]:
        """Seconds of every op, and their sums per task, on a TP group of ``tp`` for a ``scale`` share.

        With ``ep`` > 1 the expert ops hold 1/ep of the experts' weights (expert parallelism:
        :func:`._technique_tables.expert_split_table`, as the analytic evaluator prices them).
        """
        key = (tp, scale) if ep == 1 else (tp, scale, ep)
        hit = self._kernels.get(key)
        if hit is None:
            table = self.table if ep == 1 else expert_split_table(self.table, ep)
            times = self.pricer.op_times(table, tp, scale)
            hit = self._kernels[key] = (times, np.add.reduceat(times, self.offsets).tolist())
        return hit

    def kernel_errors(self, tp: int, scale: float) -> list[float]:
        """Per task: kernel seconds weighted by the held-out error of each op's kind (see :mod:`._trust`)."""
        times = self.kernels(tp, scale)[0]
        return np.add.reduceat(times * self.pricer.error_weights(self.table), self.offsets).tolist()

    def allreduces(self, tp: int, scale: float, link: GroupLink) -> tuple[np.ndarray, list[float]]:
        """TP all-reduce seconds after every op, and their sums per task, on a group with ``link`` terms."""
        key = (tp, scale, link)
        hit = self._ars.get(key)
        if hit is None:
            times = np.zeros(len(self.table))
            ar = self.table.allreduce_bytes
            for k in self.ar_ops:
                times[k] = tp_allreduce_time(float(ar[k]) * scale, 1, tp, link)
            hit = self._ars[key] = (times, np.add.reduceat(times, self.offsets).tolist())
        return hit

    def outside(self, tp: int, scale: float) -> list[float]:
        """Per task: forward/backward kernels whose per-device work lies outside the profile's calibrated ranges."""
        key = (tp, scale)
        hit = self._outside.get(key)
        if hit is None:
            prof, table = self.platform.profile, self.table
            counts = np.zeros(len(table))
            if any(k in prof.ranges for k in RANGE_KEYS):
                flops, nbytes = table.per_device(tp, scale)
                for quantity, values in zip(RANGE_KEYS, (flops, nbytes), strict=True):
                    for k in np.flatnonzero(self._work_ops & (values > 0)):
                        counts[k] += not in_range(prof, quantity, values[k : k + 1])
            hit = self._outside[key] = np.add.reduceat(counts, self.offsets).tolist()
        return hit

    def tensor_sizes(self, tp: int, *, sequence_parallel: bool = False, selective: bool = False) -> TensorSizes:
        """Per-task tensor bytes per device; ``saved`` (the stash, :mod:`._stash`) with SP / selective recomputation."""
        key = (tp, sequence_parallel, selective)
        sizes = self._sizes.get(key)
        if sizes is None:
            per_op = self.table.output_bytes / self.table.split(tp)
            inner = np.where(self._inner_mask, per_op, 0.0)
            saved = self._stash_cols.per_device(
                self.table, tp, sequence_parallel=sequence_parallel, selective=selective
            )
            sizes = self._sizes[key] = TensorSizes(
                out=per_op[self.last_op].tolist(),
                inner=np.add.reduceat(inner, self.offsets).tolist(),
                largest_inner=np.maximum.reduceat(inner, self.offsets).tolist(),
                saved=np.add.reduceat(saved, self.offsets).tolist(),
            )
        return sizes

    def kernels_sp(self, tp: int, scale: float, ep: int = 1) -> tuple[np.ndarray, list[float]]:
        """:meth:`kernels` under SP: replicated ops (norms, residuals, dropouts) on 1/tp of the tokens."""
        key = (tp, scale, ep)
        hit = self._kernels_sp.get(key)
        if hit is None:
            times = np.where(self._replicated, self.kernels(tp, scale / tp, ep)[0], self.kernels(tp, scale, ep)[0])
            hit = self._kernels_sp[key] = (times, np.add.reduceat(times, self.offsets).tolist())
        return hit

    def gemm_kernels(self, tp: int, scale: float) -> list[float]:
        """Per task: seconds of its TP-split GEMMs (:func:`._simtech.gemm_ops`), what ``tp_overlap`` hides behind.

        The op mask depends on the graph only and the sums on (TP, share), so both are
        cached: a tuner evaluating many ``tp_overlap`` plans builds them once, not per plan.
        """
        key = (tp, scale)
        hit = self._gemm_sums.get(key)
        if hit is None:
            if self._gemm_mask is None:
                self._gemm_mask = gemm_ops(self)
            times = np.where(self._gemm_mask, self.kernels(tp, scale)[0], 0.0)
            hit = self._gemm_sums[key] = np.add.reduceat(times, self.offsets).tolist()
        return hit

    def core_kernels(self, times: np.ndarray) -> list[float]:
        """Per task: the seconds of its attention-core ops in ``times`` (what selective recomputation re-runs)."""
        return np.add.reduceat(np.where(self._core, times, 0.0), self.offsets).tolist()

    # -- placement --------------------------------------------------------------------
    def placement(self, plan: Plan) -> list[int]:
        """Stage of every task: by layer range (embedding with layer 0, head with the last layer) or task list."""
        if plan.is_layered:
            n = self.graph.meta.n_layers
            of_layer = [0] * (n + 2)
            for s, st in enumerate(plan.stages):
                first, last = st.layers  # type: ignore[misc]
                for layer in range(first, last + 1):
                    of_layer[layer + 1] = s
            of_layer[0], of_layer[n + 1] = of_layer[1], of_layer[n]
            return [of_layer[layer + 1] for layer in self.layer]
        out = [0] * len(self.ids)
        for s, st in enumerate(plan.stages):
            for tid in st.tasks or ():
                out[self.index[tid]] = s
        return out

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, plan: Plan) -> Metrics:
        """Metrics of ``plan`` (no timeline kept)."""
        return self.run(plan, timeline=False).metrics

    def run(self, plan: Plan, *, timeline: bool = True) -> SimulationResult:
        """Simulate ``plan``; an invalid plan gives ``feasible=False`` with its problems, never an exception."""
        problems = plan.problems(self.graph, self.platform)  # a malformed plan gives reasons, a bug raises
        if not problems:
            problems = self.unsupported(plan)
        if problems:
            metrics = Metrics(
                feasible=False, reason="invalid plan: " + "; ".join(problems), phase=self.phase,
                latency_s=float("inf"), memory_capacity_bytes=self.platform.device.usable_memory,
                lower_bound_s=self.lower_bound, devices_used=plan.num_devices,
            )  # fmt: skip
            return SimulationResult(metrics, [])
        return self._run(plan, timeline)

    @staticmethod
    def unsupported(plan: Plan) -> list[str]:
        """What of the plan this simulator does not price, each named by its field (empty: all of it).

        Every training technique is simulated, but not ZeRO-3 or hybrid sharding with
        expert parallelism (nor does the analytic evaluator price them); the chunks of an
        interleaved stage must agree on ``recompute`` (activation lifetimes are followed per stage).
        """
        out = [
            f"{name} = {value!r} is not simulated yet (the discrete-event simulator prices "
            f"{', '.join(sorted(SIMULATED))} only; use the analytic evaluator)"
            for name, value in plan.techniques().items()
            if name not in SIMULATED
        ]
        if plan.ep > 1 and plan.zero == 3:
            out.append("zero 3 with ep > 1: expert weights sharded over expert-data-parallel ranks are not priced")
        if plan.ep > 1 and plan.shard_group:
            out.append("shard_group with ep > 1: hybrid sharding of expert state is not priced")
        p = plan.pp
        for k in range(p, len(plan.stages)):
            if plan.stages[k].recompute != plan.stages[k % p].recompute:
                out.append(
                    f"stage {k}: recompute must match chunk {k % p} of the same devices (virtual_stages "
                    f"{plan.virtual_stages}): the simulator follows activation memory per stage"
                )
        return out

    def _stage_ops(self, stage_of: list[int], s: int) -> OpTable:
        on_stage = np.array(stage_of, dtype=np.intp)[self.op_task] == s
        return self.table.rows(np.flatnonzero(on_stage & self.fwd_ops))

    def stage_weights(self, stage_of: list[int], s: int, tp: int) -> float:
        """Weight bytes per device of stage ``s`` (what its data-parallel all-reduce moves)."""
        return weight_memory(self._stage_ops(stage_of, s), tp)

    def task_weights(self, tp: int, *, experts: bool = False) -> list[float]:
        """Per task: weight bytes per device of its ops on a TP group of ``tp`` (forward tasks hold the weights).

        ``experts``: only the expert ops' weights (before expert parallelism splits them).
        """
        key = (tp, experts)
        hit = self._task_weights.get(key)
        if hit is None:
            per_op = self.table.param_bytes / self.table.split(tp)
            if experts:
                per_op = np.where(self.table.experts, per_op, 0.0) if self.table.experts is not None else 0.0 * per_op
            hit = self._task_weights[key] = np.add.reduceat(per_op, self.offsets).tolist()
        return hit

    def memory_terms(self, plan: Plan, stage_of: list[int] | None = None) -> list[dict[str, float]]:
        """Per stage, memory that does not depend on the schedule, by term (``Metrics.memory_breakdown``'s keys).

        Training: weights, gradients, optimizer state (ZeRO-sharded, :mod:`._simtech`) and
        ZeRO-3's gathered-layer buffers; inference: weights and the KV cache of batch/r
        sequences. ``stage_of`` gives each task's entry of ``plan.stages``; an interleaved
        stage holds all its chunks.
        """
        stage_of = self.placement(plan) if stage_of is None else stage_of
        p = plan.pp
        group_of = [k % p for k in stage_of]
        if self.phase == Phase.TRAIN:
            state = model_states(self, plan, group_of)
            return [
                {"weights": w, "gradients": g, "optimizer_state": o, "kv_cache": 0.0, "buffers": b}
                for w, g, o, b in zip(state.weights, state.gradients, state.optimizer_state, state.buffers, strict=True)
            ]
        out = []
        for s, st in enumerate(plan.physical_stages):
            table = self._stage_ops(group_of, s)
            kv = kv_cache_memory(table, st.tp, self.graph.meta.batch // plan.replicas, self.kv_len)
            out.append(
                {"weights": weight_memory(table, st.tp), "gradients": 0.0, "optimizer_state": 0.0, "kv_cache": kv,
                 "buffers": 0.0}
            )  # fmt: skip
        return out

    def static_memory(self, plan: Plan, stage_of: list[int] | None = None) -> list[float]:
        """Per stage: weights + training state (train) or the KV cache of batch/r sequences (inference)."""
        return [sum(terms.values()) for terms in self.memory_terms(plan, stage_of)]

    def _pipelined(self, tokens: float, latency: float, plan: Plan, stage_times: list[float], built: Built) -> float:
        """Steady-state tokens/s of a stream of batches (prefill: the bottleneck stage or link sets the pace)."""
        if self.phase != Phase.PREFILL or latency <= 0:
            return tokens / latency if latency > 0 else math.inf
        per_link = [0.0] * built.inp.n_links  # a link carries its transfers one at a time
        for link, duration in zip(built.inp.x_link, built.inp.x_dur, strict=True):
            per_link[link] += duration
        bottleneck = max([*stage_times, *per_link])
        return tokens / (plan.micro_batches * bottleneck) if bottleneck > 0 else math.inf

    def _annotate(self, metrics: Metrics, plan: Plan, stage_of: list[int], built: Built, scale: float) -> None:
        """Calibrated-or-not and the expected error, from the same sums as the analytic evaluator."""
        if self.pricer.errors is None:
            return
        errs = [self.kernel_errors(st.tp, scale) for st in plan.physical_stages]
        kern = error = comm = 0.0
        for i, s in enumerate(stage_of):
            if not self.once[i]:
                kern += built.per_stage[s][1][i]
                error += errs[s][i]
                comm += built.per_stage[s][3][i] * built.ar_keep[i] + built.extra[i]
        comm += sum(built.inp.x_dur)
        annotate(metrics, self.pricer.errors, self.platform, plan, error, kern, comm)

    def _run(self, plan: Plan, keep: bool) -> SimulationResult:
        meta, m, r = self.graph.meta, plan.micro_batches, plan.replicas
        scale = 1.0 / (r * m * plan.cp)  # one CP rank's share: the sequence is split over the CP ranks
        stage_of = self.placement(plan)
        built = build_input(self, plan, stage_of, scale)
        inp = built.inp
        group_of = inp.stage_of  # the device group (pipeline stage) of each task
        stages = plan.physical_stages
        out: SimOutput = simulate(inp)
        if min(out.inst_last, default=0) < 0:
            raise RuntimeError("simulation stalled: some task instances never ran (a bug: please report the plan)")
        if self.phase == Phase.DECODE:
            ends = [max(out.inst_end[k * m : (k + 1) * m]) for k in range(self.decode_steps)]
            w0, w1 = ends[-2], ends[-1]
            last = (self.decode_steps - 1) * m
            final = out.inst_last[max(range(last, last + m), key=out.inst_end.__getitem__)]
        else:
            final = out.last_job
            w0, w1 = 0.0, out.end[final]
        latency = w1 - w0
        compute, comm, idle = critical_breakdown(inp, out, built.ar_part, final, w0, w1)
        terms = self.memory_terms(plan, stage_of)
        static = [sum(x.values()) for x in terms]
        recompute = [st.recompute and self.phase == Phase.TRAIN for st in stages]
        sp, sel = plan.sequence_parallel and self.phase == Phase.TRAIN, plan.selective_recompute
        sizes = [self.tensor_sizes(st.tp, sequence_parallel=sp, selective=sel and not st.recompute) for st in stages]
        acts, curves = activation_peaks(
            inp, out, sizes, built.x_bytes, self.bwd_of, recompute, scale, keep_timeline=keep
        )
        needs = [a + b for a, b in zip(static, acts, strict=True)]
        dpr = plan.devices_per_replica
        memory = [0.0] * self.platform.num_devices
        for st, need in zip(stages, needs, strict=True):
            for d in st.devices:
                for k in range(r):
                    memory[d + k * dpr] = need
        usable = self.platform.device.usable_memory
        worst = max(needs)
        reason = ""
        if worst > usable:
            s = needs.index(worst)
            reason = (
                f"device {stages[s].devices[0]} (stage {s}) needs {worst / GIB:.1f} GiB > {usable / GIB:.1f} GiB "
                f"usable (over by {(worst - usable) / GIB:.1f} GiB)"
            )
        stage_times = [0.0] * plan.pp
        outside = [0.0] * plan.pp
        counts = [self.outside(st.tp, scale) for st in stages]
        for i, s in enumerate(group_of):
            if not self.once[i]:
                stage_times[s] += inp.dur[i]
                outside[s] += counts[s][i]
        warnings = [
            f"stage {s} (tp {st.tp}): {int(n)} kernel(s) run per-device work outside the calibrated range of "
            f"profile {self.platform.profile.name}: the prediction extrapolates"
            for s, (st, n) in enumerate(zip(stages, outside, strict=True))
            if n > 0.5
        ]
        tokens = meta.batch if self.phase == Phase.DECODE else meta.batch * meta.seq
        mfu = None
        if self.phase == Phase.TRAIN:
            flops = float(self.table.flops[~np.array(self.once)[self.op_task]].sum())
            mfu = flops / (latency * plan.num_devices * self.pricer.peak) if latency > 0 else 0.0
        metrics = Metrics(
            feasible=not reason, reason=reason, phase=self.phase, latency_s=latency,
            ttft_s=latency if self.phase == Phase.PREFILL else None,
            tbt_s=latency if self.phase == Phase.DECODE else None,
            step_s=latency if self.phase == Phase.TRAIN else None,
            tokens_per_s=tokens / latency if latency > 0 else math.inf, mfu=mfu, peak_memory_bytes=memory,
            pipelined_tokens_per_s=self._pipelined(tokens, latency, plan, stage_times, built),
            memory_capacity_bytes=usable, lower_bound_s=self.lower_bound,
            breakdown={"compute_s": compute, "communication_s": comm, "idle_s": idle},
            stage_times_s=stage_times, devices_used=plan.num_devices, warnings=warnings,
            memory_breakdown={**terms[needs.index(worst)], "activations": acts[needs.index(worst)]},
        )  # fmt: skip
        self._annotate(metrics, plan, group_of, built, scale)
        events = timeline_events(self, plan, inp, out, built, TimelineEvent) if keep else []
        return SimulationResult(metrics, events, curves, static, acts)
