"""The headline numbers of every study under a folder, as the two tables of docs/findings.md.

    python benchmarks/study_findings.py runs/studies [--json build/study_findings.json]

Reads each ``study.json`` (``paratune campaign run configs/campaigns/studies.yaml``
writes them under ``runs/studies/studies/``) and prints, per granularity study, the
exact solver's and Optuna's loss at each granularity and their sweet spots, and per
static-vs-runtime study, the static regret, the regret with K precompiled plans and
the switch cost against the gain.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from paratune.study import find_studies
from paratune.study._common import fmt_pct, fmt_seconds


def granularity_row(data: dict[str, Any]) -> dict[str, Any]:
    p = data["problem"]
    rows = {(r["granularity"], r["tuner"]): r for r in data["rows"]}
    grans = data["granularities"]

    def gap(g: str, t: str) -> float | None:
        r = rows.get((g, t))
        return None if r is None or r["status"] != "ok" else r["gap"]

    def time_ratio(t: str) -> float | None:
        fine, layer = rows.get((grans[0], t)), rows.get(("layer", t))
        if not fine or not layer or not layer["wall_s"]:
            return None
        return float(fine["wall_s"]) / float(layer["wall_s"])

    heuristics = [r for r in data["rows"] if r["family"] == "heuristic" and r["granularity"] == "layer"]
    best_heuristic = min((r["gap"] for r in heuristics if r["gap"] is not None), default=None)
    dp_layer = rows.get(("layer", "dp"), {})
    return {
        "scenario": p.get("name"),
        "model": p["model"],
        "platform": p["platform"],
        "phase": p["phase"],
        "objective": data["objective"],
        "best": data["best"]["value"],
        "dp_certified_at_layer": dp_layer.get("certified"),
        "dp_gap": {g: gap(g, "dp") for g in grans},
        "dp_sweet_spot": data["sweet_spot"].get("dp", {}).get("granularity"),
        "tpe_gap": {g: gap(g, "optuna-tpe") for g in grans},
        "tpe_sweet_spot": data["sweet_spot"].get("optuna-tpe", {}).get("granularity"),
        "tpe_op_over_layer_time": time_ratio("optuna-tpe"),
        "dp_op_over_layer_time": time_ratio("dp"),
        "best_heuristic_gap": best_heuristic,
    }


def runtime_row(data: dict[str, Any]) -> dict[str, Any]:
    ks = {k["k"]: k for k in data["k_plans"]}
    static = data["static"]
    k90 = next(
        (k for k in sorted(ks) if static["regret"] and ks[k]["regret"] <= 0.1 * static["regret"]),
        None,
    )
    moved = [d["decision"] for d in data["decisions"] if d["buckets_changed"]]
    be = [b for b in data["break_even"] if b["round_trip_batches"] is not None]
    return {
        "model": data["model"],
        "platform": data["platform"],
        "phase": data["phase"],
        "workload": data["workload"]["name"],
        "buckets": len(data["buckets"]),
        "static_plan": static.get("label"),
        "static_regret": static["regret"],
        "worst_bucket": max((b["static_regret"] or 0.0) for b in data["buckets"]),
        "regret_k": {k: ks[k]["regret"] for k in sorted(ks)},
        "k_for_90pct": k90,
        "decisions_changed": moved,
        "round_trip_s": statistics.median([b["round_trip_s"] for b in be]) if be else None,
        "gain_s": statistics.median([b["gain_s"] for b in be]) if be else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="runs/studies")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    studies = [data for _, data in find_studies([args.folder])]
    gran = [granularity_row(d) for d in studies if d["kind"] == "granularity"]
    run = [runtime_row(d) for d in studies if d["kind"] == "static-vs-runtime"]
    if not studies:
        raise SystemExit(f"no study.json under {args.folder}")
    grans = ["op", "sublayer", "layer", "layers:2", "layers:4", "layers:8"]
    print("| scenario | best | dp at layer | dp loss at layers:2 / 4 / 8 | dp sweet spot | TPE gap op / sublayer / "
          "layer / layers:8 | TPE sweet spot | TPE time op / layer | best heuristic |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in gran:
        dp = " / ".join(fmt_pct(r["dp_gap"].get(g)) for g in grans[3:])
        tpe = " / ".join(fmt_pct(r["tpe_gap"].get(g)) for g in ("op", "sublayer", "layer", "layers:8"))
        best = fmt_seconds(r["best"]) if r["objective"] != "throughput" else f"{r['best']:.4g} tok/s"
        cert = "certified" if r["dp_certified_at_layer"] else "not certified"
        ratio = "-" if r["tpe_op_over_layer_time"] is None else f"{r['tpe_op_over_layer_time']:.0f}x"
        print(f"| {r['scenario']} | {best} | {cert} | {dp} | {r['dp_sweet_spot']} | {tpe} | {r['tpe_sweet_spot']} | "
              f"{ratio} | {fmt_pct(r['best_heuristic_gap'])} |")  # fmt: skip
    print()
    print("| model, platform, phase | workload | static plan | static regret (worst bucket) | K=2 / 4 / 8 | "
          "K for 90% | decisions that change | switch round trip vs gain per batch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in run:
        kk = " / ".join(fmt_pct(r["regret_k"].get(k)) for k in (2, 4, 8))
        sw = "-" if r["round_trip_s"] is None else f"{fmt_seconds(r['round_trip_s'])} vs {fmt_seconds(r['gain_s'])}"
        print(f"| {r['model']}, {r['platform']}, {r['phase']} | {r['workload']} | {r['static_plan']} | "
              f"{fmt_pct(r['static_regret'])} ({fmt_pct(r['worst_bucket'])}) | {kk} | {r['k_for_90pct'] or '-'} | "
              f"{', '.join(r['decisions_changed']) or 'none'} | {sw} |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"granularity": gran, "static_vs_runtime": run}, indent=1) + "\n")
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
