"""TaskGraph: the intermediate representation every tuner and the cost model share.

A thin wrapper around ``networkx.DiGraph``: each node holds a :class:`Task`
under the ``task`` attribute, each edge the bytes of the tensor it carries
under ``bytes``. The graph is built for one phase and one workload shape,
recorded in :class:`GraphMeta`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import networkx as nx

from .._limits import parse_json, read_text
from ._task import Task

FORMAT_VERSION = 1


class Phase(StrEnum):
    """What a graph runs: a prompt's prefill, one decode step, or a training step.

    Members are strings (``Phase.TRAIN == "train"``), so files and JSON keep the plain names.
    """

    PREFILL = "prefill"
    DECODE = "decode"
    TRAIN = "train"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)


@dataclass(frozen=True)
class GraphMeta:
    """What the graph models: which network, which phase, which workload shape.

    ``seq`` is the prompt length (prefill) or the sequence length (train);
    ``context`` the KV length a decode step reads. ``heads``/``kv_heads`` bound
    the tensor-parallel degrees a plan may use. ``spec`` keeps the numbers the
    graph was built from (model zoo fields, or the importer's config).
    """

    model: str
    phase: str
    batch: int
    seq: int
    context: int = 0
    granularity: str = "op"
    n_layers: int = 0
    heads: int = 1
    kv_heads: int = 1
    hidden: int = 0
    dtype: str = "bf16"
    source: str = "zoo"
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"graph meta: field 'phase' is {self.phase!r}; allowed: {', '.join(PHASES)}")
        for name in ("batch", "seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"graph meta: field '{name}' must be >= 1, got {getattr(self, name)}")
        if self.context < 0:
            raise ValueError(f"graph meta: field 'context' must be >= 0, got {self.context}")

    @property
    def tokens(self) -> int:
        """Tokens processed by one pass: batch x seq (prefill/train) or batch (decode)."""
        return self.batch if self.phase == Phase.DECODE else self.batch * self.seq


class TaskGraph:
    """A DAG of tasks for one phase and workload shape.

    Example:
        >>> from paratune.graphs import build_graph
        >>> g = build_graph("gpt2", phase="prefill", batch=1, seq=128)
        >>> g.num_tasks > 100
        True
    """

    def __init__(self, meta: GraphMeta, graph: nx.DiGraph | None = None) -> None:
        self.meta = meta
        self.nx = graph if graph is not None else nx.DiGraph()
        self._order: list[Task] | None = None

    # -- building -------------------------------------------------------
    def add_task(self, task: Task) -> None:
        if task.id in self.nx:
            raise ValueError(f"task id {task.id!r} is already in the graph")
        self.nx.add_node(task.id, task=task)
        self._order = None

    def add_edge(self, src: str, dst: str, nbytes: float) -> None:
        for end in (src, dst):
            if end not in self.nx:
                raise ValueError(f"edge {src!r} -> {dst!r}: unknown task {end!r}")
        if self.nx.has_edge(src, dst):
            self.nx.edges[src, dst]["bytes"] += float(nbytes)
        else:
            self.nx.add_edge(src, dst, bytes=float(nbytes))
        self._order = None

    # -- reading --------------------------------------------------------
    @property
    def tasks(self) -> list[Task]:
        """Tasks in a deterministic topological order (ties broken by insertion order)."""
        if self._order is None:
            rank = {n: i for i, n in enumerate(self.nx.nodes)}
            order = nx.lexicographical_topological_sort(self.nx, key=lambda n: rank[n])
            self._order = [self.nx.nodes[n]["task"] for n in order]
        return self._order

    def task(self, task_id: str) -> Task:
        try:
            task: Task = self.nx.nodes[task_id]["task"]
            return task
        except KeyError:
            raise KeyError(f"no task {task_id!r} in the graph") from None

    def edges(self) -> Iterator[tuple[str, str, float]]:
        for u, v, data in self.nx.edges(data=True):
            yield u, v, float(data["bytes"])

    @property
    def num_tasks(self) -> int:
        return int(self.nx.number_of_nodes())

    @property
    def num_edges(self) -> int:
        return int(self.nx.number_of_edges())

    @property
    def flops(self) -> float:
        return sum(t.flops for t in self.tasks)

    @property
    def param_bytes(self) -> float:
        return sum(t.param_bytes for t in self.tasks)

    @property
    def num_ops(self) -> int:
        return sum(len(t.ops) for t in self.tasks)

    @property
    def is_layered(self) -> bool:
        """True when every edge goes from a layer to the same or a later one in forward.

        Layered graphs can be cut into pipeline stages by layer ranges and priced
        by the fast analytic evaluator.
        """
        n = self.meta.n_layers
        if n < 1:
            return False
        for u, v in self.nx.edges:
            tu, tv = self.task(u), self.task(v)
            if tu.step == "forward" and tv.step == "forward" and tv.layer < tu.layer:
                return False
        return all(-1 <= t.layer <= n for t in self.tasks)

    def summary(self) -> dict[str, Any]:
        """The figures ``paratune graph build --json`` prints."""
        return {
            "model": self.meta.model,
            "phase": self.meta.phase,
            "batch": self.meta.batch,
            "seq": self.meta.seq,
            "context": self.meta.context,
            "granularity": self.meta.granularity,
            "layers": self.meta.n_layers,
            "tasks": self.num_tasks,
            "ops": self.num_ops,
            "edges": self.num_edges,
            "flops": self.flops,
            "param_bytes": self.param_bytes,
            "edge_bytes": sum(b for _, _, b in self.edges()),
            "layered": self.is_layered,
        }

    # -- serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "paratune.taskgraph",
            "version": FORMAT_VERSION,
            "meta": asdict(self.meta),
            "tasks": [self.nx.nodes[n]["task"].to_dict() for n in self.nx.nodes],
            "edges": [[u, v, b] for u, v, b in self.edges()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "graph") -> TaskGraph:
        if not isinstance(data, dict) or data.get("format") != "paratune.taskgraph":
            raise ValueError(f"{where}: not a paratune task graph (field 'format' must be 'paratune.taskgraph')")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{where}: field 'version' is {data.get('version')!r}; this paratune reads {FORMAT_VERSION}"
            )
        try:  # a user's file: a missing or misshapen field is a ValueError naming the file, not a KeyError
            graph = cls(GraphMeta(**data["meta"]))
            for t in data["tasks"]:
                graph.add_task(Task.from_dict(t))
            edges = [(str(u), str(v), float(b)) for u, v, b in data["edges"]]
        except KeyError as exc:
            raise ValueError(f"{where}: missing field {exc}") from None
        except (TypeError, ValueError) as exc:  # e.g. an edge that is not [from, to, bytes]
            raise ValueError(f"{where}: malformed graph ({exc})") from None
        for u, v, b in edges:
            graph.add_edge(u, v, b)
        return graph

    def save(self, path: str | Path) -> None:
        """Write the graph as JSON (atomically: a partial file is never left behind)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TaskGraph:
        path = Path(path)
        return cls.from_dict(parse_json(read_text(path, "graph file"), str(path)), where=str(path))

    def with_meta(self, **changes: Any) -> TaskGraph:
        """A graph sharing this one's tasks with some metadata changed."""
        return TaskGraph(replace(self.meta, **changes), self.nx)

    def __repr__(self) -> str:
        m = self.meta
        size = f"tasks={self.num_tasks}, edges={self.num_edges}"
        return f"TaskGraph({m.model!r}, {m.phase}, granularity={m.granularity}, {size})"
