"""Platforms: devices, links and topology, loaded from YAML presets or user files.

Two topologies:

* ``switch`` — nodes of ``devices_per_node`` devices on a fast switched fabric
  (NVLink/NVSwitch), nodes joined by a network (InfiniBand/RoCE) whose
  bandwidth is given per device. A group inside one node uses the ``intra``
  link, a group spanning nodes the ``inter`` link (the slowest it spans).
* ``mesh`` — a ``rows x cols`` 2-D mesh of chips with local memory and
  chip-to-chip links (a new accelerator). A group's collectives run on the
  mesh links; latency grows with the hops between its members.

A switch node is one NVLink domain: 8 GPUs on a DGX/HGX board, 72 on a GB200 NVL72
rack (``devices_per_node: 72``), and PCIe for the boards without NVLink (L40S, RTX PRO
6000: the ``intra`` link is PCIe).

Preset names: ``dgx-a100``, ``dgx-h100``, ``hgx-h200``, ``dgx-b200``, ``hgx-b300``,
``gb200-nvl72``, ``l40s-pcie``, ``rtx-pro-6000``, ``mesh``, ``cpu-local``;
``NAMExN`` gives N nodes (``dgx-h100x4``); ``NAME:field=value,...`` overrides any
field (``mesh:rows=8,cols=8``, ``dgx-h100:links.inter.bandwidth_gbs=25``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .._limits import DOC, MAX_DEVICES
from ._fields import FieldReader, apply_overrides, load_yaml
from ._machine import LOCAL_NAMES, local_platform_path
from ._profile import Profile, load_profile

TOPOLOGIES = ("switch", "mesh")
#: Dtypes a device may give a peak for (fp4: Blackwell's tensor cores; recorded for the fitted profiles).
PEAK_DTYPES = ("fp32", "bf16", "fp16", "fp8", "fp4")
GIB = 1024**3


@dataclass(frozen=True)
class Device:
    """One accelerator: datasheet peaks and memory."""

    name: str
    peak_flops: dict[str, float]
    memory_bytes: float
    memory_bw: float
    reserved_bytes: float = 0.0

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype``; an unsupported low precision runs at the bf16 rate."""
        return self.peak_flops.get(dtype) or self.peak_flops.get("bf16") or max(self.peak_flops.values())

    @property
    def usable_memory(self) -> float:
        """Capacity left for the model after the runtime's reserve (CUDA context, workspace)."""
        return self.memory_bytes - self.reserved_bytes


@dataclass(frozen=True)
class Link:
    """A link class: datasheet bandwidth per device and direction, and latency."""

    name: str
    bandwidth: float
    latency_s: float


@dataclass(frozen=True)
class Platform:
    """Devices, links and topology, plus the calibration profile in use."""

    name: str
    description: str
    device: Device
    topology: str
    nodes: int
    devices_per_node: int
    links: dict[str, Link]
    profile: Profile
    rows: int = 0
    cols: int = 0
    sources: tuple[str, ...] = ()
    #: Why the profile does not describe this device (a placeholder borrowed from another GPU), or "" when it does:
    #: predictions on such a platform are never called calibrated and this text says why.
    uncalibrated: str = ""

    @property
    def num_devices(self) -> int:
        return self.nodes * self.devices_per_node

    def node_of(self, device: int) -> int:
        return device // self.devices_per_node

    def link_class(self, devices: tuple[int, ...] | list[int]) -> str:
        """Which link class a group of devices communicates over (the slowest it spans)."""
        if self.topology == "mesh":
            return "mesh"
        first = devices[0] // self.devices_per_node
        return "intra" if all(d // self.devices_per_node == first for d in devices) else "inter"

    def hops(self, devices: tuple[int, ...] | list[int]) -> int:
        """Largest mesh distance between consecutive members of a group (1 on a switch)."""
        if self.topology != "mesh" or len(devices) < 2:
            return 1
        pos = [divmod(d, self.cols) for d in sorted(devices)]
        return max(abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in itertools.pairwise(pos))

    def link_terms(self, link_class: str) -> tuple[float, float]:
        """(alpha seconds, achieved bytes/s) of a link class, calibration applied."""
        link = self.links[link_class]
        cal = self.profile.link(link_class)
        return cal.latency_s + link.latency_s, link.bandwidth * cal.efficiency

    def p2p_terms(self, link_class: str) -> tuple[float, float]:
        """(alpha seconds, achieved bytes/s) of a point-to-point transfer on a link class."""
        link = self.links[link_class]
        latency, efficiency = self.profile.link(link_class).p2p_terms()
        return latency + link.latency_s, link.bandwidth * efficiency

    def describe(self) -> dict[str, Any]:
        """What ``paratune platforms show --json`` prints."""
        d = self.device
        return {
            "name": self.name,
            "description": self.description,
            "topology": self.topology,
            "nodes": self.nodes,
            "devices_per_node": self.devices_per_node,
            "devices": self.num_devices,
            "mesh": [self.rows, self.cols] if self.topology == "mesh" else None,
            "device": {
                "name": d.name,
                "peak_tflops": {k: v / 1e12 for k, v in d.peak_flops.items()},
                "memory_gib": d.memory_bytes / GIB,
                "reserved_gib": d.reserved_bytes / GIB,
                "memory_bw_gbs": d.memory_bw / 1e9,
            },
            "links": {
                k: {"name": v.name, "bandwidth_gbs": v.bandwidth / 1e9, "latency_us": v.latency_s * 1e6}
                for k, v in self.links.items()
            },
            "profile": {"name": self.profile.name, "source": self.profile.source},
            "uncalibrated": self.uncalibrated or None,
            "sources": list(self.sources),
        }


def platforms_dir() -> Path:
    return Path(str(resources.files("paratune.configs"))) / "platforms"


def preset_names() -> list[str]:
    return sorted(p.stem for p in platforms_dir().glob("*.yaml"))


def platform_from_dict(data: Any, where: str, *, local: bool = True) -> Platform:
    """Validate a platform mapping; errors name ``where``, the field and what is allowed.

    ``local``: a profile of this machine by name (``cpu-local``) may come from the cache (``load_profile``).
    """
    r = FieldReader(data, where)
    name = r.text("name")
    topology = r.text("topology", "switch", choices=TOPOLOGIES)
    dr = r.child("device")
    pr = dr.child("peak_tflops")
    peaks = {}
    for dtype in list(pr.data):
        if dtype not in PEAK_DTYPES:
            raise pr.error(dtype, f"is not a dtype; allowed: {', '.join(PEAK_DTYPES)}")
        peaks[dtype] = pr.number(dtype, positive=True) * 1e12
    if not peaks:
        raise dr.error("peak_tflops", "needs at least one dtype (e.g. bf16: 989)")
    device = Device(
        name=dr.text("name"),
        peak_flops=peaks,
        memory_bytes=dr.number("memory_gib", positive=True) * GIB,
        memory_bw=dr.number("memory_bw_gbs", positive=True) * 1e9,
        reserved_bytes=dr.number("reserved_gib", 0.0, minimum=0.0) * GIB,
    )
    dr.finish()
    if device.reserved_bytes >= device.memory_bytes:
        raise dr.error("reserved_gib", "must be smaller than memory_gib")
    rows = cols = 0
    if topology == "mesh":
        rows = r.integer("rows", minimum=1, maximum=MAX_DEVICES)
        cols = r.integer("cols", minimum=1, maximum=MAX_DEVICES)
        nodes, per_node = 1, rows * cols
        needed: tuple[str, ...] = ("mesh",)
    else:
        nodes = r.integer("nodes", 1, minimum=1, maximum=MAX_DEVICES)
        per_node = r.integer("devices_per_node", minimum=1, maximum=MAX_DEVICES)
        needed = ("intra", "inter") if nodes > 1 else ("intra",)
    if nodes * per_node > MAX_DEVICES:
        shape = (
            f"rows x cols = {rows} x {cols}"
            if topology == "mesh"
            else f"nodes x devices_per_node = {nodes} x {per_node}"
        )
        raise ValueError(
            f"{where}: {shape} = {nodes * per_node:,} devices; at most {MAX_DEVICES:,} are accepted (see {DOC})"
        )
    lr = r.child("links")
    links = {}
    for cls_name in list(lr.data):
        if cls_name not in ("intra", "inter", "mesh", "host"):
            raise lr.error(cls_name, "is not a link class; allowed: intra, inter, mesh, host")
        c = lr.child(cls_name)
        links[cls_name] = Link(
            c.text("name", cls_name),
            c.number("bandwidth_gbs", positive=True) * 1e9,
            c.number("latency_us", 0.0, minimum=0.0) * 1e-6,
        )
        c.finish()
        lr.seen.add(cls_name)
    for cls_name in needed:
        if cls_name not in links:
            raise lr.error(cls_name, f"is missing: a {topology} platform with {nodes} node(s) needs it")
    profile_name = r.text("profile")
    try:
        profile = load_profile(profile_name, local=local)
    except ValueError as exc:
        raise r.error("profile", str(exc)) from None
    platform = Platform(
        name=name,
        description=r.text("description", ""),
        device=device,
        topology=topology,
        nodes=nodes,
        devices_per_node=per_node,
        links=links,
        profile=profile,
        rows=rows,
        cols=cols,
        sources=tuple(r.raw("sources", []) or []),
        uncalibrated=_placeholder_reason(r, profile_name),
    )
    r.finish()
    return platform


def _placeholder_reason(r: FieldReader, profile_name: str) -> str:
    """The reason of a ``placeholder: {profile, reason}`` entry when it names the profile in use, else "".

    A preset whose own fitted profile does not exist yet borrows another GPU's and says so; the
    entry names the profile it excuses, so that overriding ``profile`` (or the preset later
    pointing at its fitted profile) drops it without another edit.
    """
    if not r.has("placeholder"):
        return ""
    pr = r.child("placeholder")
    borrowed, reason = pr.text("profile"), pr.text("reason")
    pr.finish()
    if not reason.strip():
        raise pr.error("reason", "must say why the profile does not describe this device")
    return reason if borrowed == profile_name else ""


_NODES = re.compile(r"^(?P<base>.+?)x(?P<nodes>\d+)$")


def get_platform(source: str, *, local: bool = True) -> Platform:
    """Resolve ``NAME``, ``NAMExN``, ``NAME:field=value,...`` or a platform YAML path.

    ``cpu-local`` is this machine as ``paratune calibrate local`` measured it when it did
    (platform and profile from the cache, see :mod:`._machine`), unless ``local`` is False:
    then, and before that measurement, it is the shipped preset.

    Raises:
        ValueError: unknown preset or an invalid field, with what is allowed.
    """
    base, _, overrides = source.partition(":")
    if base.endswith((".yaml", ".yml")):
        path = Path(base)
        data, where = load_yaml(path), str(path)
    else:
        nodes = None
        match = _NODES.match(base)
        if base not in preset_names() and match and match["base"] in preset_names():
            if len(match["nodes"]) > 9:  # int() of thousands of digits is slow, then refused by Python itself
                raise ValueError(f"platform {source[:60]!r}: field 'nodes' must be <= {MAX_DEVICES:,}")
            base, nodes = match["base"], int(match["nodes"])
        path = platforms_dir() / f"{base}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown platform {source!r}; presets: {', '.join(preset_names())} (NAMExN for N nodes)")
        if local and base in LOCAL_NAMES and local_platform_path(base).is_file():
            path = local_platform_path(base)  # this machine as `paratune calibrate local` measured it
        data, where = load_yaml(path), source
        if nodes is not None:
            if data.get("topology", "switch") != "switch":
                raise ValueError(f"platform {source!r}: 'xN' nodes apply to switch platforms only")
            data = {**data, "nodes": nodes, "name": f"{data['name']}x{nodes}"}
    if overrides:
        data = apply_overrides(data, overrides, where)
        data["name"] = source
    return platform_from_dict(data, where, local=local)
