"""Published training runs the cost model is checked against (issue 18).

The runs are data (``configs/published/training.yaml``, sources and licences in the README
beside it): each one a configuration that completed on real hardware, with one measured
figure. This module turns each into a paratune problem (the model's layer graph, a
platform preset with as many nodes as the run used) and a plan with the training
techniques the run used, evaluates it with the analytic evaluator, and compares.

Conventions:

* The micro-batch size is the published one: ``micro_batches = global_batch / (replicas x
  micro_batch)``, with ``replicas = gpus / (tp x pp x cp)`` (context-parallel ranks hold the
  same sequences, so they do not split the batch).
* Every figure is turned into a measured step time, the quantity compared: an iteration
  time as it is; tokens/s per GPU as ``global_batch x seq / (rate x gpus)``; model TFLOP/s
  per GPU (or MFU x the source's peak) as the source's model FLOPs per step / (rate x gpus).
  The error is ``predicted / measured - 1`` of the step time (positive: paratune is slower).
* Model FLOPs are counted the source's way (``flops`` of the source), so that predicted
  TFLOP/s per GPU compare with the published ones:
  ``megatron`` (Megatron-LM's ``num_floating_point_operations``, used by Korthikanti et al.
  and the Megatron READMEs): ``12 B s l h^2 [(1 + g/a + s/h) q/h + f/h k m + V/(2 l h)]`` with
  ``g`` KV heads, ``a`` heads, ``q`` = heads x head_dim, ``f`` the MLP width, ``k`` the
  experts a token is routed to (1 for a dense MLP), ``m`` 3/2 for a gated MLP; recomputation
  not counted, attention counted without causal skipping;
  ``torchtitan`` (``train.py`` of 2024): ``tokens x (6 N + 12 l h s)``, ``N`` every parameter
  (embedding included).
* ``split``: ``tune`` points may be fitted on, ``check`` points only compared; the median
  error is reported over ``check`` points. Nothing is tuned on these runs today.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..._limits import parse_yaml, read_text
from ...graphs import ModelSpec, build_spec_graph, coarsen, get_model
from ...graphs._zoo import spec_from_mapping
from .._analytic import AnalyticEvaluator
from .._metrics import Metrics
from .._plan import Plan
from .._platform import Platform, get_platform

SPLITS = ("tune", "check")
RECOMPUTE = ("none", "selective", "full")
FLOPS_CONVENTIONS = ("megatron", "torchtitan")
#: Measured figures, in the order that picks the one the step time is derived from.
MEASURED_KEYS = ("step_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu")
_POINT_KEYS = {
    "id", "source", "split", "platform", "gpus", "model", "seq", "global_batch", "micro_batch", "tp", "pp",
    "cp", "ep", "virtual_stages", "zero", "sequence_parallel", "recompute", "overlap", "tp_overlap",
    "measured", "assumed", "note",
}  # fmt: skip


def default_path() -> Path:
    """The shipped data file (``configs/published/training.yaml``)."""
    return Path(str(resources.files("paratune.configs"))) / "published" / "training.yaml"


@dataclass(frozen=True)
class TrainingSource:
    """Where published points come from: the document, its tables, and how it counts FLOPs."""

    key: str
    title: str
    url: str
    tables: str
    hardware: str
    flops: str
    peak_tflops: float


@dataclass(frozen=True)
class TrainingPoint:
    """One published training run: its configuration and what was measured."""

    id: str
    source: TrainingSource
    split: str
    platform: str
    gpus: int
    model: ModelSpec
    seq: int
    global_batch: int
    micro_batch: int
    tp: int
    pp: int
    cp: int = 1
    ep: int = 1
    virtual_stages: int = 1
    zero: int = 0
    sequence_parallel: bool = False
    recompute: str = "none"
    overlap: bool = False
    tp_overlap: bool = False
    measured: dict[str, float] = field(default_factory=dict)
    assumed: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        where = f"published point {self.id!r}"
        if self.split not in SPLITS:
            raise ValueError(f"{where}: field 'split' is {self.split!r}; allowed: {', '.join(SPLITS)}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"{where}: field 'recompute' is {self.recompute!r}; allowed: {', '.join(RECOMPUTE)}")
        for name in ("gpus", "seq", "global_batch", "micro_batch", "tp", "pp", "cp", "ep", "virtual_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: field '{name}' must be an integer >= 1, got {value!r}")
        width = self.tp * self.pp * self.cp
        if self.gpus % width:
            raise ValueError(f"{where}: field 'gpus' ({self.gpus}) must be a multiple of tp x pp x cp ({width})")
        if self.global_batch % (self.replicas * self.micro_batch):
            raise ValueError(
                f"{where}: field 'global_batch' ({self.global_batch}) must be a multiple of "
                f"data-parallel replicas x micro_batch ({self.replicas} x {self.micro_batch})"
            )
        unknown = sorted(set(self.measured) - set(MEASURED_KEYS))
        if unknown or not self.measured:
            raise ValueError(
                f"{where}: field 'measured' needs one of {', '.join(MEASURED_KEYS)}, got {unknown or '{}'}"
            )

    # -- the configuration ---------------------------------------------------
    @property
    def replicas(self) -> int:
        """Data-parallel replicas (context-parallel ranks excluded: they share sequences)."""
        return self.gpus // (self.tp * self.pp * self.cp)

    @property
    def micro_batches(self) -> int:
        """Micro-batches per replica and step: global batch / (replicas x micro-batch size)."""
        return self.global_batch // (self.replicas * self.micro_batch)

    def plan(self) -> Plan:
        """The run as a paratune plan (uniform stages, contiguous devices)."""
        techniques: dict[str, Any] = {
            "zero": self.zero,
            "sequence_parallel": self.sequence_parallel,
            "selective_recompute": self.recompute == "selective",
            "virtual_stages": self.virtual_stages,
            "cp": self.cp,
            "ep": self.ep,
            "overlap": self.overlap,
            "tp_overlap": self.tp_overlap,
        }
        return Plan.uniform(
            self.model.layers,
            tp=self.tp,
            pp=self.pp,
            micro_batches=self.micro_batches,
            replicas=self.replicas,
            recompute=self.recompute == "full",
            **techniques,
        )

    def platform_preset(self) -> Platform:
        """The platform preset with as many nodes as the run used."""
        per_node = get_platform(self.platform).devices_per_node
        return get_platform(f"{self.platform}x{-(-self.gpus // per_node)}")

    def techniques(self) -> dict[str, Any]:
        """The plan-wide techniques this run uses (those that differ from today's defaults), plus recompute."""
        out = dict(self.plan().techniques())
        if self.recompute == "full":
            out["recompute"] = "full"
        return out

    # -- what was measured ---------------------------------------------------
    def model_flops(self) -> float:
        """FLOPs of one step as the source counts them (see the module docstring)."""
        s, b, spec = self.seq, self.global_batch, self.model
        layers, h = spec.layers, spec.hidden
        if self.source.flops == "torchtitan":
            return float(b * s * (6 * spec.params() + 12 * layers * spec.heads * spec.head_dim * s))
        q = spec.heads * spec.head_dim
        routed = spec.top_k if spec.experts else 1
        gated = 1.5 if spec.gated_mlp else 1.0
        attention = (1 + spec.kv_heads / spec.heads + s / h) * q / h
        mlp = spec.ffn / h * routed * gated
        logits = spec.vocab / (2 * layers * h)
        return 12.0 * b * s * layers * h * h * (attention + mlp + logits)

    def measured_step_s(self, key: str | None = None) -> float:
        """The step time a published figure implies (``key``: that figure; default the first published)."""
        key = key or next(k for k in MEASURED_KEYS if k in self.measured)
        value = self.measured[key]
        if key == "step_s":
            return value
        if key == "tokens_per_s_per_gpu":
            return self.global_batch * self.seq / (value * self.gpus)
        tflops = value if key == "tflops_per_gpu" else value * self.source.peak_tflops
        return self.model_flops() / (tflops * 1e12 * self.gpus)

    def tflops_per_gpu(self, step_s: float) -> float:
        """Model TFLOP/s per GPU (the source's FLOP count) of a step of ``step_s`` seconds."""
        return self.model_flops() / (step_s * self.gpus) / 1e12


@dataclass(frozen=True)
class TrainingComparison:
    """Predicted against published, for one training run."""

    point: TrainingPoint
    measured_step_s: float
    predicted_step_s: float
    feasible: bool
    reason: str
    peak_memory_gib: float
    memory_capacity_gib: float
    breakdown: dict[str, float]

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted_step_s / self.measured_step_s - 1.0)

    @property
    def called_oom(self) -> bool:
        """A completed run that the cost model says does not fit."""
        return not self.feasible and "GiB" in self.reason

    def to_dict(self) -> dict[str, Any]:
        p = self.point
        return {
            "id": p.id,
            "source": p.source.key,
            "split": p.split,
            "gpus": p.gpus,
            "platform": p.platform,
            "model": p.model.name,
            "config": dict(
                tp=p.tp,
                pp=p.pp,
                cp=p.cp,
                ep=p.ep,
                vp=p.virtual_stages,
                dp=p.replicas,
                seq=p.seq,
                global_batch=p.global_batch,
                micro_batch=p.micro_batch,
            ),
            "techniques": p.techniques(),
            "assumed": list(p.assumed),
            "measured": dict(p.measured),
            "flops_convention": p.source.flops,
            "measured_step_s": self.measured_step_s,
            "predicted_step_s": self.predicted_step_s,
            "measured_tflops_per_gpu": p.tflops_per_gpu(self.measured_step_s),
            "predicted_tflops_per_gpu": p.tflops_per_gpu(self.predicted_step_s),
            "error_pct": self.error_pct,
            "feasible": self.feasible,
            "reason": self.reason,
            "called_oom": self.called_oom,
            "peak_memory_gib": self.peak_memory_gib,
            "memory_capacity_gib": self.memory_capacity_gib,
            "breakdown": self.breakdown,
        }


def _source(key: str, raw: Any) -> TrainingSource:
    where = f"published source {key!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a mapping")
    missing = [f for f in ("title", "url", "tables", "hardware", "flops", "peak_tflops") if f not in raw]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    if raw["flops"] not in FLOPS_CONVENTIONS:
        raise ValueError(f"{where}: field 'flops' is {raw['flops']!r}; allowed: {', '.join(FLOPS_CONVENTIONS)}")
    return TrainingSource(
        key=key,
        title=str(raw["title"]),
        url=str(raw["url"]),
        tables=str(raw["tables"]),
        hardware=str(raw["hardware"]),
        flops=str(raw["flops"]),
        peak_tflops=float(raw["peak_tflops"]),
    )


def _model(name: str, raw: Any) -> ModelSpec:
    """A model of the file: a zoo preset name, or a mapping (``base`` preset + overrides, or every field)."""
    if isinstance(raw, str):
        return get_model(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"published model {name!r}: must be a preset name or a mapping of ModelSpec fields")
    fields = dict(raw)
    base = fields.pop("base", None)
    fields.setdefault("name", name)
    return spec_from_mapping(
        fields, where=f"published model {name!r}", base=get_model(str(base)) if base is not None else None
    )


def load_training_points(path: Path | None = None) -> list[TrainingPoint]:
    """Every published point of ``path`` (default: the shipped file), checked; ValueError names what is wrong."""
    path = path or default_path()
    data = parse_yaml(read_text(path, "published training file"), str(path))
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ValueError(f"{path}: needs 'sources', 'models' (optional) and a list of 'points'")
    sources = {k: _source(k, v) for k, v in (data.get("sources") or {}).items()}
    models = {k: _model(k, v) for k, v in (data.get("models") or {}).items()}
    out: list[TrainingPoint] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["points"]):
        if not isinstance(raw, dict) or "id" not in raw:
            raise ValueError(f"{path}: point {i} must be a mapping with an 'id'")
        pid = str(raw["id"])
        unknown = sorted(set(raw) - _POINT_KEYS)
        if unknown:
            raise ValueError(f"published point {pid!r}: unknown field(s) {', '.join(unknown)}")
        if pid in seen:
            raise ValueError(f"published point {pid!r}: field 'id' is used twice")
        seen.add(pid)
        if raw.get("source") not in sources:
            raise ValueError(f"published point {pid!r}: field 'source' {raw.get('source')!r} is not among 'sources'")
        model = raw.get("model")
        spec = models[model] if isinstance(model, str) and model in models else _model(pid, model)
        values = {k: v for k, v in raw.items() if k not in ("source", "model", "measured", "assumed")}
        measured = raw.get("measured") or {}
        if not isinstance(measured, dict):
            raise ValueError(f"published point {pid!r}: field 'measured' must be a mapping")
        out.append(
            TrainingPoint(
                **values,
                source=sources[raw["source"]],
                model=spec,
                measured={str(k): float(v) for k, v in measured.items()},
                assumed=tuple(str(a) for a in raw.get("assumed") or ()),
            )
        )
    return out


def assumption_variants(point: TrainingPoint) -> dict[str, TrainingPoint]:
    """The point under the other plausible value of each setting its source leaves unstated.

    ``micro_batch`` assumed 1: also 2 (when the batch allows); ``virtual_stages`` assumed 1:
    also 2 (when the layers allow). How far the prediction moves says how much of an error
    may be the assumption's rather than the cost model's; nothing is chosen by it.
    """
    out: dict[str, TrainingPoint] = {}
    if "micro_batch" in point.assumed and point.global_batch % (point.replicas * 2 * point.micro_batch) == 0:
        out["micro_batch=2"] = replace(point, micro_batch=2 * point.micro_batch)
    if "virtual_stages" in point.assumed and point.pp > 1 and point.model.layers >= 2 * point.pp:
        out["virtual_stages=2"] = replace(point, virtual_stages=2)
    return out


def evaluate_point(point: TrainingPoint) -> Metrics:
    """The analytic evaluator's metrics of ``point``'s plan on its problem."""
    graph = coarsen(build_spec_graph(point.model, phase="train", batch=point.global_batch, seq=point.seq), "layer")
    return AnalyticEvaluator(graph, point.platform_preset()).evaluate(point.plan())


def compare_point(point: TrainingPoint) -> TrainingComparison:
    """Predicted against published for one point."""
    metrics = evaluate_point(point)
    peak = max(metrics.peak_memory_bytes, default=0.0)
    return TrainingComparison(
        point=point,
        measured_step_s=point.measured_step_s(),
        predicted_step_s=float(metrics.step_s if metrics.step_s is not None else metrics.latency_s),
        feasible=metrics.feasible,
        reason=metrics.reason,
        peak_memory_gib=peak / 2**30,
        memory_capacity_gib=metrics.memory_capacity_bytes / 2**30,
        breakdown=dict(metrics.breakdown),
    )


def compare_training(points: list[TrainingPoint] | None = None) -> list[TrainingComparison]:
    """Predicted against published for every point (default: the shipped file)."""
    return [compare_point(p) for p in (points if points is not None else load_training_points())]


def summarize(rows: list[TrainingComparison]) -> dict[str, Any]:
    """Median |error| of the step time over ``check`` points (and ``tune`` apart), and the runs called OOM."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        errors = [abs(r.error_pct) for r in rows if r.point.split == split]
        out[split] = {
            "points": len(errors),
            "median_abs_error_pct": statistics.median(errors) if errors else None,
            "max_abs_error_pct": max(errors) if errors else None,
        }
    out["called_oom"] = [r.point.id for r in rows if r.called_oom]
    out["infeasible"] = {r.point.id: r.reason for r in rows if not r.feasible}
    by_source: dict[str, list[float]] = {}
    for r in rows:
        by_source.setdefault(r.point.source.key, []).append(abs(r.error_pct))
    out["median_abs_error_pct_by_source"] = {k: statistics.median(v) for k, v in by_source.items()}
    return out
