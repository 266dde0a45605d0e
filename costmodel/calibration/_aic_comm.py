"""Collectives fitted on AIConfigurator's measured comm tables: the algorithm chosen by size.

Why: a ring with one alpha-beta per link class prices a 64 KiB all-reduce on 8 H200 at
about 30 us, where the engines' custom all-reduce takes 3-6 us and NCCL 16-20 us, and a
512 MiB one 12-25% slow because NVLink SHARP (NVLS) is not a ring. The engines pick an
algorithm by message size (one-shot / two-shot custom all-reduce, then NCCL, which
itself picks protocols and ring / tree / NVLS), so a collective of S bytes on n ranks
is modelled, with ``a`` the algorithm whose size range holds S, as

    t(S) = latency_a + f(n) * S / (eff_a * B)

with ``B`` the platform's link bandwidth per device and direction (the system spec's
``intra_node_bw``), ``f(n)`` the bus factor of the collective (2(n-1)/n for an
all-reduce, (n-1)/n for all-gather, reduce-scatter and all-to-all: ``eff_a * B`` is
the algorithm's bus bandwidth as nccl-tests reports it) and ``eff_a`` a fraction of
``B`` (above 1 where NVLS reduces in the switch). Thresholds, not the fastest line:
NCCL does not always switch to a faster algorithm (8 B200: 32 us at 2 MiB, 53 us at
4 MiB), and a minimum of lines, being concave, cannot follow that.

Fitted per system, collective, implementation (``nccl``, or the engine's custom
all-reduce: ``trtllm``, ``vllm``, ``sglang``) and group size: sizes are sorted and cut
into up to :data:`MAX_ALGORITHMS` contiguous bands of at least two sizes, each band
gets a line by least squares on relative error, and the best cut is a dynamic program
(a band more must lower the mean error by :data:`MIN_GAIN`); a threshold sits at the
geometric mean of the sizes either side of a cut. Expressed as fractions of ``B``, a
curve fitted on some systems of an interconnect family predicts another
(leave-one-system-out; :data:`FAMILIES`). A group that spans more GPUs than the
system's node or tray (GB300's multi-node NVLink kernels at 8 and 16) is only
predicted from such groups; otherwise it is ``derived`` from the nearest size.

Units read: ``message_size`` is in elements (AIConfigurator's collector divides the
nccl-tests byte size by the element size); the ``half`` NCCL rows and the ``bfloat16``
custom all-reduce rows are read, 2 bytes per element. vLLM and SGLang rows timed under
CUDA graphs are kept (how they serve); where an engine has several kernels for a size
(GB300's multi-node NVLink one-shot and two-shot), the fastest is what it runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._collectives import COLLECTIVES, bus_factor, nearest_ranks
from ._aiconfigurator import read_table, system_spec
from ._lsq import sig

ENGINES = ("trtllm", "vllm", "sglang")
#: Interconnect families: a system is predicted from the others of its family.
FAMILIES = {
    "nvlink3": ("a100_sxm",),
    "nvlink4": ("h100_sxm", "h200_sxm"),
    "nvlink5": ("b200_sxm", "b300_sxm", "gb200", "gb300"),
    "pcie": ("l40s", "rtx_pro_6000_server"),
}
#: Size bands of the report: up to 1 MiB, between, from 64 MiB.
BANDS = ("<=1MiB", "1-64MiB", ">=64MiB")
MAX_ALGORITHMS = 5
#: A curve keeps one more algorithm only if it lowers the mean relative error by this much (absolute).
MIN_GAIN = 0.005
ELEMENT_BYTES = 2
#: Largest bus bandwidth of an algorithm, as a fraction of the link (NVLS reaches about 1.1; a flat,
#: latency-bound band gets this, not an arbitrarily large value).
MAX_EFFICIENCY = 2.0


@dataclass(frozen=True)
class Curve:
    """Measured points of one collective, implementation, system and group size."""

    system: str
    collective: str
    implementation: str
    ranks: int
    nbytes: np.ndarray
    seconds: np.ndarray
    link_bw: float
    provenance: dict[str, Any]
    multinode: bool = False  # the group spans more GPUs than a tray / node holds (multi-node NVLink)


def family_of(system: str) -> str | None:
    return next((f for f, members in FAMILIES.items() if system in members), None)


def link_bandwidth(system: str) -> float:
    """The system's intra-node link bandwidth per device and direction (bytes/s), which fractions refer to."""
    node = system_spec(system).get("node") or {}
    bw = node.get("intra_node_bw")
    if not isinstance(bw, (int, float)) or not bw > 0:
        raise ValueError(f"system {system!r}: node.intra_node_bw is missing or not a positive number")
    return float(bw)


def measured_curves(system: str, implementation: str) -> list[Curve]:
    """Every measured curve of ``implementation`` on ``system``: NCCL's four collectives, or an engine's all-reduce."""
    curves = _measured(system, implementation)
    per_node = (system_spec(system).get("node") or {}).get("num_gpus_per_node")
    if isinstance(per_node, int) and per_node > 0:
        curves = [dataclasses.replace(c, multinode=c.ranks > per_node) for c in curves]
    return curves


def _measured(system: str, implementation: str) -> list[Curve]:
    bw = link_bandwidth(system)
    out = []
    if implementation == "nccl":
        table = read_table(system, "comm", "nccl_perf", "nccl")
        keep = table["nccl_dtype"] == "half"
        for coll in COLLECTIVES:
            for n in sorted(set(table["num_gpus"][keep & (table["op_name"] == coll)].tolist())):
                mask = keep & (table["op_name"] == coll) & (table["num_gpus"] == n)
                out.append(_curve(system, coll, "nccl", int(n), table.where(mask), bw))
        return out
    if implementation not in ENGINES:
        raise ValueError(f"implementation must be nccl or one of {', '.join(ENGINES)}, got {implementation!r}")
    table = read_table(system, "comm", "custom_allreduce_perf", implementation)
    keep = np.ones(len(table), dtype=bool)
    if implementation in ("vllm", "sglang"):
        keep = np.char.find(table["kernel_source"].astype(str), "graph") >= 0
    for n in sorted(set(table["num_gpus"][keep].tolist())):
        rows = table.where(keep & (table["num_gpus"] == n))
        out.append(_curve(system, "all_reduce", implementation, int(n), rows, bw))
    return out


def _curve(system: str, coll: str, impl: str, n: int, table: Any, bw: float) -> Curve:
    """One curve, the fastest kernel kept where a size was timed more than once."""
    sizes = table["message_size"].astype(float) * ELEMENT_BYTES
    best: dict[float, float] = {}
    for s, t in zip(sizes.tolist(), table["seconds"].tolist(), strict=True):
        best[s] = min(t, best.get(s, np.inf))
    keys = sorted(best)
    return Curve(system, coll, impl, n, np.array(keys), np.array([best[k] for k in keys]), bw, table.provenance)


# -- the fit ------------------------------------------------------------------------------

Fitted = list[tuple[float, float, float]]  # (latency s, efficiency, largest message in bytes) per algorithm


def predict(algorithms: Fitted, nbytes: np.ndarray, factor: float, link_bw: float) -> np.ndarray:
    """Seconds of messages of ``nbytes``: the algorithm whose size range holds each message."""
    out = np.zeros(len(nbytes))
    for lat, eff, upto in reversed(algorithms):
        out = np.where(nbytes <= upto, lat + factor * nbytes / (eff * link_bw), out)
    return out


def _line(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(latency, seconds per unit x) of ``t ~ a + b x`` by least squares on relative error, a >= 0, b > 0."""
    design = np.stack([1.0 / t, x / t], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.ones(len(t)), rcond=None)
    a, b = float(coef[0]), float(coef[1])
    if b < 1.0 / MAX_EFFICIENCY:  # a flat band (latency-bound): the largest bandwidth allowed, its latency refitted
        b = 1.0 / MAX_EFFICIENCY
        a = float(np.sum((1.0 - b * x / t) / t) / np.sum(1.0 / t**2))
    if a < 0:
        a, b = 0.0, max(float(np.sum(x / t) / np.sum((x / t) ** 2)), 1.0 / MAX_EFFICIENCY)
    return a, b


def fit_points(
    s: np.ndarray, x: np.ndarray, t: np.ndarray, *, max_algorithms: int = MAX_ALGORITHMS
) -> list[tuple[float, float, float]]:
    """Bands of message size, each with a line ``t ~ latency + b x``: (latency, b, largest size) per band.

    ``s`` is the message size (bytes) the bands cut, ``x`` the bus bytes over the link
    bandwidth (seconds at full bandwidth: the slope is 1/efficiency). Several systems
    may be pooled: points of equal size fall in the same band. The error of a cut is
    the sum of its bands' errors, so the best cut into k bands is a dynamic program over
    the sorted sizes; one more band is kept only when it lowers the mean relative
    error by :data:`MIN_GAIN`. A band holds at least two sizes.
    """
    uniq = np.unique(s)
    u = len(uniq)
    if u == 0:
        raise ValueError("no points to fit")
    idx = np.searchsorted(uniq, s)
    fits: dict[tuple[int, int], tuple[float, tuple[float, float]]] = {}
    for i in range(u):
        for j in range(i + min(2, u), u + 1):  # band of sizes uniq[i:j]
            band = (idx >= i) & (idx < j)
            a, b = _line(x[band], t[band])
            fits[(i, j)] = (float(np.abs((a + b * x[band]) / t[band] - 1.0).sum()), (a, b))
    # best[k][j]: (error, cuts) of sizes uniq[:j] in k bands
    best: list[dict[int, tuple[float, list[int]]]] = [{0: (0.0, [])}]
    chosen: tuple[float, list[int]] | None = None
    for _k in range(1, max_algorithms + 1):
        layer: dict[int, tuple[float, list[int]]] = {}
        for i, (err_i, cuts_i) in best[-1].items():
            for j in range(i + 1, u + 1):
                if (i, j) in fits:
                    err = err_i + fits[(i, j)][0]
                    if j not in layer or err < layer[j][0]:
                        layer[j] = (err, [*cuts_i, j])
        best.append(layer)
        if u not in layer:
            continue
        err = layer[u][0] / len(t)
        if chosen is not None and chosen[0] - err < MIN_GAIN:
            break
        chosen = (err, layer[u][1])
    if chosen is None:
        raise ValueError("no points to fit")
    out, lo = [], 0
    for j in chosen[1]:
        a, b = fits[(lo, j)][1]
        upto = float(np.sqrt(uniq[j - 1] * uniq[j])) if j < u else float("inf")
        out.append((a, b, upto))
        lo = j
    return out


def fit_curves(curves: list[Curve], *, max_algorithms: int = MAX_ALGORITHMS) -> Fitted:
    """``(latency_s, efficiency, largest bytes)`` algorithms fitted on curves of one collective and group size."""
    if not curves:
        raise ValueError("no curves to fit")
    s = np.concatenate([c.nbytes for c in curves])
    x = np.concatenate([bus_factor(c.collective, c.ranks) * c.nbytes / c.link_bw for c in curves])
    t = np.concatenate([c.seconds for c in curves])
    fitted = fit_points(s, x, t, max_algorithms=max_algorithms)
    return [(sig(a), sig(1.0 / b), upto if np.isinf(upto) else float(round(upto))) for a, b, upto in fitted]


def errors(curve: Curve, algorithms: Fitted) -> np.ndarray:
    """Relative errors (prediction / measured - 1) of ``algorithms`` on every point of ``curve``."""
    pred = predict(algorithms, curve.nbytes, bus_factor(curve.collective, curve.ranks), curve.link_bw)
    return pred / curve.seconds - 1.0


def fragment_entry(algorithms: Fitted) -> list[list[float]]:
    """Algorithms as the profile writes them: ``[latency_us, efficiency, up_to_bytes]``, the last without a bound."""
    return [[sig(lat * 1e6), sig(eff), *([] if np.isinf(upto) else [upto])] for lat, eff, upto in algorithms]


# -- driver entry point --------------------------------------------------------------------


def fit_collectives(system: str, backend: str = "trtllm") -> tuple[dict[str, Any], dict[str, Any]]:
    """Profile fragment (the ``collectives`` section) and report for ``system``.

    The fragment holds NCCL's all-reduce, all-gather, reduce-scatter and all-to-all
    and ``backend``'s custom all-reduce, per measured group size, with
    ``tp_allreduce: backend`` (TP all-reduces inside one NVLink domain use it). The
    report gives MAPE per collective, implementation, size band and group size,
    in-sample and leave-one-system-out within the system's family, and the tables'
    provenance.
    """
    if backend not in ENGINES:
        raise ValueError(f"backend must be one of {', '.join(ENGINES)}, got {backend!r}")
    curves = measured_curves(system, "nccl") + measured_curves(system, backend)
    table: dict[str, dict[str, dict[int, list[list[float]]]]] = {}
    fitted: dict[tuple[str, str, int], Fitted] = {}
    for c in curves:
        algs = fit_curves([c])
        fitted[(c.collective, c.implementation, c.ranks)] = algs
        table.setdefault(c.collective, {}).setdefault(c.implementation, {})[c.ranks] = fragment_entry(algs)
    fragment = {"collectives": {"tp_allreduce": backend, "link_bandwidth_gbs": link_bandwidth(system) / 1e9, **table}}
    rows = [_rows(c, fitted[(c.collective, c.implementation, c.ranks)]) for c in curves]
    report: dict[str, Any] = {
        "system": system,
        "backend": backend,
        "model": "latency + bus_factor * bytes / (efficiency * link bandwidth) of the algorithm the size selects",
        "in_sample": summarise(rows),
        "provenance": _provenance(curves),
    }
    held = holdout_rows(system, backend)
    if held is not None:
        report["held_out"] = summarise(held)
        report["held_out_from"] = [s for s in FAMILIES[family_of(system) or ""] if s != system]
    return fragment, report


def holdout_rows(system: str, backend: str) -> list[dict[str, Any]] | None:
    """Per-curve errors on ``system`` of curves fitted on the other systems of its family (None: no other)."""
    family = family_of(system)
    others = [s for s in FAMILIES.get(family or "", ()) if s != system]
    if not others:
        return None
    train: dict[tuple[str, str, bool, int], list[Curve]] = {}
    for other in others:
        for c in measured_curves(other, "nccl") + measured_curves(other, backend):
            train.setdefault((c.collective, c.implementation, c.multinode, c.ranks), []).append(c)
    rows = []
    for c in measured_curves(system, "nccl") + measured_curves(system, backend):
        pool = train.get((c.collective, c.implementation, c.multinode, c.ranks))
        derived = pool is None
        if pool is None:  # a group the family did not measure elsewhere: the nearest size, ring scaling
            keys = [k for k in train if k[:3] == (c.collective, c.implementation, c.multinode)]
            keys = keys or [k for k in train if k[:2] == (c.collective, c.implementation)]
            if not keys:
                continue
            n = nearest_ranks(sorted({k[3] for k in keys}), c.ranks)
            pool = [x for k in keys if k[3] == n for x in train[k]]
        row = _rows(c, fit_curves(pool))
        row["derived"] = derived
        row["multinode"] = c.multinode
        rows.append(row)
    return rows


def _rows(curve: Curve, algorithms: Fitted) -> dict[str, Any]:
    err = errors(curve, algorithms)
    return {
        "collective": curve.collective,
        "implementation": curve.implementation,
        "ranks": curve.ranks,
        "nbytes": curve.nbytes.tolist(),
        "errors": err.tolist(),
        "algorithms": fragment_entry(algorithms),
    }


def band_of(nbytes: np.ndarray) -> np.ndarray:
    """The :data:`BANDS` label of each message size."""
    return np.where(nbytes <= 1 << 20, BANDS[0], np.where(nbytes < 64 << 20, BANDS[1], BANDS[2]))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MAPE (%) per collective/implementation, per group size and size band, and the worst point."""
    out: dict[str, Any] = {}
    for row in rows:
        key = f"{row['collective']}/{row['implementation']}" + (" (derived)" if row.get("derived") else "")
        entry = out.setdefault(key, {"points": 0, "mape_pct": 0.0, "max_pct": 0.0, "by_ranks": {}, "by_band": {}})
        err = np.abs(np.array(row["errors"]))
        nbytes = np.array(row["nbytes"])
        entry["points"] += len(err)
        entry["_sum"] = entry.get("_sum", 0.0) + float(err.sum())
        entry["max_pct"] = max(entry["max_pct"], round(100 * float(err.max()), 2))
        entry["by_ranks"][str(row["ranks"])] = round(100 * float(err.mean()), 2)
        labels = band_of(nbytes)
        for label in BANDS:
            band = labels == label
            if band.any():
                acc = entry.setdefault("_band", {}).setdefault(label, [0.0, 0])
                acc[0] += float(err[band].sum())
                acc[1] += int(band.sum())
    for entry in out.values():
        entry["mape_pct"] = round(100 * entry.pop("_sum") / max(entry["points"], 1), 2)
        entry["by_band"] = {k: round(100 * s / n, 2) for k, (s, n) in entry.pop("_band", {}).items()}
    return out


def _provenance(curves: list[Curve]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for c in curves:
        seen.setdefault(str(c.provenance.get("table")), c.provenance)
    return list(seen.values())
