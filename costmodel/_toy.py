"""A two-device toy platform built from a dict: tests and examples need no YAML lookup to start."""

from __future__ import annotations

from typing import Any

from ._platform import Platform, platform_from_dict

#: Round numbers: 1 TFLOP/s bf16, 100 GB/s memory, a 10 GB/s link with 5 us latency (plus the profile's).
TOY_PLATFORM: dict[str, Any] = {
    "name": "toy",
    "description": "Two toy devices on one switch (round numbers for tests and examples)",
    "topology": "switch",
    "nodes": 1,
    "devices_per_node": 2,
    "device": {
        "name": "toy-accelerator",
        "peak_tflops": {"bf16": 1.0, "fp32": 0.5},
        "memory_gib": 1.0,
        "reserved_gib": 0.0,
        "memory_bw_gbs": 100.0,
    },
    "links": {"intra": {"name": "toy link", "bandwidth_gbs": 10.0, "latency_us": 5.0}},
    "profile": "cpu-default",
}


def toy_platform(**overrides: Any) -> Platform:
    """The toy platform; keyword arguments replace top-level fields (``devices_per_node=4``).

    Example:
        >>> toy_platform().num_devices
        2
    """
    return platform_from_dict({**TOY_PLATFORM, **overrides}, "toy platform")
