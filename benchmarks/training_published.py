"""Published training runs against the analytic evaluator: step time and TFLOP/s per GPU, predicted vs measured.

The runs (``configs/published/training.yaml``; sources in the README beside it) are
Korthikanti et al. 2022 (GPT 22B..1T on A100, full recomputation and SP + selective
recomputation), the Megatron-LM README's H100 weak scaling (GPT 1.7B..462B, distributed
optimizer, SP, overlap), torchtitan's FSDP2 runs on 64 A100 (Llama 2 / 3), the Llama 3 paper's
405B runs on 8K-16K H100 (TP, PP, CP 16 at 128K tokens) and Megatron-Core's Mixtral 8x7B (EP,
interleaved 1F1B). Each is built as a paratune problem and plan with the
techniques it used, and evaluated. Printed per run: the measured and predicted step time,
the error ``predicted / measured - 1`` (positive: paratune is slower), model TFLOP/s per GPU
counted the source's way (``megatron`` or ``torchtitan``, see
``costmodel/calibration/_published_training.py``), the predicted peak memory, and whether a
completed run is called out of memory.

Summary: median |error| over the ``check`` points (target <= 10%), and the runs called OOM
(target: none). Megatron-LM's SC'21 Table 1, which the project was calibrated on, is printed
apart as ``tune`` and not counted.

``--sensitivity`` also prices each point under the other plausible value of what its source
leaves unstated (micro-batch 2, VP 2): how much of an error may be the assumption's.

Run: ``python benchmarks/training_published.py [--source KEY] [--sensitivity] [--json] [--out FILE]``
(about 20 s on one core; a minute with ``--sensitivity``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_MEDIAN_PCT = 10.0


def _tuned_on() -> list[dict[str, Any]]:
    """Megatron-LM SC'21 Table 1 (the rows the A100 profile was checked on), as step-time errors."""
    from paratune.costmodel.calibration import compare_megatron

    out = []
    for c in compare_megatron("dgx-a100"):
        out.append(
            {
                "id": c.name,
                "split": "tune",
                "measured_tflops_per_gpu": c.measured,
                "predicted_tflops_per_gpu": c.predicted,
                "error_pct": 100.0 * (c.measured / c.predicted - 1.0),  # of the step time
                "feasible": c.feasible,
            }
        )
    return out


def main() -> None:
    from _figures import emit, figure_parser, provenance

    from paratune.costmodel.calibration._published_training import (
        assumption_variants,
        compare_point,
        load_training_points,
        summarize,
    )

    parser = figure_parser(__doc__)
    parser.add_argument("--source", default="", help="only the points of these sources (comma-separated keys)")
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="also price each point under the other value of what its source leaves unstated (micro-batch, VP)",
    )
    args = parser.parse_args()
    points = load_training_points()
    wanted = {s for s in args.source.split(",") if s}
    if wanted:
        known = {p.source.key for p in points}
        if wanted - known:
            print(f"error: unknown source(s) {', '.join(sorted(wanted - known))}; known: {', '.join(sorted(known))}")
            raise SystemExit(2)
        points = [p for p in points if p.source.key in wanted]
    rows, failed = [], {}
    for point in points:
        try:
            rows.append(compare_point(point))
        except Exception as exc:  # an evaluator that cannot price a plan yet is reported, not fatal
            failed[point.id] = f"{type(exc).__name__}: {exc}"
    sensitivity: dict[str, dict[str, Any]] = {}
    if args.sensitivity:
        for row in rows:
            for label, variant in assumption_variants(row.point).items():
                try:
                    alt = compare_point(variant)
                    sensitivity.setdefault(row.point.id, {})[label] = {
                        "error_pct": alt.error_pct,
                        "feasible": alt.feasible,
                    }
                except Exception as exc:  # as above: reported, not fatal
                    sensitivity.setdefault(row.point.id, {})[label] = {"error": f"{type(exc).__name__}: {exc}"}
    summary = summarize(rows)
    summary["evaluator_errors"] = failed
    summary["target_median_abs_error_pct"] = TARGET_MEDIAN_PCT
    check = summary["check"]["median_abs_error_pct"]
    summary["meets_target"] = bool(
        check is not None and check <= TARGET_MEDIAN_PCT and not summary["called_oom"] and not failed
    )
    figures = {
        "points": [r.to_dict() for r in rows],
        "tuned_on": _tuned_on(),
        "summary": summary,
        "sensitivity": sensitivity,
        "sources": {p.source.key: {"title": p.source.title, "url": p.source.url} for p in points},
        "provenance": provenance(),
    }
    if emit(figures, args.out, args.json):
        return
    _print(figures)


def _print(figures: dict[str, Any]) -> None:
    head = (
        f"{'point':36s} {'split':5s} {'GPUs':>5s} {'TP/PP/CP/EP/VP x DP':20s} {'meas s':>8s} {'pred s':>8s} "
        f"{'error':>7s} {'TFLOP/s meas/pred':>18s} {'mem GiB':>9s} {'comp/comm/idle s':>20s}  techniques / status"
    )
    print(head)
    print("-" * len(head))
    for r in figures["points"]:
        c = r["config"]
        shape = f"{c['tp']}/{c['pp']}/{c['cp']}/{c['ep']}/{c['vp']} x {c['dp']}"
        tech = ",".join(f"{k}={v}" for k, v in r["techniques"].items()) or "-"
        status = "" if r["feasible"] else ("  OOM: " if r["called_oom"] else "  INFEASIBLE: ") + r["reason"][:70]
        tflops = f"{r['measured_tflops_per_gpu']:.0f}/{r['predicted_tflops_per_gpu']:.0f} {r['flops_convention'][:2]}"
        mem = f"{r['peak_memory_gib']:.0f}/{r['memory_capacity_gib']:.0f}"
        b = r["breakdown"]
        parts = f"{b.get('compute_s', 0):.2f}/{b.get('communication_s', 0):.2f}/{b.get('idle_s', 0):.2f}"
        print(
            f"{r['id']:36s} {r['split']:5s} {r['gpus']:5d} {shape:20s} {r['measured_step_s']:8.3f} "
            f"{r['predicted_step_s']:8.3f} {r['error_pct']:+6.1f}% {tflops:>18s} {mem:>9s} {parts:>20s}  {tech}{status}"
        )
    s = figures["summary"]
    for pid, err in s["evaluator_errors"].items():
        print(f"{pid:36s} evaluator error: {err[:110]}")
    if figures["sensitivity"]:
        print()
        print("if the unstated settings were otherwise (step error; the data keep the stated choice):")
        for pid, alts in figures["sensitivity"].items():
            shown = ", ".join(
                f"{k}: {v['error_pct']:+.1f}%" if "error_pct" in v else f"{k}: {v['error'][:40]}"
                for k, v in alts.items()
            )
            print(f"  {pid:36s} {shown}")
    print()
    print("tuned on (Megatron-LM SC'21 Table 1, not counted):")
    for r in figures["tuned_on"]:
        print(
            f"  {r['id']:52s} TFLOP/s {r['measured_tflops_per_gpu']:.0f}/{r['predicted_tflops_per_gpu']:.0f}"
            f"  step error {r['error_pct']:+.1f}%"
        )
    print()
    med = s["check"]["median_abs_error_pct"]
    print(
        f"check points: {s['check']['points']}, median |error| "
        f"{'n/a' if med is None else f'{med:.1f}%'} (target <= {s['target_median_abs_error_pct']:.0f}%), "
        f"max {s['check']['max_abs_error_pct'] or 0:.1f}%"
    )
    by_source = ", ".join(f"{k} {v:.1f}%" for k, v in s["median_abs_error_pct_by_source"].items())
    print(f"median |error| by source: {by_source}")
    print(f"completed runs called out of memory: {len(s['called_oom'])} {s['called_oom'] or ''} (target: none)")
    if s["evaluator_errors"]:
        print(f"runs the evaluator could not price: {len(s['evaluator_errors'])}")
    print(f"meets target: {s['meets_target']}")


if __name__ == "__main__":
    main()
