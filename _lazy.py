"""Lazy package attributes (PEP 562): a package lists its names and the modules that define them.

``import paratune.agents`` (or ``campaign``, ``dashboard``) then costs nothing until a name is
used, so the CLI starts fast and torch, stable-baselines3, SQLAlchemy or Dash load only when needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[name]`` (relative to ``package``) on first use and caches it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
