"""Tuners by name: ``make_tuner("optuna-tpe")``, ``paratune tuners list``.

Entries name the module that defines the tuner, so listing tuners or importing
``paratune.search`` never imports Optuna, highspy or stable-baselines3.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ._tuner import Tuner


@dataclass(frozen=True)
class TunerEntry:
    name: str
    family: str
    module: str
    attr: str
    description: str
    options: dict[str, Any]


_ENTRIES: dict[str, TunerEntry] = {}


def register_tuner(name: str, family: str, module: str, attr: str, description: str, **options: Any) -> None:
    """Register ``module:attr`` (a :class:`Tuner` subclass) as ``name``; ``options`` are passed to it."""
    if name in _ENTRIES:
        raise ValueError(f"tuner {name!r} is already registered")
    _ENTRIES[name] = TunerEntry(name, family, module, attr, description, options)


def tuner_names() -> list[str]:
    return list(_ENTRIES)


def tuner_entries() -> list[TunerEntry]:
    return list(_ENTRIES.values())


def make_tuner(name: str, **options: Any) -> Tuner:
    """The tuner called ``name`` with ``options`` (on top of the registered defaults)."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise ValueError(f"unknown tuner {name!r}; allowed: {', '.join(_ENTRIES)} (see `paratune tuners list`)")
    cls = getattr(importlib.import_module(entry.module), entry.attr)
    tuner: Tuner = cls(**{**entry.options, **options})
    return tuner
