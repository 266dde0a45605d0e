"""Metrics: what an evaluation of a plan returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Metrics:
    """The result of evaluating one plan on one problem.

    Inference fills ``ttft_s`` (prefill) or ``tbt_s`` (decode) and ``tokens_per_s``;
    training fills ``step_s``, ``tokens_per_s`` and ``mfu``. ``peak_memory_bytes``
    has one entry per device of the platform (0 for unused devices).
    ``pipelined_tokens_per_s`` is the steady state of a stream of such batches with
    the pipeline kept full (prefill: tokens / (micro-batches x the bottleneck stage
    or link); decode and train: equal to ``tokens_per_s``, since a decode step needs
    the previous one and a training step ends with its flush).
    ``breakdown`` splits the critical path into ``compute_s``, ``communication_s``
    and ``idle_s`` (pipeline bubbles and waits). ``lower_bound_s`` is the physical
    bound of the same work on all devices of the platform (peak FLOP/s and
    memory bandwidth, no communication). ``warnings`` lists predictions outside
    the calibrated range of the profile. ``calibrated`` is true when the profile was
    fitted to measurements and nothing in the prediction lies outside what it was
    fitted on; ``expected_error_pct`` is the time-weighted held-out error of the
    kernels and collectives it sums (None for a hand-set profile).
    ``memory_breakdown`` splits the need of the most loaded device into bytes of
    ``weights``, ``gradients``, ``optimizer_state``, ``activations``, ``kv_cache`` and
    ``buffers`` (empty where an evaluator does not split it).
    """

    feasible: bool
    reason: str
    phase: str
    latency_s: float
    ttft_s: float | None = None
    tbt_s: float | None = None
    step_s: float | None = None
    tokens_per_s: float = 0.0
    pipelined_tokens_per_s: float = 0.0
    mfu: float | None = None
    peak_memory_bytes: list[float] = field(default_factory=list)
    memory_capacity_bytes: float = 0.0
    lower_bound_s: float = 0.0
    breakdown: dict[str, float] = field(default_factory=dict)
    stage_times_s: list[float] = field(default_factory=list)
    devices_used: int = 0
    warnings: list[str] = field(default_factory=list)
    calibrated: bool = False
    expected_error_pct: float | None = None
    memory_breakdown: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_memory_bytes(self) -> float:
        return max(self.peak_memory_bytes, default=0.0)
