"""Tiny hand-made graphs shipped with the package, so tests and examples start in milliseconds.

They are not transformers: ``n_layers`` is 0, so they are *not* layered and only
the discrete-event simulator (task plans) prices them. Every task holds one
matmul-like op of the same size, so times are easy to reason about.
"""

from __future__ import annotations

from ._task import Op, Task
from ._taskgraph import GraphMeta, TaskGraph

TOY_SHAPES = ("diamond", "chain")


def _op(name: str, flops: float, nbytes: float, out_bytes: float) -> Op:
    # Half of the bytes are weights (read whole by every micro-batch), the rest scale with the batch.
    return Op(
        name=name, kind="matmul", flops=flops, bytes=nbytes, weight_bytes=nbytes / 2, param_bytes=nbytes / 2,
        output_bytes=out_bytes, shard="column",
    )  # fmt: skip


def toy_graph(
    shape: str = "diamond",
    *,
    batch: int = 2,
    flops: float = 2e9,
    nbytes: float = 4e6,
    out_bytes: float = 1e6,
) -> TaskGraph:
    """A three- or four-task prefill graph of equal tasks.

    Args:
        shape: ``diamond`` (``a -> b, a -> c, b -> d, c -> d``: two branches that
            can run in parallel) or ``chain`` (``a -> b -> c``).
        batch: sequences of the workload (micro-batches must divide it).
        flops, nbytes, out_bytes: FLOPs, bytes moved and output bytes of each task (whole batch).

    Example:
        >>> g = toy_graph()
        >>> [t.id for t in g.tasks], g.is_layered
        (['a', 'b', 'c', 'd'], False)
    """
    if shape not in TOY_SHAPES:
        raise ValueError(f"toy graph: shape {shape!r} is not one of {', '.join(TOY_SHAPES)}")
    meta = GraphMeta(model=f"toy-{shape}", phase="prefill", batch=batch, seq=1, heads=2, hidden=1, source="toy")
    graph = TaskGraph(meta)
    names = ["a", "b", "c", "d"] if shape == "diamond" else ["a", "b", "c"]
    for name in names:
        graph.add_task(Task.from_op(_op(name, flops, nbytes, out_bytes), layer=0, block="toy", scope=name))
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")] if shape == "diamond" else [("a", "b"), ("b", "c")]
    for u, v in edges:
        graph.add_edge(u, v, out_bytes)
    return graph
