"""Published end-to-end figures the cost model is checked against.

Megatron-LM (Narayanan et al., "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", SC'21, Table 1): GPT models on DGX A100 80GB nodes,
sequence 2048, vocabulary 51200, full activation recomputation, mixed precision;
achieved TFLOP/s per GPU counted with the paper's model-FLOPs formula
``96 B s l h^2 (1 + s/(6h) + V/(16 l h))`` (recomputation included). The paper does
not list micro-batch sizes in that table; we use one sequence per micro-batch when
pipelining (the paper's setting for its largest runs) and the whole per-replica batch
otherwise, and the 1F1B schedule (not the interleaved one). Attention ran unfused then
(scores materialised, fused scale-mask-softmax), which the zoo's ``attention=unfused``
describes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...graphs import ModelSpec, build_graph, build_spec_graph, coarsen
from .._analytic import AnalyticEvaluator
from .._plan import Plan
from .._platform import get_platform

SEQ, VOCAB = 2048, 51200


@dataclass(frozen=True)
class MegatronRun:
    """One row of Megatron-LM's Table 1."""

    name: str
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    tflops_per_gpu: float

    def model_flops(self) -> float:
        """The paper's FLOPs per iteration (forward, backward and recomputation)."""
        b, s, n, h = self.batch, SEQ, self.layers, self.hidden
        return 96.0 * b * s * n * h * h * (1 + s / (6 * h) + VOCAB / (16 * n * h))

    def spec(self) -> ModelSpec:
        return ModelSpec(
            name=f"megatron-gpt-{self.name}",
            layers=self.layers,
            hidden=self.hidden,
            heads=self.heads,
            kv_heads=self.heads,
            ffn=4 * self.hidden,
            vocab=VOCAB,
            gated_mlp=False,
            tied_embeddings=True,
            dtype="fp16",
            norm="layernorm",
            bias=True,
            positions=SEQ,
            attention="unfused",
        )

    def plan(self) -> Plan:
        replicas = self.gpus // (self.tp * self.pp)
        per_replica = self.batch // replicas
        micro_batches = per_replica if self.pp > 1 else 1
        return Plan.uniform(
            self.layers, tp=self.tp, pp=self.pp, micro_batches=micro_batches, replicas=replicas, recompute=True
        )


#: The rows the calibration issue names (Table 1 of the paper).
MEGATRON_TABLE1 = (
    MegatronRun("1.7B", 24, 2304, 24, 1, 1, 32, 512, 137.0),
    MegatronRun("18B", 48, 6144, 40, 8, 1, 256, 1024, 135.0),
    MegatronRun("145B", 96, 12288, 80, 8, 8, 1536, 2304, 148.0),
    MegatronRun("1T", 160, 25600, 128, 8, 64, 3072, 3072, 163.0),
)


@dataclass(frozen=True)
class PublishedComparison:
    """Predicted against published, for one run."""

    name: str
    measured: float
    predicted: float
    unit: str
    feasible: bool
    note: str

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted / self.measured - 1.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "measured": self.measured,
            "predicted": self.predicted,
            "unit": self.unit,
            "error_pct": self.error_pct,
            "feasible": self.feasible,
            "note": self.note,
        }


def compare_megatron(preset: str = "dgx-a100") -> list[PublishedComparison]:
    """Predicted TFLOP/s per GPU of every Table 1 run on ``preset`` with as many nodes as the run used."""
    out = []
    for run in MEGATRON_TABLE1:
        per_node = get_platform(preset).devices_per_node
        plat = get_platform(f"{preset}x{-(-run.gpus // per_node)}")
        graph = coarsen(build_spec_graph(run.spec(), phase="train", batch=run.batch, seq=SEQ), "layer")
        metrics = AnalyticEvaluator(graph, plat).evaluate(run.plan())
        predicted = run.model_flops() / (metrics.latency_s * run.gpus) / 1e12
        out.append(
            PublishedComparison(
                name=f"Megatron-LM {run.name} (TP{run.tp} PP{run.pp}, {run.gpus} GPUs)",
                measured=run.tflops_per_gpu,
                predicted=predicted,
                unit="TFLOP/s per GPU",
                feasible=metrics.feasible,
                note=metrics.reason,
            )
        )
    return out


#: LLMCompass (Zhang et al., ISCA'24; PrincetonUniversity/LLMCompass ae/figure5, BSD-3-Clause): one GPT-3
#: 175B layer, TP 4 on 4 x A100 80GB, fp16, sum of the measured ops (tests/data/llmcompass has the rows).
LLMCOMPASS_LAYER = (
    ("prefill", {"batch": 8, "seq": 2048}, 66.747e-3),
    ("decode", {"batch": 8, "seq": 1, "context": 3071}, 1.111e-3),  # KV length 3072
)


def compare_llmcompass(preset: str = "dgx-a100") -> list[PublishedComparison]:
    """One GPT-3 layer's forward time (kernels and TP all-reduces, no embedding or head) against LLMCompass."""
    out = []
    for phase, shape, measured in LLMCOMPASS_LAYER:
        graph = build_graph("gpt3-175b:layers=1,dtype=fp16", phase=phase, **shape)
        predicted = AnalyticEvaluator(graph, get_platform(preset)).unit_forward_times(4, (0, 1, 2, 3))[1]
        out.append(
            PublishedComparison(
                name=f"LLMCompass GPT-3 layer {phase} (TP4, 4 x A100)",
                measured=measured * 1e3,
                predicted=predicted * 1e3,
                unit="ms",
                feasible=True,
                note="",
            )
        )
    return out


def compare_published(preset: str = "dgx-a100") -> list[PublishedComparison]:
    """Every published comparison: Megatron-LM Table 1 and the LLMCompass GPT-3 layer."""
    return compare_megatron(preset) + compare_llmcompass(preset)
