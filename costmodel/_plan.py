"""Plans: the mapping of a task graph onto a platform.

A plan is a plain value: ordered pipeline stages, each with a tensor-parallel
degree and the device ids of its group, and either a layer range (layered
graphs) or a list of task ids (any DAG); the number of micro-batches in flight;
the number of replicas (data parallel copies); the training schedule and
activation recomputation.

Conventions:

* ``layers`` are transformer layer indices, inclusive; the embedding runs on the
  stage that holds layer 0 and the LM head on the stage that holds the last layer.
* Device ids are those of replica 0; replica ``k`` uses the same ids shifted by
  ``k * devices_per_replica`` (its groups are laid out the same way).
* The workload's batch is split over replicas, then over micro-batches, so
  ``replicas * micro_batches`` must divide the batch.

The JSON form is a contract other tools read: ``granularity``, ``micro_batches``,
``replicas``, ``schedule``, and ``stages`` (objects with ``tp``, ``devices`` and
``layers`` or ``tasks``; optional ``recompute``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .._limits import MAX_DEVICES, MAX_MICRO_BATCHES, check_at_most, shown
from ..graphs import Phase, TaskGraph
from ._fields import read_json
from ._platform import Platform


class Schedule(StrEnum):
    """Pipeline schedule of a training step (members are strings: ``Schedule.GPIPE == "gpipe"``)."""

    ONE_F_ONE_B = "1f1b"  # one forward, one backward: at most p micro-batches' activations per stage
    GPIPE = "gpipe"  # every forward, then every backward: m micro-batches' activations


SCHEDULES: tuple[str, ...] = tuple(s.value for s in Schedule)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a TP group of ``tp`` devices running ``layers`` or ``tasks``."""

    tp: int
    devices: tuple[int, ...]
    layers: tuple[int, int] | None = None
    tasks: tuple[str, ...] | None = None
    recompute: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tp": self.tp, "devices": list(self.devices)}
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.tasks is not None:
            out["tasks"] = list(self.tasks)
        if self.recompute:
            out["recompute"] = True
        return out


@dataclass(frozen=True)
class Plan:
    """A mapping: stages in pipeline order, micro-batches, replicas, schedule."""

    stages: tuple[Stage, ...]
    granularity: str = "layer"
    micro_batches: int = 1
    replicas: int = 1
    schedule: str = Schedule.ONE_F_ONE_B.value
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def pp(self) -> int:
        return len(self.stages)

    @property
    def devices_per_replica(self) -> int:
        return sum(len(s.devices) for s in self.stages)

    @property
    def num_devices(self) -> int:
        return self.devices_per_replica * self.replicas

    @property
    def is_layered(self) -> bool:
        return all(s.layers is not None for s in self.stages)

    def replica_devices(self, stage: int, replica: int) -> tuple[int, ...]:
        shift = replica * self.devices_per_replica
        return tuple(d + shift for d in self.stages[stage].devices)

    # -- construction ---------------------------------------------------
    @classmethod
    def uniform(
        cls,
        n_layers: int,
        *,
        tp: int = 1,
        pp: int = 1,
        micro_batches: int = 1,
        replicas: int = 1,
        schedule: str = Schedule.ONE_F_ONE_B.value,
        recompute: bool = False,
        first_device: int = 0,
    ) -> Plan:
        """TP ``tp`` in every stage, ``pp`` stages of (almost) equal layer counts, contiguous devices."""
        if pp < 1 or pp > n_layers:
            raise ValueError(f"pp must be in 1..{n_layers} (the number of layers), got {pp}")
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        check_at_most(tp * pp, MAX_DEVICES, f"tp x pp ({tp} x {pp})")
        check_at_most(replicas, MAX_DEVICES, "replicas")
        check_at_most(micro_batches, MAX_MICRO_BATCHES, "micro_batches")
        base, extra = divmod(n_layers, pp)
        stages, first = [], 0
        for s in range(pp):
            count = base + (1 if s < extra else 0)
            devices = tuple(range(first_device + s * tp, first_device + (s + 1) * tp))
            stages.append(Stage(tp=tp, devices=devices, layers=(first, first + count - 1), recompute=recompute))
            first += count
        return cls(tuple(stages), "layer", micro_batches, replicas, schedule)

    # -- validity -------------------------------------------------------
    def problems(self, graph: TaskGraph, platform: Platform) -> list[str]:
        """Everything wrong with this plan for ``graph`` on ``platform`` (empty when valid)."""
        out: list[str] = []
        meta = graph.meta
        if not self.stages:
            return ["the plan has no stages"]
        shape = self.shape_problems()
        if shape:
            return shape
        if self.schedule not in SCHEDULES:
            out.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.micro_batches < 1 or self.replicas < 1:
            out.append(f"micro_batches ({self.micro_batches}) and replicas ({self.replicas}) must be >= 1")
        elif meta.batch % (self.micro_batches * self.replicas):
            out.append(
                f"replicas x micro_batches = {self.replicas} x {self.micro_batches} "
                f"must divide the batch ({meta.batch})"
            )
        if meta.phase != Phase.TRAIN:
            if any(s.recompute for s in self.stages):
                out.append(f"recompute applies to training only, not to a {meta.phase} plan")
            if self.schedule == Schedule.GPIPE:
                out.append(f"schedule 'gpipe' applies to training only, not to a {meta.phase} plan")
        seen: dict[int, int] = {}
        for i, s in enumerate(self.stages):
            if s.tp < 1:
                out.append(f"stage {i}: tp must be >= 1, got {s.tp}")
                continue
            if meta.heads % s.tp:
                out.append(f"stage {i}: TP degree {s.tp} does not divide the {meta.heads} attention heads")
            if len(s.devices) != s.tp:
                out.append(f"stage {i}: tp is {s.tp} but {len(s.devices)} device(s) are listed")
            for d, times in Counter(s.devices).items():  # each id once: a device listed 8 times is one mistake
                if d < 0:
                    n = platform.num_devices
                    out.append(f"stage {i}: device {d} is negative; device ids must be >= 0 (here 0..{n - 1})")
                elif d in seen:
                    out.append(f"stage {i}: device {d} is already used by stage {seen[d]}")
                elif times > 1:
                    out.append(f"stage {i}: device {d} is listed {'twice' if times == 2 else f'{times} times'}")
                seen.setdefault(d, i)
        if self.num_devices > platform.num_devices:
            out.append(
                f"the plan needs {self.num_devices} devices ({self.replicas} replica(s) x "
                f"{self.devices_per_replica}) but platform {platform.name} has {platform.num_devices}"
            )
        top = max(seen, default=0) + (self.replicas - 1) * self.devices_per_replica
        if seen and top >= platform.num_devices:
            out.append(f"device ids must lie in 0..{platform.num_devices - 1} for every replica (highest used: {top})")
        out.extend(self._coverage_problems(graph))
        return out

    def shape_problems(self) -> list[str]:
        """Values of the wrong type or shape (a plan built in Python; files are checked when read).

        The evaluators report a malformed plan as infeasible with these reasons; they
        do not catch exceptions, so a bug in the cost model is raised, never read as an
        infeasible plan.
        """
        out = [
            f"{name} must be an integer, got {getattr(self, name)!r}"
            for name in ("micro_batches", "replicas")
            if not _is_int(getattr(self, name))
        ]
        if not isinstance(self.stages, tuple | list):
            return [*out, f"stages must be a sequence of Stage, got {type(self.stages).__name__}"]
        for i, s in enumerate(self.stages):
            if not isinstance(s, Stage):
                out.append(f"stage {i}: must be a Stage, got {type(s).__name__}")
                continue
            if not _is_int(s.tp):
                out.append(f"stage {i}: tp must be an integer, got {s.tp!r}")
            if not isinstance(s.devices, tuple | list) or not all(_is_int(d) for d in s.devices):
                out.append(f"stage {i}: devices must be a sequence of integer ids, got {s.devices!r}")
            if s.layers is not None and not (
                isinstance(s.layers, tuple | list) and len(s.layers) == 2 and all(_is_int(x) for x in s.layers)
            ):
                out.append(f"stage {i}: layers must be a pair [first, last] of integers, got {s.layers!r}")
            if s.tasks is not None and not (
                isinstance(s.tasks, tuple | list) and all(isinstance(t, str) for t in s.tasks)
            ):
                out.append(f"stage {i}: tasks must be a sequence of task ids, got {s.tasks!r}")
        return out

    def _coverage_problems(self, graph: TaskGraph) -> list[str]:
        if self.is_layered:
            n = graph.meta.n_layers
            if not graph.is_layered:
                return ["stages give layer ranges but the graph is not layered: give 'tasks' instead"]
            expected = 0
            for i, s in enumerate(self.stages):
                first, last = s.layers  # type: ignore[misc]
                if first != expected or last < first:
                    return [f"stage {i}: layers [{first}, {last}] must start at {expected} and not be empty"]
                expected = last + 1
            if expected != n:
                return [f"stages cover layers 0..{expected - 1} but the model has {n} layers (0..{n - 1})"]
            return []
        if any(s.tasks is None for s in self.stages):
            return ["every stage needs 'layers' (layered plans) or every stage 'tasks' (task plans), not a mix"]
        owner: dict[str, int] = {}
        out = []
        for i, s in enumerate(self.stages):
            for t in s.tasks or ():
                if t not in graph.nx:
                    out.append(f"stage {i}: unknown task {t!r}")
                elif t in owner:
                    out.append(f"stage {i}: task {t!r} is already placed on stage {owner[t]}")
                owner[t] = i
        missing = [t.id for t in graph.tasks if t.id not in owner]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            out.append(f"{len(missing)} task(s) are not placed: {', '.join(missing[:5])}{more}")
        return out

    def check(self, graph: TaskGraph, platform: Platform) -> None:
        """Raise ``ValueError`` naming what is wrong, if anything."""
        problems = self.problems(graph, platform)
        if problems:
            raise ValueError("invalid plan: " + "; ".join(problems))

    # -- serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "micro_batches": self.micro_batches,
            "replicas": self.replicas,
            "schedule": self.schedule,
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "plan") -> Plan:
        from ._fields import FieldReader

        r = FieldReader(data, where)
        raw_stages = r.raw("stages")
        if not isinstance(raw_stages, list) or not raw_stages:
            raise r.error("stages", "must be a non-empty list of {tp, devices, layers|tasks}")
        if len(raw_stages) > MAX_DEVICES:
            raise r.error("stages", f"lists {len(raw_stages):,} stages; at most {MAX_DEVICES:,} are accepted")
        stages = []
        for i, raw in enumerate(raw_stages):
            s = FieldReader(raw, where, f"stages[{i}]")
            devices = s.raw("devices")
            if not isinstance(devices, list) or not all(_is_int(d) for d in devices):
                raise s.error("devices", f"must be a list of device ids (integers), got {shown(devices)}")
            if len(devices) > MAX_DEVICES:
                raise s.error("devices", f"lists {len(devices):,} devices; at most {MAX_DEVICES:,} are accepted")
            layers = s.raw("layers", None)
            if layers is not None and (
                not isinstance(layers, list) or len(layers) != 2 or not all(map(_is_int, layers))
            ):
                raise s.error("layers", f"must be [first, last] (inclusive integers), got {shown(layers)}")
            recompute = s.raw("recompute", False)
            if not isinstance(recompute, bool):
                raise s.error("recompute", f"must be true or false, got {shown(recompute)}")
            tasks = s.raw("tasks", None)
            if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(x, str) for x in tasks)):
                raise s.error("tasks", "must be a list of task ids (strings)")
            if (layers is None) == (tasks is None):
                raise s.error("layers", "exactly one of 'layers' and 'tasks' must be given")
            stages.append(
                Stage(
                    tp=s.integer("tp", minimum=1, maximum=MAX_DEVICES),
                    devices=tuple(devices),
                    layers=(layers[0], layers[1]) if layers is not None else None,
                    tasks=tuple(tasks) if tasks is not None else None,
                    recompute=recompute,
                )
            )
            s.finish()
        plan = cls(
            stages=tuple(stages),
            granularity=r.text("granularity", "layer"),
            micro_batches=r.integer("micro_batches", 1, minimum=1, maximum=MAX_MICRO_BATCHES),
            replicas=r.integer("replicas", 1, minimum=1, maximum=MAX_DEVICES),
            schedule=r.text("schedule", Schedule.ONE_F_ONE_B.value, choices=SCHEDULES),
        )
        r.raw("meta", None)
        r.finish()
        return plan

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON to ``path`` (through ``path.tmp``, so a reader never sees half a file).

        The folder must exist: a typo in a path must not leave folders behind (the CLI checks ``-o`` the same way).

        Raises:
            FileNotFoundError: the folder of ``path`` does not exist (the message names it).
            IsADirectoryError: ``path`` is a folder.
        """
        path = Path(path)
        parent = path.absolute().parent
        if not parent.is_dir():
            raise FileNotFoundError(f"{path}: folder {parent} does not exist (Plan.save creates no folders)")
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; give the plan file to write (e.g. {path / 'plan.json'})")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: plan file does not exist")
        return cls.from_dict(read_json(path), where=str(path))
