"""Model zoo: published parameter counts, FLOP conventions, overrides and YAML models."""

from __future__ import annotations

from pathlib import Path

import pytest

from paratune.graphs import PRESETS, build_graph, get_model

# Published parameter counts (model cards / papers), checked within 1%.
PUBLISHED = {
    "llama2-7b": (6.74e9, None),
    "llama2-70b": (68.98e9, None),
    "llama3-8b": (8.03e9, None),
    "llama3-70b": (70.6e9, None),
    "qwen3-8b": (8.19e9, None),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "gpt3-175b": (174.6e9, None),
    "gpt2": (124e6, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name: str) -> None:
    total, active = PUBLISHED[name]
    spec = PRESETS[name]
    assert spec.params() == pytest.approx(total, rel=0.01)
    if active is not None:
        assert spec.params(active=True) == pytest.approx(active, rel=0.01)


@pytest.mark.parametrize("name", ["llama2-7b", "gpt2", "mixtral-8x7b", "bert-large"])
def test_graph_parameter_bytes_equal_spec(name: str) -> None:
    spec = PRESETS[name]
    graph = build_graph(name, phase="prefill", batch=1, seq=16)
    assert graph.param_bytes == pytest.approx(spec.params() * spec.dtype_bytes, rel=1e-9)


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_linear_flops_are_two_params_per_token(phase: str) -> None:
    """Every dense linear layer of a layer costs 2 x params x tokens (forward)."""
    batch, seq = 2, 64
    graph = build_graph("llama2-7b:layers=2", phase=phase, batch=batch, seq=seq, context=seq)
    tokens = batch * (1 if phase == "decode" else seq)
    for task in graph.tasks:
        (op,) = task.ops
        if op.kind == "matmul" and op.step == "forward" and task.block in ("attn", "mlp"):
            assert op.flops == pytest.approx(2 * op.param_bytes / 2 * tokens, rel=1e-12), op.name


def test_moe_flops_use_top_k_experts() -> None:
    dense = build_graph("mixtral-8x7b:layers=1,experts=0,top_k=0", phase="prefill", batch=1, seq=32)
    moe = build_graph("mixtral-8x7b:layers=1", phase="prefill", batch=1, seq=32)
    mlp_dense = sum(t.flops for t in dense.tasks if t.block == "mlp")
    mlp_moe = sum(t.flops for t in moe.tasks if t.block == "mlp" and "router" not in t.id)
    assert mlp_moe == pytest.approx(2 * mlp_dense, rel=1e-9)


def test_decode_reads_kv_cache_and_training_triples_flops() -> None:
    short = build_graph("llama2-7b:layers=2", phase="decode", batch=4, seq=1, context=128)
    long = build_graph("llama2-7b:layers=2", phase="decode", batch=4, seq=1, context=4096)
    assert sum(t.bytes for t in long.tasks) > sum(t.bytes for t in short.tasks)
    fwd = build_graph("llama2-7b:layers=2", phase="prefill", batch=1, seq=256)
    train = build_graph("llama2-7b:layers=2", phase="train", batch=1, seq=256)
    fb = sum(t.flops for t in train.tasks if t.step != "optimizer")
    # The LM head runs on every token in training but only on the last one in prefill.
    head = 2 * 32000 * 4096 * 255
    assert fb == pytest.approx(3 * (fwd.flops + head), rel=0.01)


def test_overrides_and_errors() -> None:
    spec = get_model("llama2-70b:layers=4,dtype=fp8")
    assert spec.layers == 4 and spec.dtype_bytes == 1
    with pytest.raises(ValueError, match="unknown model 'llama9'"):
        get_model("llama9")
    with pytest.raises(ValueError, match="field 'layers' must be an integer"):
        get_model("llama2-7b:layers=many")
    with pytest.raises(ValueError, match="kv_heads"):
        get_model("llama2-7b:kv_heads=5")
    with pytest.raises(ValueError, match="encoder"):
        build_graph("bert-large", phase="decode", batch=1, seq=8)


def test_yaml_model(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text("layers: 2\nhidden: 256\nheads: 4\nkv_heads: 2\nffn: 512\nvocab: 1000\n")
    spec = get_model(str(path))
    assert spec.name == "tiny" and spec.kv_heads == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: 2\nhidden: 256\nheads: 4\nffn: 512\nvocab: 1000\ncolour: red\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown field\(s\) colour"):
        get_model(str(bad))


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_unfused_attention_counts_the_same_flops_and_moves_the_scores(phase: str) -> None:
    flash = build_graph("llama2-7b:layers=2", phase=phase, batch=2, seq=512, context=512)
    unfused = build_graph("llama2-7b:layers=2,attention=unfused", phase=phase, batch=2, seq=512, context=512)
    assert unfused.flops == pytest.approx(flash.flops, rel=1e-12)
    assert unfused.param_bytes == flash.param_bytes
    q_len = 1 if phase == "decode" else 512
    kv_len = 513 if phase == "decode" else 512
    scores = 2 * 32 * q_len * kv_len * 2  # batch x heads x q x kv x bf16, per layer
    extra = sum(t.bytes for t in unfused.tasks) - sum(t.bytes for t in flash.tasks)
    assert extra > 2 * 3 * scores  # written, read and written by softmax, read: at least 3 passes per layer
    assert not any(op.causal for t in unfused.tasks for op in t.ops)
