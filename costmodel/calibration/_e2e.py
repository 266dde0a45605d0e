"""End-to-end validation on this CPU: a real transformer run against the cost model's prediction.

Why: the profile is fitted op by op; only a whole model run shows whether the
pieces add up (per-op overheads, cache effects between ops, collectives inside a
step, pipeline overlap on shared cores). :func:`validate_cpu` runs a small
Llama-style model with random weights (:mod:`._e2e_model`, built from the ops the
microbenchmarks time) with torch on this machine — one process with one thread,
then 2 gloo processes as tensor parallel 2 and pipeline parallel 2 — and compares
each measured latency (median of repeats) with the AnalyticEvaluator's TTFT /
TBT for the same zoo model, workload and plan on ``cpu-local``.

The 2-process cases share the machine's 2 cores: that is what ``cpu-local``
models (2 devices of one core each, gloo between them). Targets:
|error| <= 15% single process, <= 25% TP2 and PP2.

Torch is imported only inside the functions that run the model.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...graphs import Phase, build_graph, coarsen, get_model
from .._analytic import AnalyticEvaluator
from .._machine import foreign_reason
from .._plan import Plan
from .._platform import get_platform
from ._measure import OtherLoad, machine_info

if TYPE_CHECKING:
    from ._e2e_run import Case

#: The validated model: 4 Llama layers of hidden 768 (shape not among the microbenchmarked ones).
DEFAULT_MODEL = "llama2-7b:layers=4,hidden=768,heads=12,kv_heads=12,ffn=2048,vocab=8000"
TOLERANCE_PCT = {"single": 15.0, "tp2": 25.0, "pp2": 25.0}

#: (mode, phase, batch, prompt or context, micro-batches)
FULL_CASES = (
    ("single", "prefill", 1, 64, 1), ("single", "prefill", 1, 256, 1), ("single", "prefill", 4, 128, 1),
    ("single", "decode", 1, 128, 1), ("single", "decode", 4, 512, 1), ("single", "decode", 16, 256, 1),
    ("tp2", "prefill", 1, 256, 1), ("tp2", "prefill", 4, 128, 1),
    ("tp2", "decode", 1, 128, 1), ("tp2", "decode", 16, 256, 1),
    ("pp2", "prefill", 1, 256, 1), ("pp2", "prefill", 4, 128, 2),
    ("pp2", "decode", 4, 512, 1), ("pp2", "decode", 16, 256, 2),
)  # fmt: skip
QUICK_CASES = (
    ("single", "prefill", 1, 128, 1), ("single", "decode", 1, 128, 1), ("single", "decode", 8, 256, 1),
    ("tp2", "prefill", 1, 128, 1), ("tp2", "decode", 8, 256, 1),
    ("pp2", "prefill", 2, 64, 2), ("pp2", "decode", 8, 256, 2),
)  # fmt: skip


def default_cases(quick: bool = False) -> list[Case]:
    """The benchmark's grid, or a small one for the test (about a minute on 2 cores)."""
    from ._e2e_run import Case

    return [Case(*c) for c in (QUICK_CASES if quick else FULL_CASES)]


def predict(model: str, case: Case, platform: str = "cpu-local") -> float:
    """The cost model's TTFT (prefill) or TBT (decode) of ``case``, seconds (AnalyticEvaluator, uniform plan)."""
    spec = get_model(model)
    context = case.seq if case.phase == Phase.DECODE else 0
    graph = coarsen(build_graph(spec, phase=case.phase, batch=case.batch, seq=case.seq, context=context), "layer")
    plan = Plan.uniform(spec.layers, tp=case.tp, pp=case.pp, micro_batches=case.micro_batches)
    metrics = AnalyticEvaluator(graph, get_platform(platform)).evaluate(plan)
    if not metrics.feasible:
        raise ValueError(f"{case.label}: the cost model says infeasible: {metrics.reason}")
    value = metrics.ttft_s if case.phase == Phase.PREFILL else metrics.tbt_s
    assert value is not None
    return float(value)


def validate_cpu(
    model: str = DEFAULT_MODEL,
    cases: Sequence[Case] | None = None,
    *,
    platform: str = "cpu-local",
    reps: int = 5,
    steps: int = 6,
    seed: int = 0,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``cases`` (default: :func:`default_cases`) and compare with the cost model.

    Returns ``{"model", "platform", "profile", "calibration_reason", "machine", "cases": [...], "summary",
    "checks", "other_processes_cores"}`` (``calibration_reason``: why the profile is not this CPU's, or None;
    CPU other processes used meanwhile: > 0.15 makes the timings suspect);
    each case has ``predicted_s``, ``measured_s`` (median over ``reps``; decode: the
    steady-state step interval over ``steps`` steps, see :mod:`._e2e_run`), ``error_pct``
    ((predicted - measured) / measured), ``tolerance_pct`` and ``ok``. ``checks`` gives, per
    2-process mode, the relative difference of its logits from the unsharded model (the
    sharding is right when tiny).
    """
    from ._e2e_model import check_llama_style
    from ._e2e_run import run_single

    say = progress or _progress
    spec = get_model(model)
    check_llama_style(spec)
    todo = list(cases) if cases is not None else default_cases()
    single = [c for c in todo if c.mode == "single"]
    multi = [c for c in todo if c.mode != "single"]
    checks: dict[str, float] = {}
    with OtherLoad() as load:
        singles = run_single(spec, single, reps=reps, steps=steps, seed=seed, progress=say)
        measured = {id(c): r for c, r in zip(single, singles, strict=True)}
        if multi:
            results, checks = _run_distributed(spec, multi, reps=reps, steps=steps, seed=seed, check=check, say=say)
            measured.update({id(c): r for c, r in zip(multi, results, strict=True)})
    plat = get_platform(platform)
    rows = []
    for case in todo:
        got = measured[id(case)]
        pred = predict(model, case, platform)
        err = (pred - got["measured_s"]) / got["measured_s"] * 100.0
        tol = TOLERANCE_PCT[case.mode]
        rows.append({**asdict(case), "label": case.label, "predicted_s": pred, "measured_s": got["measured_s"],
                     "runs_s": got["runs_s"], "error_pct": err, "tolerance_pct": tol,
                     "ok": abs(err) <= tol})  # fmt: skip
    summary = {}
    for mode in TOLERANCE_PCT:
        errs = [abs(r["error_pct"]) for r in rows if r["mode"] == mode]
        if errs:
            summary[mode] = {"cases": len(errs), "max_abs_error_pct": max(errs),
                             "mean_abs_error_pct": sum(errs) / len(errs),
                             "tolerance_pct": TOLERANCE_PCT[mode]}  # fmt: skip
    return {"model": model, "platform": platform, "profile": plat.profile.name, "dtype": spec.dtype,
            "calibration_reason": foreign_reason(plat.profile.name, plat.profile.fit),
            "machine": machine_info("cpu"), "threads_per_process": 1, "reps": reps, "decode_steps": steps,
            "cases": rows, "summary": summary, "checks": checks,
            "other_processes_cores": load.cores}  # fmt: skip


def _run_distributed(spec: Any, cases: list[Case], *, reps: int, steps: int, seed: int, check: bool,
                     say: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, float]]:  # fmt: skip
    """All TP2/PP2 cases in one spawn of 2 gloo processes (torch import and init paid once)."""
    import torch.multiprocessing as mp

    from ._e2e_run import dist_worker

    say(f"{len(cases)} two-process cases (gloo, 2 ranks)")
    with tempfile.TemporaryDirectory(prefix="paratune-e2e-") as tmp:
        args = (2, tmp, asdict(spec), [asdict(c) for c in cases], reps, steps, seed, check)
        mp.spawn(dist_worker, args=args, nprocs=2, join=True)
        data = json.loads((Path(tmp) / "results.json").read_text())
    for case, res in zip(cases, data["cases"], strict=True):
        say(f"{case.label}: {res['measured_s'] * 1e3:.1f} ms")
    return data["cases"], data["checks"]


def format_table(result: dict[str, Any]) -> str:
    """The per-case table the benchmark prints."""
    lines = [f"{'case':<44} {'predicted ms':>12} {'measured ms':>12} {'error %':>8}  ok"]
    for r in result["cases"]:
        lines.append(f"{r['label']:<44} {r['predicted_s'] * 1e3:>12.2f} {r['measured_s'] * 1e3:>12.2f} "
                     f"{r['error_pct']:>+8.1f}  {'yes' if r['ok'] else 'NO'}")  # fmt: skip
    for mode, s in result["summary"].items():
        lines.append(f"{mode}: max |error| {s['max_abs_error_pct']:.1f}%, mean {s['mean_abs_error_pct']:.1f}% "
                     f"over {s['cases']} cases (target <= {s['tolerance_pct']:.0f}%)")  # fmt: skip
    if result.get("calibration_reason"):
        lines.append(f"note: {result['calibration_reason']}")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)
