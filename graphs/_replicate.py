"""Import a model of identical layers by exporting three of them and cloning the middle one.

Tracing costs about 0.1 s per layer, so for ``hf:`` models whose layers are
identical (same class and parameter shapes, nothing per-layer in the config)
the importer exports ``TEMPLATE_LAYERS`` = 3 layers and clones the middle one;
it checks that the three exported layers match op for op and wire alike, and
exports every layer otherwise. The result equals a full export
(``replicate_layers=False``); the tests compare the two.

Before export, :func:`homogeneous` and :func:`template_config` decide whether
and how to build the small model; after conversion, :func:`replicate_layers`
checks the template and clones it.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from ._fxops import OpRecord

if TYPE_CHECKING:
    from torch import nn

#: Layers exported when replicating identical layers: first, one template for the middle, last.
TEMPLATE_LAYERS = 3


def homogeneous(model: nn.Module, prefix: str, config: Any) -> bool:
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


def template_config(config: Any, n_layers: int) -> Any | None:
    """A copy of ``config`` with ``TEMPLATE_LAYERS`` layers (per-layer lists cut to match), or None."""
    small = copy.deepcopy(config)
    try:
        small.num_hidden_layers = TEMPLATE_LAYERS
        for key, value in config.to_dict().items():
            if isinstance(value, list | tuple) and len(value) == n_layers and hasattr(small, key):
                setattr(small, key, type(value)(value[:TEMPLATE_LAYERS]))
    except (AttributeError, ValueError, TypeError):
        return None
    return small if getattr(small, "num_hidden_layers", None) == TEMPLATE_LAYERS else None


def replicate_layers(
    recs: list[OpRecord], *, template_layers: int, full_layers: int, layer_prefix: str | None
) -> list[OpRecord] | None:
    """Expand the records of an export of ``template_layers`` layers to ``full_layers`` by cloning its middle layer.

    Layer 0 stays, layer 1 is cloned for layers 1..n-2 and layer 2 becomes
    layer n-1, so whatever is special about the first or last layer is kept.
    Safe only when the template layers are identical op for op (names,
    kinds, costs, shard rules) and wire alike: each reads only its own
    layer, the previous one, or ops outside the layers. Returns None
    otherwise (and changes nothing); the caller then exports every layer.
    Records after the layers are renumbered and rewired in place.
    """
    k, n = template_layers, full_layers
    layers = [[r for r in recs if r.layer == i] for i in range(k)]
    outside_before = [r for r in recs if r.layer < 0]
    after = [r for r in recs if r.layer >= k]
    pos = {r: j for group in layers for j, r in enumerate(group)}

    def signature(r: OpRecord) -> tuple[Any, ...]:
        return (r.opname, r.rel, r.kind, r.block, r.shard, r.flops, r.bytes, r.weight_bytes,
                r.param_bytes, r.out_bytes, r.kv_per_token, r.allreduce)  # fmt: skip

    def wiring(r: OpRecord) -> list[tuple[Any, ...]]:
        return [
            ("L", p.layer - r.layer, pos[p], b) if 0 <= p.layer < k else ("X", id(p), b) for p, b in r.producers.items()
        ]

    if len({len(g) for g in layers}) != 1:
        return None
    if any(len({signature(r) for r in same}) != 1 for same in zip(*layers, strict=True)):
        return None
    for group in layers:
        if any(0 <= p.layer < k and p.layer not in (r.layer, r.layer - 1) for r in group for p in r.producers):
            return None
    if any(wiring(a) != wiring(b) for a, b in zip(layers[1], layers[2], strict=True)):
        return None
    if any(0 <= p.layer < k - 1 for r in after for p in r.producers):
        return None
    prefix = layer_prefix or ""
    clones: list[list[OpRecord]] = [layers[0]]
    for j in range(1, n):
        template = layers[1] if j < n - 1 else layers[2]
        path = f"{prefix}.{j}" if prefix else str(j)
        group = [replace(r, layer=j, path=f"{path}.{r.rel}" if r.rel else path, producers={}) for r in template]
        clones.append(group)
        for r, c in zip(template, group, strict=True):
            c.producers = {
                (clones[j + p.layer - r.layer][pos[p]] if 0 <= p.layer < k else p): b for p, b in r.producers.items()
            }
    for r in after:
        r.layer = r.layer - k + n
        r.producers = {(clones[n - 1][pos[p]] if 0 <= p.layer < k else p): b for p, b in r.producers.items()}
    return outside_before + [r for group in clones for r in group] + after
