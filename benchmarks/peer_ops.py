"""One decode or prefill step priced op by op in paratune and in NVIDIA AIConfigurator, side by side.

Why: a step-time disagreement between the two tools (``peer_aiconfigurator.py``, ``--serving``) says
nothing about which op carries it. This prints the peer's per-op latency dict of one static step
(``cli_estimate(mode="static")``, ``osl`` 2: one generation step at KV length ``isl + 1``) next to
paratune's kernel times of the same step (``KernelPricer.op_times`` on the zoo graph, summed over
layers, with the serving engine's own MoE terms where the profile has them), grouped by the peer's
op names. paratune's all-reduces are not in its column (the peer's MoE dispatch and ``ar`` rows
are); ``--engine-terms off`` prices with the TensorRT-LLM terms whatever the backend (the model
before per-engine MoE terms).

Run: ``python benchmarks/peer_ops.py MODEL SYSTEM --tp 2 --batch 929 --isl 1152 [--backend sglang]
[--dtype bf16] [--phase decode|prefill] [--engine-terms on|off]``, e.g. the Mixtral-8x7B decode step
of the B200 SGLang serving scenario: ``python benchmarks/peer_ops.py mixtral-8x7b b200_sxm --tp 2
--batch 929 --isl 1152 --backend sglang``. Exits with 2 and one line when AIConfigurator is missing.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_aiconfigurator import MODELS, PLATFORMS, _PeerModels, _quiet, peer_available

#: paratune op (without its layer prefix) -> the peer's op of the same work (``context_`` / ``generation_``).
PEER_OP = {
    "embed": "embedding",
    "attn_norm": "add_norm_1",
    "attn_residual": "add_norm_1",
    "attn_qkv": "qkv_gemm",
    "attn_rope": "qkv_gemm",
    "attention": "attention",
    "attn_out": "proj_gemm",
    "mlp_norm": "add_norm_2",
    "mlp_residual": "add_norm_2",
    "mlp_up": "gate_ffn1_gemm",
    "mlp_act": "act_gate",
    "mlp_down": "ffn2_gemm",
    "moe_router": "router_gemm",
    "moe_up": "moe",
    "moe_act": "moe",
    "moe_down": "moe",
    "final_norm": "logits_gemm",
    "lm_head": "logits_gemm",
}


def peer_ops(args: argparse.Namespace) -> dict[str, float]:
    """The peer's per-op milliseconds of the step (its op names without the phase prefix)."""
    from aiconfigurator.cli.api import cli_estimate

    quant = {"gemm_quant_mode": "bfloat16", "kvcache_quant_mode": "bfloat16", "fmha_quant_mode": "bfloat16"}
    if args.dtype == "fp8":
        quant.update(gemm_quant_mode="fp8", kvcache_quant_mode="fp8")
    if args.model == "mixtral-8x7b":
        quant.update(moe_quant_mode=quant["gemm_quant_mode"], moe_tp_size=args.tp, moe_ep_size=1)
    models = _PeerModels()
    try:
        with _quiet():
            result = cli_estimate(
                models.path(args.model), args.system, mode="static", backend_name=args.backend, isl=args.isl, osl=2,
                batch_size=args.batch, tp_size=args.tp, pp_size=1, stride=1, **quant,
            )  # fmt: skip
    finally:
        models.close()
    summary = result.summary
    ops = summary.get_generation_latency_dict() if args.phase == "decode" else summary.get_context_latency_dict()
    prefix = "generation_" if args.phase == "decode" else "context_"
    return {k.removeprefix(prefix): float(v) for k, v in ops.items()}


def paratune_ops(args: argparse.Namespace) -> dict[str, float]:
    """paratune's kernel milliseconds of the same step, summed over layers under the peer's op names."""
    from paratune.costmodel import KernelPricer, OpTable, get_platform
    from paratune.graphs import build_graph

    zoo = MODELS[args.model][0] + (":dtype=fp8" if args.dtype == "fp8" else "")
    platform = get_platform(PLATFORMS[args.system])
    context = args.isl + 1 if args.phase == "decode" else 0
    graph = build_graph(zoo, phase=args.phase, batch=args.batch, seq=args.isl, context=context)
    meta = graph.meta
    kv_dtype = str((meta.spec.get("kv_dtype") if isinstance(meta.spec, dict) else None) or meta.dtype)
    engine = args.backend if args.engine_terms == "on" else None
    pricer = KernelPricer(
        platform, meta.dtype, phase=meta.phase, batch=meta.batch, q_len=args.isl if args.phase == "prefill" else 1,
        kv_dtype=kv_dtype, engine=engine,
    )  # fmt: skip
    ops = [op for task in graph.tasks for op in task.ops]
    out: dict[str, float] = {}
    for op, seconds in zip(ops, pricer.op_times(OpTable.from_ops(ops), args.tp), strict=True):
        name = PEER_OP.get(re.sub(r"^L\d+\.", "", op.name), op.name)
        out[name] = out.get(name, 0.0) + 1e3 * float(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("system", choices=sorted(PLATFORMS))
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--isl", type=int, default=1024, help="prompt tokens (decode: the KV length is isl + 1)")
    parser.add_argument("--backend", choices=("trtllm", "sglang", "vllm"), default="trtllm")
    parser.add_argument("--dtype", choices=("bf16", "fp8"), default="bf16")
    parser.add_argument("--phase", choices=("decode", "prefill"), default="decode")
    parser.add_argument("--engine-terms", choices=("on", "off"), default="on")
    args = parser.parse_args(argv)
    if not peer_available():
        print("skipped: aiconfigurator is not installed (pip install aiconfigurator)")
        return 2
    peer, ours = peer_ops(args), paratune_ops(args)
    a = args
    print(f"{a.model} {a.dtype} {a.system} tp{a.tp} b{a.batch} isl{a.isl} {a.phase} {a.backend}")
    print(f"{'op':24s} {'peer ms':>9s} {'paratune ms':>12s} {'ratio':>7s}")
    for name in list(peer) + [n for n in ours if n not in peer]:
        p, o = peer.get(name), ours.get(name)
        if not p and not o:
            continue
        ratio = f"{o / p:7.3f}" if p and o is not None else "      -"
        peer_ms, ours_ms = (math.nan if x is None else x for x in (p, o))
        print(f"{name:24s} {peer_ms:9.3f} {ours_ms:12.3f} {ratio}")
    tp, to = sum(peer.values()), sum(ours.values())
    print(f"{'total (paratune: no all-reduce)':24s} {tp:9.3f} {to:12.3f} {to / tp:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
