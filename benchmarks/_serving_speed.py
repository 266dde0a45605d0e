"""Speed of a new serving workload: one analytic-model call per new traffic (part of ``costmodel_speed.py``).

Problem: llama3-8b on dgx-h100, vLLM, an aggregated deployment (TP 1 x 2 replicas) and a disaggregated one
(1 prefill + 2 decode instances of TP 1); instance costs built once (``instance_cost``, cached), then every
call sees a new traffic: prompt mean 64..8,192, output mean 16..2,048, Poisson rate 0.5..12 req/s (seed 0),
half of them on each deployment, one core. No task graph is built per workload. Target >= 5,000/s.
Also: ``iteration_latency_us``, one ``IterationCost.latency_s`` of a mixed iteration.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def measure_serving(seconds: float = 2.0) -> dict[str, Any]:
    """``new_workload_evals_per_s`` and ``iteration_latency_us`` (see the module docstring)."""
    from paratune.costmodel import get_platform
    from paratune.serving import Deployment, Lengths, Mix, Pool, Traffic, analytic, instance_cost

    platform = get_platform("dgx-h100")
    agg = Deployment((Pool(tp=1, replicas=2),))
    dis = Deployment((Pool(role="prefill", tp=1), Pool(role="decode", tp=1, replicas=2)))
    t0 = time.perf_counter()
    agg_costs = {"mixed": instance_cost("llama3-8b", platform, agg.pools[0], agg)}
    dis_costs = {p.role: instance_cost("llama3-8b", platform, p, dis) for p in dis.pools}
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n = 2_000
    isl = np.exp(rng.uniform(np.log(64), np.log(8192), n))
    osl = np.exp(rng.uniform(np.log(16), np.log(2048), n))
    rate = rng.uniform(0.5, 12.0, n)
    cases = [(agg, agg_costs) if i % 2 == 0 else (dis, dis_costs) for i in range(n)]
    traffics = [
        Traffic(Lengths(mean=float(a)), Lengths(mean=float(b)), rate=float(r))
        for a, b, r in zip(isl, osl, rate, strict=True)
    ]
    saturated = 0
    times: list[float] = []
    while sum(times) < seconds or len(times) < 3:
        start = time.perf_counter()
        saturated = 0
        for (dep, costs), traffic in zip(cases, traffics, strict=True):
            saturated += analytic(dep, traffic, costs).saturated
        times.append(time.perf_counter() - start)
    cost = agg_costs["mixed"]
    mix = Mix(prefill_tokens=512, prefill_attention=512 * 1500.0, decode_seqs=64, decode_context=64 * 1500, sampled=65)
    reps = 20_000
    start = time.perf_counter()
    for _ in range(reps):
        cost.latency_s(mix)
    per_call = (time.perf_counter() - start) / reps
    return {
        "new_workload_evals_per_s": n / float(np.median(times)),
        "new_workload_saturated_share": saturated / n,
        "iteration_latency_us": per_call * 1e6,
        "instance_costs_build_s": build_s,
        "serving_problem": "llama3-8b dgx-h100 vllm, TP1 x2 aggregated and 1P+2D disaggregated, random traffics",
    }


if __name__ == "__main__":
    for key, value in measure_serving().items():
        print(f"{key}: {value:,.3f}" if isinstance(value, float) else f"{key}: {value}")
