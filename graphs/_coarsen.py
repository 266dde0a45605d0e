"""Coarsening: merge tasks into larger ones to choose the granularity of a graph.

Granularities, from fine to coarse:

* ``op`` — one task per operator (the graph as built or imported);
* ``sublayer`` — attention block and MLP block of each layer;
* ``layer`` — one task per transformer layer;
* ``layers:k`` — groups of k consecutive layers.

Embedding (layer -1) and LM head (layer n) stay tasks of their own at every
coarse granularity. Forward, backward and optimizer work of a group stay
separate tasks so the coarse graph remains acyclic. A merged task keeps the
ops of its members, so FLOPs, bytes and parameter bytes are conserved exactly;
a coarse edge carries the bytes of every fine edge crossing the cut.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from ._task import Task
from ._taskgraph import TaskGraph


def parse_granularity(granularity: str) -> tuple[str, int]:
    """Validate a granularity string; return (level, k)."""
    if granularity in ("op", "sublayer", "layer"):
        return granularity, 1
    if granularity.startswith("layers:"):
        try:
            k = int(granularity.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return "layers", k
    raise ValueError(f"granularity {granularity!r} is not one of: op, sublayer, layer, layers:k (k >= 1)")


def _group_key(task: Task, level: str, k: int, n_layers: int) -> tuple[str, ...]:
    step = "" if task.step == "forward" else ("bwd" if task.step == "backward" else "opt")
    suffix = (step,) if step else ()
    if task.layer < 0 or task.layer >= n_layers:
        # Work before the first layer (embedding) and after the last (head) stays apart,
        # optimizer included, so each side's optimizer runs where its weights live.
        return ("embed" if task.layer < 0 else "head", *suffix)
    if level == "sublayer":
        return (f"L{task.layer}", task.block, *suffix)
    if level == "layer" or k == 1:
        return (f"L{task.layer}", *suffix)
    first = task.layer // k * k
    last = min(first + k, n_layers) - 1
    return (f"L{first}-{last}", *suffix)


def coarsen(graph: TaskGraph, granularity: str) -> TaskGraph:
    """Return ``graph`` at ``granularity`` (a new graph; the input is unchanged).

    Coarsening is only defined from a graph finer than the target; an ``op``
    target returns the graph itself.
    """
    level, k = parse_granularity(granularity)
    if level == "op":
        if graph.meta.granularity != "op":
            raise ValueError(f"cannot refine a {graph.meta.granularity!r} graph back to 'op': rebuild it")
        return graph
    n_layers = graph.meta.n_layers
    if n_layers < 1:
        raise ValueError("coarsening above 'op' needs layer indices (graph meta n_layers >= 1)")
    members: dict[tuple[str, ...], list[Task]] = defaultdict(list)
    owner: dict[str, str] = {}
    for task in graph.tasks:
        key = _group_key(task, level, k, n_layers)
        members[key].append(task)
        owner[task.id] = ".".join(key)
    coarse = TaskGraph(replace(graph.meta, granularity=granularity))
    for key, tasks in members.items():
        ops = tuple(op for t in tasks for op in t.ops)
        main = max(tasks, key=lambda t: (t.flops, t.bytes))
        layers = [t.layer for t in tasks]
        coarse.add_task(
            Task(
                id=".".join(key),
                kind=main.kind,
                layer=min(layers) if tasks[0].step != "backward" else max(layers),
                block=tasks[0].block if level == "sublayer" or len(key) == 1 else "layer",
                ops=ops,
                scope=_common_scope([t.scope for t in tasks]),
                shard=main.shard,
                step=tasks[0].step,
            )
        )
    for u, v, nbytes in graph.edges():
        cu, cv = owner[u], owner[v]
        if cu != cv:
            coarse.add_edge(cu, cv, nbytes)
    return coarse


def _common_scope(scopes: list[str]) -> str:
    parts = [s.split(".") for s in scopes if s]
    if not parts:
        return ""
    prefix = parts[0]
    for p in parts[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    return ".".join(prefix)
