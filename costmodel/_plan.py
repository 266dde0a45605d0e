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

Training techniques (optional keys; a missing key is its default, so older files
keep their meaning, and ``to_dict`` writes only those that differ from it):

* ``zero`` 0..3: what the data-parallel ranks shard: 0 nothing, 1 optimizer state
  (Megatron's distributed optimizer, ZeRO-1), 2 also gradients (ZeRO-2), 3 also the
  weights, gathered layer by layer (ZeRO-3 / FSDP ``FULL_SHARD``).
  ``shard_group`` > 0 shards over groups of that many data-parallel ranks and
  replicates across groups (hybrid sharding, FSDP ``HYBRID_SHARD``); 0 shards over all.
* ``sequence_parallel``: Megatron SP; the TP all-reduces become reduce-scatter +
  all-gather and the activations outside the TP-split GEMMs are split over TP.
* ``selective_recompute``: stages that do not recompute fully recompute the
  attention core (Korthikanti et al.'s selective recomputation).
* ``virtual_stages`` v > 1: interleaved 1F1B. ``stages`` then lists the p x v model
  chunks in model order; chunk k runs on the devices of chunk k mod p.
* ``cp``: context parallelism; each stage's ``devices`` hold ``tp x cp`` ids, the TP
  groups consecutive (CP rank j is ``devices[j*tp:(j+1)*tp]``), the sequence split
  over the CP ranks with ring attention between them.
* ``ep``: expert parallelism (MoE); experts are split over ``ep`` data-parallel
  ranks (of ``replicas x cp``), with all-to-all dispatch and combine.
* ``overlap``: data-parallel gradient reduction overlapped with the backward pass
  (bucketed), and ZeRO-3's weight all-gather prefetched during compute;
  ``tp_overlap``: TP collectives overlapped with the GEMMs they feed.

Data-parallel ranks of a stage are ``replicas x cp``: gradients are reduced over both.
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

#: ZeRO stages: 0 none, 1 optimizer state sharded, 2 + gradients, 3 + weights (FSDP).
ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)

#: Plan-wide training techniques and their defaults (today's plans: none of them).
TECHNIQUE_DEFAULTS: dict[str, Any] = {
    "zero": 0,
    "shard_group": 0,
    "sequence_parallel": False,
    "selective_recompute": False,
    "virtual_stages": 1,
    "cp": 1,
    "ep": 1,
    "overlap": False,
    "tp_overlap": False,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _flag(reader: Any, name: str) -> bool:
    value = reader.raw(name, False)
    if not isinstance(value, bool):
        raise reader.error(name, f"must be true or false, got {shown(value)}")
    return value


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
    zero: int = 0
    shard_group: int = 0
    sequence_parallel: bool = False
    selective_recompute: bool = False
    virtual_stages: int = 1
    cp: int = 1
    ep: int = 1
    overlap: bool = False
    tp_overlap: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def pp(self) -> int:
        """Pipeline stages (physical): the model chunks divided by ``virtual_stages``."""
        v = self.virtual_stages if _is_int(self.virtual_stages) and self.virtual_stages >= 1 else 1
        return max(1, len(self.stages) // v)

    @property
    def physical_stages(self) -> tuple[Stage, ...]:
        """The first chunk of each pipeline stage (all stages when not interleaved)."""
        return tuple(self.stages[: self.pp])

    @property
    def devices_per_replica(self) -> int:
        return sum(len(s.devices) for s in self.physical_stages)

    @property
    def data_parallel(self) -> int:
        """Ranks a stage's gradients are reduced over: ``replicas x cp``."""
        return self.replicas * self.cp

    @property
    def shard_degree(self) -> int:
        """Ranks ZeRO shards state over (0 when ``zero`` is 0): ``shard_group`` or all data-parallel ranks."""
        if not self.zero:
            return 1
        return self.shard_group or self.data_parallel

    def techniques(self) -> dict[str, Any]:
        """The plan-wide training techniques that differ from their defaults."""
        return {k: getattr(self, k) for k, d in TECHNIQUE_DEFAULTS.items() if getattr(self, k) != d}

    def tp_group(self, stage: int, cp_rank: int = 0) -> tuple[int, ...]:
        """Device ids (replica 0) of the TP group of CP rank ``cp_rank`` of ``stage``."""
        st = self.stages[stage]
        return tuple(st.devices[cp_rank * st.tp : (cp_rank + 1) * st.tp])

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
        **techniques: Any,
    ) -> Plan:
        """TP ``tp`` in every stage, ``pp`` stages of (almost) equal layer counts, contiguous devices.

        ``techniques`` are plan fields (``zero``, ``cp``, ``virtual_stages``, ...). With
        ``virtual_stages`` v the p x v chunks split the layers as evenly as possible,
        chunk k on the devices of stage k mod p; with ``cp`` each stage holds tp x cp devices.
        """
        unknown = sorted(set(techniques) - set(TECHNIQUE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown plan field(s) {', '.join(unknown)}; allowed: {', '.join(TECHNIQUE_DEFAULTS)}")
        v = int(techniques.get("virtual_stages", 1))
        cp = int(techniques.get("cp", 1))
        if pp < 1 or pp * max(v, 1) > n_layers:
            raise ValueError(f"pp x virtual_stages must be in 1..{n_layers} (the number of layers), got {pp} x {v}")
        if tp < 1 or cp < 1 or v < 1:
            raise ValueError(f"tp, cp and virtual_stages must be >= 1, got {tp}, {cp}, {v}")
        width = tp * cp
        check_at_most(width * pp, MAX_DEVICES, f"tp x cp x pp ({tp} x {cp} x {pp})")
        check_at_most(replicas, MAX_DEVICES, "replicas")
        check_at_most(micro_batches, MAX_MICRO_BATCHES, "micro_batches")
        chunks = pp * v
        base, extra = divmod(n_layers, chunks)
        stages, first = [], 0
        for k in range(chunks):
            count = base + (1 if k < extra else 0)
            s = k % pp
            devices = tuple(range(first_device + s * width, first_device + (s + 1) * width))
            stages.append(Stage(tp=tp, devices=devices, layers=(first, first + count - 1), recompute=recompute))
            first += count
        return cls(tuple(stages), "layer", micro_batches, replicas, schedule, **techniques)

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
        out.extend(self._technique_problems(graph))
        seen: dict[int, int] = {}
        cp = self.cp if _is_int(self.cp) and self.cp >= 1 else 1
        pp = self.pp
        for i, s in enumerate(self.stages):
            if s.tp < 1:
                out.append(f"stage {i}: tp must be >= 1, got {s.tp}")
                continue
            if meta.heads % s.tp:
                out.append(f"stage {i}: TP degree {s.tp} does not divide the {meta.heads} attention heads")
            if len(s.devices) != s.tp * cp:
                listed = f"{len(s.devices)} device(s) are listed"
                out.append(
                    f"stage {i}: tp is {s.tp} but {listed}"
                    if cp == 1
                    else f"stage {i}: tp x cp is {s.tp} x {cp} = {s.tp * cp} but {listed}"
                )
            if i >= pp:  # a later chunk of an interleaved pipeline: the devices of chunk i mod p
                first = self.stages[i % pp]
                if tuple(s.devices) != tuple(first.devices) or s.tp != first.tp:
                    out.append(
                        f"stage {i}: with virtual_stages {self.virtual_stages}, chunk {i} runs on the devices "
                        f"and TP degree of chunk {i % pp} ({list(first.devices)}, tp {first.tp})"
                    )
                continue
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

    def _technique_problems(self, graph: TaskGraph) -> list[str]:
        """What is wrong with the plan-wide training techniques for this graph."""
        meta = graph.meta
        out = []
        for name in ("zero", "shard_group", "virtual_stages", "cp", "ep"):
            if not _is_int(getattr(self, name)):
                out.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("sequence_parallel", "selective_recompute", "overlap", "tp_overlap"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if out:
            return out
        if self.zero not in ZERO_STAGES:
            out.append(f"zero must be one of {', '.join(map(str, ZERO_STAGES))}, got {self.zero}")
        for name in ("virtual_stages", "cp", "ep"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shard_group < 0:
            out.append(f"shard_group must be >= 0 (0: shard over all data-parallel ranks), got {self.shard_group}")
        if out:
            return out
        used = [k for k, d in TECHNIQUE_DEFAULTS.items() if getattr(self, k) != d]
        if meta.phase != Phase.TRAIN:
            return [f"{k} applies to training only, not to a {meta.phase} plan" for k in used]
        dp = self.replicas * self.cp
        if self.shard_group and (not self.zero or dp % self.shard_group):
            out.append(
                f"shard_group {self.shard_group} must divide the {dp} data-parallel ranks (replicas x cp) "
                "and needs zero >= 1"
            )
        v = self.virtual_stages
        if v > 1:
            if not self.is_layered:
                out.append("virtual_stages > 1 needs layered stages (each chunk a layer range)")
            elif len(self.stages) % v:
                out.append(f"virtual_stages {v} must divide the {len(self.stages)} listed stages (p x v chunks)")
            elif self.schedule != Schedule.ONE_F_ONE_B:
                out.append("virtual_stages > 1 (interleaved 1F1B) needs schedule '1f1b'")
            elif self.pp < 2:
                out.append("virtual_stages > 1 needs at least 2 pipeline stages")
            elif self.micro_batches % self.pp:
                out.append(
                    f"interleaved 1F1B needs micro_batches ({self.micro_batches}) to be a multiple of the "
                    f"{self.pp} pipeline stages (as Megatron-Core requires)"
                )
        if self.cp > 1 and meta.seq % (2 * self.cp):
            out.append(f"cp {self.cp}: the sequence ({meta.seq}) must divide into 2 x cp = {2 * self.cp} chunks")
        if self.ep > 1:
            experts = int(meta.spec.get("experts", 0) or 0)
            if not experts:
                out.append(f"ep {self.ep} needs a mixture-of-experts model; {meta.model} has no experts")
            elif experts % self.ep:
                out.append(f"ep {self.ep} must divide the {experts} experts")
            elif dp % self.ep:
                out.append(f"ep {self.ep} must divide the {dp} data-parallel ranks (replicas x cp)")
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
        """The JSON form; training techniques appear only where they differ from their defaults."""
        return {
            "granularity": self.granularity,
            "micro_batches": self.micro_batches,
            "replicas": self.replicas,
            "schedule": self.schedule,
            **self.techniques(),
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
            zero=r.integer("zero", 0, minimum=0, maximum=3),
            shard_group=r.integer("shard_group", 0, minimum=0, maximum=MAX_DEVICES),
            sequence_parallel=_flag(r, "sequence_parallel"),
            selective_recompute=_flag(r, "selective_recompute"),
            virtual_stages=r.integer("virtual_stages", 1, minimum=1, maximum=MAX_DEVICES),
            cp=r.integer("cp", 1, minimum=1, maximum=MAX_DEVICES),
            ep=r.integer("ep", 1, minimum=1, maximum=MAX_DEVICES),
            overlap=_flag(r, "overlap"),
            tp_overlap=_flag(r, "tp_overlap"),
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
