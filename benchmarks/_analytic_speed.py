"""Speed of the analytic evaluator: single plans and batches (part of ``costmodel_speed.py``).

Problem: llama2-70b decode (batch 64, context 2048), layer granularity, on dgx-h100x2 (16 GPUs);
random valid plans from ``random_plans`` (seed 0), caches warmed on the same plans first, one core.
Targets: >= 10,000 single evaluations/s (``evaluate`` with its validity check) and >= 500,000 plans/s
in batches of 100,000.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _rate(work: Any, items: int, seconds: float) -> float:
    """Items per second of ``work()`` repeated for about ``seconds`` (median over the repeats)."""
    times: list[float] = []
    while sum(times) < seconds or len(times) < 3:
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return items / float(np.median(times))


def measure_analytic(seconds: float = 2.0) -> dict[str, Any]:
    """Evaluations per second of ``AnalyticEvaluator.evaluate`` and ``evaluate_batch`` (see the module docstring)."""
    from paratune.costmodel import AnalyticEvaluator, get_platform
    from paratune.graphs import build_graph, coarsen

    graph = coarsen(build_graph("llama2-70b", phase="decode", batch=64, seq=1, context=2048), "layer")
    ev = AnalyticEvaluator(graph, get_platform("dgx-h100x2"))
    rng = np.random.default_rng(0)
    sample = ev.random_plans(2_000, rng)
    plans = [sample.to_plan(i) for i in range(len(sample))]
    for plan in plans:  # warm the per-(tp, share) tables and link caches
        ev.evaluate(plan)

    def single() -> None:
        for plan in plans:
            ev.evaluate(plan)

    def unchecked() -> None:
        for plan in plans:
            ev.evaluate(plan, check=False)

    batch = ev.random_plans(100_000, rng)
    ev.evaluate_batch(batch)
    return {
        "single_evals_per_s": _rate(single, len(plans), seconds / 3),
        "single_unchecked_evals_per_s": _rate(unchecked, len(plans), seconds / 3),
        "batched_evals_per_s": _rate(lambda: ev.evaluate_batch(batch), len(batch), seconds / 3),
        "analytic_problem": "llama2-70b decode b64 ctx2048, layer granularity, dgx-h100x2, random valid plans",
    }


if __name__ == "__main__":
    for key, value in measure_analytic().items():
        print(f"{key}: {value:,.0f}" if isinstance(value, float) else f"{key}: {value}")
