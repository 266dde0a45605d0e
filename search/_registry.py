"""Tuners by name: ``make_tuner("optuna-tpe")``, ``paratune tuners list``.

The registry maps a name to ``"module:Class"``; the class is the one source of the
tuner's family, description and options (:class:`~._tuner.Tuner`), read when a
tuner is built or listed. The modules that define tuners import Optuna, torch or
stable-baselines3 only inside their searches, so listing tuners stays cheap.

Tuners defined above ``paratune.search`` (the ``rl`` tuner of ``paratune.agents``, or a
user's package) are entry points of the group ``paratune.tuners`` in their package's
metadata (``pyproject.toml``), found the first time a name is looked up or listed: this
layer names none of them, and ``make_tuner("rl")`` works from anywhere.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from ._options import OptionInfo
from ._tuner import Tuner


@dataclass(frozen=True)
class TunerEntry:
    """A registered tuner as listed: its ``name``, and what its class says of itself."""

    name: str
    family: str
    description: str
    target: str
    options: tuple[OptionInfo, ...]

    @property
    def cls(self) -> type[Tuner]:
        return tuner_class(self.name)


_TARGETS: dict[str, str] = {}

#: The entry-point group of tuners registered by packages above this layer.
ENTRY_POINT_GROUP = "paratune.tuners"
_entry_points_read = False


def _targets() -> dict[str, str]:
    """The registered targets, with the installed entry points added the first time (after the built-in ones)."""
    global _entry_points_read
    if not _entry_points_read:
        _entry_points_read = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _TARGETS.setdefault(ep.name, ep.value)
    return _TARGETS


def register_tuner(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:Class"``, a :class:`Tuner` subclass whose ``name`` is ``name``).

    The module is imported only when the tuner is built or listed.
    """
    if ":" not in target:
        raise ValueError(f"tuner target {target!r} must be 'module:Class'")
    if _TARGETS.get(name, target) != target:
        raise ValueError(f"tuner {name!r} is already registered as {_TARGETS[name]}")
    _TARGETS[name] = target


def tuner_names() -> list[str]:
    return list(_targets())


def tuner_class(name: str) -> type[Tuner]:
    """The class registered as ``name`` (imports its module)."""
    targets = _targets()
    target = targets.get(name)
    if target is None:
        raise ValueError(f"unknown tuner {name!r}; allowed: {', '.join(targets)} (see `paratune tuners list`)")
    module, attr = target.split(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Tuner)) or cls.name != name:
        raise TypeError(f"tuner {name!r}: {target} is not a Tuner subclass whose name is {name!r}")
    return cls


def tuner_entries() -> list[TunerEntry]:
    """Every registered tuner with its family, description and options, in registration order."""
    out = []
    for name, target in _targets().items():
        cls = tuner_class(name)
        out.append(TunerEntry(name, cls.family, cls.description, target, tuple(cls.Options.describe())))
    return out


def make_tuner(name: str, **options: Any) -> Tuner:
    """The tuner called ``name`` built with ``options``.

    Raises:
        ValueError: an unknown name, or options that are not the tuner's (names, types, bounds): building
            a tuner is cheap and does no I/O, so a campaign builds each of its tuners when its spec loads.
    """
    return tuner_class(name)(**options)
