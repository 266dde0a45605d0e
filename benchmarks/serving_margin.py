"""Planning headroom: does the chosen deployment still meet its SLO when the cost model is off by its known error?

For each problem with an SLO of the serving pools (``configs/pools/serving-validation.yaml`` and
``serving-heldout.yaml`` by default) and each ``--slo-margin`` (``0`` and ``auto`` by default), as ``serve-tune``
does: the exhaustive search, then the simulator's check of the chosen deployment (``verify_with_simulator``: the
load lowered until the simulator meets the planning targets). Then the *stress*: the verified deployment at its
verified load, served by the simulator again with every iteration ``err`` % slower, ``err`` the held-out error
the cost model attaches to that deployment's steps (``auto``'s own figure, whatever margin was searched with),
and checked against the user's SLO. Per run: output tokens/s per GPU (the simulator's, at the verified load),
whether the simulator lowered the load, and the stressed TTFT / TPOT over the SLO.

The figure that decides ``serve-tune``'s default: how many chosen deployments survive their own model's error,
and what the headroom costs in tokens/s per GPU.

Run: ``python benchmarks/serving_margin.py [--pools validation,heldout] [--margins 0,auto]
[--requests N] [--only SUBSTR] [--json] [--out FILE]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


class Slower:
    """An iteration cost whose every iteration takes ``factor`` times as long (a model that was optimistic)."""

    def __init__(self, cost: Any, factor: float) -> None:
        self._cost, self._factor = cost, factor

    def latency_s(self, mix: Any) -> float:
        return float(self._cost.latency_s(mix)) * self._factor

    def interval_s(self, mix: Any) -> float:
        return float(self._cost.interval_s(mix)) * self._factor

    def kv_transfer_s(self, tokens: float) -> float:
        return float(self._cost.kv_transfer_s(tokens)) * self._factor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cost, name)


def run_one(problem: Any, margin: float | str, requests: int) -> dict[str, Any]:
    """One problem at one margin: search, the simulator's check, and the stress at the model's own error."""
    from paratune.search._serve import search_deployments, verify_with_simulator, with_load
    from paratune.serving import simulate
    from paratune.serving._margin import deployment_margins

    p = replace(problem, slo_margin=margin)
    plat = p.resolved_platform()
    started = time.perf_counter()
    res = search_deployments(
        p.model, plat, p.traffic, p.slo, gpus=p.gpus, engine=p.engine, dtype=p.dtype, kv_dtype=p.kv_dtype,
        carry=p.carry, space=p.space(), slo_margin=margin,
    )  # fmt: skip
    row: dict[str, Any] = {"problem": p.name, "margin": margin, "search_s": time.perf_counter() - started}
    if res.best is None:
        return {**row, "found": False}
    verified, _at_load = verify_with_simulator(p, res.best, requests=requests)
    row.update(found=True, margins=res.to_dict()["slo_margin"], analytic_load=res.best.load)
    if verified is None:
        return {**row, "verified": False}
    ev = p.evaluator()
    dep = verified.deployment
    costs = ev.costs(dep)
    assert costs is not None
    err = deployment_margins("auto", dep, dict(costs), p.traffic)
    slower = {role: Slower(c, 1.0 + (err.ttft_pct if role == "prefill" else err.tpot_pct) / 100.0)
              for role, c in costs.items()}  # fmt: skip
    stressed = simulate(dep, with_load(p.traffic, verified.load), slower, p.slo, requests=requests, seed=0)
    slo, key = p.slo, f"p{p.slo.percentile:g}"
    over = [
        stressed.ttft_ms[key] / slo.ttft_ms if slo.ttft_ms else 0.0,
        stressed.tpot_ms[key] / slo.tpot_ms if slo.tpot_ms else 0.0,
    ]
    row.update(
        verified=True,
        lowered=verified.load < res.best.load,
        load=verified.load,
        tokens_per_s_per_gpu=verified.metrics.tokens_per_s_per_gpu,
        model_error_pct={"ttft": err.ttft_pct, "tpot": err.tpot_pct},
        stressed_over_slo={"ttft": over[0], "tpot": over[1]},
        stressed_meets_slo=bool(stressed.meets_slo) and not stressed.saturated,
        label=" + ".join(_pool(q) for q in dep.pools),
    )
    return row


def _pool(q: Any) -> str:
    return f"{q.role} {q.replicas}x tp{q.tp} pp{q.pp} b{q.max_num_seqs} t{q.max_batched_tokens}"


def summarise(rows: list[dict[str, Any]], margins: list[float | str]) -> dict[str, Any]:
    """Per margin: deployments verified, lowered by the simulator, surviving the stress; the cost in tokens/s/GPU."""
    out: dict[str, Any] = {}
    base = {r["problem"]: r.get("tokens_per_s_per_gpu") for r in rows if r["margin"] == margins[0]}
    for m in margins:
        mine = [r for r in rows if r["margin"] == m]
        ok = [r for r in mine if r.get("verified")]
        ratios = [r["tokens_per_s_per_gpu"] / base[r["problem"]] for r in ok if base.get(r["problem"])]
        out[str(m)] = {
            "problems": len(mine),
            "verified": len(ok),
            "lowered_by_simulator": sum(bool(r.get("lowered")) for r in ok),
            "survive_model_error": sum(bool(r.get("stressed_meets_slo")) for r in ok),
            "median_tokens_vs_first_margin": statistics.median(ratios) if ratios else None,
            "search_s": sum(r["search_s"] for r in mine),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from _figures import emit, figure_parser, provenance

    from paratune.search._serve_pool import load_serving_pool
    from paratune.serving._margin import check_margin

    parser = figure_parser(__doc__)
    parser.add_argument("--pools", default="validation,heldout")
    parser.add_argument("--margins", default="0,auto")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", default=None)
    args = parser.parse_args(argv)
    margins = [check_margin(m, "--margins") for m in args.margins.split(",")]
    problems = [
        p
        for name in args.pools.split(",")
        for p in load_serving_pool(name)
        if p.slo is not None and (args.only is None or args.only in p.name)
    ]
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    rows = []
    for p in problems:
        for m in margins:
            row = run_one(p, m, args.requests)
            rows.append(row)
            if row.get("verified"):
                o = row["stressed_over_slo"]
                say(
                    f"{p.name} margin {m}: {row['tokens_per_s_per_gpu']:.0f} tok/s/GPU"
                    f"{' (lowered)' if row['lowered'] else ''}; +{row['model_error_pct']['tpot']:.1f}% steps: "
                    f"TTFT {o['ttft']:.2f} TPOT {o['tpot']:.2f} of the SLO -> "
                    f"{'meets' if row['stressed_meets_slo'] else 'MISSES'}  [{row['label']}]"
                )
            else:
                say(f"{p.name} margin {m}: {'nothing verified' if row['found'] else 'nothing found'}")
    summary = summarise(rows, margins)
    out = {"summary": summary, "rows": rows, "requests": args.requests, "provenance": provenance()}
    if emit(out, args.out, args.json):
        return 0
    for m, s in summary.items():
        print(
            f"margin {m}: {s['verified']}/{s['problems']} verified, {s['lowered_by_simulator']} lowered by the "
            f"simulator, {s['survive_model_error']} meet the SLO with steps slower by the model's error; "
            f"median tokens/s/GPU {s['median_tokens_vs_first_margin']:.3f} of margin {margins[0]}'s; "
            f"search {s['search_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
