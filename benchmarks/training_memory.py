"""Training memory against the published formulas: activations (Korthikanti et al.) and model states (ZeRO), target 5%.

(a) Activations per transformer layer and device, Korthikanti et al. 2022 ("Reducing
Activation Recomputation in Large Transformer Models", Table 2, 16-bit, with dropout):
s b h (10 + 24/t + 5 a s / (h t)) plain, s b h (34/t + 5 a s / (h t)) with sequence
parallelism, s b h (10 + 24/t) with selective recomputation, 34 s b h / t with both,
2 s b h with full recomputation; against paratune's per-layer stash columns
(``stash``, ``stash_sp``, ``stash_sel``, ``stash_sel_sp``, ``inputs``) of the zoo's
``attention=unfused,dropout=true`` graphs of the paper's Table 3 shapes (22B, GPT-3
175B, 530B, 1T; s = 2048, micro-batch b of the table) at t = 1 and t = 8.

(b) Model states per GPU, ZeRO paper (Rajbhandari et al. 2020, section 5, mixed-precision
Adam, K = 12): (2 + 2 + K) Psi for plain data parallelism, 2 Psi + 2 Psi + K Psi / N_d
(ZeRO-1), 2 Psi + (2 + K) Psi / N_d (ZeRO-2), (2 + 2 + K) Psi / N_d (ZeRO-3); the paper's
own example (Psi = 7.5 B, N_d = 64: 120, 31.4, 16.6, 1.9 GB) checks the transcription, and
``Metrics.memory_breakdown`` (weights + gradients + optimizer_state) of the analytic
evaluator on llama2-7b (Psi = its parameters, tp = pp = 1, 64 replicas; and hybrid
sharding, N_d = 8) is compared term by term. Where the evaluator does not fill the
breakdown yet, (b) says so and checks only the transcription.

(c) The first pipeline stage of GPT-3 175B (t = 8, p = 8, 1F1B with 8 micro-batches of
b = 1) keeps L layers' worth of activations (Korthikanti et al., section 4.2.3): the
per-layer formulas of (a) times L = 96, against ``memory_breakdown["activations"]`` of
the analytic evaluator and of the simulator.

Usage: ``python benchmarks/training_memory.py [--json] [--out FILE] [--check]``
(``--check``: exit 1 when a figure misses the 5% target).
"""

from __future__ import annotations

import sys
from typing import Any

TARGET_REL_ERROR = 0.05
K = 12.0  # optimizer state bytes per parameter (fp32 master weights + 2 Adam moments)
#: Korthikanti et al. Table 3: name -> (hidden, heads, micro-batch); s = 2048, ffn = 4 h.
SHAPES = {
    "22B": (6144, 64, 4),
    "gpt3-175b": (12288, 96, 1),
    "530B": (20480, 128, 1),
    "1T": (25600, 160, 1),
}
SEQ = 2048
#: ZeRO paper, figure 1: Psi = 7.5 B, N_d = 64, GB (1e9 bytes) per GPU for ZeRO 0..3.
ZERO_PAPER = {"psi": 7.5e9, "n_d": 64, "gb": [120.0, 31.4, 16.6, 1.9]}
MODES = {
    "plain": ("stash", False, False),
    "sp": ("stash_sp", True, False),
    "selective": ("stash_sel", False, True),
    "selective+sp": ("stash_sel_sp", True, True),
}


def korthikanti_bytes(s: int, b: int, h: int, a: int, t: int, *, sp: bool, selective: bool) -> float:
    """Activation bytes per layer per device (Korthikanti et al. 2022, Table 2)."""
    core = 0.0 if selective else 5.0 * a * s / (h * t)
    return s * b * h * ((34.0 / t if sp else 10.0 + 24.0 / t) + core)


def zero_bytes(psi: float, n_d: int, zero: int) -> dict[str, float]:
    """Model-state bytes per GPU by term (ZeRO paper, section 5)."""
    return {
        "weights": 2.0 * psi / (n_d if zero >= 3 else 1),
        "gradients": 2.0 * psi / (n_d if zero >= 2 else 1),
        "optimizer_state": K * psi / (n_d if zero >= 1 else 1),
    }


def activation_rows() -> list[dict[str, Any]]:
    from paratune.costmodel import AnalyticEvaluator, get_platform
    from paratune.graphs import build_graph

    platform = get_platform("dgx-h100x8")
    rows = []
    for name, (h, a, b) in SHAPES.items():
        model = (
            f"gpt3-175b:layers=2,hidden={h},heads={a},kv_heads={a},ffn={4 * h},vocab=51200,"
            "attention=unfused,dropout=true"
        )
        ev = AnalyticEvaluator(build_graph(model, phase="train", batch=b, seq=SEQ), platform)
        for t in (1, 8):
            cols = ev.tp_tables(t).lists
            cases = [(mode, col, sp, sel) for mode, (col, sp, sel) in MODES.items()]
            for mode, col, sp, sel in cases:
                ours = cols[col][2] - cols[col][1]  # unit 1: layer 0
                ref = korthikanti_bytes(SEQ, b, h, a, t, sp=sp, selective=sel)
                rows.append(_row("activations", f"{name} t{t}", mode, ours, ref))
            ours = cols["inputs"][2] - cols["inputs"][1]
            rows.append(_row("activations", f"{name} t{t}", "full recompute", ours, 2.0 * SEQ * b * h))
    return rows


def zero_rows() -> tuple[list[dict[str, Any]], str]:
    rows = []
    for zero, gb in enumerate(ZERO_PAPER["gb"]):
        total = sum(zero_bytes(ZERO_PAPER["psi"], ZERO_PAPER["n_d"], zero).values())
        rows.append(_row("zero paper example", "7.5B N_d=64", f"zero {zero}", total, gb * 1e9))
    from paratune.costmodel import AnalyticEvaluator, Plan, get_platform
    from paratune.graphs import build_graph, get_model

    spec = get_model("llama2-7b")
    psi = float(spec.params())
    ev = AnalyticEvaluator(build_graph("llama2-7b", phase="train", batch=64, seq=2048), get_platform("dgx-h100x8"))
    note = ""
    for zero in (0, 1, 2, 3):
        for n_d, group in ((64, 0), (8, 8)):
            if zero == 0 and group:
                continue
            plan = Plan.uniform(spec.layers, replicas=64, micro_batches=1, zero=zero, shard_group=group)
            got = ev.evaluate(plan).memory_breakdown
            if not got:
                note = "the analytic evaluator does not fill Metrics.memory_breakdown yet: only the paper example"
                return rows, note
            ref = zero_bytes(psi, n_d, zero)
            for term, value in ref.items():
                rows.append(_row("zero llama2-7b", f"N_d={n_d}", f"zero {zero} {term}", got.get(term, 0.0), value))
    return rows, note


def pipeline_rows() -> tuple[list[dict[str, Any]], str]:
    """First-stage activations of GPT-3 175B under 1F1B (Korthikanti et al., section 4.2.3).

    With 1F1B the first of p stages keeps p micro-batches of its L/p layers: L layers'
    worth, whatever p, so the paper's total is L times the per-layer bytes (its
    embedding-dropout and output-layer terms, under 1% here, left out). Compared with
    ``memory_breakdown["activations"]`` (the most loaded device) of the analytic evaluator and
    of the simulator (tensor lifetimes).
    """
    from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, get_platform
    from paratune.graphs import build_graph, coarsen

    h, a, b = SHAPES["gpt3-175b"]
    layers, t, p = 96, 8, 8
    model = "gpt3-175b:attention=unfused,dropout=true,vocab=51200"
    graph = coarsen(build_graph(model, phase="train", batch=b * p, seq=SEQ), "layer")
    platform = get_platform("dgx-h100x8")
    evaluators = {
        "analytic": AnalyticEvaluator(graph, platform).evaluate,
        "simulator": Simulator(graph, platform).evaluate,
    }
    rows: list[dict[str, Any]] = []
    notes = []
    for name, evaluate in evaluators.items():
        for mode, (_, sp, sel) in MODES.items():
            plan = Plan.uniform(layers, tp=t, pp=p, micro_batches=p, sequence_parallel=sp, selective_recompute=sel)
            met = evaluate(plan)
            got = met.memory_breakdown.get("activations")
            if got is None:  # not filled, or an evaluator that refuses the technique: it says why
                notes.append(f"{name} {mode}: no activation figure ({met.reason or 'memory_breakdown not filled'})")
                continue
            ref = layers * korthikanti_bytes(SEQ, b, h, a, t, sp=sp, selective=sel)
            rows.append(_row(f"first stage {name}", f"175B t{t} p{p} m{p}", mode, got, ref))
    return rows, "; ".join(notes)


def _row(part: str, case: str, mode: str, ours: float, ref: float) -> dict[str, Any]:
    err = (ours - ref) / ref if ref else 0.0
    return {
        "part": part,
        "case": case,
        "mode": mode,
        "paratune_gib": ours / 2**30,
        "formula_gib": ref / 2**30,
        "rel_error": err,
        "within_target": abs(err) <= TARGET_REL_ERROR,
    }


def main() -> int:
    from _figures import emit, figure_parser, provenance

    parser = figure_parser(__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure misses the 5%% target")
    args = parser.parse_args()
    rows = activation_rows()
    zrows, note = zero_rows()
    prows, pnote = pipeline_rows()
    rows += zrows + prows
    missed = [r for r in rows if not r["within_target"]]
    figures = {
        "provenance": provenance(),
        "target_rel_error": TARGET_REL_ERROR,
        "rows": rows,
        "max_abs_rel_error": max(abs(r["rel_error"]) for r in rows),
        "missed": len(missed),
        "notes": [n for n in (note, pnote) if n],
    }
    if not emit(figures, args.out, args.json):
        print(f"{'part':<26} {'case':<14} {'mode':<28} {'paratune GiB':>13} {'formula GiB':>12} {'error':>8}")
        for r in rows:
            print(
                f"{r['part']:<26} {r['case']:<14} {r['mode']:<28} {r['paratune_gib']:>13.4f} "
                f"{r['formula_gib']:>12.4f} {100 * r['rel_error']:>7.2f}%{'' if r['within_target'] else '  MISSED'}"
            )
        print(f"max |error| {100 * figures['max_abs_rel_error']:.2f}% (target {100 * TARGET_REL_ERROR:.0f}%)")
        for n in figures["notes"]:
            print(f"note: {n}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
