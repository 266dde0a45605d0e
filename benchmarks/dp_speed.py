"""How fast ``dp`` finds (and certifies) the optimum on large layered problems (target: certified, <= 2 s).

Cases: llama3-405b on ``dgx-h100x8`` (64 H100) for training and decode, llama3-405b
training on ``hgx-h200x8`` (64 H200: 405B training state does not fit 64 x 80 GB, so
the H100 case proves infeasibility), llama2-70b on ``dgx-a100x2`` prefill TTFT, and the
64-GPU training scenarios of the quality suite (llama2-70b on 64 H100, gpt3-175b on 64
A100). A case dp cannot certify within its label cap says in its notes how close its
plan is proven to be (the gap passes of :mod:`paratune.search._dp_train`).

Usage: ``python benchmarks/dp_speed.py [--json]`` (``--json > build/dp_speed.json`` keeps the figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from paratune.search import Problem, tune

CASES = [
    ("llama3-405b train, 64 H100", Problem("llama3-405b", "dgx-h100x8", phase="train", batch=256, seq=4096)),
    ("llama3-405b train, 64 H200", Problem("llama3-405b", "hgx-h200x8", phase="train", batch=64, seq=4096)),
    ("llama3-405b decode, 64 H100", Problem("llama3-405b", "dgx-h100x8", phase="decode", batch=64, context=4096)),
    ("llama2-70b prefill, 16 A100", Problem("llama2-70b", "dgx-a100x2", phase="prefill", batch=8, seq=2048)),
    ("llama2-70b train, 64 H100", Problem("llama2-70b", "dgx-h100x8", phase="train", batch=128, seq=4096)),
    ("gpt3-175b train, 64 A100", Problem("gpt3-175b", "dgx-a100x8", phase="train", batch=64, seq=2048)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    rows = []
    for label, problem in CASES:
        t0 = time.perf_counter()
        problem.evaluator()  # graph and tables: not the dp's work
        setup = time.perf_counter() - t0
        res = tune(problem, "dp")
        plan = res.best_plan
        rows.append(
            {
                "case": label,
                "problem": problem.to_dict(),
                "setup_s": setup,
                "wall_s": res.wall_s,
                "evaluations": res.evaluations,
                "objective": problem.objective,
                "value": res.objective_value,
                "certified": res.optimal,
                "plan": None
                if plan is None
                else {
                    "stages": [[*st.layers, st.tp, st.recompute] for st in plan.stages],  # type: ignore[misc]
                    "micro_batches": plan.micro_batches,
                    "replicas": plan.replicas,
                },
                "notes": res.notes,
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    for r in rows:
        print(
            f"{r['case']}: dp {r['wall_s']:.2f} s (graph+tables {r['setup_s']:.2f} s), {r['evaluations']} evaluations"
        )
        print(f"  {r['objective']} = {r['value']}, certified: {r['certified']}")
        if r["plan"]:
            st = ", ".join(f"L{a}-{b} tp{t}{' rc' if rc else ''}" for a, b, t, rc in r["plan"]["stages"])
            print(f"  plan: r={r['plan']['replicas']} m={r['plan']['micro_batches']} [{st}]")
        for note in r["notes"]:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
