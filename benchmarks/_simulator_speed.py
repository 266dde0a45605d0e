"""Discrete-event simulator speed: median milliseconds per evaluation (a benchmark, not a timed test).

One evaluation = ``Simulator.evaluate`` (validation, event loop, lifetimes, metrics; no timeline) of
a 2-stage, 1-micro-batch plan on dgx-h100. Target: <= 50 ms for the op-granularity llama2-7b
prefill graph (batch 1, seq 2048): the zoo's (about 355 tasks) and the torch-imported one (about
1,300 tasks), which :mod:`costmodel_speed` passes in as ``graph`` when torch is installed.

Run alone: ``python benchmarks/_simulator_speed.py`` (zoo graph only).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from paratune.costmodel import Plan, Simulator, get_platform
from paratune.graphs import TaskGraph, build_graph


def _median_ms(graph: TaskGraph, *, repeats: int, platform: str) -> float:
    sim = Simulator(graph, get_platform(platform))
    plan = Plan.uniform(graph.meta.n_layers, tp=1, pp=2, micro_batches=1)
    metrics = sim.evaluate(plan)  # warm the per-(TP, share) price caches, as a tuner's loop would
    if not metrics.feasible and metrics.reason.startswith("invalid"):
        raise ValueError(f"benchmark plan is invalid for {graph!r}: {metrics.reason}")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sim.evaluate(plan)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure_simulator(
    graph: TaskGraph | None = None, *, repeats: int = 20, platform: str = "dgx-h100"
) -> dict[str, Any]:
    """``simulator_ms`` for ``graph`` (default: the zoo's op-level llama2-7b prefill graph).

    Also reports ``simulator_zoo_ms`` / ``simulator_zoo_tasks`` for the zoo graph, so both figures
    appear when an imported graph is passed in.
    """
    zoo = build_graph("llama2-7b", phase="prefill", batch=1, seq=2048)
    zoo_ms = _median_ms(zoo, repeats=repeats, platform=platform)
    figures: dict[str, Any] = {"simulator_zoo_ms": zoo_ms, "simulator_zoo_tasks": zoo.num_tasks}
    if graph is None or graph is zoo:
        figures["simulator_ms"] = zoo_ms
    else:
        figures["simulator_ms"] = _median_ms(graph, repeats=repeats, platform=platform)
    return figures


if __name__ == "__main__":
    print(json.dumps(measure_simulator(), indent=2))
