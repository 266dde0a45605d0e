"""Pricing kernels and collectives: the one place both evaluators get their times from.

The analytic evaluator and the discrete-event simulator must agree, so neither
computes a time itself: they call :func:`op_times` for kernels and
:func:`allreduce_time` / :func:`p2p_time` for communication.

Kernel time on one device of a TP group (roofline with efficiency):

    c = F / (peak * eff_c(F)),  m = B / (bw * eff_m(B))
    t = (c^k + m^k)^(1/k) + overhead(kind) + host     (k = profile.roofline_exponent)
    t = max(c, m) + overhead(kind) + host             (no exponent: the hand-set profiles)

with F and B the FLOPs and bytes of the op on that device (:meth:`OpTable.per_device`:
divided by the op's split under TP, scaled by the micro-batch share of the
batch-dependent part; weights are read whole by every micro-batch; a memory-bound
output that is all-reduced is written whole by every rank), eff_c and eff_m the profile's
saturating curves of the op's kind, ``host`` the profile's exposed host time per
kernel (``Profile.host_overhead_s``: 0 for kernel timings and CUDA graphs, tens of us
for synchronously timed eager ops). Causal attention kernels run half of the
counted score FLOPs. Why a smooth maximum: a GEMM near the ridge point neither
streams its operands nor computes at full rate, both pipelines stall each other;
measured A100/H100 GEMMs are up to 30% slower there than ``max(c, m)``, and a
fitted k of about 1.2-1.5 removes that bias (see ``calibration/_fit.py``).

A GEMM with a known shape (``Op.gemm_k`` / ``gemm_n``) on a profile with a ``gemm`` model
for the dtype is priced by that model instead (:mod:`._gemm`: the same roofline with its
own curves, times a residual fitted over (m, n, k) on measured GEMMs), plus ``host``.

Inference attention on a profile with ``attention_phases`` (fitted on measured context
and generation kernels, :mod:`.calibration._aic_attention`) is priced by the terms of the
graph's phase instead (:class:`~._profile.AttentionPhase`):
``overhead + c' + m' + output_bytes * rate + sequences * (kv_bytes_per_token * rate'
+ q_bytes_per_token * rate'')``, c' and m' the FLOPs and bytes at the phase's fractions of
the peaks (the bf16 peak for any dtype); training graphs keep the ``attention`` curves.
Where the phase has a ``residual`` (:mod:`._attention`), that time is multiplied by
``exp(r(kv_len, kv_elems, gqa))``, the three read from the row and the pricer's batch,
q_len and dtypes (:func:`._attention.row_features`: kv_len is the counted FLOPs over
4 x the output elements, so a row built for any context gets its own).

MoE expert GEMMs (kind ``moe``, forward, with a shape and weights) on a profile with a ``moe``
model for the dtype are priced by its grouped-GEMM terms (:mod:`._moe`, fitted on measured
MoE blocks by :mod:`.calibration._aic_moe`): efficiency by tokens per expert and by the TP
shard's width, and a routed-token term TP does not divide. In inference the experts'
element-wise activation then costs only ``host``: the engines fuse it into the first GEMM.

Collectives (alpha-beta, ring): all-reduce of S bytes on n ranks costs
2(n-1)·alpha + 2(n-1)/n·S/B; all-gather / reduce-scatter (n-1)·alpha + (n-1)/n·S/B;
point-to-point alpha + S/B. B and alpha are those of the slowest link the group spans;
a calibrated per-collective base latency is folded into the group's alpha
(:func:`group_link`), point-to-point uses the link's own p2p terms (:func:`pair_link`).

Fitted collectives (a profile's optional ``collectives`` section, :mod:`._collectives`):
a TP all-reduce on a group inside the section's link class (one NVLink / NVSwitch
domain) costs what the engine's custom all-reduce measured (``tp_allreduce``; NCCL's
curve when the engine's is missing): latency_a + S x seconds per byte_a, with a the
algorithm whose size range holds the message of S bytes; a group across nodes keeps
the ring. :func:`group_terms` gives a group's :class:`GroupLink` (ring terms plus those
algorithms), :func:`tp_allreduce_time` prices ``count`` all-reduces of ``nbytes`` in
total with it. The evaluators sum a stage's all-reduces as one call, which is exact
when they have the same size (every TP all-reduce of a transformer layer moves tokens
x hidden): count x (lat_a + S b_a) with S = nbytes / count. Data-parallel gradient
all-reduces keep the ring.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from ..graphs import DTYPE_BYTES, GraphMeta, Op
from ._attention import row_features
from ._collectives import Terms
from ._moe import MoeModel, moe_features
from ._platform import Platform
from ._profile import AttentionPhase
from ._trust import ErrorModel


@dataclass(frozen=True)
class OpTable:
    """Columns of a list of ops, for vectorised pricing (one row per op)."""

    flops: np.ndarray
    bytes: np.ndarray
    weight_bytes: np.ndarray
    allreduce_bytes: np.ndarray
    param_bytes: np.ndarray
    output_bytes: np.ndarray
    kv_bytes_per_token: np.ndarray
    replicated: np.ndarray  # bool: runs whole on every TP rank
    shard_max: np.ndarray  # 0 = no cap
    causal: np.ndarray  # bool
    kinds: tuple[str, ...]
    gemm_k: np.ndarray | None = None  # GEMM input features (0: not a GEMM with a weight)
    gemm_n: np.ndarray | None = None  # GEMM output features
    row_split: np.ndarray | None = None  # bool: TP splits k (row-parallel), else n
    experts: np.ndarray | None = None  # bool: an op of a MoE block's experts (shard "experts")

    @classmethod
    def from_ops(cls, ops: list[Op] | tuple[Op, ...]) -> OpTable:
        def col(name: str) -> np.ndarray:
            return np.array([getattr(o, name) for o in ops], dtype=float)

        return cls(
            flops=col("flops"),
            bytes=col("bytes"),
            weight_bytes=col("weight_bytes"),
            allreduce_bytes=col("allreduce_bytes"),
            param_bytes=col("param_bytes"),
            output_bytes=col("output_bytes"),
            kv_bytes_per_token=col("kv_bytes_per_token"),
            replicated=np.array([o.shard == "replicated" for o in ops], dtype=bool),
            shard_max=np.array([o.shard_max for o in ops], dtype=float),
            causal=np.array([o.causal for o in ops], dtype=bool),
            kinds=tuple(o.kind for o in ops),
            gemm_k=col("gemm_k"),
            gemm_n=col("gemm_n"),
            row_split=np.array([o.shard == "row" for o in ops], dtype=bool),
            experts=np.array([o.shard == "experts" for o in ops], dtype=bool),
        )

    def rows(self, idx: np.ndarray) -> OpTable:
        """The rows ``idx`` of this table."""
        cols: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kinds"}
        picked: dict[str, Any] = {k: None if v is None else v[idx] for k, v in cols.items()}
        return OpTable(
            **picked,
            kinds=tuple(self.kinds[i] for i in np.arange(len(self.kinds))[idx]),
        )

    def gemm_shapes(self, tp: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per-device (m, n, k) of each GEMM row (m = 0 where the op is not a GEMM with a known shape).

        m is the op's token count, ``flops / (2 k n)`` of the whole batch, times ``scale``;
        TP divides k of a row-parallel GEMM and n of the others, as :meth:`split` divides
        their FLOPs.
        """
        if self.gemm_k is None or self.gemm_n is None or not np.any(self.gemm_k > 0):
            return None
        k, n = self.gemm_k, self.gemm_n
        known = (k > 0) & (n > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(known, self.flops / (2.0 * k * n), 0.0) * scale
        split = self.split(tp)
        row = self.row_split if self.row_split is not None else np.zeros(len(k), dtype=bool)
        return m, np.where(row, n, n / split), np.where(row, k / split, k)

    def __len__(self) -> int:
        return len(self.kinds)

    def split(self, tp: int) -> np.ndarray:
        """Degree by which each op is divided on a TP group of ``tp`` (see ``Op.split``)."""
        split = np.where(self.shard_max > 0, np.minimum(tp, self.shard_max), tp)
        return np.where(self.replicated, 1.0, split)

    def per_device(self, tp: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(FLOPs, bytes) of each op on one device of a TP group of ``tp``, for a ``scale`` share of the batch.

        FLOPs and bytes are divided by the op's split, except: causal attention runs
        half its counted FLOPs; weights are read whole by every micro-batch; and a
        memory-bound op (no FLOPs) whose output is all-reduced over the group, the
        vocab-parallel embedding, writes that whole (masked) output on every rank
        before the reduction, as Vidur's TP profiles show (its time at t = 2..8 is
        0.9-1x the single-GPU time, not 1/t). A row-parallel GEMM also writes a whole
        output, but from the epilogue of each tile while other tiles compute: counting
        it makes held-out GEMM errors worse (H100 8.1% -> 8.7% at >= 512 tokens), so
        GEMM outputs stay divided by the split.
        """
        split = self.split(tp)
        flops = np.where(self.causal, 0.5, 1.0) * self.flops * scale / split
        act = (self.bytes - self.weight_bytes) * scale
        whole_output = (self.allreduce_bytes > 0) & (self.flops == 0)
        whole = np.where(whole_output, np.minimum(self.output_bytes * scale, act), 0.0)
        return flops, (self.weight_bytes + act - whole) / split + whole


class KernelPricer:
    """Per-op efficiencies of one platform and dtype, cached per op kind.

    Example:
        >>> from paratune.costmodel import get_platform
        >>> from paratune.graphs import build_graph
        >>> g = build_graph("gpt2", phase="decode", batch=1, seq=64)
        >>> pricer = KernelPricer(get_platform("dgx-a100"), "bf16")
        >>> t = pricer.op_times(OpTable.from_ops([o for t in g.tasks for o in t.ops]), tp=1)
        >>> bool((t > 0).all())
        True
    """

    def __init__(
        self,
        platform: Platform,
        dtype: str,
        *,
        phase: str | None = None,
        batch: int = 0,
        q_len: int = 1,
        kv_dtype: str | None = None,
        engine: str | None = None,
    ) -> None:
        self.platform = platform
        # Inference: the engines fuse the experts' activation into the grouped GEMM (see _moe_times).
        self.fuse_expert_act = phase in ("prefill", "decode")
        # Sequences of the graph's workload and query tokens of each: the per-sequence attention terms.
        self.batch, self.q_len = batch, max(q_len, 1)
        # Fitted attention terms of the phase; with an fp8 KV cache its own terms when the profile has them.
        phases, fp8_key = platform.profile.attention_phases, f"{phase}_fp8_kv"
        key = fp8_key if (kv_dtype or dtype) == "fp8" and fp8_key in phases else (phase or "")
        self.attention = phases.get(key)
        dev, prof = platform.device, platform.profile
        # The fitted attention terms are fractions of the bf16 peak whatever the model's dtype:
        # the engines' fp8 attention runs about 1.2-1.3x faster than bf16, not at the fp8 peak.
        self.attention_peak = dev.peak("bf16")
        self.peak = dev.peak(dtype)
        self.bw = dev.memory_bw
        self.host = prof.host_overhead_s
        self.overhead = prof.kernel_overhead_s + self.host
        self.exponent = prof.roofline_exponent
        self._prof = prof
        self.gemm = prof.gemm_model(dtype)
        # The serving engine's own MoE kernel when the profile has its terms (``engine`` None: TensorRT-LLM's).
        self.moe = prof.moe_model(dtype, engine)
        self.elem_bytes = float(DTYPE_BYTES.get(dtype, 2))
        self.kv_elem_bytes = float(DTYPE_BYTES.get(kv_dtype or dtype, 2))
        # A profile borrowed from another device has no held-out error that applies here.
        self.errors = None if platform.uncalibrated else ErrorModel.from_profile(prof)

    @classmethod
    def for_graph(cls, platform: Platform, meta: GraphMeta) -> KernelPricer:
        """The pricer of a graph's ops: its dtype and, for fitted attention, its phase, batch and KV-cache dtype."""
        kv_dtype = str((meta.spec.get("kv_dtype") if isinstance(meta.spec, dict) else None) or meta.dtype)
        q_len = meta.seq if meta.phase == "prefill" else 1
        return cls(platform, meta.dtype, phase=meta.phase, batch=meta.batch, q_len=q_len, kv_dtype=kv_dtype)

    def error_weights(self, table: OpTable) -> np.ndarray:
        """Held-out MAPE (fraction) of each op's kind; zeros when the profile is hand-set."""
        if self.errors is None:
            return np.zeros(len(table))
        return np.array([self.errors.of(k) for k in table.kinds])

    def op_times(self, table: OpTable, tp: int, scale: float = 1.0) -> np.ndarray:
        """Seconds of each op on one device of a TP group of ``tp``, for a ``scale`` share of the batch."""
        flops, nbytes = table.per_device(tp, scale)
        kinds = np.array(table.kinds)
        comp = np.zeros(len(table))
        mem = np.zeros(len(table))
        fixed = np.full(len(table), self.overhead)
        for kind in sorted(set(table.kinds)):
            idx = kinds == kind
            ce, me = self._prof.compute_eff(kind), self._prof.memory_eff(kind)
            f, b = flops[idx], nbytes[idx]
            with np.errstate(divide="ignore", invalid="ignore"):
                comp[idx] = np.where(f > 0, f / (self.peak * ce(f)), 0.0)
                mem[idx] = np.where(b > 0, b / (self.bw * me(b)), 0.0)
            fixed[idx] = self._prof.overhead(kind) + self.host
        times = roofline(comp, mem, self.exponent) + fixed
        shapes = table.gemm_shapes(tp, scale) if self.gemm is not None else None
        if shapes is not None and self.gemm is not None:
            m, n, k = shapes
            idx = (m > 0) & (kinds == "matmul")
            if idx.any():
                times[idx] = self.gemm.times(m[idx], n[idx], k[idx], flops[idx], nbytes[idx], self.peak, self.bw)
                times[idx] += self.host
        if self.moe is not None and "moe" in table.kinds:
            times = self._moe_times(self.moe, table, kinds, tp, flops, nbytes, times)
        if self.attention is not None and "attention" in table.kinds:
            idx = kinds == "attention"
            times[idx] = self._attention_times(self.attention, table, idx, tp, scale, flops[idx], nbytes[idx])
        return times

    def _attention_times(
        self, a: AttentionPhase, table: OpTable, idx: np.ndarray, tp: int, scale: float, flops: np.ndarray,
        nbytes: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """Seconds of the attention rows ``idx`` (their per-device ``flops`` and ``nbytes``) by the phase's terms.

        With a residual, its features come from the row: the context from the counted FLOPs
        over the output (``4 x sequences x q_len x kv_len x hidden`` over ``sequences x q_len
        x hidden`` elements), sequences x KV elements from the KV bytes per token and the
        pricer's batch and KV dtype, query heads per KV head from both.
        """
        split = table.split(tp)[idx]
        out = table.output_bytes[idx] * scale / split
        comp = flops / (self.attention_peak * a.compute_peak)
        mem = nbytes / (self.bw * a.memory_peak)
        seq_kv = self.batch * scale * table.kv_bytes_per_token[idx] / split
        stream = attention_stream(mem, seq_kv * a.sequence_s_per_kv_byte, a.join_exponent)
        kernel = a.overhead_s + comp + stream + out * a.output_s_per_byte + out / self.q_len * a.sequence_s_per_q_byte
        if a.residual is not None:
            features = row_features(
                table.flops[idx] * scale / split, out, seq_kv, self.batch * scale, self.q_len, self.elem_bytes,
                self.kv_elem_bytes,
            )  # fmt: skip
            kernel = kernel * np.exp(a.residual.correction(*features))
        return kernel + self.host

    def _moe_times(
        self,
        model: MoeModel,
        table: OpTable,
        kinds: np.ndarray,
        tp: int,
        flops: np.ndarray,
        nbytes: np.ndarray,
        times: np.ndarray,
    ) -> np.ndarray:
        """``times`` with expert GEMMs of known shape priced by ``model``; in inference their activation fused.

        Expert ops without a shape or weights (an imported batched matmul that the importer
        could not read) keep the ``moe`` curves, and then so does their activation.
        """
        if table.gemm_k is None or table.gemm_n is None:
            return times
        idx = (kinds == "moe") & (table.gemm_k > 0) & (table.gemm_n > 0) & (table.weight_bytes > 0)
        if not idx.any():
            return times
        x = moe_features(
            flops[idx],
            nbytes[idx],
            table.weight_bytes[idx],
            table.gemm_k[idx],
            table.gemm_n[idx],
            table.allreduce_bytes[idx] > 0,
            table.split(tp)[idx],
            self.elem_bytes,
        )
        times = times.copy()
        times[idx] = model.times(x, self.peak, self.bw) + self.host
        # Serving engines fuse the experts' activation into the first grouped GEMM: the block's time holds it.
        if table.experts is not None and self.fuse_expert_act:
            times[table.experts & (kinds == "elementwise")] = self.host
        return times

    def op_time(self, op: Op, tp: int, scale: float = 1.0) -> float:
        """Seconds of one op (convenience for a single op; prefer :meth:`op_times`)."""
        return float(self.op_times(OpTable.from_ops([op]), tp, scale)[0])


def roofline(comp: np.ndarray, mem: np.ndarray, exponent: float | None) -> np.ndarray:
    """Join compute and memory seconds: ``max`` or the smooth ``(c^k + m^k)^(1/k)``.

    The smooth form is computed relative to the larger term, so it neither
    overflows nor underflows whatever the magnitudes.
    """
    hi = np.maximum(comp, mem)
    if exponent is None:
        return hi
    lo = np.minimum(comp, mem)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(hi > 0, lo / hi, 0.0)
    return hi * (1.0 + ratio**exponent) ** (1.0 / exponent)


def attention_stream(memory: np.ndarray, per_sequence: np.ndarray, exponent: float | None) -> np.ndarray:
    """Memory term and per-sequence KV term of fitted attention: summed, or joined with ``exponent``."""
    return memory + per_sequence if exponent is None else roofline(memory, per_sequence, exponent)


def allreduce_time(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """Ring all-reduce of ``nbytes`` over ``ranks`` (0 for a single rank or no data)."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * nbytes / bandwidth


def allgather_time(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """Ring all-gather (or reduce-scatter) whose full result is ``nbytes``."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return (ranks - 1) * alpha + (ranks - 1) / ranks * nbytes / bandwidth


def alltoall_time(nbytes: float, ranks: int, alpha: float, bandwidth: float) -> float:
    """All-to-all where each rank sends ``nbytes`` in total, 1/ranks of it to each rank (itself included).

    Pairwise exchange: (ranks - 1) steps of alpha, and the (ranks - 1)/ranks of the bytes
    that leave the rank at the group's bandwidth (expert parallelism's dispatch and combine).
    """
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    return (ranks - 1) * alpha + (ranks - 1) / ranks * nbytes / bandwidth


class GroupLink(NamedTuple):
    """Collective terms of a device group: the ring's (alpha, bytes/s) and the fitted TP all-reduce.

    ``allreduce`` holds (seconds per all-reduce, seconds per byte, largest message in
    bytes) per measured algorithm, by growing size; empty when the ring prices it (no
    ``collectives`` section, or a group outside its link class). Hashable, so tuners
    may key caches and sets by it.
    """

    alpha: float
    bandwidth: float
    allreduce: Terms = ()


def tp_allreduce_time(nbytes: float, count: float, ranks: int, link: GroupLink) -> float:
    """``count`` TP all-reduces of ``nbytes`` bytes in total (of equal sizes) on a group of ``ranks``."""
    if not link.allreduce:
        return allreduce_time(nbytes, ranks, count * link.alpha, link.bandwidth)
    if ranks <= 1 or nbytes <= 0 or count <= 0:
        return 0.0
    size = nbytes / count
    for lat, per_byte, upto in link.allreduce:
        if size <= upto:
            return count * lat + nbytes * per_byte
    raise ValueError("fitted all-reduce: the last algorithm must have no size bound")  # the profile reader ensures it


def chosen_allreduce(nbytes: np.ndarray, count: np.ndarray, terms: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Seconds of ``count`` all-reduces of ``nbytes`` in total with per-element (latency, per byte, bound) arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        size = nbytes / count
    lat, per_byte, _ = terms[-1]
    out = count * lat + nbytes * per_byte
    for lat, per_byte, upto in reversed(terms[:-1]):
        out = np.where(size <= upto, count * lat + nbytes * per_byte, out)
    return out


def tp_allreduce_array(nbytes: np.ndarray, count: np.ndarray, ranks: int, link: GroupLink) -> np.ndarray:
    """:func:`tp_allreduce_time` on arrays (0 where ``count`` or ``nbytes`` is 0)."""
    if not link.allreduce:
        out = 2 * (ranks - 1) * (count * link.alpha) + 2 * (ranks - 1) / ranks * nbytes / link.bandwidth
    else:
        out = chosen_allreduce(nbytes, count, [tuple(np.asarray(v, dtype=float) for v in a) for a in link.allreduce])
    return np.where((count > 0.5) & (nbytes > 0) & (ranks > 1), out, 0.0)


def fitted_allreduce(platform: Platform, devices: tuple[int, ...] | list[int]) -> Terms:
    """The fitted TP all-reduce algorithms of a group (empty: the ring prices it)."""
    coll = platform.profile.collectives
    if coll is None or len(devices) < 2 or platform.link_class(devices) != coll.link_class:
        return ()
    impl = coll.tp_implementation()
    link = platform.links.get(coll.link_class)
    if impl is None or link is None:
        return ()
    return coll.terms("all_reduce", impl, len(devices), link.bandwidth)


def group_terms(platform: Platform, devices: tuple[int, ...] | list[int]) -> GroupLink:
    """:func:`group_link` plus the group's fitted TP all-reduce (:func:`fitted_allreduce`)."""
    alpha, bw = group_link(platform, devices)
    return GroupLink(alpha, bw, fitted_allreduce(platform, devices))


def p2p_time(nbytes: float, alpha: float, bandwidth: float) -> float:
    """Point-to-point send of ``nbytes`` (pipeline boundary)."""
    if nbytes <= 0:
        return 0.0
    return alpha + nbytes / bandwidth


def group_link(platform: Platform, devices: tuple[int, ...] | list[int]) -> tuple[float, float]:
    """(alpha, bytes/s) for collectives of a device group: its slowest link, mesh hops included.

    A group spanning nodes runs one ring per rail (NCCL's multi-rail rings): each member
    brings its own NIC (``inter`` is a bandwidth per device), so a group with k members
    on each node gets k NICs' bandwidth, capped by the ``intra`` link its rings also
    cross (:func:`rails`); a group with one member per node gets one NIC, as before.

    The link class's per-collective base latency is spread over the 2(n-1) steps of a
    ring all-reduce of the group's n ranks, so every evaluator keeps the ring formula
    (and its linearity in alpha) and an all-reduce costs base + 2(n-1)·alpha + ...;
    an all-gather, half a ring, pays half the base.
    """
    link_class = platform.link_class(devices)
    alpha, bw = platform.link_terms(link_class)
    alpha *= platform.hops(devices)
    if link_class == "inter" and "intra" in platform.links and (k := rails(platform, devices)) > 1:
        bw = min(bw * k, platform.link_terms("intra")[1])  # the rings also cross NVLink inside each node
    base = platform.profile.link(link_class).base_latency_s
    if base and len(devices) > 1:
        alpha += base / (2 * (len(devices) - 1))
    return alpha, bw


def rails(platform: Platform, devices: tuple[int, ...] | list[int]) -> int:
    """NICs a group's rings cross nodes on: its fewest members on any node it spans (1 inside a node).

    Why the fewest: every ring visits every node, so the node with the fewest members
    (and NICs) is where the rings queue. Groups that share nodes (the DP groups of TP
    ranks) each use their own members' NICs, so pricing them one at a time double
    counts nothing.
    """
    counts: dict[int, int] = {}
    for d in devices:
        node = platform.node_of(d)
        counts[node] = counts.get(node, 0) + 1
    return min(counts.values()) if len(counts) > 1 else 1


def pair_link(platform: Platform, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[float, float]:
    """(alpha, bytes/s) of a transfer between groups ``src`` and ``dst``, the same both ways.

    The pair that carries it is the last device of the group with the lower ids and the
    first of the other (neighbours on a switch or a mesh), so activations forward and
    gradients backward cross the same link. It is priced with the link class's
    point-to-point terms (``Platform.p2p_terms``), mesh hops included.
    """
    low, high = (src, dst) if src[0] <= dst[0] else (dst, src)
    pair = (low[-1], high[0])
    alpha, bw = platform.p2p_terms(platform.link_class(pair))
    return alpha * platform.hops(pair), bw
