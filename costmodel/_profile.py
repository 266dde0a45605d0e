"""Calibration profiles: the fitted efficiencies and overheads of a device and its links.

A profile turns datasheet peaks into achievable times. Compute and memory
efficiencies are saturating curves of the work per device,
``eff(w) = peak * w / (w + half)``: small kernels cannot fill the machine,
large ones reach a plateau below the datasheet (Roofline with efficiency,
as in LLMCompass and Calculon). Curves may differ per op kind. Links get an
achieved-bandwidth fraction and a latency (alpha) per link class.

Fields added by calibration are optional, and their defaults give the behaviour
of the hand-set profiles written before it: ``roofline_exponent`` (absent: the
hard ``max`` of compute and memory time), ``kernel_overhead_us`` as a mapping per
op kind (a plain number: one overhead for every kind), and per link class
``base_latency_us`` (a fixed cost per collective, 0) and ``p2p_efficiency`` /
``p2p_latency_us`` (point-to-point terms; absent: the collective ones), and
``host_overhead_us`` (0: see :attr:`Profile.host_overhead_s`), ``gemm`` (shape-aware
GEMM models per dtype, :mod:`._gemm`; absent: GEMMs are priced by the ``matmul``
curves), ``collectives`` (measured collective curves, the algorithm chosen by size,
:mod:`._collectives`; absent: every collective is a ring on the link terms) and
``attention_phases`` (absent: the ``attention`` curves price every phase), which prices
inference attention per phase with the terms fitted on measured context / generation
kernels (:class:`AttentionPhase`), with their own terms for an fp8 KV cache
(``prefill_fp8_kv``, ``decode_fp8_kv``) when given. ``moe`` (absent: the ``moe`` curves
price expert GEMMs) prices the expert GEMMs of a MoE block per dtype with the grouped-GEMM
terms fitted on measured MoE kernels (:mod:`._moe`); ``moe_engines`` (absent: ``moe``
for every engine) holds such terms per serving engine whose MoE kernel is another one
(SGLang's Triton fused MoE runs 2-2.5x slower than TensorRT-LLM's, which ``moe`` is fitted on).
``fit`` keeps the free-form record of how a profile was fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._attention import AttentionResidual
from ._collectives import Collectives
from ._fields import FieldReader, load_yaml
from ._gemm import GemmModel
from ._machine import LOCAL_NAMES, local_profile_path
from ._moe import MOE_DTYPES, MOE_ENGINES, MoeModel

T = TypeVar("T")

LINK_CLASSES = ("intra", "inter", "mesh", "host")
#: Dtypes a ``gemm`` section may describe (the model dtypes of :mod:`paratune.graphs`).
GEMM_DTYPES = ("fp32", "bf16", "fp16", "fp8")


@dataclass(frozen=True)
class Efficiency:
    """``eff(w) = peak * w / (w + half)`` with ``w`` the work per device (FLOPs or bytes)."""

    peak: float
    half: float

    def __call__(self, work: Any) -> Any:
        return self.peak * work / (work + self.half)

    def to_dict(self) -> dict[str, float]:
        return {"peak": self.peak, "half": self.half}


@dataclass(frozen=True)
class LinkCalibration:
    """Achieved fraction of a link's datasheet bandwidth, and its per-message latency (alpha).

    ``base_latency_s`` is paid once per collective on top of the ring's 2(n-1) alphas
    (NCCL's launch and synchronisation: measured all-reduces on NVSwitch cost about
    the same 30-40 us at 2, 4 and 8 ranks, which 2(n-1) x alpha alone cannot give).
    Point-to-point sends use ``p2p_efficiency`` / ``p2p_latency_s`` when set: a
    send/recv uses the link's copy engines, not the collective kernels.
    """

    efficiency: float
    latency_s: float
    base_latency_s: float = 0.0
    p2p_efficiency: float | None = None
    p2p_latency_s: float | None = None

    def p2p_terms(self) -> tuple[float, float]:
        """(latency seconds, efficiency) of a point-to-point transfer on this link class."""
        eff = self.efficiency if self.p2p_efficiency is None else self.p2p_efficiency
        lat = self.latency_s if self.p2p_latency_s is None else self.p2p_latency_s
        return lat, eff

    def to_dict(self) -> dict[str, float]:
        out = {"efficiency": self.efficiency, "latency_us": _us(self.latency_s)}
        if self.base_latency_s:
            out["base_latency_us"] = _us(self.base_latency_s)
        if self.p2p_efficiency is not None:
            out["p2p_efficiency"] = self.p2p_efficiency
        if self.p2p_latency_s is not None:
            out["p2p_latency_us"] = _us(self.p2p_latency_s)
        return out


@dataclass(frozen=True)
class AttentionPhase:
    """Attention kernel time of one inference phase (``prefill`` or ``decode``), fitted on measured kernels.

    ``t = overhead + F / (peak * compute_peak) + B / (bw * memory_peak) + output_bytes * output_s_per_byte
    + sequences * (kv_bytes_per_token * sequence_s_per_kv_byte + q_bytes_per_token * sequence_s_per_q_byte)``,
    with F, B, the output bytes and the KV / query (output) bytes per token those of the op on
    one device (causal FLOPs halved, peak the bf16 one) and ``sequences`` the batch
    (micro-batch) the op runs. With ``join_exponent`` k, the memory term m and the
    per-sequence KV term s are joined as ``(m^k + s^k)^(1/k)`` instead of summed: generation
    kernels hide the per-block cost behind the KV stream once it is long (B200 decode
    MAPE 9.4% -> 5.8%).

    Why a sum and not the roofline's maximum: the engines' attention kernels (FMHA for the
    context, XQA / paged kernels for generation) run their stages one after the other per
    tile, and AIConfigurator's tables are fitted about twice as well by a sum. Why the
    per-sequence terms: generation at short contexts costs a fixed time per sequence and KV
    head (a thread block each: about 600 us for 2048 sequences x 8 KV heads on H200, at any
    number of query heads, whatever the bytes), and prefill of short prompts one per
    sequence and query head (H200 MAPE 8.8% -> 6.3% with it); neither curve gives them.

    ``residual`` (optional, :class:`~._attention.AttentionResidual`) multiplies that time by
    ``exp(r(kv_len, kv_elems, gqa))``, fitted over the kernels' steps the smooth terms miss
    (Hopper decode held out 16-20% -> 6-9%).
    """

    compute_peak: float
    memory_peak: float
    overhead_s: float
    output_s_per_byte: float = 0.0
    sequence_s_per_kv_byte: float = 0.0
    sequence_s_per_q_byte: float = 0.0
    join_exponent: float | None = None
    residual: AttentionResidual | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "compute_peak": self.compute_peak,
            "memory_peak": self.memory_peak,
            "overhead_us": _us(self.overhead_s),
            "output_ns_per_byte": _ns(self.output_s_per_byte),
            "sequence_ns_per_kv_byte": _ns(self.sequence_s_per_kv_byte),
            "sequence_ns_per_q_byte": _ns(self.sequence_s_per_q_byte),
        }
        if self.join_exponent is not None:
            out["join_exponent"] = self.join_exponent
        if self.residual is not None:
            out["residual"] = self.residual.to_dict()
        return out

    @classmethod
    def from_reader(cls, r: FieldReader) -> AttentionPhase:
        out = cls(
            r.fraction("compute_peak"),
            r.fraction("memory_peak"),
            r.number("overhead_us", minimum=0.0) * 1e-6,
            r.number("output_ns_per_byte", 0.0, minimum=0.0) * 1e-9,
            r.number("sequence_ns_per_kv_byte", 0.0, minimum=0.0) * 1e-9,
            r.number("sequence_ns_per_q_byte", 0.0, minimum=0.0) * 1e-9,
            r.number("join_exponent", minimum=1.0) if r.has("join_exponent") else None,
            AttentionResidual.from_reader(r.child("residual")) if r.has("residual") else None,
        )
        r.finish()
        return out


def _ns(seconds: float) -> float:
    """Seconds as nanoseconds, rounded so that a value read from YAML in ns writes back the same."""
    return float(f"{seconds * 1e9:.12g}")


#: Keys of :attr:`Profile.attention_phases`: a phase, and its terms with an fp8 KV cache (fp8 FMHA).
ATTENTION_PHASES = ("prefill", "decode", "prefill_fp8_kv", "decode_fp8_kv")


def _us(seconds: float) -> float:
    """Seconds as microseconds, rounded so that a value read from YAML in us writes back the same."""
    return float(f"{seconds * 1e6:.12g}")


@dataclass(frozen=True)
class Profile:
    """Efficiency curves, kernel overhead and link terms of one device type.

    ``compute`` and ``memory`` map an op kind to its curve, with a ``default``
    entry for kinds not listed. ``ranges`` records, per quantity, the span of the
    calibration data (e.g. ``flops_per_device: [min, max]``) so the cost model
    can say when a prediction extrapolates. ``kernel_overhead_s`` is the fixed time
    of a kernel of a kind not in ``kernel_overheads``. ``roofline_exponent`` k joins
    compute time c and memory time m as ``(c^k + m^k)^(1/k)`` (None: ``max(c, m)``).

    ``host_overhead_s`` is host time per kernel that the GPU does not hide, added to
    every kernel: 0 for kernel timings (CUDA events or CUPTI, as Vidur measures) and for
    runs that replay CUDA graphs (vLLM, TensorRT-LLM); tens of microseconds for eager
    PyTorch ops each timed with a synchronisation (``time.time(); op();
    torch.cuda.synchronize()``, as LLMCompass and most microbenchmark harnesses time
    them), where the framework's dispatch, the launch and the wake-up from the
    synchronisation add to the kernel.
    """

    name: str
    source: str
    compute: dict[str, Efficiency]
    memory: dict[str, Efficiency]
    kernel_overhead_s: float
    links: dict[str, LinkCalibration]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    holdout_error: dict[str, Any] = field(default_factory=dict)
    kernel_overheads: dict[str, float] = field(default_factory=dict)
    roofline_exponent: float | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    host_overhead_s: float = 0.0
    gemm: dict[str, GemmModel] = field(default_factory=dict)
    collectives: Collectives | None = None
    attention_phases: dict[str, AttentionPhase] = field(default_factory=dict)
    moe: dict[str, MoeModel] = field(default_factory=dict)
    moe_engines: dict[str, dict[str, MoeModel]] = field(default_factory=dict)

    def moe_model(self, dtype: str, engine: str | None = None) -> MoeModel | None:
        """The grouped-GEMM model of MoE experts in ``dtype`` (fp16 falls back to bf16's), or None.

        With ``engine``, that engine's own terms when the profile has them for the dtype: the
        engines run different MoE kernels (``moe`` is fitted on TensorRT-LLM's).
        """
        for terms in (self.moe_engines.get(engine or "", {}), self.moe):
            if dtype in terms:
                return terms[dtype]
            if dtype == "fp16" and "bf16" in terms:
                return terms["bf16"]
        return None

    def gemm_model(self, dtype: str) -> GemmModel | None:
        """The shape-aware GEMM model of ``dtype`` (fp16 falls back to bf16's), or None."""
        if dtype in self.gemm:
            return self.gemm[dtype]
        return self.gemm.get("bf16") if dtype == "fp16" else None

    def overhead(self, kind: str) -> float:
        """Fixed seconds of one kernel of ``kind`` (launch, prologue, tail)."""
        return self.kernel_overheads.get(kind, self.kernel_overhead_s)

    def compute_eff(self, kind: str) -> Efficiency:
        return self.compute.get(kind, self.compute["default"])

    def memory_eff(self, kind: str) -> Efficiency:
        return self.memory.get(kind, self.memory["default"])

    def link(self, link_class: str) -> LinkCalibration:
        return self.links.get(link_class, self.links["default"])

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping :meth:`from_dict` reads back into an equal profile."""
        default_us = _us(self.kernel_overhead_s)
        overhead: float | dict[str, float] = default_us
        if self.kernel_overheads:
            overhead = {"default": default_us, **{k: _us(v) for k, v in self.kernel_overheads.items()}}
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "compute_efficiency": {k: v.to_dict() for k, v in self.compute.items()},
            "memory_efficiency": {k: v.to_dict() for k, v in self.memory.items()},
            "kernel_overhead_us": overhead,
        }
        if self.roofline_exponent is not None:
            out["roofline_exponent"] = self.roofline_exponent
        if self.host_overhead_s:
            out["host_overhead_us"] = _us(self.host_overhead_s)
        if self.attention_phases:
            out["attention_phases"] = {k: v.to_dict() for k, v in self.attention_phases.items()}
        out["links"] = {k: v.to_dict() for k, v in self.links.items()}
        if self.collectives is not None:
            out["collectives"] = self.collectives.to_dict()
        out["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        out["holdout_error"] = self.holdout_error
        if self.gemm:
            out["gemm"] = {k: v.to_dict() for k, v in self.gemm.items()}
        if self.moe:
            out["moe"] = {k: v.to_dict() for k, v in self.moe.items()}
        if self.moe_engines:
            out["moe_engines"] = {e: {k: v.to_dict() for k, v in m.items()} for e, m in self.moe_engines.items()}
        if self.fit:
            out["fit"] = self.fit
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Profile:
        r = FieldReader(data, where)
        curves = {}
        for group, half_name in (("compute_efficiency", "half_flops"), ("memory_efficiency", "half_bytes")):
            g = r.child(group)
            table = {}
            for kind in list(g.data):
                c = g.child(kind)
                peak = c.number("peak", positive=True)
                if peak > 1.0:
                    raise c.error("peak", f"is a fraction of the datasheet peak and must be <= 1, got {peak}")
                half = c.number(half_name if c.has(half_name) else "half", minimum=0.0)
                c.finish()
                g.seen.add(kind)
                table[kind] = Efficiency(peak, half)
            if "default" not in table:
                raise g.error("default", "is missing: every efficiency table needs a 'default' curve")
            curves[group] = table
        links = {}
        lr = r.child("links")
        for cls_name in list(lr.data):
            lc = lr.child(cls_name)
            eff = lc.number("efficiency", positive=True)
            if eff > 1.0:
                raise lc.error("efficiency", f"must be <= 1, got {eff}")
            p2p_eff = lc.number("p2p_efficiency", None, positive=True) if lc.has("p2p_efficiency") else None
            if p2p_eff is not None and p2p_eff > 1.0:
                raise lc.error("p2p_efficiency", f"must be <= 1, got {p2p_eff}")
            p2p_lat = lc.number("p2p_latency_us", minimum=0.0) * 1e-6 if lc.has("p2p_latency_us") else None
            links[cls_name] = LinkCalibration(
                eff,
                lc.number("latency_us", minimum=0.0) * 1e-6,
                base_latency_s=lc.number("base_latency_us", 0.0, minimum=0.0) * 1e-6,
                p2p_efficiency=p2p_eff,
                p2p_latency_s=p2p_lat,
            )
            lc.finish()
            lr.seen.add(cls_name)
        if "default" not in links:
            raise lr.error("default", "is missing: links need a 'default' entry")
        ranges = {k: (float(v[0]), float(v[1])) for k, v in (r.raw("ranges", {}) or {}).items()}
        default_overhead, overheads = _overheads(r)
        exponent = r.number("roofline_exponent", None, minimum=1.0) if r.has("roofline_exponent") else None
        prof = cls(
            name=r.text("name"),
            source=r.text("source"),
            compute=curves["compute_efficiency"],
            memory=curves["memory_efficiency"],
            kernel_overhead_s=default_overhead,
            links=links,
            ranges=ranges,
            holdout_error=r.raw("holdout_error", {}) or {},
            kernel_overheads=overheads,
            roofline_exponent=exponent,
            fit=r.raw("fit", {}) or {},  # free-form record of how the profile was fitted
            host_overhead_s=r.number("host_overhead_us", 0.0, minimum=0.0) * 1e-6,
            gemm=_gemm_models(r),
            collectives=Collectives.from_dict(r.child("collectives")) if r.has("collectives") else None,
            attention_phases=_attention_phases(r),
            moe=_keyed(r, "moe", MOE_DTYPES, "a dtype", MoeModel.from_reader),
            moe_engines=_keyed(r, "moe_engines", MOE_ENGINES, "an engine with its own MoE terms", _moe_terms),
        )
        r.finish()
        return prof


def _keyed(
    r: FieldReader, name: str, allowed: tuple[str, ...], what: str, build: Callable[[FieldReader], T]
) -> dict[str, T]:
    """An optional mapping section ``name`` whose keys are ``allowed``, each value read by ``build``."""
    if not r.has(name):
        return {}
    section = r.child(name)
    out = {}
    for key in list(section.data):
        if key not in allowed:
            raise section.error(str(key), f"is not {what}; allowed: {', '.join(allowed)}")
        out[key] = build(section.child(key))
    section.finish()
    return out


def _moe_terms(r: FieldReader) -> dict[str, MoeModel]:
    """One engine's ``moe_engines`` entry: terms per dtype, as in ``moe``."""
    out = {}
    for key in list(r.data):
        if key not in MOE_DTYPES:
            raise r.error(str(key), f"is not a dtype; allowed: {', '.join(MOE_DTYPES)}")
        out[key] = MoeModel.from_reader(r.child(key))
    r.finish()
    return out


def _gemm_models(r: FieldReader) -> dict[str, GemmModel]:
    """``gemm``: a shape-aware GEMM model per dtype (absent: none)."""
    return _keyed(r, "gemm", GEMM_DTYPES, "a dtype", GemmModel.from_reader)


def _overheads(r: FieldReader) -> tuple[float, dict[str, float]]:
    """``kernel_overhead_us``: one number for every kind, or a mapping per kind with a ``default``."""
    if not isinstance(r.data.get("kernel_overhead_us"), dict):
        return r.number("kernel_overhead_us", minimum=0.0) * 1e-6, {}
    o = r.child("kernel_overhead_us")
    per_kind = {}
    for kind in list(o.data):
        per_kind[kind] = o.number(kind, minimum=0.0) * 1e-6
    if "default" not in per_kind:
        raise o.error("default", "is missing: a per-kind kernel overhead needs a 'default'")
    return per_kind.pop("default"), per_kind


def _attention_phases(r: FieldReader) -> dict[str, AttentionPhase]:
    """``attention_phases``: optional mapping ``prefill`` / ``decode`` -> :class:`AttentionPhase` terms."""
    what = "a phase attention is fitted for"
    return _keyed(r, "attention_phases", ATTENTION_PHASES, what, AttentionPhase.from_reader)


def profiles_dir() -> Path:
    return Path(str(resources.files("paratune.configs"))) / "profiles"


def load_profile(name_or_path: str, *, local: bool = True) -> Profile:
    """A shipped profile by name (``configs/profiles/NAME.yaml``) or a profile file path.

    A profile of this machine (``cpu-local``) comes from the cache when ``paratune
    calibrate local`` measured this CPU (see :mod:`._machine`), unless ``local`` is False.
    """
    path = Path(name_or_path)
    if local and name_or_path in LOCAL_NAMES and local_profile_path(name_or_path).is_file():
        path = local_profile_path(name_or_path)
        return Profile.from_dict(load_yaml(path), str(path))
    if not name_or_path.endswith((".yaml", ".yml")):
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in profiles_dir().glob("*.yaml"))
            raise ValueError(f"unknown calibration profile {name_or_path!r}; known: {', '.join(known)}")
    return Profile.from_dict(load_yaml(path), str(path))


def in_range(profile: Profile, quantity: str, values: np.ndarray) -> bool:
    """True when every value lies inside the calibrated span of ``quantity`` (or none is recorded)."""
    span = profile.ranges.get(quantity)
    if span is None or values.size == 0:
        return True
    return bool(values.min() >= span[0] * 0.999 and values.max() <= span[1] * 1.001)
