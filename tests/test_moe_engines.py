"""A serving engine's own MoE terms (a profile's ``moe_engines``): parsed, chosen by the pricer and the iteration model.

Why: the engines run different MoE kernels. Mixtral-8x7B's block at TP 2 and ~929 tokens
measures 0.36 ms with TensorRT-LLM's grouped GEMM on B200 and 0.78 ms with SGLang's Triton
fused MoE (AIConfigurator's ``moe_perf`` tables), so an SGLang deployment priced with the
TensorRT-LLM terms ran its decode step 2x too fast (the peer's largest serving disagreement).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from paratune.costmodel import KernelPricer, OpTable, get_platform
from paratune.costmodel._iteration import IterationModel
from paratune.costmodel._moe import MoeModel
from paratune.costmodel._profile import Profile
from paratune.graphs import ModelSpec, build_spec_graph, get_model

SPEC = ModelSpec(name="moe", layers=2, hidden=1024, heads=8, kv_heads=8, ffn=512, vocab=8, experts=16, top_k=4)
FAST = MoeModel(0.9, 40.0, 300.0, 0.9, 2.0, 16e-6, 4e-13)
SLOW = dataclasses.replace(FAST, compute_peak=0.3, overhead_s=30e-6)


def _platform(engines: dict[str, dict[str, MoeModel]], preset: str = "dgx-h100:profile=h100-vidur"):
    base = get_platform(preset)
    prof = dataclasses.replace(base.profile, moe={"bf16": FAST, "fp8": FAST}, moe_engines=engines)
    return dataclasses.replace(base, profile=prof)


def test_moe_engines_round_trip_choose_and_refuse() -> None:
    prof = _platform({"sglang": {"bf16": SLOW}}).profile
    data = prof.to_dict()
    back = Profile.from_dict(data, "t")
    assert back.to_dict() == data
    assert back.moe_engines["sglang"]["bf16"].compute_peak == pytest.approx(0.3, rel=1e-12)
    # The engine's own terms where it has them (fp16 borrows its bf16), the default ones elsewhere.
    assert back.moe_model("bf16", "sglang") == back.moe_engines["sglang"]["bf16"]
    assert back.moe_model("fp16", "sglang") == back.moe_engines["sglang"]["bf16"]
    assert back.moe_model("fp8", "sglang") == back.moe["fp8"]
    for engine in (None, "trtllm", "vllm"):
        assert back.moe_model("bf16", engine) == back.moe["bf16"]
    assert "moe_engines" not in _platform({}).profile.to_dict()  # absent stays absent
    for path, message in (
        (("lmdeploy", "bf16"), r"moe_engines\.lmdeploy"),
        (("sglang", "int4"), r"moe_engines\.sglang\.int4"),
    ):
        bad = prof.to_dict()
        bad["moe_engines"].setdefault(path[0], {})[path[1]] = bad["moe_engines"]["sglang"]["bf16"]
        with pytest.raises(ValueError, match=message):
            Profile.from_dict(bad, "t")
    bad = prof.to_dict()
    bad["moe_engines"]["sglang"]["bf16"]["compute_peak"] = 1.5
    with pytest.raises(ValueError, match=r"moe_engines\.sglang\.bf16.*compute_peak"):
        Profile.from_dict(bad, "t")


def test_pricer_uses_the_engines_terms_for_expert_gemms_only() -> None:
    plat = _platform({"sglang": {"bf16": SLOW}})
    graph = build_spec_graph(SPEC, phase="decode", batch=256, seq=1, context=512)
    ops = [op for task in graph.tasks for op in task.ops]
    table = OpTable.from_ops(ops)
    default = KernelPricer.for_graph(plat, graph.meta).op_times(table, 2)
    sglang = KernelPricer(plat, "bf16", phase="decode", batch=256, engine="sglang").op_times(table, 2)
    moe = np.array([op.kind == "moe" for op in ops])
    assert moe.sum() == 4
    # Expert GEMMs: slower by the lower compute peak and longer launch; every other op unchanged.
    assert (sglang[moe] > default[moe] * 1.5).all()
    assert sglang[~moe] == pytest.approx(default[~moe], rel=1e-12)
    assert KernelPricer(plat, "bf16", phase="decode", batch=256, engine="trtllm").op_times(table, 2) == (
        pytest.approx(default, rel=1e-12)
    )


def test_iteration_model_prices_the_engines_moe_kernel() -> None:
    plat = _platform({"sglang": {"bf16": SLOW}}, "dgx-h100x2:profile=h100-vidur")
    step = dataclasses.make_dataclass(
        "Mix", ["prefill_tokens", "prefill_attention", "decode_seqs", "decode_context", "sampled"]
    )
    mix = step(0, 0.0, 256, 256 * 512, 256)
    spec = dataclasses.replace(SPEC, dtype="bf16")
    times = {e: IterationModel(spec, plat, tp=2, engine=e).latency_s(mix) for e in (None, "trtllm", "sglang")}
    assert times["trtllm"] == pytest.approx(times[None], rel=1e-12)
    assert times["sglang"] > times[None] * 1.05


def test_shipped_b200_profile_prices_sglang_mixtral_decode_as_measured() -> None:
    """The peer's B200 SGLang scenario: Mixtral-8x7B, TP 2, 929 sequences at ~1152 tokens of context.

    Measured (AIConfigurator's tables, B200, bf16, balanced routing): the MoE block at TP 2 and 929
    tokens takes ~0.36 ms per layer in TensorRT-LLM and ~0.78 ms with SGLang's Triton kernel (768 / 1024
    tokens: 0.679 / 0.839 ms). Before ``moe_engines`` paratune priced 0.338 ms for both.
    """
    plat = get_platform("dgx-b200")
    spec = get_model("mixtral-8x7b")
    if "sglang" not in plat.profile.moe_engines:
        pytest.fail("configs/profiles/b200-aic.yaml has no moe_engines.sglang (refit with scripts/fit_silicon.sh)")
    graph = build_spec_graph(spec, phase="decode", batch=929, seq=1024, context=1153)
    ops = [op for op in graph.task("L0.moe_up").ops + graph.task("L0.moe_down").ops]
    table = OpTable.from_ops(ops)
    per_layer = {
        e: float(KernelPricer(plat, "bf16", phase="decode", batch=929, engine=e).op_times(table, 2).sum())
        for e in ("trtllm", "sglang")
    }
    assert per_layer["trtllm"] == pytest.approx(0.36e-3, rel=0.12)
    assert 0.679e-3 * 0.85 <= per_layer["sglang"] <= 0.839e-3 * 1.15


# -- the fit on the measured tables (needs aiconfigurator-core) ---------------------------------------------------


@pytest.mark.needs("aiconfigurator_core", "pyarrow")
def test_sglang_moe_fit_on_b200() -> None:
    from paratune.costmodel.calibration._aic_moe import fit_moe_engines

    fragment, report = fit_moe_engines("b200_sxm")
    assert set(fragment["moe_engines"]) == {"sglang"}
    assert set(fragment["moe_engines"]["sglang"]) == {"bf16"}  # its fp8 rows are block-scaled: not fitted
    record = fragment["fit"]["moe_engines"]["sglang"]
    assert record["kernel"] == ["sglang_fused_moe_triton"]
    # Measured on sglang 0.5.14 (B200, 1053 balanced rows): in-sample MAPE 14.9%, held out (fitted on
    # B300 / GB200 / GB300) 15.2%; the TensorRT-LLM terms price these rows at 24.7% (median ratio 0.81).
    errors = report["sglang"]["dtypes"]["bf16"]
    assert errors["in_sample"]["rows"] > 1000
    assert errors["in_sample"]["mape"] <= 16.5 and 0.95 <= errors["in_sample"]["median_ratio"] <= 1.05
    assert record["held_out"]["bf16"]["mape"] <= 17.0
    assert "holdout_error" not in fragment  # the engine's errors do not replace the default terms'
    data = get_platform("dgx-b200").profile.to_dict()
    data["moe_engines"] = fragment["moe_engines"]
    assert Profile.from_dict(data, "fit").moe_model("bf16", "sglang") is not None


def test_peer_ops_benchmark_groups_paratunes_ops_under_the_peers_names() -> None:
    """``benchmarks/peer_ops.py``: paratune's kernels per peer op; ``--engine-terms off`` is the old model."""
    import importlib.util
    import sys
    from argparse import Namespace
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_ops.py"
    spec = importlib.util.spec_from_file_location("peer_ops", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    args = Namespace(
        model="mixtral-8x7b", system="b200_sxm", tp=2, batch=929, isl=1152, backend="sglang", dtype="bf16",
        phase="decode", engine_terms="on",
    )  # fmt: skip
    on = module.paratune_ops(args)
    off = module.paratune_ops(Namespace(**{**vars(args), "engine_terms": "off"}))
    assert {"attention", "moe", "qkv_gemm", "logits_gemm", "router_gemm"} <= set(on)
    # Measured per layer (B200, TP 2, ~929 tokens, balanced): SGLang 0.78 ms, TensorRT-LLM 0.36 ms; 32 layers.
    assert on["moe"] == pytest.approx(32 * 0.78, rel=0.12) and off["moe"] == pytest.approx(32 * 0.36, rel=0.12)
    assert {k: v for k, v in on.items() if k != "moe"} == pytest.approx({k: v for k, v in off.items() if k != "moe"})
