"""End-to-end validation of the cost model on this CPU (a benchmark, not a timed test).

Runs a 4-layer Llama-style model (hidden 768, random weights, bf16) with torch —
one process with one thread, then 2 gloo processes as TP2 and PP2 — and compares
each measured TTFT / TBT (median of repeats) with the AnalyticEvaluator's
prediction on ``cpu-local``. Prints the table; ``--out FILE`` writes the JSON
(``paratune.costmodel.calibration.validate_cpu``'s result). Targets: |error|
<= 15% single process, <= 25% TP2 / PP2. Run it on an otherwise idle machine:
another busy process on the 2 cores shows up as error. Measure this CPU first
(``paratune calibrate local``): until then ``cpu-local`` is the development
machine's, and the table ends with a note saying so.

Run: ``python benchmarks/cpu_e2e.py [--quick] [--reps N] [--model SPEC] [--platform P] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    from paratune.costmodel.calibration._e2e import DEFAULT_MODEL, default_cases, format_table, validate_cpu

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the test's small grid")
    ap.add_argument("--reps", type=int, default=5, help="repeats per case (median)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="zoo model spec (Llama-style)")
    ap.add_argument("--platform", default="cpu-local")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    result = validate_cpu(args.model, default_cases(args.quick), platform=args.platform, reps=args.reps)
    print(format_table(result))
    print(f"sharding checks (relative logit difference from the unsharded model): {result['checks']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0 if all(r["ok"] for r in result["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
