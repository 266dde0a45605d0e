"""``dag-exact``: the certified optimum of a task placement on any DAG, by branch and bound.

``dp`` needs layered graphs. Graphs from the importer (parallel branches, MoE
experts at op granularity) are placed task by task, so certifying a gap there
needs a search over placements. The discrete-event simulator is the ground truth
for task plans and it *list-schedules* (a stage runs its ready task of lowest
topological rank, a link one transfer at a time). An ILP that also chooses the
schedule would find makespans the simulator never produces, so it would not be
exact under the cost model; this solver therefore enumerates placements, prices
every leaf with the simulator itself, and prunes only with bounds that are
provably on the right side of what the simulator returns for every completion.

The search space (the device-group menu), with ``D = problem.max_devices``:

* a *layout* is an ordered tuple of TP degrees ``(t1, ..., tk)`` taken from
  ``problem.tp_degrees()``, ``t1 + ... + tk <= D``, ``k <=`` the number of tasks;
  group ``j`` holds the devices ``t1 + ... + t(j-1)`` onwards, packed from device 0,
  and no group straddles a node (a TP all-reduce over the inter-node links is
  never what anyone runs);
* a *placement* puts every task on one group and at least one task on every group;
  the plan's stages are the groups in device order, each with its tasks in
  topological order; ``micro_batches = replicas = 1`` (the latency of one batch).

Bounds, for any completion of a partial placement (tasks are placed in
topological order, so the placed set holds every predecessor of a placed task):

* critical path: a placed task finishes no earlier than its duration on its group
  after its predecessors' bounds plus, across groups, the transfer of the smallest
  tensor the simulator can send for that edge; unplaced tasks take their fastest
  group in the layout and free transfers;
* load: a group runs one task at a time, so the latency is at least each group's
  summed durations and the total (fastest durations for unplaced tasks) over ``k``;
  the prefill throughput's bottleneck is bounded the same way;
* memory: a group's static memory (weights, training state or KV cache) only
  grows as tasks join it and never exceeds its peak, so a group over the limit
  prunes the branch; it also bounds the memory objective of ``*+memory``.

Symmetries, removed exactly: the simulator's prices depend on a group's TP degree
and link terms and on the link terms between groups (and, for one instance, not on
the stages' order), so layouts that map onto each other by a permutation keeping
those terms are searched once, and inside a layout interchangeable groups are
opened in index order (canonical labelling).

The result is certified to a relative tolerance of ``1e-9`` (bounds are sums taken
in another order than the simulator's event times). Instances beyond ``max_tasks``
tasks or ``max_devices`` devices are refused: the tree grows as ``k ** tasks``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..costmodel import Plan, Simulator, Stage
from ..costmodel._pricing import GroupLink, group_terms, p2p_time, pair_link
from ..costmodel._simengine import BACKWARD
from ..graphs import Phase
from ..problem import Problem
from ._options import TunerOptions, about
from ._tuner import Family, Recorder, Tuner

RTOL = 1e-9
MAX_TASKS = 16
MAX_DEVICES = 8

Terms = tuple[float, float]


def placement_layouts(tps: list[int], devices: int, per_node: int, max_groups: int) -> list[tuple[int, ...]]:
    """Every layout of the menu: ordered TP degrees packed from device 0, no group across a node."""
    out: list[tuple[int, ...]] = []

    def grow(prefix: tuple[int, ...], used: int) -> None:
        if prefix:
            out.append(prefix)
        if len(prefix) == max_groups:
            return
        for t in tps:
            if used + t <= devices and used // per_node == (used + t - 1) // per_node:
                grow((*prefix, t), used + t)

    grow((), 0)
    return out


def layout_devices(tps: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The device ids of each group of a layout (packed from device 0)."""
    out, first = [], 0
    for t in tps:
        out.append(tuple(range(first, first + t)))
        first += t
    return tuple(out)


@dataclass
class _Layout:
    """One layout with what the bounds read: per-group durations and memory, pair link terms."""

    tps: tuple[int, ...]
    devices: tuple[tuple[int, ...], ...]
    sig: list[tuple[int, GroupLink]]  # per group: (TP degree, collective link terms)
    pair: list[list[Terms]]
    dur: list[list[float]]  # [group][task] seconds of one instance
    mem: list[list[float]]  # [group][task] static bytes per device
    prev: list[int]  # per group: the group of its class that must be opened first (-1: none)

    def refined(self, j: int) -> tuple[tuple[int, GroupLink], tuple[Terms, ...]]:
        return self.sig[j], tuple(sorted(self.pair[j][x] for x in range(len(self.tps)) if x != j))

    def invariant(self) -> tuple[object, ...]:
        return tuple(sorted(self.refined(j) for j in range(len(self.tps))))


def _isomorphic(a: _Layout, b: _Layout) -> bool:
    """True when a permutation of groups maps ``a``'s group and pair terms onto ``b``'s."""
    k = len(a.tps)
    ra, rb = [a.refined(j) for j in range(k)], [b.refined(j) for j in range(k)]
    perm, taken = [-1] * k, [False] * k

    def extend(j: int) -> bool:
        if j == k:
            return True
        for x in range(k):
            if taken[x] or rb[x] != ra[j] or any(a.pair[j][y] != b.pair[x][perm[y]] for y in range(j)):
                continue
            perm[j], taken[x] = x, True
            if extend(j + 1):
                return True
            taken[x] = False
        return False

    return extend(0)


@dataclass(frozen=True)
class DagExactOptions(TunerOptions):
    """``dag-exact``'s options: the graph and the size of instance it accepts."""

    granularity: str | None = field(default=None, metadata=about("the graph's granularity (default: the problem's)"))
    max_tasks: int = field(
        default=MAX_TASKS, metadata=about("refuse graphs of more tasks (the tree grows as groups ** tasks)", minimum=1)
    )
    max_devices: int = field(
        default=MAX_DEVICES, metadata=about("refuse problems that may use more devices", minimum=1)
    )


class DagExact(Tuner):
    """Branch and bound over task -> device-group placements of any DAG; certified under the simulator.

    Options: ``max_tasks`` (default 16) and ``max_devices`` (default 8) refuse larger
    instances; ``granularity`` (default: the problem's) picks the graph.

    Example:
        >>> from paratune.search import Problem, make_tuner
        >>> p = Problem("mixtral-8x7b:layers=1,hidden=512,heads=8", "dgx-a100:devices_per_node=2",
        ...             phase="prefill", batch=2, seq=128, granularity="sublayer")
        >>> make_tuner("dag-exact").tune(p).optimal
        True
    """

    name: ClassVar[str] = "dag-exact"
    family: ClassVar[Family] = Family.EXACT
    stochastic: ClassVar[bool] = False
    exact: ClassVar[bool] = True
    default_budget: ClassVar[int | None] = None
    description: ClassVar[str] = "branch and bound over task placements of any DAG (small instances)"
    Options: ClassVar[type[TunerOptions]] = DagExactOptions
    config: DagExactOptions

    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str] | None:
        gran = self.config.granularity or problem.granularity
        max_tasks, max_devices = self.config.max_tasks, self.config.max_devices
        graph = problem.graph(gran)
        n_tasks, n_devices = graph.num_tasks, problem.max_devices
        if n_tasks > max_tasks:
            raise ValueError(
                f"dag-exact: the graph at granularity {gran!r} has {n_tasks} tasks, more than the limit of "
                f"{max_tasks} (option max_tasks; the tree grows as groups ** tasks): use a coarser granularity "
                "(sublayer, layer, layers:k) or the Optuna 'placement' search (optuna-tpe with space='placement')"
            )
        if n_devices > max_devices:
            raise ValueError(
                f"dag-exact: the problem may use {n_devices} devices, more than the limit of {max_devices} "
                "(option max_devices): cap them with limits.max_devices, or use the Optuna 'placement' search"
            )
        search = _Search(problem, recorder, gran)
        search.run()
        recorder.certified = not search.stopped
        notes = [
            f"space: layouts of TP degrees {problem.tp_degrees()} packed on {n_devices} device(s), no group across "
            f"a node, every task on one group; {search.n_layouts} layout(s), {search.n_searched} searched after "
            f"symmetry and bounds; {search.nodes} node(s), {search.leaves} plan(s) simulated",
            "micro_batches = replicas = 1; certified to a relative tolerance of 1e-9",
        ]
        if search.stopped:
            notes.append("stopped by the callback before the tree was exhausted: the result is not certified")
        return notes


class _Search:
    """The branch and bound itself: per layout, a depth-first search over tasks in topological order."""

    def __init__(self, problem: Problem, recorder: Recorder, gran: str) -> None:
        self.problem, self.recorder, self.gran = problem, recorder, gran
        self.sim: Simulator = problem.simulator(gran)
        sim = self.sim
        self.T = len(sim.ids)
        self.phase = sim.phase
        self.obj = problem.resolved_objective
        self.multi = self.obj.multi
        self.maximise = self.obj.direction == "maximize"
        self.prefill_rate = self.maximise and self.phase == Phase.PREFILL
        meta = sim.graph.meta
        self.tokens = float(meta.batch if self.phase == Phase.DECODE else meta.batch * meta.seq)
        self.limit = problem.memory_limit_bytes
        lim = problem.limits
        slo = lim.tbt_ms if self.phase == Phase.DECODE else lim.ttft_ms if self.phase == Phase.PREFILL else None
        self.slo = None if slo is None else slo * 1e-3
        # Predecessors of each task, with the fewest bytes the simulator can send for the edge across groups
        # (a tensor goes once per consumer group, capped by its producer's output; gradients summed first).
        self.preds: list[list[tuple[int, float, bool]]] = [[] for _ in range(self.T)]
        self.succs: list[list[int]] = [[] for _ in range(self.T)]
        for u, v, nbytes in sim.edges:
            grad = sim.step[u] == BACKWARD and sim.step[v] == BACKWARD
            cap = sim.out_bytes[sim.fwd_of[v]] if grad and sim.fwd_of[v] >= 0 else sim.out_bytes[u]
            self.preds[v].append((u, min(cap, nbytes) if cap > 0 else nbytes, grad))
            self.succs[u].append(v)
        if any(u >= v for v in range(self.T) for u, _, _ in self.preds[v]):
            raise RuntimeError("graph.tasks is not in topological order (a bug: please report the graph)")
        self._durs: dict[tuple[int, GroupLink], list[float]] = {}
        self._mems: dict[int, list[float]] = {}
        self.n_layouts = self.n_searched = self.nodes = self.leaves = 0
        self.stopped = False

    # -- prices --------------------------------------------------------------------
    def durations(self, tp: int, link: GroupLink) -> list[float]:
        """Seconds of each task of one instance on a group (what the simulator's build_input gives)."""
        key = (tp, link)
        if key not in self._durs:
            kern = self.sim.kernels(tp, 1.0)[1]
            ar = self.sim.allreduces(tp, 1.0, link)[1]
            self._durs[key] = [a + b for a, b in zip(kern, ar, strict=True)]
        return self._durs[key]

    def static(self, tp: int) -> list[float]:
        """Static memory per device each task adds to a group of ``tp`` (the simulator's own formula)."""
        if tp not in self._mems:
            plan = Plan((Stage(tp, tuple(range(tp)), tasks=()), Stage(1, (tp,), tasks=())), granularity=self.gran)
            self._mems[tp] = [
                self.sim.static_memory(plan, [0 if j == i else 1 for j in range(self.T)])[0] for i in range(self.T)
            ]
        return self._mems[tp]

    def layouts(self) -> Iterator[_Layout]:
        """The menu's layouts, one per class of layouts equal up to a cost-preserving group permutation."""
        plat = self.problem.resolved_platform
        menu = placement_layouts(self.problem.tp_degrees(), self.problem.max_devices, plat.devices_per_node, self.T)
        self.n_layouts = len(menu)
        seen: dict[tuple[object, ...], list[_Layout]] = {}
        for tps in menu:
            devs = layout_devices(tps)
            k = len(tps)
            sig = [(t, group_terms(plat, d)) for t, d in zip(tps, devs, strict=True)]
            pair = [[pair_link(plat, devs[a], devs[b]) if a != b else (0.0, 0.0) for b in range(k)] for a in range(k)]
            lay = _Layout(tps, devs, sig, pair, [], [], [-1] * k)
            bucket = seen.setdefault(lay.invariant(), [])
            if any(_isomorphic(lay, other) for other in bucket):
                continue
            bucket.append(lay)
            lay.dur = [self.durations(t, link) for t, link in sig]
            lay.mem = [self.static(t) for t in tps]
            for j in range(k):  # groups j' < j interchangeable with j: open them in index order
                for x in range(j - 1, -1, -1):
                    if sig[x] == sig[j] and all(pair[x][g] == pair[j][g] for g in range(k) if g not in (x, j)):
                        lay.prev[j] = x
                        break
            yield lay

    # -- pruning ---------------------------------------------------------------------
    def hopeless(self, latency: float, bottleneck: float, memory: float) -> bool:
        """True when no completion with these lower bounds can beat what is recorded (or meet the SLO)."""
        if memory > self.limit * (1 + RTOL):
            return True
        if self.slo is not None and latency > self.slo * (1 + RTOL):
            return True
        if self.multi:
            return any(
                f.values[0] <= latency * (1 + RTOL) and f.values[1] <= memory * (1 + RTOL) for f in self.recorder.front
            )
        best = self.recorder.best
        if best is None or latency <= 0 or bottleneck <= 0:
            return False
        if not self.maximise:
            return latency >= best.value * (1 - RTOL)
        bound = self.tokens / (bottleneck if self.prefill_rate else latency)
        return bound <= best.value * (1 + RTOL)

    # -- the search ------------------------------------------------------------------
    def run(self) -> None:
        prepared = [self.prepare(lay) for lay in self.layouts()]
        # Most promising layouts first: a good incumbent early prunes the rest.
        for ctx in sorted(prepared, key=lambda c: (c.root, sum(c.lay.tps))):
            if self.stopped:
                return
            if not self.hopeless(ctx.root, ctx.root_bottleneck, ctx.root_memory):
                self.n_searched += 1
                self.layout_search(ctx)

    def prepare(self, lay: _Layout) -> _Ctx:
        T, k, sim = self.T, len(lay.tps), self.sim
        mind = [min(lay.dur[g][i] for g in range(k)) for i in range(T)]
        tail = [0.0] * T
        for i in range(T - 1, -1, -1):
            tail[i] = max((mind[v] + tail[v] for v in self.succs[i]), default=0.0)
        head = [0.0] * T
        for i in range(T):
            head[i] = max((head[u] + mind[u] for u, _, _ in self.preds[i]), default=0.0)
        cp = max(head[i] + mind[i] + tail[i] for i in range(T))
        rest = [0.0] * (T + 1)
        for i in range(T - 1, -1, -1):
            rest[i] = rest[i + 1] + mind[i]
        # Live bytes a task surely holds while it runs on a group: its output and largest inner tensor.
        out, act = [], []
        for g, t in enumerate(lay.tps):
            sizes = sim.tensor_sizes(t)
            out.append(sizes.out)
            act.append(
                [0.0 if sim.once[i] or lay.dur[g][i] <= 0 else sizes.out[i] + sizes.largest_inner[i] for i in range(T)]
            )
        root_memory = max((min(lay.mem[g][i] + act[g][i] for g in range(k)) for i in range(T)), default=0.0)
        root_bottleneck = max(rest[0] / k, max(mind))
        root = max(cp, root_bottleneck)
        return _Ctx(lay, mind, tail, cp, rest, out, act, root, root_bottleneck, root_memory)

    def layout_search(self, ctx: _Ctx) -> None:
        lay = ctx.lay
        T, k = self.T, len(lay.tps)
        dur, mem, pair, prev, preds = lay.dur, lay.mem, lay.pair, lay.prev, self.preds
        tail, cp, rest, out, act = ctx.tail, ctx.cp, ctx.rest, ctx.out, ctx.act
        once = self.sim.once
        links = self.prefill_rate
        assign = [-1] * T
        finish = [0.0] * T
        used = [0] * k
        load = [0.0] * k
        held = [0.0] * k  # static bytes per device
        amax = [0.0] * k  # largest live activation bytes surely reached
        link_load: dict[tuple[int, int], float] = {}
        sent: dict[tuple[int, int, int], float] = {}  # transfer key -> its smallest bytes so far

        def dfs(i: int, unused: int, crit: float, lmax: float, work: float, mmax: float) -> None:
            self.nodes += 1
            if i == T:
                self.leaf(lay, assign)
                return
            cands = []
            for g in range(k):
                if not used[g] and prev[g] >= 0 and not used[prev[g]]:
                    continue  # canonical labelling of interchangeable groups
                left = unused - (0 if used[g] else 1)
                if left > T - i - 1:
                    continue  # every group must hold a task
                start = 0.0
                for u, nbytes, _ in preds[i]:
                    gu = assign[u]
                    t = finish[u] if gu == g else finish[u] + p2p_time(nbytes, *pair[gu][g])
                    if t > start:
                        start = t
                cands.append((start + dur[g][i], g, left))
            cands.sort()
            for fin, g, left in cands:
                if self.stopped:
                    return
                d = dur[g][i]
                assign[i], finish[i] = g, fin
                used[g] += 1
                load[g] += d
                old_held, old_amax = held[g], amax[g]
                held[g] += mem[g][i]
                live = act[g][i]
                undo: list[tuple[tuple[int, int, int], float | None, tuple[int, int], float]] = []
                linkmax = 0.0
                grads: dict[int, float] = {}
                for u, nbytes, grad in preds[i]:
                    gu = assign[u]
                    if gu == g:
                        if live and not once[u]:
                            live += out[g][u]
                        continue
                    if grad:
                        grads[gu] = max(grads.get(gu, 0.0), nbytes)
                    elif live:
                        live += nbytes
                    if links:
                        key = (1, i, gu) if grad else (0, u, g)
                        old = sent.get(key)
                        if old is None or nbytes > old:
                            lk = (gu, g)
                            before = link_load.get(lk, 0.0)
                            delta = p2p_time(nbytes, *pair[gu][g]) - (
                                0.0 if old is None else p2p_time(old, *pair[gu][g])
                            )
                            undo.append((key, old, lk, before))
                            sent[key] = nbytes
                            link_load[lk] = before + delta
                            linkmax = max(linkmax, before + delta)
                if live:
                    live += sum(grads.values())
                amax[g] = max(amax[g], live)
                crit2 = max(crit, fin + tail[i])
                lmax2 = max(lmax, load[g], linkmax)
                work2 = work + d
                mmax2 = max(mmax, held[g] + amax[g])
                spread = (work2 + rest[i + 1]) / k
                # Every unplaced task lands on some group, whose load and memory then grow by its share.
                forced = memory = 0.0
                for j in range(i + 1, T):
                    f = m = float("inf")
                    for h in range(k):
                        x = load[h] + dur[h][j]
                        if x < f:
                            f = x
                        y = held[h] + mem[h][j] + max(amax[h], act[h][j])
                        if y < m:
                            m = y
                    if f > forced:
                        forced = f
                    if m > memory:
                        memory = m
                latency = max(crit2, cp, lmax2, spread, forced)
                bottleneck = max(lmax2, spread, forced)
                if not self.hopeless(latency, bottleneck, max(mmax2, memory)):
                    dfs(i + 1, left, crit2, lmax2, work2, mmax2)
                for key, old, lk, before in reversed(undo):
                    if old is None:
                        del sent[key]
                    else:
                        sent[key] = old
                    link_load[lk] = before
                held[g], amax[g] = old_held, old_amax
                load[g] -= d
                used[g] -= 1
                assign[i] = -1

        dfs(0, k, 0.0, 0.0, 0.0, 0.0)

    def leaf(self, lay: _Layout, assign: list[int]) -> None:
        ids = self.sim.ids
        tasks: list[list[str]] = [[] for _ in lay.tps]
        for i, g in enumerate(assign):
            tasks[g].append(ids[i])
        stages = tuple(Stage(t, d, tasks=tuple(ts)) for t, d, ts in zip(lay.tps, lay.devices, tasks, strict=True))
        self.leaves += 1
        self.recorder.evaluate(Plan(stages, granularity=self.gran))
        if self.recorder.stopped:
            self.stopped = True


@dataclass
class _Ctx:
    """A layout with its precomputed bounds: fastest durations, tails, critical path, activation floors."""

    lay: _Layout
    mind: list[float]
    tail: list[float]
    cp: float
    rest: list[float]
    out: list[list[float]]
    act: list[list[float]]
    root: float
    root_bottleneck: float
    root_memory: float
