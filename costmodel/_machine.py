"""This machine's identity, and the user cache where profiles measured on it live.

Why: ``cpu-local`` is *this* machine's CPU, so its profile must come from this
machine. ``paratune calibrate local`` measures it and writes the profile to the
cache (outside the repository: ``$PARATUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/paratune``, else ``~/.cache/paratune``), keyed by the CPU
model, the core count and the vector extensions that set bf16 speed, so another
CPU measures again. :func:`foreign_reason` tells when a profile measured on a CPU
(its ``fit.measured.machine``) is not this machine's: predictions with it are
then not called calibrated. Reads ``/proc/cpuinfo`` only (no torch).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CACHE_ENV = "PARATUNE_CACHE_DIR"
#: Platforms and profiles that describe this machine: ``get_platform`` and ``load_profile`` prefer the ones
#: measured here (in the cache) to the shipped ones.
LOCAL_NAMES = ("cpu-local",)
#: CPU flags that change bf16/fp32 kernel speed (part of the cache key).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


@dataclass(frozen=True)
class Machine:
    """A CPU as the cache tells machines apart: model name, cores, vector extensions."""

    cpu: str
    cores: int
    isa: tuple[str, ...] = ()

    def key(self) -> str:
        """A file-name-safe key: a readable prefix and a hash of the whole identity."""
        digest = hashlib.sha256(f"{self.cpu}|{self.cores}|{','.join(self.isa)}".encode()).hexdigest()[:10]
        slug = re.sub(r"[^a-z0-9]+", "-", self.cpu.lower()).strip("-")[:40] or "cpu"
        return f"{slug}-{self.cores}c-{digest}"

    def describe(self) -> str:
        return f"{self.cpu} ({self.cores} cores, {' '.join(self.isa) or 'no vector extensions known'})"


@lru_cache(maxsize=1)
def this_machine() -> Machine:
    """The CPU this process runs on: ``/proc/cpuinfo``'s model name and flags where there is one."""
    cpu, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not cpu:
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown"
    return Machine(cpu=cpu, cores=os.cpu_count() or 1, isa=tuple(f for f in ISA_FLAGS if f in flags))


def cache_dir() -> Path:
    """Where paratune caches what it measured on this machine (``$PARATUNE_CACHE_DIR`` first)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "paratune"


def local_profile_path(name: str, machine: Machine | None = None) -> Path:
    """The cached profile ``name`` measured on ``machine`` (default: this one); it may not exist."""
    return cache_dir() / "profiles" / f"{name}-{(machine or this_machine()).key()}.yaml"


def local_platform_path(name: str, machine: Machine | None = None) -> Path:
    """The cached platform preset ``name`` with ``machine``'s measured peaks (default: this one); it may not exist."""
    return cache_dir() / "platforms" / f"{name}-{(machine or this_machine()).key()}.yaml"


def memory_gib() -> float | None:
    """This machine's memory (``/proc/meminfo``'s MemTotal), GiB; None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def measured_machine(fit: dict[str, Any]) -> dict[str, Any] | None:
    """The CPU a profile's ``fit`` record says it was measured on (None: not a CPU measurement)."""
    measured = fit.get("measured")
    machine = measured.get("machine") if isinstance(measured, dict) else None
    if not isinstance(machine, dict) or "gpu" in machine or "cpu" not in machine:
        return None
    return machine


def foreign_reason(name: str, fit: dict[str, Any]) -> str | None:
    """Why profile ``name`` (with its ``fit`` record) is not this machine's; None when it is, or is no CPU's."""
    machine = measured_machine(fit)
    if machine is None:
        return None
    here = this_machine()
    isa = machine.get("isa")
    same = str(machine["cpu"]) == here.cpu and int(machine.get("cores") or 0) == here.cores
    if same and isinstance(isa, list) and tuple(isa) == here.isa:
        return None
    # A record without vector extensions cannot be told from another CPU of the same name (a Zen 3 and a Zen 4
    # both read "AMD EPYC" under KVM, and bf16 GEMMs run several times faster with avx512_bf16).
    there = f"{machine['cpu']} ({machine.get('cores', '?')} cores" + (
        ")" if isinstance(isa, list) else ", vector extensions not recorded)"
    )
    return (
        f"uncalibrated on this CPU: profile {name} was measured on {there}, this machine is {here.describe()}; "
        "run `paratune calibrate local` to measure it (about 30 s)"
    )
