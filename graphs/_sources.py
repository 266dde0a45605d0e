"""Resolve a model source string to a task graph.

Sources: a zoo name (``llama2-70b``, ``llama2-70b:layers=4``), a model YAML file,
a saved graph (``*.json``), a Hugging Face model type (``hf:llama[:field=v,...]``)
or a user module (``module:pkg.mod:factory``); the last two need ``paratune[import]``.
"""

from __future__ import annotations

from pathlib import Path

from .._limits import check_workload
from ._builder import build_graph
from ._coarsen import coarsen
from ._taskgraph import TaskGraph


def load_graph(
    source: str, *, phase: str, batch: int, seq: int, context: int = 0, granularity: str = "op"
) -> TaskGraph:
    """Build or load the graph named by ``source`` at ``granularity``."""
    check_workload(batch, seq, context)
    if source.endswith(".json"):
        graph = TaskGraph.load(Path(source))
    elif source.startswith(("hf:", "module:")):
        from ._importer import import_torch_graph

        graph = import_torch_graph(source, phase=phase, batch=batch, seq=seq, context=context)
    else:
        graph = build_graph(source, phase=phase, batch=batch, seq=seq, context=context)
    if granularity != graph.meta.granularity:
        graph = coarsen(graph, granularity)
    return graph
