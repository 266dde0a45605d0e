"""Every tuner on the presets from NVIDIA's system specs: the plan each finds and its gap to ``dp``.

Platforms: ``dgx-b200``, ``hgx-b300``, ``gb200-nvl72`` (72 GPUs in one NVLink domain), ``l40s-pcie`` and
``rtx-pro-6000`` (PCIe, no NVLink), each for prefill, decode and training of a small model (llama2-7b with
4 layers; 64 heads on ``gb200-nvl72`` so that TP 16, 32 and 64 divide them). The tuners: the four
heuristics, ``dp``, ``enumerate`` (where its plan cap allows), ``optuna-tpe`` and ``rl`` with the shipped
policy (when torch and sb3-contrib are installed), each with the same budget. The gap is to ``dp``'s
value (the optimum of the layered space); ``max TP`` shows which degrees a tuner reached. The profiles are
placeholders (``h100-vidur``) until the fitted ``*-aic`` ones come, so the values say what each tuner
can express and find, not what the hardware does.

Usage: ``python benchmarks/platform_tuners.py [--budget N] [--platforms a,b] [--json]``
(``--json > build/platform_tuners.json`` keeps the figures).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from typing import Any

from paratune.search import Problem, tune

PLATFORMS = ("dgx-b200", "hgx-b300", "gb200-nvl72", "l40s-pcie", "rtx-pro-6000")
TUNERS = ("megatron", "serving-default", "min-tp-replicas", "balanced-pp", "dp", "enumerate", "optuna-tpe", "rl")
PHASES: dict[str, dict[str, int]] = {
    "prefill": {"batch": 8, "seq": 1024},
    "decode": {"batch": 64, "context": 2048},
    "train": {"batch": 64, "seq": 1024},
}


def _problem(platform: str, phase: str) -> Problem:
    heads = 64 if platform.startswith("gb200") else 32
    batch = dict(PHASES[phase])
    if platform.startswith("gb200") and phase != "prefill":
        batch["batch"] = 72  # every replica count up to the rack divides it
    return Problem(f"llama2-7b:layers=4,heads={heads}", platform, phase=phase, **batch)  # type: ignore[arg-type]


def run(platforms: list[str], budget: int) -> list[dict[str, Any]]:
    has_rl = all(importlib.util.find_spec(m) for m in ("torch", "sb3_contrib"))
    if has_rl:
        import paratune.agents  # noqa: F401  (registers the rl tuner)
    rows = []
    for platform in platforms:
        for phase in PHASES:
            problem = _problem(platform, phase)
            best = tune(problem, "dp").objective_value
            for name in TUNERS:
                if name == "rl" and not has_rl:
                    continue
                row: dict[str, Any] = {"platform": platform, "phase": phase, "tuner": name}
                try:
                    res = tune(problem, name, budget=budget, seed=0)
                except ValueError as exc:  # a tuner's documented refusal (enumerate's plan cap)
                    row["refused"] = str(exc)
                    rows.append(row)
                    continue
                plan, value = res.best_plan, res.objective_value
                row.update(
                    value=value,
                    gap_pct=None if value is None or not best else 100.0 * (value / best - 1.0),
                    max_tp=None if plan is None else max(s.tp for s in plan.stages),
                    devices=None if plan is None else plan.num_devices,
                    plan=None
                    if plan is None
                    else {"tp": [s.tp for s in plan.stages], "replicas": plan.replicas, "micro": plan.micro_batches},
                    evaluations=res.evaluations,
                    wall_s=res.wall_s,
                    notes=[n for n in res.notes if "beyond the policy's TP menu" in n],
                )
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=300, help="evaluations per stochastic tuner (default 300)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS), help="comma-separated presets")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = run(args.platforms.split(","), args.budget)
    if args.json:
        json.dump({"budget": args.budget, "rows": rows}, sys.stdout, indent=1)
        print()
        return
    print(f"{'platform':14s} {'phase':8s} {'tuner':16s} {'gap to dp':>10s} {'max TP':>6s} {'GPUs':>5s} {'wall s':>7s}")
    for r in rows:
        head = f"{r['platform']:14s} {r['phase']:8s} {r['tuner']:16s}"
        if "refused" in r:
            print(f"{head} refused: {r['refused'][:70]}")
        elif r["value"] is None:
            print(f"{head} {'no plan':>10s}")
        else:
            print(f"{head} {r['gap_pct']:>+9.2f}% {r['max_tp']:>6d} {r['devices']:>5d} {r['wall_s']:>7.2f}")
    print()
    for name in TUNERS:
        gaps = [r["gap_pct"] for r in rows if r["tuner"] == name and r.get("gap_pct") is not None]
        if gaps:
            median, worst = statistics.median(gaps), max(gaps)
            print(f"{name:16s} median gap {median:+6.2f}%  worst {worst:+7.2f}%  ({len(gaps)} cases)")


if __name__ == "__main__":
    main()
