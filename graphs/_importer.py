"""Import a PyTorch or Hugging Face model as an operator-level TaskGraph (needs ``paratune[import]``).

The zoo describes a transformer by a dozen numbers; the importer reads the real
program instead, so any architecture ``transformers`` can build (or any
``nn.Module`` a user writes) becomes a graph for the tuners. Nothing is
downloaded: configs are written in code and the model is built on the ``meta``
device, so no weights exist and a 7B model costs nothing to build.

Sources:

* ``hf:<model_type>[:field=value,...]`` — ``transformers.AutoConfig.for_model``
  with the overrides (parsed as int, float, bool, none or str; a field the
  config does not have is an error, so typos do not pass silently). The default
  config of a type usually matches a real release (llama = Llama-2-7B,
  mixtral = Mixtral-8x7B, gpt2 = GPT-2 small, bert = BERT-base). Masked-LM
  encoders (bert, roberta, ...) are built with their MLM head, decoders with
  their causal-LM head.
* ``module:<python.path>:<factory>`` — ``factory`` is called under
  ``torch.device("meta")``. Keyword parameters it declares among ``phase``,
  ``batch``, ``seq``, ``context`` are passed. It returns either an ``nn.Module``
  or ``(module, example_kwargs)``. With a bare module, its ``forward`` gets one
  input through its first parameter: a ``(batch, seq)`` LongTensor of token ids
  when the module contains an ``nn.Embedding``, else a ``(batch, seq, hidden)``
  float tensor, ``hidden`` being the ``in_features`` of its first ``nn.Linear``.
  ``example_kwargs`` are used as given (tensors moved to meta, floats cast to
  the graph dtype); a decode graph needs them (only the factory knows its cache).
  Heads, KV heads and hidden size are read from ``module.config`` when it has
  Hugging Face names, else from attributes ``num_heads``/``n_heads``.

Phases: ``prefill`` runs ``input_ids`` of shape (batch, seq) with no cache, and
a causal LM computes logits for the last token only (``logits_to_keep=1``, as
serving engines and the zoo do). ``decode`` runs one new token per sequence
against a KV cache of ``context`` tokens (``seq`` when 0): the cache shapes come
from a prefill under ``FakeTensorMode`` and the cache is rebuilt inside a small
wrapper module from meta tensors, so no pytree registration is needed.
``train`` exports the forward in training mode with ``labels`` (so dropout and
the loss are in the graph) and synthesises backward and optimizer tasks with
the zoo's ``_builder._backward`` (backward = 2x forward FLOPs, mirrored edges,
one Adam step per layer); integer and boolean ops (masks, positions) get no
backward task.

Speed: tracing costs about 0.1 s per layer, so for ``hf:`` models whose layers
are identical (same class and parameter shapes, nothing per-layer in the
config) the importer exports ``TEMPLATE_LAYERS`` = 3 layers and clones the
middle one; it checks that the three exported layers match op for op and wire
alike, and exports every layer otherwise. The result equals a full export
(``replicate_layers=False``); the tests compare the two.

Reading the exported program (``torch.export.export(..., strict=False)``):

* View-like ops (view, reshape, transpose, expand, slice, getitem, detach,
  alias, dtype casts to the same dtype, concatenation with empty tensors, ...)
  are folded into their producer: edges pass through them. A value read
  through a chain of views is charged ``min(its size, its producer's output)``
  bytes, so an ``expand`` for grouped-query attention does not inflate reads.
  Copies (contiguous, clone, real dtype casts) stay ops: they move memory.
* FLOPs: ``torch.utils.flop_counter.flop_registry`` where it has a formula,
  plus formulas for what it misses: ``aten.linear`` and ``aten.matmul``
  (training IR keeps them whole), every scaled-dot-product-attention variant,
  CPU flash included (``sdpa_flop_count``: 4 x batch x heads x q_len x kv_len
  x head_dim, *not* halved for causal masking, like the zoo) and MoE
  ``aten._grouped_mm`` (2 x routed rows x K x N).
  Bias adds, element-wise ops and norms count 0 (priced by bytes); the loss's
  ``log_softmax`` counts 5 per logit, the zoo's loss convention.
* Bytes: inputs + outputs with dtype sizes. Parameters, buffers and constants
  read count in ``bytes`` and ``weight_bytes``; a parameter counts in
  ``param_bytes`` once, at its first use (tied embeddings count once). An
  embedding reads only the gathered rows (``weight_bytes`` 0, as in the zoo).
  Attention bytes leave out the mask (kernels build causal masks on the fly).
  A grouped matmul reads each expert's weights at most once: of E experts with
  T tokens routed to k, E x (1 - (1 - k/E)^T) are expected to be touched (the
  zoo's rule; k from the config, all experts when unknown). Appending the new
  token to the KV cache charges the new token's bytes (read and write), not the
  copy ``DynamicCache``'s concatenation makes.
* Tensor parallelism (best effort, Megatron-style): a linear whose module is
  named like an output projection (o_proj, down_proj, c_proj, out_proj, fc2,
  w2, wo, dense_4h_to_h, a ``dense`` under an attention or ``output`` module)
  is ``row`` and all-reduces its output; input projections (q/k/v/qkv, up/gate,
  c_attn, c_fc, fc1, w1/w3, q_b/kv_b of MLA, BERT's query/key/value and
  ``intermediate.dense``) are ``column``; a matmul
  producing vocab-sized logits in the head is ``vocab``; attention is
  ``heads`` (capped by the KV heads); grouped matmuls are ``experts`` and the
  last op of an experts module all-reduces the combined tokens; the token
  embedding is ``vocab`` and all-reduces its output. Other ops follow their
  inputs: an op reading a split activation is split the same way (``heads`` in
  an attention block, ``column`` in an MLP), otherwise ``replicated``.
* Kinds: matmul (linear, mm, bmm, matmul, ...), attention (SDPA; a model with
  only eager attention shows its score and value matmuls as ``matmul``), moe
  (grouped matmuls, and batched matmuls over stacked expert weights),
  embedding, norm (norm ops and every op inside a ``*Norm`` module), loss
  (cross-entropy, log-softmax), elementwise otherwise.
* Layers: the ``nn.ModuleList`` (or ``nn.Sequential``) holding most parameters is the layer stack;
  an op's ``layer`` comes from its module path (``nn_module_stack``),
  ``-1`` before the first layer (embedding, rotary tables, masks) and
  ``n_layers`` after the last (final norm, head, loss). ``block`` is ``attn`` or
  ``mlp`` from the path inside the layer; a norm directly under the layer joins
  the block it feeds (pre-norm), other layer-level ops (residual adds) the
  block before them. ``scope`` is the module path.
"""

from __future__ import annotations

import importlib
import inspect
import math
import operator
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from ._builder import _backward, _Builder
from ._task import Op, Task
from ._taskgraph import PHASES, GraphMeta, TaskGraph
from ._zoo import DTYPE_BYTES

if TYPE_CHECKING:
    from torch import nn

    from ._zoo import ModelSpec

__all__ = ["import_torch_graph"]

_EXTRA_HINT = "needs the import extra: pip install 'paratune[import]'"
#: Model types known to import; any type ``transformers`` knows may work.
HF_EXAMPLES = ("llama", "mistral", "mixtral", "qwen2", "gpt2", "bert", "roberta", "falcon", "phi3")

#: torch dtypes a graph can be built in, by their paratune names.
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

# -- op classification (by aten overload packet name) ------------------------------------------------
#: Ops that only re-interpret their first input: folded into the producer.
_VIEW_OPS = frozenset(
    {
        "view", "_unsafe_view", "reshape", "transpose", "t", "permute", "unsqueeze", "squeeze", "expand",
        "expand_as", "slice", "select", "narrow", "alias", "detach", "detach_", "lift_fresh_copy", "as_strided",
        "view_as", "unflatten", "flatten", "split", "split_with_sizes", "chunk", "unbind", "tensor_split",
        "movedim", "swapaxes", "diagonal", "_reshape_alias", "view_as_real", "view_as_complex", "unsafe_split",
        "numpy_T", "mT", "mH", "adjoint", "matrix_H", "T", "H", "squeeze_", "unsqueeze_",
    }
)  # fmt: skip
#: Casts: folded when the dtype does not change, a copy op otherwise.
_CAST_OPS = frozenset({"to", "_to_copy", "type_as", "_to_dtype", "type"})
_MATMUL_OPS = frozenset(
    {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "addbmm", "mv", "addmv", "dot", "einsum",
     "convolution", "_convolution", "conv1d", "conv2d", "conv3d", "_scaled_mm"}
)  # fmt: skip
_MOE_OPS = frozenset({"_grouped_mm", "_scaled_grouped_mm"})
_NORM_OPS = frozenset(
    {"layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm", "native_group_norm",
     "batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "instance_norm"}
)  # fmt: skip
_LOSS_OPS = frozenset(
    {"log_softmax", "_log_softmax", "nll_loss", "nll_loss_forward", "nll_loss2d_forward", "cross_entropy_loss",
     "nll_loss_nd", "binary_cross_entropy_with_logits", "mse_loss"}
)  # fmt: skip
_EMBED_OPS = frozenset({"embedding", "_embedding_bag", "embedding_bag"})
#: Ops that take a tensor only for its shape, dtype or device.
_NO_READ_OPS = frozenset(
    {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "new_ones", "new_zeros",
     "new_empty", "new_full"}
)  # fmt: skip
#: Element-wise FLOPs per logit of the loss (exp, sum, log, subtract, gather), as the zoo counts it.
LOSS_FLOPS_PER_LOGIT = 5.0

# -- tensor-parallel naming heuristics (last module name) ------------------------------------------
_ROW_NAMES = frozenset({"o_proj", "down_proj", "c_proj", "out_proj", "dense_4h_to_h", "fc2", "w2", "wo", "proj_out"})
_COLUMN_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "c_attn", "query", "key", "value", "up_proj",
     "gate_proj", "gate_up_proj", "c_fc", "fc1", "w1", "w3", "wi", "wq", "wk", "wv", "wqkv", "Wqkv",
     "dense_h_to_4h", "in_proj", "q_b_proj", "kv_b_proj"}
)  # fmt: skip
#: Projection names that tell the block when the module path has no attn/mlp segment.
_ATTN_NAMES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query_key_value", "c_attn", "query", "key", "value",
     "out_proj", "wq", "wk", "wv", "wqkv", "Wqkv", "in_proj"}
)  # fmt: skip
_MLP_NAMES = frozenset(
    {"up_proj", "down_proj", "gate_proj", "gate_up_proj", "c_fc", "fc1", "fc2", "w1", "w2", "w3", "wi", "wo",
     "dense_h_to_4h", "dense_4h_to_h"}
)  # fmt: skip
_SPLIT = ("column", "heads", "experts", "vocab")
_ATTN_SEG = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_SEG = re.compile(r"mlp|ffn|feed_forward|feedforward|moe|expert", re.IGNORECASE)
#: User inputs of the decode wrapper that hold the KV cache.
_CACHE_INPUTS = ("past_keys", "past_values")
#: Layers exported when replicating identical layers: first, one template for the middle, last.
TEMPLATE_LAYERS = 3
#: Config attributes that give the experts each token is routed to.
_TOPK_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k", "num_selected_experts")


# ====================================================================================================
# Public entry point
# ====================================================================================================
def import_torch_graph(
    source: str, *, phase: str, batch: int, seq: int, context: int = 0, replicate_layers: bool = True
) -> TaskGraph:
    """Export ``source`` with ``torch.export`` and convert it to an operator-level TaskGraph.

    Args:
        source: ``hf:<model_type>[:field=value,...]`` or ``module:<python.path>:<factory>``
            (see the module docstring for both conventions).
        phase: ``prefill``, ``decode`` or ``train``.
        batch: sequences in the batch.
        seq: prompt (prefill) or sequence (train) length; decode uses it as the
            context length when ``context`` is 0, like the zoo.
        context: tokens already in the KV cache of a decode step.
        replicate_layers: for ``hf:`` models whose layers are identical, export
            ``TEMPLATE_LAYERS`` layers and clone the middle one (tracing costs
            about 0.1 s per layer, so a 32-layer model imports several times
            faster, an 80-layer one more). The result equals a full export;
            when the template layers differ the importer exports every layer.

    Raises:
        ValueError: torch/transformers missing, unknown model type or field, a
            phase the model cannot run (decode of an encoder), or an export failure.
    """
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of: {', '.join(PHASES)}")
    if batch < 1 or seq < 1 or context < 0:
        raise ValueError(f"batch and seq must be >= 1 and context >= 0 (got {batch}, {seq}, {context})")
    context = context or (seq if phase == "decode" else 0)
    torch = _require("torch")
    with _export_settings(torch):
        for replicate in (True, False) if replicate_layers else (False,):
            if source.startswith("hf:"):
                prep = _prepare_hf(source, phase=phase, batch=batch, seq=seq, context=context, replicate=replicate)
            elif source.startswith("module:"):
                prep = _prepare_module(source, phase=phase, batch=batch, seq=seq, context=context)
            else:
                raise ValueError(f"source {source!r} must start with 'hf:' or 'module:'")
            prep.full_layers = prep.full_layers or prep.n_layers
            try:
                program = torch.export.export(prep.root, prep.args, prep.kwargs, strict=False)
            except Exception as exc:  # torch raises many types; the user needs the source named
                raise ValueError(
                    f"{source}: torch.export failed for phase {phase!r}: {type(exc).__name__}: {exc}"
                ) from exc
            meta = GraphMeta(
                model=source, phase=phase, batch=batch, seq=seq, context=context, n_layers=prep.full_layers,
                heads=prep.heads, kv_heads=prep.kv_heads, hidden=prep.hidden, dtype=prep.dtype_name,
                source="torch.export", spec=prep.spec,
            )  # fmt: skip
            graph = _Converter(program, prep, meta).run()
            if graph is not None:
                return graph
    raise AssertionError("unreachable: a full export always converts")  # pragma: no cover


# ====================================================================================================
# Preparing the module and its inputs
# ====================================================================================================
@dataclass
class _Prepared:
    """What to export and the numbers the graph metadata needs."""

    root: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dtype_name: str
    n_layers: int = 0
    layer_prefix: str | None = None
    #: Layers of the real model when the exported one holds only ``n_layers`` template layers.
    full_layers: int = 0
    #: Prefix of module paths added by a wrapper (stripped from scopes).
    strip: str = ""
    heads: int = 1
    kv_heads: int = 1
    hidden: int = 0
    vocab: int = 0
    top_k: int = 0
    spec: dict[str, Any] = field(default_factory=dict)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"importing a PyTorch model {_EXTRA_HINT} ({module}: {exc})") from None


@contextmanager
def _export_settings(torch: Any) -> Iterator[None]:
    """Skip stack-trace capture while tracing (about a third of export time) and keep logs quiet.

    Thread count is left alone: export traces Python on meta tensors, so no
    kernel runs and intra-op threads do not matter.
    """
    fx_config = torch.fx.config
    saved = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    tf_logging = None
    try:
        tf_logging = importlib.import_module("transformers.utils.logging")
        level = tf_logging.get_verbosity()
        tf_logging.set_verbosity_error()
    except ImportError:
        tf_logging = None
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = saved
        if tf_logging is not None:
            tf_logging.set_verbosity(level)


def _parse_value(raw: str) -> Any:
    """Override value: int, float, bool, none or the string itself."""
    text = raw.strip()
    for cast_fn in (int, float):
        try:
            return cast_fn(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def _parse_overrides(text: str, where: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{where}: override {item!r} must look like field=value")
        overrides[key.strip()] = _parse_value(value)
    return overrides


def _graph_dtype(torch: Any, requested: Any) -> tuple[Any, str]:
    """The dtype to build in: the config's when it names a float type we price, else bf16 like the zoo."""
    if isinstance(requested, str):
        requested = getattr(torch, requested, None)
    for name, short in _DTYPE_NAMES.items():
        if requested is getattr(torch, name, object()):
            return requested, short
    return torch.bfloat16, "bf16"


def _config_int(config: Any, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _scalar_fields(config: Any) -> dict[str, Any]:
    """JSON-safe scalar fields of a config (the graph's ``spec``)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    spec: dict[str, Any] = {}
    for key, value in sorted(data.items()):
        if key.startswith("_") or key in ("transformers_version",):
            continue
        if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            spec[key] = value
    return spec


def _find_layers(model: nn.Module) -> tuple[str | None, int]:
    """Module path and length of the layer stack: the ``nn.ModuleList``/``nn.Sequential`` holding most parameters."""
    from torch import nn

    best: tuple[int, str | None, int] = (0, None, 0)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList | nn.Sequential) and len(module) > 0:
            n_params = sum(p.numel() for p in module.parameters())
            if n_params > best[0]:
                best = (n_params, name, len(module))
    return best[1], best[2]


def _accepts(fn: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)


def _prepare_hf(source: str, *, phase: str, batch: int, seq: int, context: int, replicate: bool) -> _Prepared:
    torch = _require("torch")
    transformers = _require("transformers")
    model_type, _, rest = source[len("hf:") :].partition(":")
    overrides = _parse_overrides(rest, f"model {source!r}")
    from transformers.models.auto import modeling_auto

    try:
        base = transformers.AutoConfig.for_model(model_type)
    except (ValueError, KeyError):
        raise ValueError(
            f"unknown Hugging Face model type {model_type!r}; examples: {', '.join(HF_EXAMPLES)} "
            "(any transformers model_type built from its default config)"
        ) from None
    unknown = sorted(k for k in overrides if k not in ("dtype", "torch_dtype") and not hasattr(base, k))
    if unknown:
        raise ValueError(f"model {source!r}: {type(base).__name__} has no field(s) {', '.join(unknown)}")
    requested_dtype = overrides.pop("dtype", None) or overrides.pop("torch_dtype", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **overrides)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"model {source!r}: {exc}") from None
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"model {source!r}: encoder-decoder models are not supported by the importer")
    dtype, dtype_name = _graph_dtype(torch, requested_dtype or getattr(config, "dtype", None))
    if model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        auto_cls, encoder = transformers.AutoModelForMaskedLM, True
    elif model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        auto_cls, encoder = transformers.AutoModelForCausalLM, False
    else:
        raise ValueError(f"model {source!r}: {model_type!r} has neither a causal-LM nor a masked-LM head")
    if encoder and phase == "decode":
        raise ValueError(f"model {source!r} is an encoder: phase 'decode' is not defined (use prefill or train)")
    model = _build_hf(auto_cls, config, dtype, source)
    prefix, n_layers = _find_layers(model)
    heads = _config_int(config, "num_attention_heads", "n_head", default=1)
    prep = _Prepared(
        root=model, args=(), kwargs={}, dtype_name=dtype_name, n_layers=n_layers, layer_prefix=prefix,
        heads=heads, kv_heads=_config_int(config, "num_key_value_heads", "n_head_kv", default=heads),
        hidden=_config_int(config, "hidden_size", "n_embd", "d_model"), vocab=_config_int(config, "vocab_size"),
        top_k=_config_int(config, *_TOPK_FIELDS),
        spec={"model_type": model_type, "params": sum(p.numel() for p in model.parameters()),
              **_scalar_fields(config)},
    )  # fmt: skip
    if replicate and prefix is not None and n_layers > TEMPLATE_LAYERS and _homogeneous(model, prefix, config):
        small = _template_config(config, n_layers)
        if small is not None:
            model = _build_hf(auto_cls, small, dtype, source)
            prep.root, prep.full_layers = model, n_layers
            prep.layer_prefix, prep.n_layers = _find_layers(model)
    model.train(phase == "train")
    accepted = _accepts(model.forward)
    cache_arg = "cache" if "cache" in accepted else "past_key_values"
    ids = torch.zeros((batch, 1 if phase == "decode" else seq), dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"input_ids": ids}
    if "use_cache" in accepted:
        kwargs["use_cache"] = phase == "decode"
    if phase == "train" and "labels" in accepted:
        kwargs["labels"] = ids
    if phase == "prefill" and not encoder and "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    if phase != "decode":
        prep.kwargs = kwargs
        return prep
    keys, values = _cache_shapes(torch, model, cache_arg, accepted, batch, context)
    prep.root = _decode_step(model, getattr(model, "config", config), cache_arg)
    prep.strip = "inner."
    prep.kwargs = {"input_ids": ids, _CACHE_INPUTS[0]: keys, _CACHE_INPUTS[1]: values}
    return prep


def _homogeneous(model: nn.Module, prefix: str, config: Any) -> bool:
    """Whether every layer has the same structure and nothing in the config varies per layer.

    Layers must share class, parameter and buffer names/shapes/dtypes, own their
    parameters (no sharing across layers), and the config may hold per-layer
    lists (``layer_types``, ...) only when all their entries are equal.
    """
    layers = cast("nn.ModuleList", model.get_submodule(prefix))
    n = len(layers)

    def signature(layer: nn.Module) -> tuple[Any, ...]:
        return (
            type(layer),
            [(name, tuple(p.shape), p.dtype) for name, p in layer.named_parameters()],
            [(name, tuple(b.shape), b.dtype) for name, b in layer.named_buffers()],
        )

    first = signature(layers[0])
    seen: set[int] = set()
    for layer in layers:
        if signature(layer) != first:
            return False
        owned = {id(p) for p in layer.parameters()}
        if owned & seen:
            return False
        seen |= owned
    for key, value in config.to_dict().items():
        if isinstance(value, list | tuple) and value:
            if len(value) == n and len({repr(v) for v in value}) > 1:
                return False
            if len(value) != n and "layer" in key:
                return False
    return True


def _template_config(config: Any, n_layers: int) -> Any | None:
    """A copy of ``config`` with ``TEMPLATE_LAYERS`` layers (per-layer lists cut to match), or None."""
    import copy

    small = copy.deepcopy(config)
    try:
        small.num_hidden_layers = TEMPLATE_LAYERS
        for key, value in config.to_dict().items():
            if isinstance(value, list | tuple) and len(value) == n_layers and hasattr(small, key):
                setattr(small, key, type(value)(value[:TEMPLATE_LAYERS]))
    except (AttributeError, ValueError, TypeError):
        return None
    return small if getattr(small, "num_hidden_layers", None) == TEMPLATE_LAYERS else None


def _build_hf(auto_cls: Any, config: Any, dtype: Any, source: str) -> nn.Module:
    """Instantiate on meta with SDPA attention (eager where a model has no SDPA path)."""
    torch = _require("torch")
    errors = []
    for attn in ("sdpa", "eager"):
        try:
            with torch.device("meta"):
                return cast("nn.Module", auto_cls.from_config(config, dtype=dtype, attn_implementation=attn))
        except (ValueError, ImportError, TypeError) as exc:
            errors.append(f"{attn}: {exc}")
    raise ValueError(f"model {source!r}: cannot build it ({'; '.join(errors)})")


def _cache_shapes(
    torch: Any, model: nn.Module, cache_arg: str, accepted: set[str], batch: int, context: int
) -> tuple[list[Any], list[Any]]:
    """Per-layer key/value tensors (meta) of a cache holding ``context`` tokens.

    A prefill under ``FakeTensorMode`` yields the exact shapes the model's own
    cache layers produce (GQA, sliding windows, odd head dims) without
    computing anything; eager forward on meta tensors fails in masking code.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = model(input_ids=torch.zeros((batch, context), dtype=torch.long), **kwargs)
    cache = out.get(cache_arg) if hasattr(out, "get") else None
    if cache is None:
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    layers = getattr(cache, "layers", None)
    if not layers:
        raise ValueError(f"{type(model).__name__}: decode needs a DynamicCache with per-layer keys and values")
    keys, values = [], []
    for layer in layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None:
            raise ValueError(f"{type(model).__name__}: a cache layer has no keys/values; decode is not supported")
        keys.append(torch.empty(tuple(k.shape), dtype=k.dtype, device="meta"))
        values.append(torch.empty(tuple(v.shape), dtype=v.dtype, device="meta"))
    return keys, values


def _decode_step(model: nn.Module, config: Any, cache_arg: str) -> nn.Module:
    """Wrap ``model`` so one decode step takes its KV cache as plain tensors and rebuilds a ``DynamicCache``.

    Plain tensors keep ``torch.export`` away from cache objects (no global
    pytree registration). The rebuild concatenates each cache onto an empty
    tensor, which the converter folds away; module paths get an ``inner.``
    prefix, which it strips.
    """
    from torch import nn
    from transformers import DynamicCache

    class DecodeStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, past_keys: list[Any], past_values: list[Any]) -> Any:
            cache = DynamicCache(config=config)
            for i, (k, v) in enumerate(zip(past_keys, past_values, strict=True)):
                cache.update(k, v, i)
            out = self.inner(input_ids=input_ids, use_cache=True, **{cache_arg: cache})
            return out.logits if hasattr(out, "logits") else out[0]

    return DecodeStep()


def _prepare_module(source: str, *, phase: str, batch: int, seq: int, context: int) -> _Prepared:
    torch = _require("torch")
    from torch import nn

    path, sep, factory_name = source[len("module:") :].rpartition(":")
    if not sep or not path or not factory_name:
        raise ValueError(f"source {source!r} must look like module:<python.path>:<factory>")
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ValueError(f"{source}: cannot import {path!r} ({exc})") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"{source}: {path!r} has no callable {factory_name!r}")
    offered = {"phase": phase, "batch": batch, "seq": seq, "context": context}
    with torch.device("meta"):
        result = factory(**{k: v for k, v in offered.items() if k in _accepts(factory)})
    model, example = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}: the factory must return an nn.Module or (nn.Module, kwargs)")
    config = getattr(model, "config", None)
    dtype, dtype_name = _graph_dtype(torch, getattr(config, "dtype", None) if config is not None else None)
    model = model.to(device="meta", dtype=dtype)
    model.train(phase == "train")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model") or (linears[0].in_features if linears else 0)
    if example is None:
        if phase == "decode":
            raise ValueError(f"{source}: decode needs the factory to return (module, kwargs) with its KV cache")
        names = [n for n in _accepts(model.forward) if n not in ("args", "kwargs")]
        if not names:
            raise ValueError(f"{source}: cannot tell the forward's input name; return (module, kwargs)")
        if any(isinstance(m, nn.Embedding) for m in model.modules()):
            x = torch.zeros((batch, seq), dtype=torch.long, device="meta")
        elif hidden:
            x = torch.zeros((batch, seq, hidden), dtype=dtype, device="meta")
        else:
            raise ValueError(f"{source}: no nn.Embedding or nn.Linear to size the input; return (module, kwargs)")
        kwargs = {names[0]: x}
    else:
        kwargs = {k: _to_meta(torch, v, dtype) for k, v in dict(example).items()}
    heads = _first_attr(model, ("num_attention_heads", "num_heads", "n_heads", "n_head")) or 1
    kv_heads = _first_attr(model, ("num_key_value_heads", "num_kv_heads", "n_kv_heads")) or heads
    prefix, n_layers = _find_layers(model)
    spec: dict[str, Any] = {"factory": f"{path}:{factory_name}", "params": sum(p.numel() for p in model.parameters())}
    if config is not None:
        spec.update(_scalar_fields(config))
    return _Prepared(
        root=model, args=(), kwargs=kwargs, dtype_name=dtype_name, n_layers=n_layers, layer_prefix=prefix,
        heads=heads, kv_heads=kv_heads, hidden=hidden, vocab=_config_int(config, "vocab_size"),
        top_k=_config_int(config, *_TOPK_FIELDS), spec=spec,
    )  # fmt: skip


def _first_attr(model: nn.Module, names: tuple[str, ...]) -> int:
    """First positive int attribute among ``names`` on the config or any submodule."""
    config = getattr(model, "config", None)
    holders = ([config] if config is not None else []) + list(model.modules())
    for holder in holders:
        value = _config_int(holder, *names)
        if value:
            return value
    return 0


def _to_meta(torch: Any, value: Any, dtype: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device="meta", dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, list | tuple):
        return type(value)(_to_meta(torch, v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(torch, v, dtype) for k, v in value.items()}
    return value


# ====================================================================================================
# Converting the exported program
# ====================================================================================================
@dataclass
class _Source:
    """Where a folded value comes from: its producing op (or placeholder) and the bytes a reader moves."""

    root: Any  # torch.fx.Node: an op node or a placeholder
    nbytes: float


@dataclass(eq=False)
class _Rec:
    """One op node, before it becomes a Task (hashed by identity: records key the edges)."""

    node: Any
    opname: str
    path: str
    rel: str
    layer: int
    label: str | None
    kind: str
    flops: float
    bytes: float
    weight_bytes: float
    param_bytes: float
    out_bytes: float
    kv_per_token: float = 0.0
    producers: dict[_Rec, float] = field(default_factory=dict)
    floating: bool = True
    name_shard: str | None = None
    block: str = ""
    shard: str = "replicated"
    allreduce: float = 0.0
    state: str | None = None


def _nbytes(val: Any) -> float:
    """Bytes of a tensor value (or the sum over a tuple/list of them)."""
    if isinstance(val, list | tuple):
        return sum(_nbytes(v) for v in val)
    numel = getattr(val, "numel", None)
    dtype = getattr(val, "dtype", None)
    if numel is None or dtype is None:
        return 0.0
    return float(numel()) * dtype.itemsize


def _value(arg: Any) -> Any:
    """The example value of an fx Node argument (the argument itself when it is a constant)."""
    if isinstance(arg, list | tuple):
        return type(arg)(_value(a) for a in arg)
    meta = getattr(arg, "meta", None)
    return meta.get("val") if isinstance(meta, dict) else arg


def _is_tensor(val: Any) -> bool:
    return hasattr(val, "dtype") and hasattr(val, "shape")


def _opname(target: Any) -> str:
    name = getattr(target, "_opname", None)
    if isinstance(name, str):
        return name
    if target is operator.getitem:
        return "getitem"
    return str(getattr(target, "__name__", target)).split(".")[0]


class _Converter:
    """Walks the exported graph once, folding views, then builds tasks and edges."""

    def __init__(self, program: Any, prep: _Prepared, meta: GraphMeta) -> None:
        from torch.utils.flop_counter import flop_registry, sdpa_flop_count

        self.flop_registry = flop_registry
        self.sdpa_flop_count = sdpa_flop_count
        self.program = program
        self.prep = prep
        self.meta = meta
        sig = program.graph_signature
        self.params = set(sig.inputs_to_parameters)
        self.weights = self.params | set(sig.inputs_to_buffers) | set(sig.inputs_to_lifted_tensor_constants)
        self.cache_inputs = {name for name in sig.user_inputs if str(name).startswith(_CACHE_INPUTS)}
        self.source: dict[Any, _Source] = {}
        self.recs: list[_Rec] = []
        self.rec_of: dict[Any, _Rec] = {}
        self.seen_params: set[Any] = set()
        self.cache_nodes: set[Any] = set()
        prefix = prep.layer_prefix
        self.layer_re = (
            re.compile(rf"^{re.escape(prefix + '.') if prefix else ''}(\d+)(?:\.|$)") if prefix is not None else None
        )
        self.max_layer = -1

    # -- pass 1: fold views, classify and cost each op ----------------------------------------------
    def run(self) -> TaskGraph | None:
        """The graph, or None when replicating template layers is unsafe (the caller exports all layers)."""
        for node in self.program.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self._placeholder(node)
            elif node.op == "call_function":
                self._call(node)
        self._assign_blocks()
        self._assign_shards()
        if self.prep.full_layers > self.prep.n_layers and not self._replicate():
            return None
        return self._build()

    def _placeholder(self, node: Any) -> None:
        val = node.meta.get("val")
        self.source[node] = _Source(node, _nbytes(val))
        if node.op == "placeholder" and node.name in self.cache_inputs:
            self.cache_nodes.add(node)

    def _tensor_args(self, node: Any) -> list[Any]:
        """fx Nodes among the args (flattened), deduplicated, in order."""
        out: list[Any] = []

        def visit(a: Any) -> None:
            if isinstance(a, list | tuple):
                for x in a:
                    visit(x)
            elif hasattr(a, "op") and hasattr(a, "meta") and a not in out and a in self.source:
                out.append(a)

        visit(node.args)
        visit(list(node.kwargs.values()))
        return out

    def _call(self, node: Any) -> None:
        target = node.target
        name = _opname(target)
        val = node.meta.get("val")
        args = self._tensor_args(node)
        if target is operator.getitem:
            parent = self.source.get(node.args[0])
            if parent is not None:
                self.source[node] = _Source(parent.root, min(_nbytes(val), parent.nbytes) or parent.nbytes)
            return
        has_tensor_out = _is_tensor(val) or (isinstance(val, list | tuple) and any(_is_tensor(v) for v in val))
        if not has_tensor_out:
            return  # asserts, symbolic sizes: nothing moves
        if args and self._is_alias(node, name, val, args):
            first = self._nonempty_source(node) if name == "cat" else self.source[args[0]]
            if first is not None:
                self.source[node] = _Source(first.root, min(_nbytes(val), first.nbytes))
                return
        self.source[node] = _Source(node, _nbytes(val))
        self._record(node, name, val, args)

    def _is_alias(self, node: Any, name: str, val: Any, args: list[Any]) -> bool:
        if name in _VIEW_OPS:
            return True
        if name == "contiguous" and _is_tensor(val) and val.is_contiguous():
            src = args[0].meta.get("val")
            return bool(_is_tensor(src) and src.is_contiguous())
        if name in _CAST_OPS:
            src = args[0].meta.get("val")
            return _is_tensor(src) and _is_tensor(val) and src.dtype == val.dtype
        if name in ("dropout", "feature_dropout", "alpha_dropout"):
            return len(node.args) > 2 and node.args[2] is False
        if name == "cat":
            return self._nonempty_source(node) is not None
        return False

    def _nonempty_source(self, node: Any) -> _Source | None:
        """The single non-empty input of a concatenation, if all others are empty (cache rebuilt in a wrapper)."""
        parts = node.args[0] if node.args and isinstance(node.args[0], list | tuple) else []
        nonempty = [p for p in parts if _nbytes(p.meta.get("val")) > 0]
        if len(nonempty) == 1 and nonempty[0] in self.source:
            return self.source[nonempty[0]]
        return None

    def _path(self, node: Any) -> tuple[str, str]:
        """Innermost module path (wrapper prefix stripped) and its class name."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", ""
        path, cls = list(stack.values())[-1]
        strip = self.prep.strip
        if strip and path.startswith(strip):
            path = path[len(strip) :]
        elif strip and path == strip.rstrip("."):
            path = ""
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
        return path, cls_name.rsplit(".", 1)[-1]

    def _layer_of(self, path: str) -> tuple[int, str]:
        """Layer index and the path inside the layer (``""`` outside layers)."""
        n = self.prep.n_layers
        if self.layer_re is not None:
            m = self.layer_re.match(path)
            if m:
                i = int(m.group(1))
                self.max_layer = max(self.max_layer, i)
                return i, path[m.end() :]
        if self.max_layer < 0:
            return -1, path
        return (n if self.max_layer >= n - 1 else self.max_layer), path

    def _record(self, node: Any, name: str, val: Any, args: list[Any]) -> None:
        path, cls_name = self._path(node)
        layer, rel = self._layer_of(path)
        kind = self._kind(name, cls_name)
        if kind == "matmul" and "expert" in path.lower() and any(self._is_expert_weight(a) for a in args):
            kind = "moe"  # batched matmul over stacked expert weights (e.g. Llama 4)
        out_bytes = written = _nbytes(val)
        read = weight_bytes = param_bytes = 0.0
        producers: dict[_Rec, float] = {}
        cache_append = name == "cat" and any(self.source[a].root in self.cache_nodes for a in args)
        for pos, arg in enumerate([] if name in _NO_READ_OPS else args):
            src = self.source[arg]
            root, nbytes = src.root, src.nbytes
            if kind == "attention" and pos >= 3:
                nbytes = 0.0  # the mask: causal kernels generate it on the fly
            if root.op in ("placeholder", "get_attr") and root.name in self.weights:
                if root.name in self.params and root not in self.seen_params:
                    self.seen_params.add(root)
                    param_bytes += _nbytes(root.meta.get("val"))
                if kind == "embedding":
                    continue  # an embedding reads the gathered rows only (charged below)
                nbytes *= self._touched_fraction(name, arg, args)
                weight_bytes += nbytes
            elif root in self.cache_nodes and cache_append:
                continue  # appending to the cache does not read it
            producer = self.rec_of.get(root)
            if producer is not None:
                producers[producer] = producers.get(producer, 0.0) + src.nbytes
            read += nbytes
        if kind == "embedding":
            read += out_bytes
        if cache_append:
            written = read  # the new token is written in place; DynamicCache's copy is not charged
        kv_per_token = 0.0
        if kind == "attention" and self.meta.phase != "train" and len(args) >= 3:
            q, k = args[0].meta.get("val"), args[1].meta.get("val")
            tokens = float(q.shape[0] * k.shape[-2]) if _is_tensor(q) and _is_tensor(k) else 0.0
            kv_per_token = (self.source[args[1]].nbytes + self.source[args[2]].nbytes) / tokens if tokens else 0.0
        first = val[0] if isinstance(val, list | tuple) else val
        rec = _Rec(
            node=node, opname=name, path=path, rel=rel, layer=layer, label=self._label(rel, cls_name, kind),
            kind=kind, flops=self._flops(node, name, val), bytes=read + written, weight_bytes=weight_bytes,
            param_bytes=param_bytes, out_bytes=out_bytes, kv_per_token=kv_per_token, producers=producers,
            name_shard=self._name_shard(kind, node, path, val, layer),
            floating=bool(_is_tensor(first) and first.is_floating_point()),
        )  # fmt: skip
        self.recs.append(rec)
        self.rec_of[node] = rec

    def _is_expert_weight(self, arg: Any) -> bool:
        root = self.source[arg].root
        val = root.meta.get("val")
        return root.name in self.params and _is_tensor(val) and val.dim() == 3

    def _kind(self, name: str, cls_name: str) -> str:
        if name in _MOE_OPS:
            return "moe"
        if name in _MATMUL_OPS:
            return "matmul"
        if "scaled_dot_product" in name or name in ("_flash_attention_forward", "_efficient_attention_forward"):
            return "attention"
        if name in _EMBED_OPS:
            return "embedding"
        if name in _LOSS_OPS:
            return "loss"
        if name in _NORM_OPS or "norm" in cls_name.lower():
            return "norm"
        return "elementwise"

    def _touched_fraction(self, name: str, arg: Any, args: list[Any]) -> float:
        """Share of a grouped matmul's expert weights the routed tokens touch (1 for other ops)."""
        k = self.prep.top_k
        if name not in _MOE_OPS or not k or len(args) < 2 or arg is not args[1]:
            return 1.0
        a, b = args[0].meta.get("val"), arg.meta.get("val")
        if not (_is_tensor(a) and _is_tensor(b)) or b.dim() != 3 or a.dim() != 2:
            return 1.0
        experts = int(b.shape[0])
        tokens = int(a.shape[0]) / k
        k = min(k, experts)
        return 1.0 - (1.0 - k / experts) ** tokens

    def _flops(self, node: Any, name: str, val: Any) -> float:
        vals = [_value(a) for a in node.args]
        if name == "linear":
            x, w = vals[0], vals[1]
            return 2.0 * float(x.numel()) * float(w.shape[0])
        if name in _MOE_OPS:
            a, b = vals[0], vals[1]
            out = val[0] if isinstance(val, list | tuple) else val
            groups = int(b.shape[0]) if a.dim() == 2 and b.dim() == 2 and out.dim() == 3 else 1
            return 2.0 * float(out.numel()) * float(a.shape[-1]) / groups
        if "scaled_dot_product" in name and "backward" not in name:
            q, k, v = vals[0], vals[1], vals[2]  # sdpa_flop_count broadcasts grouped KV heads
            return float(self.sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        if name == "matmul" and _is_tensor(vals[0]) and vals[0].dim() >= 1:  # composite: kept whole in training IR
            out = val[0] if isinstance(val, list | tuple) else val
            return 2.0 * float(out.numel()) * float(vals[0].shape[-1])
        if name in ("log_softmax", "_log_softmax", "cross_entropy_loss"):
            return LOSS_FLOPS_PER_LOGIT * float(vals[0].numel())
        formula = self.flop_registry.get(node.target.overloadpacket) if hasattr(node.target, "overloadpacket") else None
        if formula is None:
            return 0.0
        try:
            return float(formula(*vals, out_val=val, **{k: _value(v) for k, v in node.kwargs.items()}))
        except Exception:  # a formula that cannot read this overload: count 0 rather than fail the import
            return 0.0

    @staticmethod
    def _label(rel: str, cls_name: str, kind: str) -> str | None:
        """Block of an op inside a layer from its path there (or its kind); None when neither says."""
        if kind == "attention":
            return "attn"
        if not rel:
            return None
        segments = rel.split(".")
        if len(segments) == 1 and "norm" in cls_name.lower():
            return None  # a norm directly under the layer joins the block it feeds
        if any(_ATTN_SEG.search(s) for s in segments):
            return "attn"
        if any(_MLP_SEG.search(s) for s in segments) or segments[0] in ("intermediate", "output"):
            return "mlp"
        if segments[-1] in _ATTN_NAMES:
            return "attn"
        if segments[-1] in _MLP_NAMES:
            return "mlp"
        return None

    def _name_shard(self, kind: str, node: Any, path: str, val: Any, layer: int) -> str | None:
        """Shard rule that the op's own name or kind fixes (None: follow the inputs)."""
        if kind == "attention":
            return "heads"
        if kind == "moe":
            return "experts"
        vocab = self.prep.vocab
        if kind == "embedding":  # the token table splits by vocab; position tables are replicated
            table: Any = _value(node.args[0]) if node.args else None
            rows = int(table.shape[0]) if _is_tensor(table) else 0
            return "vocab" if layer < 0 and (not vocab or rows == vocab) else "replicated"
        if kind != "matmul":
            return None
        segments = path.split(".") if path else []
        leaf = segments[-1] if segments else ""
        parent = segments[-2] if len(segments) > 1 else ""
        out = val[0] if isinstance(val, list | tuple) else val
        if vocab and _is_tensor(out) and out.shape[-1] == vocab and layer >= self.prep.n_layers:
            return "vocab"
        if leaf in _ROW_NAMES or (leaf == "dense" and (parent == "output" or _ATTN_SEG.search(parent))):
            return "row"
        if leaf in _COLUMN_NAMES or (leaf == "dense" and parent == "intermediate"):
            return "column"
        return None

    # -- pass 2: blocks -----------------------------------------------------------------------------
    def _assign_blocks(self) -> None:
        n = self.prep.n_layers
        by_layer: dict[int, list[_Rec]] = {}
        for rec in self.recs:
            if rec.layer < 0:
                rec.block = "embed"
            elif rec.layer >= n:
                rec.block = "head"
            else:
                by_layer.setdefault(rec.layer, []).append(rec)
        for recs in by_layer.values():
            labels = [r.label for r in recs]
            nxt: list[str | None] = [None] * len(recs)
            upcoming: str | None = None
            for i in range(len(recs) - 1, -1, -1):
                nxt[i] = upcoming
                upcoming = labels[i] or upcoming
            previous: str | None = None
            for i, rec in enumerate(recs):
                if labels[i]:
                    rec.block = labels[i] or "attn"
                elif rec.kind == "norm":
                    rec.block = nxt[i] or previous or "attn"
                else:
                    rec.block = previous or nxt[i] or "attn"
                if labels[i] or rec.kind != "norm":
                    previous = rec.block

    # -- pass 3: tensor-parallel rules --------------------------------------------------------------
    def _assign_shards(self) -> None:
        """Apply the name rules, then propagate split activations in program order.

        An op's output stays split while it is produced by a split op without
        an all-reduce; the last op of an experts module combines the tokens
        (all-reduce), as the zoo's ``moe_down`` does.
        """
        moe_scopes = {r.path for r in self.recs if r.kind == "moe"}
        last_of_experts: dict[str, _Rec] = {}
        for rec in self.recs:
            for scope in moe_scopes:
                if rec.path == scope or rec.path.startswith(scope + "."):
                    last_of_experts[scope] = rec
        combiners = set(last_of_experts.values())
        for rec in self.recs:
            shard = rec.name_shard
            if shard is None:
                split = [p.state for p in rec.producers if p.state]
                if "experts" in split:
                    shard = "experts"
                elif "vocab" in split:
                    shard = "vocab"
                elif split:
                    shard = "heads" if rec.block == "attn" else "column"
                else:
                    shard = "replicated"
            rec.shard = shard
            if shard == "row" or (shard == "vocab" and rec.kind == "embedding") or rec in combiners:
                rec.allreduce = rec.out_bytes
            rec.state = shard if shard in _SPLIT and not rec.allreduce else None

    # -- optional: replicate template layers ---------------------------------------------------------
    def _replicate(self) -> bool:
        """Expand an export of ``TEMPLATE_LAYERS`` layers to ``full_layers`` by cloning its middle layer.

        Layer 0 stays, layer 1 is cloned for layers 1..n-2 and layer 2 becomes
        layer n-1, so whatever is special about the first or last layer is kept.
        Safe only when the template layers are identical op for op (names,
        kinds, costs, shard rules) and wire alike: each reads only its own
        layer, the previous one, or ops outside the layers. Returns False
        otherwise and the caller exports every layer.
        """
        k, n = self.prep.n_layers, self.prep.full_layers
        layers = [[r for r in self.recs if r.layer == i] for i in range(k)]
        outside_before = [r for r in self.recs if r.layer < 0]
        after = [r for r in self.recs if r.layer >= k]
        pos = {r: j for group in layers for j, r in enumerate(group)}

        def signature(r: _Rec) -> tuple[Any, ...]:
            return (r.opname, r.rel, r.kind, r.block, r.shard, r.flops, r.bytes, r.weight_bytes,
                    r.param_bytes, r.out_bytes, r.kv_per_token, r.allreduce)  # fmt: skip

        def wiring(r: _Rec) -> list[tuple[Any, ...]]:
            return [
                ("L", p.layer - r.layer, pos[p], b) if 0 <= p.layer < k else ("X", id(p), b)
                for p, b in r.producers.items()
            ]

        if len({len(g) for g in layers}) != 1:
            return False
        if any(len({signature(r) for r in same}) != 1 for same in zip(*layers, strict=True)):
            return False
        for group in layers:
            if any(0 <= p.layer < k and p.layer not in (r.layer, r.layer - 1) for r in group for p in r.producers):
                return False
        if any(wiring(a) != wiring(b) for a, b in zip(layers[1], layers[2], strict=True)):
            return False
        if any(0 <= p.layer < k - 1 for r in after for p in r.producers):
            return False
        prefix = self.prep.layer_prefix or ""
        clones: list[list[_Rec]] = [layers[0]]
        for j in range(1, n):
            template = layers[1] if j < n - 1 else layers[2]
            path = f"{prefix}.{j}" if prefix else str(j)
            group = [replace(r, layer=j, path=f"{path}.{r.rel}" if r.rel else path, producers={}) for r in template]
            clones.append(group)
            for r, c in zip(template, group, strict=True):
                c.producers = {
                    (clones[j + p.layer - r.layer][pos[p]] if 0 <= p.layer < k else p): b
                    for p, b in r.producers.items()
                }
        for r in after:
            r.layer = r.layer - k + n
            r.producers = {(clones[n - 1][pos[p]] if 0 <= p.layer < k else p): b for p, b in r.producers.items()}
        self.recs = outside_before + [r for group in clones for r in group] + after
        return True

    # -- pass 4: tasks and edges --------------------------------------------------------------------
    def _build(self) -> TaskGraph:
        n = self.prep.full_layers
        kv_heads = self.prep.kv_heads
        spec = cast("ModelSpec", SimpleNamespace(dtype_bytes=DTYPE_BYTES.get(self.meta.dtype, 2), layers=n))
        builder = _Builder(spec, self.meta)
        graph = builder.graph
        ids: dict[_Rec, str] = {}
        used: dict[str, int] = {}
        for rec in self.recs:
            base = self._task_id(rec, n)
            count = used.get(base, 0)
            used[base] = count + 1
            task_id = base if not count else f"{base}#{count}"
            ids[rec] = task_id
            op = Op(
                name=task_id, kind=rec.kind, flops=rec.flops, bytes=rec.bytes,
                weight_bytes=rec.weight_bytes, param_bytes=rec.param_bytes, output_bytes=rec.out_bytes,
                kv_bytes_per_token=rec.kv_per_token, allreduce_bytes=rec.allreduce, shard=rec.shard,
                shard_max=kv_heads if rec.kind == "attention" else 0,
            )  # fmt: skip
            task = Task.from_op(op, layer=rec.layer, block=rec.block, scope=rec.path or "model")
            graph.add_task(task)
            if rec.floating or rec.param_bytes:
                builder.forward.append(task)  # integer/bool ops (masks, positions) get no gradient
            for producer, nbytes in rec.producers.items():
                cap = producer.out_bytes or nbytes
                graph.add_edge(ids[producer], task_id, min(nbytes, cap))
        if self.meta.phase == "train":
            _backward(builder)
        return graph

    @staticmethod
    def _task_id(rec: _Rec, n: int) -> str:
        inside = 0 <= rec.layer < n
        return ".".join(p for p in (f"L{rec.layer}" if inside else rec.block, rec.rel, rec.opname) if p)
