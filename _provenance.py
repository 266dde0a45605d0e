"""Versions of paratune and of the libraries a result depends on, for provenance records."""

from __future__ import annotations

import platform as platform_module
import socket
import sys
from importlib import metadata

#: Libraries whose versions change results; torch and the RL stack only when loaded.
LIBRARIES = ("numpy", "scipy", "networkx", "optuna", "sqlalchemy", "cmaes", "torch", "stable-baselines3", "sb3-contrib")
_ONLY_WHEN_LOADED = ("torch", "stable-baselines3", "sb3-contrib")


def library_versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (torch and stable-baselines3 only when this process loaded them)."""
    out: dict[str, str] = {}
    for lib in LIBRARIES:
        if lib in _ONLY_WHEN_LOADED and lib.replace("-", "_") not in sys.modules:
            continue
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def paratune_version() -> str:
    try:
        return metadata.version("paratune")
    except metadata.PackageNotFoundError:
        return "unknown"


def host_record() -> dict[str, str]:
    """The machine a result was computed on."""
    return {"host": socket.gethostname(), "python": platform_module.python_version(), "os": platform_module.platform()}
