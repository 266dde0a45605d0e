"""How many plans a tuner chooses from at one granularity: the size of its search space, counted.

The granularity study sets quality against optimisation effort; the number of plans
in the space a tuner searches is the effort's natural unit (a tuner that evaluates
every plan pays for all of them; a sampler with a fixed budget sees an ever smaller
share). Counts are exact for the spaces as defined below, and grow past any float,
so they are Python integers and reported as ``log10``.

**Layered space** (``dp``, ``enumerate``; Optuna's ``hybrid`` space maps its trials
into it). A plan cuts the ``U`` cut units of the graph (the layers where a stage may
start: every layer at ``op``, ``sublayer`` and ``layer``, every k-th at ``layers:k``)
into ``p`` contiguous stages, gives each a TP degree from ``T`` (its contiguous
devices follow), and picks replicas ``r`` and micro-batches ``m`` with ``r x m``
dividing the batch. With ``k`` choices per stage besides TP (2 when training searches
activation recomputation on/off, else 1) and ``D`` devices::

    |S| = sum over (r, m) of  sum over p = 1 .. min(U, P) of  C(U-1, p-1) * k**p * N_p(floor(D / r))

where ``C(U-1, p-1)`` counts the compositions of ``U`` units into ``p`` stages,
``N_p(B)`` the TP sequences ``(t_1..t_p)`` in ``T**p`` with ``t_1 + ... + t_p <= B``,
and ``P`` the stage cap (none for the dp; 16 for the hybrid space). This is the
count :meth:`paratune.search._layered_space.LayeredSpace.count_plans` computes with a
cubic DP; the closed form is linear in ``U``. Memory and SLOs are not checked: the
space holds infeasible plans too, as it does for the solvers.

**Placement space** (Optuna's ``placement``). One TP degree ``t`` per plan and a
group per task; the groups used become the stages in the topological order of their
first task, so a plan is a set partition of the ``N`` tasks into at most ``D // t``
blocks, times the (replicas, micro-batches) pairs a replica of ``t x blocks``
devices allows::

    |S| = sum over t of  sum over j = 1 .. D // t of  S2(N, j) * pairs(floor(D / (t * j)))

with ``S2`` the Stirling numbers of the second kind, i.e. about ``N log10(D/t) -
log10((D/t)!)`` digits. Distinct plans are counted, not trial parameter vectors
(many vectors give one plan).

**DAG placement** (``dag-exact``). A layout is an ordered tuple of TP degrees packed
from device 0, no group across a node, at most ``N`` groups; every task goes to one
group and every group gets a task (a surjection: ``j! S2(N, j)`` for ``j`` groups);
one replica, one micro-batch. The count is before the solver's symmetry reduction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from ..graphs import Phase
from ..problem import Problem, divisors

#: Stage cap of Optuna's hybrid space (``paratune.search._optuna_spaces.MAX_STAGES``).
HYBRID_MAX_STAGES = 16
#: Micro-batch cap of the dp's space (its option ``max_micro_batches``).
DP_MAX_MICRO_BATCHES = 64


def log10(count: int) -> float | None:
    """log10 of a (possibly huge) positive integer; None for an empty space."""
    return math.log10(count) if count > 0 else None


def cut_units(problem: Problem, granularity: str) -> int:
    """Where a stage may start at ``granularity``: layer 0 and the first layer of every forward task."""
    graph = problem.graph(granularity)
    n = graph.meta.n_layers
    starts = {0} | {t.layer for t in graph.tasks if t.step == "forward" and 0 <= t.layer < n}
    return len(starts)


def tp_sequences(tps: Sequence[int], stages: int, budget: int) -> list[int]:
    """``out[p]`` = number of sequences of ``p`` TP degrees (p = 0..stages) whose sum is at most ``budget``."""
    # exact[d]: sequences of the current length summing to exactly d.
    exact = [1] + [0] * budget
    out = [1]
    for _ in range(stages):
        nxt = [0] * (budget + 1)
        for d, ways in enumerate(exact):
            if ways:
                for t in tps:
                    if d + t <= budget:
                        nxt[d + t] += ways
        exact = nxt
        out.append(sum(exact))
    return out


def count_layered(
    units: int,
    devices: int,
    tps: Sequence[int],
    pairs: Sequence[tuple[int, int]],
    *,
    per_stage_choices: int = 1,
    max_stages: int | None = None,
) -> int:
    """Plans of the layered space (module docstring): ``units`` cut units, ``devices``, TP menu, (r, m) pairs."""
    if units < 1 or not tps:
        return 0
    cap = units if max_stages is None else min(units, max_stages)
    by_budget: dict[int, int] = {}
    total = 0
    for r, _m in pairs:
        budget = devices // r
        if budget not in by_budget:
            seqs = tp_sequences(tps, min(cap, budget), budget)
            by_budget[budget] = sum(
                math.comb(units - 1, p - 1) * per_stage_choices**p * seqs[p] for p in range(1, len(seqs))
            )
        total += by_budget[budget]
    return total


@lru_cache(maxsize=4096)
def stirling2(n: int, k: int) -> int:
    """Stirling number of the second kind: partitions of n items into k non-empty blocks."""
    if k < 0 or k > n:
        return 0
    if k == 0:
        return 1 if n == 0 else 0
    return sum((-1) ** i * math.comb(k, i) * (k - i) ** n for i in range(k + 1)) // math.factorial(k)


def count_placement(tasks: int, devices: int, tps: Sequence[int], batch: int) -> int:
    """Distinct plans of Optuna's placement space (module docstring)."""
    total = 0
    for t in tps:
        for j in range(1, min(tasks, devices // t) + 1):
            total += stirling2(tasks, j) * _pairs_within(batch, devices // (t * j))
    return total


def count_dag_placement(tasks: int, devices: int, per_node: int, tps: Sequence[int]) -> int:
    """Placements ``dag-exact`` enumerates before symmetry (module docstring)."""
    # layouts[j][used]: ordered TP tuples of j groups packed on devices 0..used-1, none across a node.
    layouts = [[0] * (devices + 1) for _ in range(min(tasks, devices) + 1)]
    layouts[0][0] = 1
    for j in range(1, len(layouts)):
        for used, ways in enumerate(layouts[j - 1]):
            if ways:
                for t in tps:
                    if used + t <= devices and used // per_node == (used + t - 1) // per_node:
                        layouts[j][used + t] += ways
    return sum(sum(row) * math.factorial(j) * stirling2(tasks, j) for j, row in enumerate(layouts) if j >= 1)


def _pairs_within(batch: int, max_replicas: int) -> int:
    """(replicas, micro-batches) with replicas <= ``max_replicas`` dividing the batch, micro-batches its share."""
    return sum(len(divisors(batch // r)) for r in divisors(batch) if r <= max_replicas)


def layered_pairs(problem: Problem, max_micro_batches: int | None) -> list[tuple[int, int]]:
    """The (replicas, micro-batches) pairs of the layered space (the dp caps micro-batches at 64)."""
    cap = problem.batch if max_micro_batches is None else max_micro_batches
    return [
        (r, m)
        for r in divisors(problem.batch)
        if r <= problem.max_devices
        for m in divisors(problem.batch // r)
        if m <= cap
    ]


def space_log10(problem: Problem, granularity: str, space: str) -> float | None:
    """log10 of the plans in ``space`` ("layered", "hybrid", "placement", "dag-placement") at ``granularity``."""
    tps = problem.tp_degrees()
    devices = problem.max_devices
    train_flags = 2 if problem.phase == Phase.TRAIN else 1
    if space in ("layered", "hybrid"):
        hybrid = space == "hybrid"
        return log10(
            count_layered(
                cut_units(problem, granularity),
                devices,
                tps,
                layered_pairs(problem, None if hybrid else DP_MAX_MICRO_BATCHES),
                per_stage_choices=train_flags,
                max_stages=HYBRID_MAX_STAGES if hybrid else None,
            )
        )
    tasks = problem.graph(granularity).num_tasks
    if space == "placement":
        return log10(count_placement(tasks, devices, tps, problem.batch))
    if space == "dag-placement":
        return log10(count_dag_placement(tasks, devices, problem.resolved_platform.devices_per_node, tps))
    raise ValueError(f"unknown space {space!r}; allowed: layered, hybrid, placement, dag-placement")
