"""Interleaved 1F1B: the pipeline bubble the makespan and the simulator measure, against the closed form.

(a) ``training_makespan`` on uniform chunks with free hops: bubble = step / (m (f + b)) - 1,
which Narayanan et al. (2021) give as (p - 1) / (v m). (b) llama2-7b training (batch 32,
seq 2048) on one DGX H100, tp 2 x pp 4, 8 micro-batches, v = 1, 2, 4: the simulator's and
the analytic evaluator's step, and the bubble = (step - tail) / (m x the slowest stage's
work per micro-batch) - 1, where the real hops (v times more of them) and uneven end
chunks (embedding, head) add to the closed form.

Usage: ``python benchmarks/interleaved_bubble.py [--json] [--out FILE]``.
"""

from __future__ import annotations

from typing import Any

from _figures import emit, figure_parser, provenance

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, get_platform
from paratune.costmodel._pipeline import training_makespan
from paratune.costmodel._simbuild import build_input
from paratune.graphs import build_graph, coarsen


def closed_form_rows() -> list[dict[str, Any]]:
    rows = []
    for p, m in ((4, 8), (4, 16), (8, 16)):
        for v in (1, 2, 4):
            n = p * v
            step = training_makespan([1.0 / v] * n, [2.0 / v] * n, [0.0] * (n - 1), [0.0] * p, m, False, virtual=v)
            rows.append({"p": p, "m": m, "v": v, "bubble": step / (3.0 * m) - 1, "closed_form": (p - 1) / (v * m)})
    return rows


def model_rows() -> list[dict[str, Any]]:
    graph = coarsen(build_graph("llama2-7b", phase="train", batch=32, seq=2048), "layer")
    platform = get_platform("dgx-h100")
    sim, ev = Simulator(graph, platform), AnalyticEvaluator(graph, platform)
    p, m, rows = 4, 8, []
    for v in (1, 2, 4):
        plan = Plan.uniform(graph.meta.n_layers, tp=2, pp=p, micro_batches=m, virtual_stages=v)
        s, a = sim.evaluate(plan), ev.evaluate(plan)
        inp = build_input(sim, plan, sim.placement(plan), 1.0 / m).inp
        tails = list(inp.dp_dur or [0.0] * p)
        for i, g in enumerate(inp.stage_of):
            if sim.once[i]:
                tails[g] += inp.dur[i]
        work = max(s.stage_times_s)
        rows.append({
            "v": v, "simulator_step_s": s.latency_s, "analytic_step_s": a.latency_s,
            "bubble": (s.latency_s - max(tails)) / (m * work) - 1, "closed_form": (p - 1) / (v * m),
            "peak_memory_gib": s.max_memory_bytes / 2**30,
        })  # fmt: skip
    return rows


def main() -> None:
    args = figure_parser(__doc__ or "").parse_args()
    figures = {"closed_form": closed_form_rows(), "llama2-7b_tp2_pp4_m8": model_rows(), "provenance": provenance()}
    if emit(figures, args.out, args.json):
        return
    print("(a) training_makespan, uniform chunks, free hops")
    for r in figures["closed_form"]:
        print(f"  p={r['p']} m={r['m']:2d} v={r['v']}: bubble {r['bubble']:.4f}  closed form {r['closed_form']:.4f}")
    print("(b) llama2-7b train b32 s2048, dgx-h100, tp2 pp4 m8")
    for r in figures["llama2-7b_tp2_pp4_m8"]:
        print(
            f"  v={r['v']}: step {r['simulator_step_s'] * 1e3:.1f} ms (analytic {r['analytic_step_s'] * 1e3:.1f} ms)"
            f"  bubble {r['bubble']:.4f}  closed form {r['closed_form']:.4f}  peak {r['peak_memory_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
