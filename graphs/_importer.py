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

This module parses the source and guards the optional imports; each later stage
has its own module, whose docstring states its conventions:

* ``_export``: the model on meta, its inputs per phase (prefill, decode with
  its KV cache, train) and the ``torch.export`` call;
* ``_replicate``: exporting three template layers of a model whose layers are
  identical and cloning the middle one (several times faster, same graph);
* ``_fxconvert``: the walk over the exported program (views folded, bytes,
  tasks and edges, backward and optimizer for ``train``);
* ``_fxops``: op kinds and FLOP formulas; ``_fxlayout``: layer, block, scope
  and tensor-parallel rule of each op.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._export import Prepared, export, export_settings, prepare_hf, prepare_module
from ._fxconvert import Converter
from ._taskgraph import PHASES, GraphMeta, Phase, TaskGraph

__all__ = ["import_torch_graph"]

_EXTRA_HINT = "needs the import extra: pip install 'paratune[import]'"
#: Model types known to import; any type ``transformers`` knows may work.
HF_EXAMPLES = ("llama", "mistral", "mixtral", "qwen2", "gpt2", "bert", "roberta", "falcon", "phi3")


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
    context = context or (seq if phase == Phase.DECODE else 0)
    torch = _require("torch")
    with export_settings(torch):
        for replicate in (True, False) if replicate_layers else (False,):
            prep = _prepare(torch, source, phase=phase, batch=batch, seq=seq, context=context, replicate=replicate)
            prep.full_layers = prep.full_layers or prep.n_layers
            program = export(torch, prep, source=source, phase=phase)
            meta = GraphMeta(
                model=source, phase=phase, batch=batch, seq=seq, context=context, n_layers=prep.full_layers,
                heads=prep.heads, kv_heads=prep.kv_heads, hidden=prep.hidden, dtype=prep.dtype_name,
                source="torch.export", spec=prep.spec,
            )  # fmt: skip
            graph = Converter(program, prep, meta).run()
            if graph is not None:
                return graph
    raise AssertionError("unreachable: a full export always converts")  # pragma: no cover


def _prepare(torch: Any, source: str, *, phase: str, batch: int, seq: int, context: int, replicate: bool) -> Prepared:
    """Parse ``source`` and build its module with example inputs for ``phase``."""
    if source.startswith("hf:"):
        transformers = _require("transformers")
        model_type, config, dtype = _hf_config(transformers, source)
        return prepare_hf(
            torch, transformers, config, model_type=model_type, dtype=dtype, source=source,
            phase=phase, batch=batch, seq=seq, context=context, replicate=replicate,
        )  # fmt: skip
    if source.startswith("module:"):
        factory, name = _module_factory(source)
        return prepare_module(
            torch, factory, name=name, source=source, phase=phase, batch=batch, seq=seq, context=context
        )
    raise ValueError(f"source {source!r} must start with 'hf:' or 'module:'")


def _require(module: str) -> Any:
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"importing a PyTorch model {_EXTRA_HINT} ({module}: {exc})") from None


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


def _hf_config(transformers: Any, source: str) -> tuple[str, Any, Any]:
    """Model type, config with the overrides applied, and requested dtype (or None) of an ``hf:`` source."""
    model_type, _, rest = source[len("hf:") :].partition(":")
    overrides = _parse_overrides(rest, f"model {source!r}")
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
    return model_type, config, requested_dtype


def _module_factory(source: str) -> tuple[Callable[..., Any], str]:
    """The factory of a ``module:`` source and its ``path:factory`` name."""
    path, sep, factory_name = source[len("module:") :].rpartition(":")
    if not sep or not path or not factory_name:
        raise ValueError(f"source {source!r} must look like module:<python.path>:<factory>")
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ValueError(f"{source}: cannot import {path!r} ({exc})") from None
    except Exception as exc:  # the user's module failed while importing (a SyntaxError is an Exception too)
        raise ValueError(f"{source}: importing {path!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"{source}: {path!r} has no callable {factory_name!r}")
    return factory, f"{path}:{factory_name}"
