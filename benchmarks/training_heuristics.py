"""The practitioners' training recipes of issue 18 against the best plan without techniques.

For every training scenario of the suite (``benchmarks/scenarios/*train*``) and llama3-405b
on 64 H100 (infeasible without sharded state): the step time of ``megatron`` (Megatron-Core's
defaults), ``fsdp`` (torchtitan FSDP2) and ``deepspeed-zero3``, the techniques their plan uses,
and the gap to ``dp``'s plan of today's space (no techniques; certified when dp says so). A
negative gap means the recipe beats the best plan without techniques. Infeasible recipes print
the first words of their note.

Run: ``python benchmarks/training_heuristics.py [--scenarios GLOB] [--json] [--out F]``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _figures import emit, figure_parser, provenance

from paratune.problem import load_scenarios
from paratune.search import Problem, tune

EXTRA = [Problem("llama3-405b", "dgx-h100x8", phase="train", batch=256, seq=4096, name="llama3-405b-h100x8-train")]
RECIPES = ("megatron", "fsdp", "deepspeed-zero3")


def _row(problem: Problem) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = tune(problem, "dp")
    plain = base.best_metrics.step_s if base.best_plan is not None and base.best_metrics else None
    out: dict[str, Any] = {"scenario": problem.name, "dp_step_s": plain, "dp_certified": bool(base.optimal)}
    for name in RECIPES:
        res = tune(problem, name)
        m, plan = res.best_metrics, res.best_plan
        step = m.step_s if m is not None and plan is not None else None
        out[name] = {
            "step_s": step,
            "gap_pct": None if step is None or plain is None else 100.0 * (step - plain) / plain,
            "evaluations": res.evaluations,
            "techniques": plan.techniques() if plan is not None else None,
            "full_recompute": bool(plan and all(s.recompute for s in plan.stages)),
            "layout": None if plan is None else f"TP{plan.stages[0].tp} PP{plan.pp} x{plan.replicas}",
            "note": res.notes[0] if res.notes else "",
        }
    out["wall_s"] = time.perf_counter() - t0
    return out


def _cell(r: dict[str, Any]) -> str:
    if r["step_s"] is None:
        return "infeasible: " + r["note"][:70]
    gap = "" if r["gap_pct"] is None else f" ({r['gap_pct']:+.1f}% vs dp)"
    used = ",".join(f"{k}={v}" for k, v in (r["techniques"] or {}).items()) or "-"
    return f"{r['step_s']:.3f} s{gap} {r['layout']} [{used}{', full AC' if r['full_recompute'] else ''}]"


def main() -> int:
    parser = figure_parser(__doc__)
    parser.add_argument("--scenarios", default="*train*", help="glob over the suite's scenario names")
    args = parser.parse_args()
    problems = load_scenarios(pattern=args.scenarios) + [p for p in EXTRA if args.scenarios in ("*train*", "*")]
    rows = []
    for problem in problems:
        row = _row(problem)
        rows.append(row)
        if not args.json:
            dp = "-" if row["dp_step_s"] is None else f"{row['dp_step_s']:.3f} s"
            print(f"{row['scenario']}: dp without techniques {dp}{'' if row['dp_certified'] else ' (not certified)'}")
            for name in RECIPES:
                print(f"    {name:16s} {_cell(row[name])}", flush=True)
    summary = {
        name: {
            "feasible": sum(r[name]["step_s"] is not None for r in rows),
            "beats_dp_without_techniques": sum((r[name]["gap_pct"] or 0.0) < 0 for r in rows),
        }
        for name in RECIPES
    }
    figures = {"benchmark": "training_heuristics", "provenance": provenance(), "rows": rows, "summary": summary}
    emit(figures, args.out, args.json)
    if not args.json:
        print(f"\nof {len(rows)} scenarios: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
