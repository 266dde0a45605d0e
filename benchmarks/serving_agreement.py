"""The steady-state analytic serving model against the request-level simulator (a benchmark, not a test).

Prints, per case, tokens/s/GPU and TTFT / TPOT p50 / p90 / p99 of both evaluators on the same instance costs
(``serving.instance_cost``): llama3-8b on dgx-h100 (TP 1; prompts 1000, outputs 200; two aggregated replicas
and 1 prefill + 2 decode instances) at rising Poisson rates, and llama3-70b TP 4 (3000 / 300). The simulator
runs 3,000 requests (seed 1). With ``--json`` writes the rows as one JSON object (also to ``--out``).

Run: ``python benchmarks/serving_agreement.py [--json] [--out FILE]`` (needs ``serving.simulate``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES: list[tuple[str, str, str, int, int, tuple[float, ...]]] = [
    # (name, model, layout, tp, replicas or decode instances, rates)
    ("agg", "llama3-8b", "mixed", 1, 2, (2.0, 8.0, 16.0, 24.0, 32.0, 40.0, 45.0)),
    ("disagg", "llama3-8b", "1p2d", 1, 2, (2.0, 8.0, 16.0, 32.0, 40.0)),
    ("agg-70b", "llama3-70b", "mixed", 4, 1, (1.0, 2.0, 4.0)),
]


def rows() -> list[dict[str, Any]]:
    from paratune.costmodel import get_platform
    from paratune.serving import Deployment, Lengths, Pool, Traffic, analytic, instance_cost, simulate

    platform = get_platform("dgx-h100")
    out = []
    for name, model, layout, tp, count, rates in CASES:
        if layout == "mixed":
            dep = Deployment((Pool(tp=tp, replicas=count),))
        else:
            dep = Deployment((Pool(role="prefill", tp=tp), Pool(role="decode", tp=tp, replicas=count)))
        costs = {p.role: instance_cost(model, platform, p, dep) for p in dep.pools}
        isl, osl = (1000.0, 200.0) if model == "llama3-8b" else (3000.0, 300.0)
        for rate in rates:
            traffic = Traffic(Lengths(mean=isl), Lengths(mean=osl), rate=rate)
            a = analytic(dep, traffic, costs)
            s = simulate(dep, traffic, costs, requests=3000, seed=1)
            out.append(
                {
                    "case": name,
                    "rate": rate,
                    "tokens_per_s_per_gpu": [a.tokens_per_s_per_gpu, s.tokens_per_s_per_gpu],
                    "ttft_ms": [{k: a.ttft_ms.get(k) for k in ("p50", "p90", "p99")}, s.ttft_ms],
                    "tpot_ms": [{k: a.tpot_ms.get(k) for k in ("p50", "p90", "p99")}, s.tpot_ms],
                    "saturated": [a.saturated, s.saturated],
                }
            )
    return out


def main() -> None:
    from _figures import emit, figure_parser

    args = figure_parser(__doc__).parse_args()
    try:
        table = rows()
    except ImportError as exc:
        print(f"serving.simulate is not available here: {exc}")
        return
    if emit({"rows": table}, args.out, args.json):
        return

    def trio(d: dict[str, float]) -> str:
        return "/".join(f"{d.get(k, float('nan')):.1f}" for k in ("p50", "p90", "p99"))

    for r in table:
        a, s = r["tokens_per_s_per_gpu"]
        print(
            f"{r['case']:>8} {r['rate']:5.1f} req/s  tok/s/GPU {a:7.0f} vs {s:7.0f} ({a / s - 1:+.1%})  "
            f"TTFT {trio(r['ttft_ms'][0])} vs {trio(r['ttft_ms'][1])}  TPOT {trio(r['tpot_ms'][0])} vs "
            f"{trio(r['tpot_ms'][1])}  saturated {r['saturated'][0]}/{r['saturated'][1]}"
        )


if __name__ == "__main__":
    main()
