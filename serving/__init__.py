"""Serving: deployments of engine pools under traffic and latency targets (issue 17).

The layer above the cost model: an iteration of an engine is priced from the model's
per-op costs as functions of batch and context (no graph rebuild per workload), a
steady-state analytic model and a request-level simulator schedule requests on it.
"""

from __future__ import annotations

from ._analytic import analytic, metrics_json
from ._costs import instance_cost
from ._engines import ENGINE_PROFILES, EngineProfile, engine_profile
from ._launch import EngineLaunch, serving_launch_lines
from ._simulator import latency_quantiles, simulate, simulate_requests
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
    "ENGINE_PROFILES",
    "MAX_REQUESTS",
    "PRESETS",
    "ROLES",
    "Deployment",
    "EngineLaunch",
    "EngineProfile",
    "IterationCost",
    "Lengths",
    "Mix",
    "Pool",
    "Requests",
    "ServingMetrics",
    "Slo",
    "Trace",
    "Traffic",
    "analytic",
    "engine_profile",
    "instance_cost",
    "latency_quantiles",
    "lengths_from_spec",
    "metrics_json",
    "read_trace",
    "sample_requests",
    "serving_launch_lines",
    "simulate",
    "simulate_requests",
    "traffic_from_spec",
]
