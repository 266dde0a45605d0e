"""Task graphs: the IR, the model zoo, coarsening and the PyTorch importer.

torch is imported only by :func:`import_torch_graph` (lazily), never by the rest.
"""

from __future__ import annotations

from typing import Any

from ._builder import build_graph, build_spec_graph
from ._coarsen import coarsen, parse_granularity
from ._sources import load_graph
from ._task import KINDS, SHARD_RULES, STEPS, Op, Task
from ._taskgraph import PHASES, GraphMeta, Phase, TaskGraph
from ._toy import toy_graph
from ._zoo import DTYPE_BYTES, HF_IDS, PRESETS, ModelSpec, get_model

__all__ = [
    "DTYPE_BYTES",
    "HF_IDS",
    "KINDS",
    "PHASES",
    "PRESETS",
    "SHARD_RULES",
    "STEPS",
    "GraphMeta",
    "ModelSpec",
    "Op",
    "Phase",
    "Task",
    "TaskGraph",
    "build_graph",
    "build_spec_graph",
    "coarsen",
    "get_model",
    "import_torch_graph",
    "load_graph",
    "parse_granularity",
    "toy_graph",
]


def import_torch_graph(*args: Any, **kwargs: Any) -> TaskGraph:
    """Import a PyTorch / Hugging Face model (see :mod:`paratune.graphs._importer`); needs torch."""
    from ._importer import import_torch_graph as _impl

    return _impl(*args, **kwargs)
