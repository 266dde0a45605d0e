"""Build the model to import on the ``meta`` device, with example inputs for one phase, and export it.

Nothing is downloaded: configs are written in code and the model is built on
the ``meta`` device, so no weights exist and a 7B model costs nothing to build.

Phases: ``prefill`` runs ``input_ids`` of shape (batch, seq) with no cache, and
a causal LM computes logits for the last token only (``logits_to_keep=1``, as
serving engines and the zoo do). ``decode`` runs one new token per sequence
against a KV cache of ``context`` tokens (``seq`` when 0): the cache shapes come
from a prefill under ``FakeTensorMode`` and the cache is rebuilt inside a small
wrapper module from meta tensors, so no pytree registration is needed.
``train`` exports the forward in training mode with ``labels`` (so dropout and
the loss are in the graph).

torch and transformers come in as arguments (the entry point imports them
behind its missing-extra guard), so importing this module needs neither.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ._replicate import TEMPLATE_LAYERS, homogeneous, template_config
from ._taskgraph import Phase

if TYPE_CHECKING:
    from torch import nn

#: torch dtypes a graph can be built in, by their paratune names.
_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
#: User inputs of the decode wrapper that hold the KV cache.
CACHE_INPUTS = ("past_keys", "past_values")
#: Config attributes that give the experts each token is routed to.
_TOPK_FIELDS = ("num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k", "num_selected_experts")


@dataclass
class Prepared:
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


@contextmanager
def export_settings(torch: Any) -> Iterator[None]:
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


def export(torch: Any, prep: Prepared, *, source: str, phase: str) -> Any:
    """``torch.export.export`` of the prepared module (non-strict), failures named after ``source``."""
    try:
        return torch.export.export(prep.root, prep.args, prep.kwargs, strict=False)
    except Exception as exc:  # torch raises many types; the user needs the source named
        raise ValueError(f"{source}: torch.export failed for phase {phase!r}: {type(exc).__name__}: {exc}") from exc


def prepare_hf(
    torch: Any, transformers: Any, config: Any, *, model_type: str, dtype: Any, source: str,
    phase: str, batch: int, seq: int, context: int, replicate: bool,
) -> Prepared:  # fmt: skip
    """A Hugging Face model built from ``config`` (``dtype``: the one requested, None for the config's).

    Masked-LM encoders get their MLM head, decoders their causal-LM head; with
    ``replicate``, a model of identical layers is built with ``TEMPLATE_LAYERS``.
    """
    from transformers.models.auto import modeling_auto

    torch_dtype, dtype_name = _graph_dtype(torch, dtype or getattr(config, "dtype", None))
    if model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        auto_cls, encoder = transformers.AutoModelForMaskedLM, True
    elif model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        auto_cls, encoder = transformers.AutoModelForCausalLM, False
    else:
        raise ValueError(f"model {source!r}: {model_type!r} has neither a causal-LM nor a masked-LM head")
    if encoder and phase == Phase.DECODE:
        raise ValueError(f"model {source!r} is an encoder: phase 'decode' is not defined (use prefill or train)")
    model = _build_hf(torch, auto_cls, config, torch_dtype, source)
    prefix, n_layers = _find_layers(model)
    heads = _config_int(config, "num_attention_heads", "n_head", default=1)
    prep = Prepared(
        root=model, args=(), kwargs={}, dtype_name=dtype_name, n_layers=n_layers, layer_prefix=prefix,
        heads=heads, kv_heads=_config_int(config, "num_key_value_heads", "n_head_kv", default=heads),
        hidden=_config_int(config, "hidden_size", "n_embd", "d_model"), vocab=_config_int(config, "vocab_size"),
        top_k=_config_int(config, *_TOPK_FIELDS),
        spec={"model_type": model_type, "params": sum(p.numel() for p in model.parameters()),
              **_scalar_fields(config)},
    )  # fmt: skip
    if replicate and prefix is not None and n_layers > TEMPLATE_LAYERS and homogeneous(model, prefix, config):
        small = template_config(config, n_layers)
        if small is not None:
            model = _build_hf(torch, auto_cls, small, torch_dtype, source)
            prep.root, prep.full_layers = model, n_layers
            prep.layer_prefix, prep.n_layers = _find_layers(model)
    model.train(phase == Phase.TRAIN)
    accepted = _accepts(model.forward)
    cache_arg = "cache" if "cache" in accepted else "past_key_values"
    ids = torch.zeros((batch, 1 if phase == Phase.DECODE else seq), dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"input_ids": ids}
    if "use_cache" in accepted:
        kwargs["use_cache"] = phase == Phase.DECODE
    if phase == Phase.TRAIN and "labels" in accepted:
        kwargs["labels"] = ids
    if phase == Phase.PREFILL and not encoder and "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    if phase != Phase.DECODE:
        prep.kwargs = kwargs
        return prep
    keys, values = _cache_shapes(torch, model, cache_arg, accepted, batch, context)
    prep.root = _decode_step(model, getattr(model, "config", config), cache_arg)
    prep.strip = "inner."
    prep.kwargs = {"input_ids": ids, CACHE_INPUTS[0]: keys, CACHE_INPUTS[1]: values}
    return prep


def prepare_module(
    torch: Any, factory: Callable[..., Any], *, name: str, source: str, phase: str, batch: int, seq: int, context: int
) -> Prepared:
    """The module a user ``factory`` (named ``name`` in the spec) returns, with its example inputs."""
    from torch import nn

    offered = {"phase": phase, "batch": batch, "seq": seq, "context": context}
    with torch.device("meta"):
        try:
            result = factory(**{k: v for k, v in offered.items() if k in _accepts(factory)})
        except Exception as exc:  # the user's own code: whatever it raises is theirs to fix, named in one line
            raise ValueError(f"{source}: the factory {name} failed: {type(exc).__name__}: {exc}") from exc
    model, example = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}: the factory must return an nn.Module or (nn.Module, kwargs)")
    config = getattr(model, "config", None)
    dtype, dtype_name = _graph_dtype(torch, getattr(config, "dtype", None) if config is not None else None)
    model = model.to(device="meta", dtype=dtype)
    model.train(phase == Phase.TRAIN)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model") or (linears[0].in_features if linears else 0)
    if example is None:
        if phase == Phase.DECODE:
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
    spec: dict[str, Any] = {"factory": name, "params": sum(p.numel() for p in model.parameters())}
    if config is not None:
        spec.update(_scalar_fields(config))
    return Prepared(
        root=model, args=(), kwargs=kwargs, dtype_name=dtype_name, n_layers=n_layers, layer_prefix=prefix,
        heads=heads, kv_heads=kv_heads, hidden=hidden, vocab=_config_int(config, "vocab_size"),
        top_k=_config_int(config, *_TOPK_FIELDS), spec=spec,
    )  # fmt: skip


def _accepts(fn: Callable[..., Any]) -> set[str]:
    """Parameter names of ``fn`` (empty when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)


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


def _first_attr(model: nn.Module, names: tuple[str, ...]) -> int:
    """First positive int attribute among ``names`` on the config or any submodule."""
    config = getattr(model, "config", None)
    holders = ([config] if config is not None else []) + list(model.modules())
    for holder in holders:
        value = _config_int(holder, *names)
        if value:
            return value
    return 0


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


def _to_meta(torch: Any, value: Any, dtype: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device="meta", dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, list | tuple):
        return type(value)(_to_meta(torch, v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(torch, v, dtype) for k, v in value.items()}
    return value


def _build_hf(torch: Any, auto_cls: Any, config: Any, dtype: Any, source: str) -> nn.Module:
    """Instantiate on meta with SDPA attention (eager where a model has no SDPA path)."""
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
