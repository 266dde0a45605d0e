"""Which platform a device folder is priced on, and which profile is shipped for its measurements.

A profile holds efficiencies, fractions of a datasheet: fitting and checking
need the datasheet of the device that was measured. Device folders are named as
in Vidur (``a100``, ``h100``) or by ``calibrate measure`` (``cpu``, ``cuda``); for
``cuda`` the GPU's name recorded in ``meta.json`` picks the preset. A preset
name (``dgx-h100``) is accepted as a device too.
"""

from __future__ import annotations

import dataclasses

from .._machine import foreign_reason, measured_machine
from .._platform import Platform, get_platform, preset_names
from .._profile import Profile, load_profile
from ._read import Measurements

#: Device folder -> platform preset whose datasheet (and shipped profile) it uses.
DEVICE_PLATFORMS = {"a100": "dgx-a100", "h100": "dgx-h100", "h200": "hgx-h200", "cpu": "cpu-local"}
#: Device folder -> the profile fitted on Vidur-format measurements of it, which Vidur-format fits start from
#: and checks compare with (the presets themselves use the profiles fitted on AIConfigurator's tables).
VIDUR_PROFILES = {"a100": "a100-vidur", "h100": "h100-vidur", "h200": "h100-vidur"}
#: GPU name fragment in ``meta.json`` (``calibrate measure --device cuda``) -> preset.
GPU_PLATFORMS = {"H200": "hgx-h200", "H100": "dgx-h100", "A100": "dgx-a100"}


def preset_for(device: str, meas: Measurements | None = None) -> str:
    """The platform preset a device folder is priced on.

    Raises:
        ValueError: the device is unknown (the message lists the known ones).
    """
    if device in DEVICE_PLATFORMS:
        return DEVICE_PLATFORMS[device]
    if device in preset_names():
        return device
    if device == "cuda" and meas is not None:
        machine = meas.meta.get("machine")
        gpu = str(machine.get("gpu", "")) if isinstance(machine, dict) else ""
        for fragment, preset in GPU_PLATFORMS.items():
            if fragment in gpu:
                return preset
        raise ValueError(
            f"{meas.root}: device 'cuda' on GPU {gpu or '(no meta.json machine.gpu)'!r}: "
            f"no platform preset for it (known GPUs: {', '.join(GPU_PLATFORMS)})"
        )
    known = ", ".join([*DEVICE_PLATFORMS, "cuda (with meta.json)", *preset_names()])
    raise ValueError(f"unknown device {device!r}; known: {known}")


def platform_for(device: str, meas: Measurements | None = None) -> Platform:
    """The platform (datasheet, links, shipped profile) a device folder is priced on.

    Measurements of this very CPU (``meta.json``'s machine) are priced on ``cpu-local``
    as ``calibrate local`` measured it, when it did; others on the shipped preset.
    """
    record = {"measured": {"machine": meas.meta.get("machine")}} if meas is not None else {}
    here = measured_machine(record) is not None and foreign_reason("", record) is None
    platform = get_platform(preset_for(device, meas), local=here)
    if device in VIDUR_PROFILES:
        return dataclasses.replace(platform, profile=load_profile(VIDUR_PROFILES[device]), uncalibrated="")
    return platform


def default_profile_for(device: str) -> Profile:
    """The profile shipped for ``device``'s Vidur-format measurements (a100 -> a100-vidur, ...), else its preset's."""
    return platform_for(device).profile
