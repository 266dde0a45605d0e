"""The serving simulator against a real continuous-batching run on this CPU (a benchmark, not a timed test).

A small decoder-only model in torch (``_serving_engine.py``: 4 layers, hidden 512, random weights, fp32, one thread
per process) is served by a minimal continuous-batching engine with the simulator's scheduler rules, in one process
and as TP2 (two gloo processes), under Poisson arrivals. For each: a *calibration* run (its own seed and rate)
times every iteration; a linear iteration cost over the :class:`~paratune.serving.Mix` fields (``a + b
prefill_tokens + c prefill_attention + d decode_seqs + e decode_context + f sampled``, least squares with the
coefficients kept non-negative) is fitted on those timings; then a *measurement* run right after it, on other
arrivals, records each request's TTFT and TPOT, and ``paratune.serving.simulate_requests`` replays the same
arrivals and lengths on the fitted cost (and, to isolate the scheduling model, on a cost fitted on the measurement
run's own iterations). Prints TTFT / TPOT p50 and p90 measured and simulated (target: p50 within 15%) and the fit's
error on the measurement run's iterations (held out); ``--out FILE`` writes the JSON. Other load on the machine
shows up as noise: ``--repeats N`` repeats the pair N times; the engine is timed on its CPU time by default
(``--clock cpu``, a dedicated core: docs/serving.md), ``--clock wall`` takes real time.

Run: ``python benchmarks/serving_cpu.py [--quick] [--tp 1,2] [--clock wall|cpu] [--repeats N] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

FEATURES = ("prefill_tokens", "prefill_attention", "decode_seqs", "decode_context", "sampled")
TARGET = 0.15


@dataclass(frozen=True)
class FittedCost:
    """The engine's own iteration time, fitted on its iterations: intercept + coefficients x Mix fields."""

    coef: tuple[float, ...]
    pp: int = 1
    kv_capacity_tokens: int = 1 << 30  # the engine keeps a slot per running request: no KV limit below the batch

    def latency_s(self, mix: Any) -> float:
        return self.coef[0] + sum(c * getattr(mix, f) for c, f in zip(self.coef[1:], FEATURES, strict=True))

    def interval_s(self, mix: Any) -> float:
        return self.latency_s(mix)


def fit(iterations: list[dict[str, float]]) -> FittedCost:
    """Non-negative least squares of the iteration durations on [1, Mix fields].

    Absolute errors, not relative: the sum of the predicted times then matches the busy time, which is what
    queueing depends on (a relative fit under-predicts the long prefill iterations that dominate it).
    """
    x = np.array([[1.0, *(it[f] for f in FEATURES)] for it in iterations])
    y = np.array([it["duration_s"] for it in iterations])
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    keep = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while keep:  # drop the most negative coefficient and refit until none is negative (six features: a few rounds)
        sol = np.linalg.lstsq(x[:, keep] / scale[keep], y, rcond=None)[0]
        if sol.min() >= 0:
            coef[keep] = sol
            break
        keep.pop(int(np.argmin(sol)))
    return FittedCost(tuple(float(c) for c in coef / scale))


def fit_error(cost: FittedCost, iterations: list[dict[str, float]]) -> dict[str, float]:
    from paratune.serving import Mix

    pred = np.array([cost.latency_s(Mix(**{f: it[f] for f in FEATURES})) for it in iterations])  # type: ignore[arg-type]
    y = np.array([it["duration_s"] for it in iterations])
    rel = pred / y - 1
    return {"median_abs_pct": float(np.median(np.abs(rel)) * 100), "total_pct": float((pred.sum() / y.sum() - 1) * 100)}


def requests_of(traffic_seed: int, rate: float, n: int, prompt: str, output: str) -> Any:
    from paratune.serving import sample_requests, traffic_from_spec

    return sample_requests(traffic_from_spec(f"{prompt}/{output}", rate=rate), n, traffic_seed)


def measured_latencies(record: dict[str, Any], warmup: float) -> dict[str, dict[str, float]]:
    """TTFT and TPOT percentiles (ms) of a run's requests after the warmup fraction, as the simulator counts them."""
    reqs = sorted(record["requests"], key=lambda r: r["arrival_s"])[int(warmup * len(record["requests"])) :]
    ttft = np.array([r["first_s"] - r["arrival_s"] for r in reqs]) * 1e3
    tpot = np.array([(r["finish_s"] - r["first_s"]) / (r["output"] - 1) for r in reqs if r["output"] > 1]) * 1e3
    return {
        k: {p: float(np.percentile(v, float(p[1:]))) for p in ("p50", "p90")}
        for k, v in (("ttft", ttft), ("tpot", tpot))
    }


def execute(tp: int, cfg: Any, runs: list[Any], clock: str) -> list[dict[str, Any]]:
    """Serve each of ``runs`` (Requests) with ``tp`` processes; the rank-0 records."""
    from _serving_engine import run, tp_worker

    specs = [
        {"arrivals": r.arrival_s.tolist(), "prompts": r.prompt.tolist(), "outputs": r.output.tolist()} for r in runs
    ]
    if tp == 1:
        return [run(cfg, s["arrivals"], s["prompts"], s["outputs"], clock=clock) for s in specs]
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="paratune-serving-") as tmp:
        mp.spawn(tp_worker, args=(tp, tmp, asdict(cfg), specs, clock), nprocs=tp, join=True)
        return json.loads((Path(tmp) / "results.json").read_text())


def compare(tp: int, args: argparse.Namespace) -> dict[str, Any]:
    from _serving_engine import EngineConfig

    from paratune.serving import Deployment, Pool, Requests, simulate_requests

    cfg = EngineConfig(max_num_seqs=args.max_num_seqs, max_batched_tokens=args.max_batched_tokens)
    # each measurement run right after its own calibration run: the machine's load drifts over minutes
    pairs = [
        (
            requests_of(args.seed + 100 + k, args.calib_rate, args.calib_requests, args.prompt, args.output),
            requests_of(args.seed + k, args.rate, args.requests, args.prompt, args.output),
        )
        for k in range(args.repeats)
    ]
    records = execute(tp, cfg, [r for pair in pairs for r in pair], args.clock)
    dep = Deployment((Pool(tp=tp, max_num_seqs=cfg.max_num_seqs, max_batched_tokens=cfg.max_batched_tokens),))
    rows = []
    for k, (_, reqs) in enumerate(pairs):
        calib_rec, rec = records[2 * k], records[2 * k + 1]
        cost = fit(calib_rec["iterations"])
        meas = measured_latencies(rec, args.warmup)
        replay = Requests(np.asarray(reqs.arrival_s), np.asarray(reqs.prompt), np.asarray(reqs.output))
        sim = simulate_requests(dep, replay, {"mixed": cost}, warmup=args.warmup)
        # the same run's own iterations as the cost: what is left is the scheduling model's error alone
        own = simulate_requests(dep, replay, {"mixed": fit(rec["iterations"])}, warmup=args.warmup)
        rows.append(
            {
                "coef": dict(zip(("intercept", *FEATURES), cost.coef, strict=True)),
                "fit_error_in_sample": fit_error(cost, calib_rec["iterations"]),
                "calibration_wall_s": calib_rec["wall_s"],
                "measured_ms": meas,
                "simulated_ms": {"ttft": sim.ttft_ms, "tpot": sim.tpot_ms},
                "error_pct": _errors(sim, meas),
                "simulated_own_fit_ms": {"ttft": own.ttft_ms, "tpot": own.tpot_ms},
                "error_own_fit_pct": _errors(own, meas),
                "fit_error_held_out": fit_error(cost, rec["iterations"]),
                "iterations": len(rec["iterations"]),
                "busy_fraction": sum(it["duration_s"] for it in rec["iterations"]) / rec["wall_s"],
                "wall_s": rec["wall_s"],
            }
        )
    return {"tp": tp, "runs": rows}


def _errors(sim: Any, meas: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {p: (getattr(sim, f"{k}_ms")[p] / meas[k][p] - 1) * 100 for p in ("p50", "p90")} for k in ("ttft", "tpot")
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'engine':7} {'run':>3} {'metric':6} {'measured p50':>12} {'sim p50':>8} {'err':>7} "
        f"{'measured p90':>12} {'sim p90':>8} {'err':>7}   own-fit err p50/p90   busy  fit error (held out)"
    ]
    for case in result["cases"]:
        for k, row in enumerate(case["runs"]):
            for m in ("ttft", "tpot"):
                me, si, er = row["measured_ms"][m], row["simulated_ms"][m], row["error_pct"][m]
                own, held = row["error_own_fit_pct"][m], row["fit_error_held_out"]
                lines.append(
                    f"{'TP' + str(case['tp']):7} {k:>3} {m:6} {me['p50']:10.1f}ms {si['p50']:6.1f}ms "
                    f"{er['p50']:+6.1f}% {me['p90']:10.1f}ms {si['p90']:6.1f}ms {er['p90']:+6.1f}%   "
                    f"{own['p50']:+6.1f}% {own['p90']:+6.1f}%      {row['busy_fraction']:.2f}  "
                    f"{held['median_abs_pct']:.1f}% median, {held['total_pct']:+.1f}% total"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 requests per run, TP1 only (the slow test's size)")
    ap.add_argument("--tp", default="1,2", help="engines to run: 1, 2 or 1,2")
    ap.add_argument("--rate", type=float, default=4.0, help="measurement arrivals, requests/s")
    ap.add_argument("--calib-rate", type=float, default=3.0, help="calibration arrivals, requests/s")
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--calib-requests", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1, help="measurement runs (other seeds) per engine")
    ap.add_argument("--prompt", default="uniform:16-160", help="prompt length spec")
    ap.add_argument("--output", default="uniform:8-40", help="output length spec")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-batched-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="cpu",
        help="cpu (default): the process's CPU time while busy, idle gaps skipped (a dedicated core on a shared "
        "machine); wall: real time (on a quiet machine)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.calib_requests, args.tp = 60, 60, "1"
    tps = [int(t) for t in args.tp.split(",")]
    cases = []
    for tp in tps:
        print(f"TP{tp}: {args.repeats} x (a calibration run of {args.calib_requests} requests at {args.calib_rate}/s, "
              f"a measurement run of {args.requests} at {args.rate}/s)...", flush=True)  # fmt: skip
        cases.append(compare(tp, args))
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "cases": cases}
    print(format_table(result))
    worst = max(abs(r["error_pct"][m]["p50"]) for c in cases for r in c["runs"] for m in ("ttft", "tpot"))
    print(f"worst p50 error {worst:.1f}% (target {TARGET * 100:.0f}%)")
    result["worst_p50_error_pct"] = worst
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")
    return 0 if worst <= TARGET * 100 else 1


if __name__ == "__main__":
    sys.exit(main())
