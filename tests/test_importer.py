"""PyTorch importer: real model graphs agree with the zoo's analytic ones.

Everything is built on the meta device from configs written in code (nothing is
downloaded). Graphs are module-scoped fixtures: each export costs about a second.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from paratune.graphs import TaskGraph, build_graph, coarsen, load_graph
from paratune.graphs._importer import import_torch_graph

pytestmark = pytest.mark.needs("torch", "transformers")

TINY_LLAMA = (
    "hf:llama:num_hidden_layers=5,hidden_size=256,intermediate_size=512,num_attention_heads=4,"
    "num_key_value_heads=2,vocab_size=1000"
)


def _sum(graph: TaskGraph, field: str, kind: str | None = None) -> float:
    return sum(getattr(op, field) for t in graph.tasks for op in t.ops if kind is None or op.kind == kind)


@pytest.fixture(scope="module")
def factories() -> Iterator[str]:
    """Put the example factory module (tests/importer_factories.py) on sys.path."""
    here = str(Path(__file__).parent)
    sys.path.insert(0, here)
    yield "importer_factories"
    sys.path.remove(here)
    sys.modules.pop("importer_factories", None)


@pytest.fixture(scope="module")
def llama_prefill() -> TaskGraph:
    return import_torch_graph("hf:llama", phase="prefill", batch=1, seq=128)


@pytest.fixture(scope="module")
def llama_decode() -> TaskGraph:
    return import_torch_graph("hf:llama", phase="decode", batch=2, seq=128, context=128)


# -- Llama-2-7B against the zoo ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fixture", "shape"),
    [("llama_prefill", {"phase": "prefill", "batch": 1, "seq": 128}),
     ("llama_decode", {"phase": "decode", "batch": 2, "seq": 128, "context": 128})],
)  # fmt: skip
def test_llama_agrees_with_zoo(fixture: str, shape: dict[str, int], request: pytest.FixtureRequest) -> None:
    imported: TaskGraph = request.getfixturevalue(fixture)
    zoo = build_graph("llama2-7b", **shape)  # type: ignore[arg-type]
    assert imported.flops == pytest.approx(zoo.flops, rel=0.02)
    assert imported.param_bytes == pytest.approx(zoo.param_bytes, rel=0.01)
    # Attention (not halved for causal masking), weights read, KV cache and TP all-reduces follow the zoo too.
    assert _sum(imported, "flops", "attention") == pytest.approx(_sum(zoo, "flops", "attention"), rel=1e-9)
    assert _sum(imported, "weight_bytes") == pytest.approx(_sum(zoo, "weight_bytes"), rel=1e-3)
    assert _sum(imported, "kv_bytes_per_token") == pytest.approx(_sum(zoo, "kv_bytes_per_token"), rel=1e-9)
    assert _sum(imported, "allreduce_bytes") == pytest.approx(_sum(zoo, "allreduce_bytes"), rel=1e-9)


def test_llama_graph_shape_and_metadata(llama_prefill: TaskGraph) -> None:
    g, meta = llama_prefill, llama_prefill.meta
    assert 1_200 <= g.num_tasks <= 1_400  # views and reshapes folded into their producers
    assert g.is_layered
    assert (meta.n_layers, meta.heads, meta.kv_heads, meta.hidden, meta.dtype) == (32, 32, 32, 4096, "bf16")
    assert (meta.source, meta.model, meta.granularity) == ("torch.export", "hf:llama", "op")
    assert meta.spec["num_hidden_layers"] == 32 and meta.spec["model_type"] == "llama"
    assert {t.layer for t in g.tasks} == set(range(-1, 33))
    by_id = {t.id: t for t in g.tasks}
    q, o = by_id["L3.self_attn.q_proj.linear"], by_id["L3.self_attn.o_proj.linear"]
    assert (q.kind, q.shard, q.block, q.scope) == ("matmul", "column", "attn", "model.layers.3.self_attn.q_proj")
    assert o.shard == "row" and o.ops[0].allreduce_bytes == o.output_bytes
    assert by_id["L3.mlp.down_proj.linear"].block == "mlp"
    assert by_id["L3.post_attention_layernorm.pow"].block == "mlp"  # a pre-norm joins the block it feeds
    assert by_id["L3.input_layernorm.pow"].kind == "norm"
    attention = by_id["L3.self_attn.scaled_dot_product_attention"]
    assert (attention.kind, attention.shard, attention.ops[0].shard_max) == ("attention", "heads", 32)
    assert by_id["embed.model.embed_tokens.embedding"].layer == -1
    assert by_id["head.lm_head.linear"].layer == 32 and by_id["head.lm_head.linear"].shard == "vocab"
    assert len({t.id for t in g.tasks}) == g.num_tasks


def test_decode_reads_the_kv_cache(llama_decode: TaskGraph) -> None:
    attention = llama_decode.task("L0.self_attn.scaled_dot_product_attention").ops[0]
    kv_bytes = 2 * 2 * 4096 * 2 * (128 + 1)  # k and v, batch 2, hidden 4096, bf16, context + new token
    assert attention.flops == 4.0 * 2 * 32 * 1 * (128 + 1) * 128
    assert attention.bytes >= kv_bytes
    assert attention.kv_bytes_per_token == 2 * 4096 * 2


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_replicated_layers_equal_a_full_export(phase: str) -> None:
    shape = {"phase": phase, "batch": 2, "seq": 16, "context": 8}
    fast = import_torch_graph(TINY_LLAMA, **shape)  # type: ignore[arg-type]
    full = import_torch_graph(TINY_LLAMA, replicate_layers=False, **shape)  # type: ignore[arg-type]
    assert fast.to_dict() == full.to_dict()


def test_layers_that_differ_are_exported_in_full() -> None:
    # Qwen2 with sliding windows on some layers only: layer_types differ, so no template is cloned.
    source = (
        "hf:qwen2:num_hidden_layers=5,hidden_size=128,intermediate_size=256,num_attention_heads=4,"
        "num_key_value_heads=2,vocab_size=500,use_sliding_window=true,sliding_window=8,max_window_layers=2"
    )
    graph = import_torch_graph(source, phase="prefill", batch=1, seq=16)
    attention = [t for t in graph.tasks if t.kind == "attention"]
    assert [t.layer for t in attention] == list(range(5))
    assert graph.meta.n_layers == 5 and graph.is_layered


# -- other architectures -----------------------------------------------------------------------------
def test_gpt2_coarsens_to_layers_with_totals_conserved() -> None:
    graph = import_torch_graph("hf:gpt2:n_layer=2", phase="prefill", batch=1, seq=64)
    zoo = build_graph("gpt2:layers=2", phase="prefill", batch=1, seq=64)
    assert graph.flops == pytest.approx(zoo.flops, rel=0.02)
    assert graph.param_bytes == pytest.approx(zoo.param_bytes, rel=0.01)  # tied LM head counted once
    coarse = coarsen(graph, "layer")
    assert coarse.num_tasks == 2 + 2  # embed, two layers, head
    assert coarse.flops == pytest.approx(graph.flops, rel=1e-12)
    assert coarse.param_bytes == pytest.approx(graph.param_bytes, rel=1e-12)
    assert coarse.num_ops == graph.num_ops
    assert sum(b for _, _, b in coarse.edges()) > 0
    assert coarse.is_layered


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_mixtral_counts_the_experts(phase: str) -> None:
    # Full Mixtral widths, two layers. FLOPs agree to well under 1%: the router, grouped expert matmuls
    # (top-2 of 8) and attention are counted like the zoo; 2% leaves room for ops the zoo does not model.
    shape = {"phase": phase, "batch": 2, "seq": 64, "context": 64}
    graph = import_torch_graph("hf:mixtral:num_hidden_layers=2", **shape)  # type: ignore[arg-type]
    zoo = build_graph("mixtral-8x7b:layers=2", **shape)  # type: ignore[arg-type]
    assert graph.flops == pytest.approx(zoo.flops, rel=0.02)
    assert graph.param_bytes == pytest.approx(zoo.param_bytes, rel=0.01)
    moe = _sum(graph, "flops", "moe")
    assert moe == pytest.approx(_sum(zoo, "flops", "moe"), rel=0.01)
    assert moe > 0.5 * graph.flops
    assert {t.shard for t in graph.tasks if t.kind == "moe"} == {"experts"}


def test_bert_prefill_imports_as_an_encoder() -> None:
    graph = import_torch_graph("hf:bert:num_hidden_layers=2", phase="prefill", batch=2, seq=32)
    kinds = {t.kind for t in graph.tasks}
    assert {"attention", "embedding", "matmul", "norm"} <= kinds
    assert graph.meta.n_layers == 2 and graph.meta.heads == 12 and graph.is_layered
    assert graph.task("L0.attention.output.dense.linear").shard == "row"
    assert graph.task("L0.intermediate.dense.linear").shard == "column"
    with pytest.raises(ValueError, match="encoder"):
        import_torch_graph("hf:bert:num_hidden_layers=2", phase="decode", batch=1, seq=8)


def test_train_adds_backward_and_optimizer() -> None:
    graph = import_torch_graph("hf:llama:num_hidden_layers=2", phase="train", batch=1, seq=32)
    zoo = build_graph("llama2-7b:layers=2", phase="train", batch=1, seq=32)
    assert graph.flops == pytest.approx(zoo.flops, rel=0.02)
    assert graph.param_bytes == pytest.approx(zoo.param_bytes, rel=0.01)
    steps = {t.step for t in graph.tasks}
    assert steps == {"forward", "backward", "optimizer"}
    assert any(t.kind == "loss" for t in graph.tasks)
    assert coarsen(graph, "layer").is_layered


# -- module: sources ---------------------------------------------------------------------------------
def test_module_source_with_a_bare_module(factories: str) -> None:
    from importer_factories import FFN, HIDDEN, LAYERS, VOCAB

    batch, seq = 2, 16
    graph = import_torch_graph(f"module:{factories}:tiny_lm", phase="prefill", batch=batch, seq=seq)
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) + 4 * batch * seq * seq * HIDDEN
    assert graph.flops == pytest.approx(LAYERS * per_layer + 2 * tokens * HIDDEN * VOCAB, rel=1e-9)
    assert graph.meta.n_layers == LAYERS and graph.meta.heads == 4 and graph.is_layered
    assert graph.task("L1.down_proj.linear").block == "mlp"
    assert graph.task("L1.gelu").shard == "column"


def test_module_source_with_example_inputs(factories: str) -> None:
    graph = import_torch_graph(f"module:{factories}:tiny_blocks", phase="train", batch=2, seq=8)
    assert graph.meta.n_layers == 2
    assert {t.step for t in graph.tasks} == {"forward", "backward", "optimizer"}
    with pytest.raises(ValueError, match="decode"):
        import_torch_graph(f"module:{factories}:tiny_lm", phase="decode", batch=1, seq=8)


# -- round trip and errors ---------------------------------------------------------------------------
def test_imported_graph_json_round_trip_is_lossless(tmp_path: Path, llama_decode: TaskGraph) -> None:
    path = tmp_path / "g.json"
    llama_decode.save(path)
    loaded = TaskGraph.load(path)
    assert loaded.to_dict() == llama_decode.to_dict()
    assert loaded.tasks == llama_decode.tasks
    assert load_graph(str(path), phase="decode", batch=2, seq=128).num_tasks == llama_decode.num_tasks


@pytest.mark.parametrize(
    ("source", "message"),
    [("hf:no_such_model", "llama"), ("hf:llama:num_layerz=2", "num_layerz"), ("torch:llama", "hf:"),
     ("module:no_such_module:f", "cannot import")],
)  # fmt: skip
def test_bad_sources_raise_value_errors(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        import_torch_graph(source, phase="prefill", batch=1, seq=8)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import paratune.graphs._importer as importer

    real = importer.importlib.import_module

    def no_transformers(name: str, *args: object) -> object:
        if name.startswith("transformers"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importer.importlib, "import_module", no_transformers)
    with pytest.raises(ValueError, match=r"pip install 'paratune\[import\]'"):
        import_torch_graph("hf:llama", phase="prefill", batch=1, seq=8)
