"""``paratune calibrate local``: measure this CPU, fit ``cpu-local``, cache it outside the repository.

Why explicit (not on first use): a measurement takes about 30 s of both cores,
needs torch, and is spoiled by anything else running; a user who evaluates a plan
does not expect that. Until this machine is measured, ``cpu-local`` prices with the
shipped preset and profile (another CPU's) and says so: its predictions are not
calibrated, and ``paratune evaluate --json`` gives the reason (``calibration_reason``).

What is cached (:mod:`.._machine`: keyed by CPU model, cores and vector extensions,
so another CPU measures again): the ``cpu-local`` platform with this CPU's peaks
(best bf16 and fp32 GEMM, copy bandwidth; the shipped preset's are an AVX2-only
CPU's, and bf16 GEMMs run several times faster with avx512_bf16) and memory, and
the profile fitted to the microbenchmarks as fractions of those peaks.
``get_platform("cpu-local")`` and ``load_profile("cpu-local")`` then return them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._fields import load_yaml
from .._machine import cache_dir, local_platform_path, local_profile_path, memory_gib, this_machine
from .._platform import platforms_dir
from ._attention import fit_with_attention
from ._fit import FitResult
from ._measure import measure
from ._measure_spec import LOCAL, QUICK, progress
from ._read import read_measurements
from ._rows import GEMM_OPS, kernel_rows
from ._write import write_profile, write_yaml

NAME = "cpu-local"
#: Measured peaks are rounded up by this factor (the fitted efficiencies stay below 1).
HEADROOM = 1.05


def calibrate_local(*, quick: bool = False, force: bool = False) -> tuple[Path, FitResult | None]:
    """Measure this CPU (unless already cached, or ``force``), fit ``cpu-local``, write both to the cache.

    Returns the cached profile's path, and the fit (None when the cache already held one).
    ``quick`` measures the tiny test grid (seconds; a rough profile, for tests).

    Raises:
        ValueError: torch is not installed (the microbenchmarks run with torch).
    """
    profile_path, platform_path = local_profile_path(NAME), local_platform_path(NAME)
    if profile_path.is_file() and platform_path.is_file() and not force:
        progress(f"{this_machine().describe()} is already measured: {profile_path} (--force measures again)")
        return profile_path, None
    if importlib.util.find_spec("torch") is None:
        raise ValueError("measuring this CPU needs torch: pip install 'paratune[import]'")
    here = this_machine()
    folder = cache_dir() / "measurements" / f"{NAME}-{here.key()}"
    if folder.exists():
        shutil.rmtree(folder)
    progress(f"measuring {here.describe()} for {NAME} into {folder} (about 30 s; keep the machine idle)")
    command = "paratune calibrate local" + (" --quick" if quick else "")
    measure("cpu", folder, grid=QUICK if quick else LOCAL, quick=quick, command=command)
    meta = json.loads((folder / "meta.json").read_text())
    rates = _peak_rates(str(meta["dtype"]))
    write_yaml(_platform_data(rates, _best_gemm(folder), meta), platform_path)
    try:
        result = fit_with_attention(folder, "cpu", name=NAME)  # priced on the platform just written
    except BaseException:
        platform_path.unlink(missing_ok=True)
        raise
    busy = {k: v for k, v in (meta.get("other_processes_cores") or {}).items() if v is not None and v > 0.15}
    source = (
        f"Measured and fitted by `{command}` on {here.describe()} on {meta['date']}, torch "
        f"{meta['machine']['torch']}, {meta['dtype']}, one torch thread per process (one cpu-local device); "
        f"measurements in {folder}; peaks in {platform_path}"
        + (f". Other processes used {busy} cores meanwhile: timings suspect, measure again when idle" if busy else "")
    )
    write_profile(dataclasses.replace(result.profile, source=source), profile_path)
    progress(f"platform written to {platform_path}, profile to {profile_path}")
    return profile_path, result


def _peak_rates(dtype: str) -> dict[str, float]:
    from . import _torchops as ops  # torch: only measuring imports it
    from ._measure_ops import peak_rates

    previous = ops.set_threads(1)
    try:
        return peak_rates(dtype)
    finally:
        ops.set_threads(previous)


def _best_gemm(folder: Path) -> float:
    """The fastest GEMM of the microbenchmarks, FLOP/s per device (the probe's shape may not be the best)."""
    rows = kernel_rows(read_measurements(folder, "cpu"))
    flops, _ = rows.work_per_device()
    gemm = np.isin(rows.op_class, GEMM_OPS) & (rows.seconds > 0)
    return float(np.max(flops[gemm] / rows.seconds[gemm])) if gemm.any() else 0.0


def _up(x: float) -> float:
    """``x * HEADROOM`` to 2 significant digits, rounded up."""
    x *= HEADROOM
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / scale) * scale


def _platform_data(rates: dict[str, float], best_gemm: float, meta: dict[str, Any]) -> dict[str, Any]:
    """The shipped ``cpu-local`` preset with this CPU's peaks, bandwidth and memory."""
    data = load_yaml(platforms_dir() / f"{NAME}.yaml")
    dtype = str(meta["dtype"])
    low = max(rates[f"gemm_{dtype}_flops"], best_gemm)
    fp32 = rates["gemm_fp32_flops"]
    device = dict(data["device"])
    device["name"] = f"{this_machine().cpu} core (one process, one thread)"
    device["peak_tflops"] = {"fp32": _up(fp32) / 1e12, "bf16": _up(low) / 1e12, "fp16": _up(low) / 1e12}
    device["memory_bw_gbs"] = _up(rates["copy_bytes_per_s"]) / 1e9
    total = memory_gib()
    if total:
        per_device = math.floor(total / int(data.get("devices_per_node", 1)) * 10) / 10
        device["memory_gib"] = max(per_device, float(device.get("reserved_gib", 0.0)) + 0.5)
    data["device"] = device
    data["sources"] = [
        f"Measured by `paratune calibrate local` on {this_machine().describe()} on {meta['date']}, one torch "
        f"thread: best {dtype} GEMM {low / 1e9:.1f} GFLOP/s (the peak of bf16 and fp16), best fp32 GEMM "
        f"{fp32 / 1e9:.1f} GFLOP/s, 256 MB fp32 copy {rates['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write "
        f"counted), rounded up by {HEADROOM:g}x; memory: this machine's, shared by the {data.get('devices_per_node')}"
        " devices",
        *[f"shipped preset: {s}" for s in data.get("sources", [])],
    ]
    return data
