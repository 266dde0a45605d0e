"""Pools of serving problems read from YAML: the RL policy's training pool, held-out sets, benchmark suites.

A pool file is a YAML list of :meth:`~._serve.ServingProblem.to_dict` mappings (``configs/pools/serving.yaml``
trains the shipped serving policy, ``configs/pools/serving-heldout.yaml`` is never trained on). Each item is read
through :meth:`~._serve.ServingProblem.from_dict`, so a mistake names the file, the item and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..costmodel._fields import load_yaml
from ._serve import ServingProblem

#: Most problems one pool file may list (a pool is for training and benchmarks, not a sweep).
MAX_POOL = 10_000

#: Named pools shipped with paratune, under ``configs/pools/``.
SERVING_POOLS: dict[str, str] = {
    "train": "serving.yaml",
    "validation": "serving-validation.yaml",
    "heldout": "serving-heldout.yaml",
}


def serving_pool_path(name: str) -> Path:
    """The shipped pool file called ``name`` (``train``, ``validation`` or ``heldout``)."""
    if name not in SERVING_POOLS:
        raise ValueError(f"serving pool {name!r}; allowed: {', '.join(SERVING_POOLS)} (or a YAML path)")
    return Path(__file__).resolve().parent.parent / "configs" / "pools" / SERVING_POOLS[name]


def load_serving_pool(source: str | Path | Sequence[ServingProblem | dict[str, Any]]) -> list[ServingProblem]:
    """Serving problems from a shipped pool name, a YAML file, or a sequence of problems / mappings.

    Raises:
        ValueError: an empty pool, two problems with the same name, or a bad file or field (named).
    """
    if isinstance(source, str) and source in SERVING_POOLS:
        source = serving_pool_path(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path}: no such serving pool file (or a name: {', '.join(SERVING_POOLS)})")
        data = load_yaml(path)
        if not isinstance(data, list) or len(data) > MAX_POOL:
            raise ValueError(f"{path}: a serving pool is a YAML list of at most {MAX_POOL:,} problem mappings")
        problems = [ServingProblem.from_dict(d, where=f"{path}[{i}]") for i, d in enumerate(data)]
    else:
        problems = [
            p if isinstance(p, ServingProblem) else ServingProblem.from_dict(p, where=f"serving pool[{i}]")
            for i, p in enumerate(source)
        ]
    if not problems:
        raise ValueError("serving pool is empty: give at least one problem")
    seen: set[str] = set()
    for p in problems:
        if not p.name:
            raise ValueError(f"serving pool: a problem of {p.model} on {p.platform} has no name; names identify them")
        if p.name in seen:
            raise ValueError(f"serving pool: two problems are named {p.name!r}; names must be unique")
        seen.add(p.name)
    return problems
