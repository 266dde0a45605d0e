"""Which training techniques the best plans use, and what they gain (issue 18's "decisions" figure).

For every training scenario of the suite (``benchmarks/scenarios/*train*``) and
llama3-405b on 64 H100 (infeasible without sharded state):

* **without techniques**: ``dp``'s plan (the certified optimum of today's space when
  it certifies; its notes say otherwise);
* **with techniques**: the best of (a) every technique set of ``techniques=search``
  (:mod:`paratune.search._techniques`) put on dp's plan and on the heuristics' plans,
  and (b) ``optuna-tpe`` over the hybrid space with ``techniques=search``
  (``--budget`` trials, ``--seeds`` seeds): no exact solver covers the larger space
  yet, so this is the best found, not a proven optimum.

Printed per scenario: both step times, the gain, the techniques the best plan uses;
then how often the best plan uses each technique. ``--json``/``--out`` write it all.

Run: ``python benchmarks/training_techniques.py [--budget 300] [--seeds 2] [--scenarios GLOB] [--json] [--out F]``.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _figures import emit, figure_parser, provenance

from paratune.problem import load_scenarios
from paratune.search import Problem, tune
from paratune.search._techniques import technique_choices, with_techniques

EXTRA = [Problem("llama3-405b", "dgx-h100x8", phase="train", batch=256, seq=4096, name="llama3-405b-h100x8-train")]
HEURISTICS = ("megatron", "balanced-pp", "min-tp-replicas")


def _step(problem: Problem, plan: Any) -> float | None:
    ev = problem.score(plan)
    return ev.metrics.step_s if ev.feasible else None


def _best_with_techniques(problem: Problem, layouts: list[Any]) -> tuple[float | None, Any]:
    best: tuple[float | None, Any] = (None, None)
    for layout in layouts:
        for choice in technique_choices("search"):
            plan = with_techniques(layout, choice)
            step = _step(problem, plan)
            if step is not None and (best[0] is None or step < best[0]):
                best = (step, plan)
    return best


def run(problem: Problem, budget: int, seeds: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = tune(problem, "dp")
    layouts = [base.best_plan] if base.best_plan is not None else []
    for name in HEURISTICS:
        try:
            res = tune(problem, name)
        except ValueError:
            continue
        if res.best_plan is not None:
            layouts.append(res.best_plan)
    plain = base.best_metrics.step_s if base.best_plan is not None and base.best_metrics else None
    step, plan = _best_with_techniques(problem, layouts)
    for seed in range(seeds):
        res = tune(problem, "optuna-tpe", budget=budget, seed=seed, techniques="search", space="hybrid")
        if res.best_plan is not None and res.best_metrics is not None:
            s = res.best_metrics.step_s
            if s is not None and (step is None or s < step):
                step, plan = s, res.best_plan
    gain = None if plain is None or step is None else 100.0 * (plain - step) / plain
    return {
        "scenario": problem.name,
        "step_without_s": plain,
        "certified_without": bool(base.optimal),
        "step_with_s": step,
        "gain_pct": gain,
        "techniques": plan.techniques() if plan is not None else None,
        "recompute_stages": sum(st.recompute for st in plan.physical_stages) if plan is not None else None,
        "plan": plan.to_dict() if plan is not None else None,
        "wall_s": time.perf_counter() - t0,
    }


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    parser = figure_parser(__doc__)
    parser.add_argument("--budget", type=int, default=300, help="optuna-tpe trials per seed (default 300)")
    parser.add_argument("--seeds", type=int, default=2, help="optuna-tpe seeds (default 2)")
    parser.add_argument("--scenarios", default="*train*", help="glob over the suite's scenario names")
    args = parser.parse_args()
    problems = load_scenarios(pattern=args.scenarios) + [p for p in EXTRA if args.scenarios in ("*train*", "*")]
    rows = []
    for problem in problems:
        row = run(problem, args.budget, args.seeds)
        rows.append(row)
        if not args.json:
            used = ", ".join(f"{k}={v}" for k, v in (row["techniques"] or {}).items()) or "none"
            print(
                f"{row['scenario']:42s} without {_fmt(row['step_without_s'])} s"
                f"{'' if row['certified_without'] else ' (not certified)'}  with {_fmt(row['step_with_s'])} s  "
                f"gain {_fmt(row['gain_pct'], '+.1f')}%  [{used}]  ({row['wall_s']:.0f} s)",
                flush=True,
            )
    usage: Counter[str] = Counter()
    for row in rows:
        for k in row["techniques"] or {}:
            usage[k] += 1
    summary = {
        "scenarios": len(rows),
        "uses": dict(usage),
        "feasible_only_with": [r["scenario"] for r in rows if r["step_without_s"] is None and r["step_with_s"]],
        "median_gain_pct": sorted(r["gain_pct"] for r in rows if r["gain_pct"] is not None)[
            len([r for r in rows if r["gain_pct"] is not None]) // 2
        ]
        if any(r["gain_pct"] is not None for r in rows)
        else None,
    }
    figures = {"benchmark": "training_techniques", "provenance": provenance(), "rows": rows, "summary": summary}
    emit(figures, args.out, args.json)
    if not args.json:
        print(f"\nbest plans using each technique (of {len(rows)} scenarios): {dict(usage)}")
        print(f"feasible only with techniques: {summary['feasible_only_with']}")
        print(f"median gain: {_fmt(summary['median_gain_pct'], '+.1f')}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
