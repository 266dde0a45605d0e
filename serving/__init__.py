"""Serving: deployments of engine pools under traffic and latency targets (issue 17).

The layer above the cost model: an iteration of an engine is priced from the model's
per-op costs as functions of batch and context (no graph rebuild per workload), a
steady-state analytic model and a request-level simulator schedule requests on it.
"""

from __future__ import annotations

from ._simulator import simulate, simulate_requests
from ._traffic import PRESETS, Requests, lengths_from_spec, read_trace, sample_requests, traffic_from_spec
from ._types import (
    ENGINES,
    MAX_REQUESTS,
    ROLES,
    Deployment,
    IterationCost,
    Lengths,
    Mix,
    Pool,
    ServingMetrics,
    Slo,
    Trace,
    Traffic,
)

__all__ = [
    "ENGINES",
    "MAX_REQUESTS",
    "PRESETS",
    "ROLES",
    "Deployment",
    "IterationCost",
    "Lengths",
    "Mix",
    "Pool",
    "Requests",
    "ServingMetrics",
    "Slo",
    "Trace",
    "Traffic",
    "lengths_from_spec",
    "read_trace",
    "sample_requests",
    "simulate",
    "simulate_requests",
    "traffic_from_spec",
]
