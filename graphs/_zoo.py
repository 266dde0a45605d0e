"""Model zoo: transformers described by a handful of numbers.

A :class:`ModelSpec` is enough to build the task graph of a decoder-only or
encoder transformer in any phase. Presets carry the published shapes; any field
can be overridden (``llama2-70b:layers=4``) and a user can describe a new model in
a YAML file with the same field names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from .._limits import (
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_SEQ,
    MAX_VOCAB,
    MAX_WIDTH,
    check_at_most,
    parse_yaml,
    read_text,
)

#: Bytes per element of each supported weight/activation dtype.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
ARCHS = ("decoder", "encoder")
NORMS = ("rmsnorm", "layernorm")
ATTENTIONS = ("flash", "unfused")
#: The largest value each size field accepts (see :mod:`paratune._limits`).
FIELD_MAXIMA = {
    "layers": MAX_LAYERS,
    "hidden": MAX_WIDTH,
    "heads": MAX_HEADS,
    "kv_heads": MAX_HEADS,
    "ffn": MAX_WIDTH,
    "vocab": MAX_VOCAB,
    "experts": MAX_EXPERTS,
    "top_k": MAX_EXPERTS,
    "positions": MAX_SEQ,
    "type_vocab": MAX_VOCAB,
}


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a transformer.

    Attributes:
        name: model name, used in reports.
        layers: number of transformer layers.
        hidden: model width (d_model).
        heads: attention heads; bounds the tensor-parallel degree.
        kv_heads: key/value heads (grouped-query attention when < heads).
        ffn: MLP inner size (per expert for MoE).
        vocab: vocabulary size.
        gated_mlp: SwiGLU-style MLP (up and gate projections) instead of up + GeLU.
        experts: number of MoE experts (0 for a dense MLP).
        top_k: experts each token is routed to.
        tied_embeddings: the LM head reuses the embedding matrix.
        dtype: weight and activation dtype (bf16, fp16, fp8).
        arch: decoder (causal, has decode) or encoder (bidirectional, no decode).
        norm: rmsnorm (no bias) or layernorm (with bias).
        bias: linear layers have biases (GPT-2, BERT).
        positions: learned position embeddings (0 for rotary).
        type_vocab: token-type embeddings (BERT).
        attention: how attention runs: ``flash`` (one fused kernel, causal half skipped) or
            ``unfused`` (scores materialised, as in Megatron-LM before FlashAttention).
        kv_dtype: dtype of the KV cache (bf16, fp16, fp8); empty: ``dtype``. An fp8 cache
            (what serving engines offer for bf16 models) halves the KV bytes stored and read.
        dropout: training graphs carry dropout ops, as GPT-3 / Megatron-LM train: after the
            attention output projection and the MLP (hidden dropouts, a 1-byte mask each) and,
            with unfused attention, on the attention probabilities (a flash kernel draws its
            mask inside and stores none). Off by default; inference graphs never have them.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    gated_mlp: bool = True
    experts: int = 0
    top_k: int = 0
    tied_embeddings: bool = False
    dtype: str = "bf16"
    arch: str = "decoder"
    norm: str = "rmsnorm"
    bias: bool = False
    positions: int = 0
    type_vocab: int = 0
    attention: str = "flash"
    kv_dtype: str = ""
    dropout: bool = False

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        for name, maximum in FIELD_MAXIMA.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: field '{name}' must be an integer, got {value!r}")
            check_at_most(value, maximum, f"{where}: field '{name}'")
        for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}: field '{name}' must be >= 1, got {getattr(self, name)}")
        for name in ("positions", "type_vocab"):
            if getattr(self, name) < 0:
                raise ValueError(f"{where}: field '{name}' must be >= 0, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"{where}: field 'hidden' ({self.hidden}) must be divisible by 'heads' ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"{where}: field 'kv_heads' ({self.kv_heads}) must divide 'heads' ({self.heads})")
        if self.experts < 0 or (self.experts and not 1 <= self.top_k <= self.experts):
            raise ValueError(f"{where}: field 'top_k' must be in 1..experts ({self.experts}), got {self.top_k}")
        if self.dtype not in DTYPE_BYTES or self.dtype == "fp32":
            raise ValueError(f"{where}: field 'dtype' is {self.dtype!r}; allowed: bf16, fp16, fp8")
        if self.kv_dtype and (self.kv_dtype not in DTYPE_BYTES or self.kv_dtype == "fp32"):
            raise ValueError(f"{where}: field 'kv_dtype' is {self.kv_dtype!r}; allowed: bf16, fp16, fp8 (empty: dtype)")
        if self.arch not in ARCHS:
            raise ValueError(f"{where}: field 'arch' is {self.arch!r}; allowed: {', '.join(ARCHS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"{where}: field 'attention' is {self.attention!r}; allowed: {', '.join(ATTENTIONS)}")
        if self.norm not in NORMS:
            raise ValueError(f"{where}: field 'norm' is {self.norm!r}; allowed: {', '.join(NORMS)}")

    # -- derived shapes ---------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_dtype_bytes(self) -> int:
        """Bytes per KV-cache element (``kv_dtype``, or the model's dtype when it is empty)."""
        return DTYPE_BYTES[self.kv_dtype or self.dtype]

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated_mlp else 2

    # -- parameter counts -------------------------------------------------
    def attention_params(self) -> int:
        h, b = self.hidden, int(self.bias)
        qkv = h * (h + 2 * self.kv_dim) + b * (h + 2 * self.kv_dim)
        out = h * h + b * h
        return qkv + out

    def expert_params(self) -> int:
        """Parameters of one MLP (one expert for MoE)."""
        h, f, b = self.hidden, self.ffn, int(self.bias)
        return self.mlp_matrices * h * f + b * ((self.mlp_matrices - 1) * f + h)

    def norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layernorm" else 1)

    def layer_params(self, *, active: bool = False) -> int:
        mlp = self.expert_params()
        if self.experts:
            mlp = mlp * (self.top_k if active else self.experts) + self.hidden * self.experts
        return self.attention_params() + mlp + 2 * self.norm_params()

    def embedding_params(self) -> int:
        h = self.hidden
        emb = self.vocab * h + self.positions * h + self.type_vocab * h
        if self.arch == "encoder":
            emb += self.norm_params()  # BERT's embedding LayerNorm
        return emb

    def head_params(self) -> int:
        """Final norm and LM head (nothing extra when the embedding is tied)."""
        return self.norm_params() + (0 if self.tied_embeddings else self.vocab * self.hidden)

    def params(self, *, active: bool = False) -> int:
        """Total parameters (``active``: those one token uses, for MoE)."""
        return self.embedding_params() + self.layers * self.layer_params(active=active) + self.head_params()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.kv_dtype:
            del out["kv_dtype"]  # the default: files written before the field stay the same
        if not self.dropout:
            del out["dropout"]
        return out

    def describe(self) -> dict[str, Any]:
        """What ``paratune models show`` prints."""
        return {
            **self.to_dict(),
            "params": self.params(),
            "active_params": self.params(active=True),
            "weight_bytes": self.params() * self.dtype_bytes,
            "head_dim": self.head_dim,
        }


def _gpt2(name: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        ffn=4 * hidden,
        vocab=50257,
        gated_mlp=False,
        tied_embeddings=True,
        norm="layernorm",
        bias=True,
        positions=1024,
    )


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int) -> ModelSpec:
    return ModelSpec(name=name, layers=layers, hidden=hidden, heads=heads, kv_heads=kv, ffn=ffn, vocab=vocab)


PRESETS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _gpt2("gpt2", 12, 768, 12),
        _gpt2("gpt2-medium", 24, 1024, 16),
        _gpt2("gpt2-large", 36, 1280, 20),
        _gpt2("gpt2-xl", 48, 1600, 25),
        ModelSpec(
            name="bert-large",
            layers=24,
            hidden=1024,
            heads=16,
            kv_heads=16,
            ffn=4096,
            vocab=30522,
            gated_mlp=False,
            tied_embeddings=True,
            arch="encoder",
            norm="layernorm",
            bias=True,
            positions=512,
            type_vocab=2,
        ),
        _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
        _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
        _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
        _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
        _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256),
        _llama("llama3-405b", 126, 16384, 128, 8, 53248, 128256),
        _llama("qwen3-8b", 36, 4096, 32, 8, 12288, 151936),  # head_dim 128 = hidden / heads; QK-norm not modelled
        replace(_llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000), experts=8, top_k=2),
        replace(_gpt2("gpt3-175b", 96, 12288, 96), positions=2048),
    )
}

_FIELD_TYPES = {f.name: f.type for f in fields(ModelSpec)}


def _coerce(name: str, raw: Any, where: str) -> Any:
    """A field's value of the right type: a YAML file's values must have it; override strings are parsed.

    Strict on purpose: ``layers: 32.5`` or ``gated_mlp: 1`` are mistakes, not values to round or guess.
    """
    kind = _FIELD_TYPES[name]
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = raw.strip().lower() if isinstance(raw, str) else None
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: field '{name}' must be true or false, got {raw!r}")
    if kind == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        text = raw.strip() if isinstance(raw, str) else ""
        if re.fullmatch(r"[+-]?[0-9]{1,30}", text):
            return int(text)
        raise ValueError(f"{where}: field '{name}' must be an integer, got {raw!r}")
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        raise ValueError(f"{where}: field '{name}' must be a string, got {raw!r}")
    return str(raw)


def spec_from_mapping(data: dict[str, Any], *, where: str, base: ModelSpec | None = None) -> ModelSpec:
    """Build a spec from a mapping of field names (a YAML file or overrides), naming bad fields."""
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELD_TYPES)}")
    values = {k: _coerce(k, v, where) for k, v in data.items()}
    if base is not None:
        return replace(base, **values)
    missing = [n for n in ("name", "layers", "hidden", "heads", "ffn", "vocab") if n not in values]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
    values.setdefault("kv_heads", values["heads"])
    return ModelSpec(**values)


#: Hugging Face ids of the zoo's presets, for the engines' launch lines (other models print a placeholder).
HF_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-70b": "meta-llama/Meta-Llama-3-70B",
    "llama3-405b": "meta-llama/Llama-3.1-405B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
}


def get_model(source: str) -> ModelSpec:
    """Resolve a zoo model: ``NAME``, ``NAME:field=value,...`` or a YAML file path.

    Raises:
        ValueError: unknown model or bad field, with the allowed names.
    """
    name, _, rest = source.partition(":")
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        data = parse_yaml(read_text(path, "model file"), str(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a model file is a mapping of field: value")
        data.setdefault("name", path.stem)
        spec = spec_from_mapping(data, where=str(path))
    elif name in PRESETS:
        spec = PRESETS[name]
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)} (or a .yaml file, hf:..., module:...)")
    if rest:
        overrides: dict[str, str] = {}
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"model {source!r}: override {item!r} must look like field=value")
            overrides[key.strip()] = value.strip()
        spec = spec_from_mapping(overrides, where=f"model {source!r}", base=spec)
    return spec
