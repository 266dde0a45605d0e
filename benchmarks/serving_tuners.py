"""Every serving tuner on the serving policy's training pool and its held-out set, against the grid's optimum.

For each problem (``configs/pools/serving.yaml`` = ``train``, ``serving-validation.yaml`` = ``validation``,
``serving-heldout.yaml`` = ``heldout``): the exhaustive search's optimum (the certified best of its grid), then
each tuner of :data:`paratune.search._serve_tuners.SERVING_TUNERS` at its default budget (``rl-greedy``: the
shipped policy's greedy rollout alone, the pure zero-shot figure; ``rl``: greedy + 32 sampled rollouts). Per run:
output tokens/s per GPU, its gap to the optimum (``1 - value / optimum``; a run that finds nothing within the SLO
counts as a gap of 1), whether the chosen deployment meets the SLO, model evaluations and wall time. Then the
median gap, evaluations and wall time per tuner and split.

Targets (issue 17): ``rl`` zero-shot on held-out within ~5% (median) of the optimum and better than the engine
defaults; Optuna at its default budget within ~2%.

Run: ``python benchmarks/serving_tuners.py [--split train,validation,heldout] [--tuners a,b] [--policy ZIP]
[--seed S] [--json FILE] [--only SUBSTR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from paratune.search._serve import ServingSearchResult
from paratune.search._serve_pool import SERVING_POOLS, load_serving_pool
from paratune.search._serve_tuners import SERVING_TUNERS

#: (label, tuner name, budget): the tuners at their defaults, and the rl policy's greedy rollout alone.
RUNS: tuple[tuple[str, str, int | None], ...] = (
    ("optuna-tpe", "optuna-tpe", None),
    ("optuna-nsga2", "optuna-nsga2", None),
    ("random", "random", None),
    ("rl-greedy", "rl", 1),
    ("rl", "rl", None),
    ("vllm-default", "vllm-default", None),
    ("sglang-default", "sglang-default", None),
    ("trtllm-default", "trtllm-default", None),
)


def _run(label: str, name: str, budget: int | None, problem: Any, seed: int, policy: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    if name == "rl" and policy is not None:
        from paratune.agents._serve_rl import DEFAULT_ROLLOUTS, rl_deployments

        rollouts = DEFAULT_ROLLOUTS if budget is None else budget - 1
        result: ServingSearchResult = rl_deployments(problem, policy=policy, rollouts=rollouts, seed=seed)
    else:
        result = SERVING_TUNERS[name](problem, budget=budget, seed=seed)
    wall = time.perf_counter() - started
    best = result.best
    return {
        "tuner": label,
        "tokens_per_s_per_gpu": 0.0 if best is None else best.metrics.tokens_per_s_per_gpu,
        "meets_slo": best is not None and best.metrics.meets_slo is not False,
        "deployment": None if best is None else best.deployment.to_dict(),
        "evaluations": result.evaluations,
        "wall_s": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="train,heldout", help=f"comma-separated, of {', '.join(SERVING_POOLS)}")
    ap.add_argument("--tuners", default=",".join(r[0] for r in RUNS), help="comma-separated labels")
    ap.add_argument("--policy", default=None, help="a Serving-v0 policy zip for rl (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="problems whose name contains this")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    labels = args.tuners.split(",")
    unknown = [x for x in labels if x not in {r[0] for r in RUNS}]
    if unknown:
        ap.error(f"unknown tuners {unknown}; allowed: {', '.join(r[0] for r in RUNS)}")
    runs = [r for r in RUNS if r[0] in labels]
    rows: list[dict[str, Any]] = []
    for split in args.split.split(","):
        for problem in load_serving_pool(split):
            if args.only not in problem.name:
                continue
            exact = _run("exhaustive", "exhaustive", None, problem, args.seed, None)
            optimum = exact["tokens_per_s_per_gpu"]
            for label, name, budget in [("exhaustive", "exhaustive", None), *runs]:
                row = exact if label == "exhaustive" else _run(label, name, budget, problem, args.seed, args.policy)
                value = row["tokens_per_s_per_gpu"]
                gap = 1.0 if not row["meets_slo"] or optimum <= 0 else 1.0 - value / optimum
                row = {**row, "split": split, "problem": problem.name, "gap": gap, "optimum": optimum}
                rows.append(row)
                print(
                    f"{split:10s} {problem.name:26s} {label:15s} {value:10.1f} tok/s/GPU  gap {100 * gap:7.2f}%  "
                    f"slo {'ok' if row['meets_slo'] else 'MISS'}  evals {row['evaluations']:6d}  "
                    f"{row['wall_s']:7.2f} s",
                    flush=True,
                )
    summary: dict[str, dict[str, Any]] = {}
    print("\nmedians per split and tuner (gap to the exhaustive optimum; evaluations; wall s)")
    for split in dict.fromkeys(r["split"] for r in rows):
        for label in ["exhaustive", *(r[0] for r in runs)]:
            sel = [r for r in rows if r["split"] == split and r["tuner"] == label]
            if not sel:
                continue
            s = {
                "problems": len(sel),
                "median_gap": statistics.median(r["gap"] for r in sel),
                "max_gap": max(r["gap"] for r in sel),
                "meets_slo": sum(r["meets_slo"] for r in sel),
                "median_evaluations": statistics.median(r["evaluations"] for r in sel),
                "median_wall_s": statistics.median(r["wall_s"] for r in sel),
            }
            summary[f"{split}/{label}"] = s
            print(
                f"{split:10s} {label:15s} median gap {100 * s['median_gap']:6.2f}%  max {100 * s['max_gap']:6.2f}%  "
                f"slo met {s['meets_slo']}/{s['problems']}  evals {s['median_evaluations']:8.0f}  "
                f"wall {s['median_wall_s']:6.2f} s"
            )
    if args.json:
        out = {
            "benchmark": "serving_tuners",
            "seed": args.seed,
            "policy": args.policy or "shipped (agents/policies/serving.zip)",
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
            "rows": rows,
            "summary": summary,
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
