"""Fitting a profile to measurements: kernel efficiencies, overheads and link terms, by least squares in log space.

What is fitted (every prediction goes through :mod:`._rows`, i.e. through
``KernelPricer.op_times`` and the collective functions of the evaluators):

* ``matmul`` kernels (QKV, output projection, MLP up/down, LLMCompass GEMMs):
  the compute curve (plateau, half-FLOPs), the memory curve of GEMMs (weights
  streamed at small token counts), their overhead, and the roofline exponent k;
* each memory-bound kind found (``norm``, ``elementwise``: rope, activation,
  residual add; ``embedding``): its memory curve and its overhead;
* per link class (``intra``: a group inside one node; ``inter``: spanning nodes),
  from the clusters built like the platform's nodes: all-reduce efficiency,
  per-step alpha and per-collective base latency; send/recv efficiency and latency.

The loss is the sum of squared ``log(predicted / measured)``: a relative error,
so 5 us kernels and 15 ms GEMMs weigh alike, and symmetric in over/under
prediction. scipy's ``least_squares`` (trust region, bounded, fixed start)
is deterministic: the same files give the same profile. Fitted values are
rounded to 6 significant digits, so a profile reloads equal from its YAML.

Kernel time (``costmodel/_pricing.py``):
``t = (c^k + m^k)^(1/k) + overhead(kind)``, ``c = F / (peak * ce(F))``,
``m = B / (bw * me(B))``, ``ce(w) = p_c w / (w + h_c)``, ``me(w) = p_m w / (w + h_m)``.

Forms tried on GEMMs (explored on the raw GEMM shapes; held-out MAPE over all
token counts / at >= 512 tokens, Llama-2-70b held out; leave-one-model-out gives
the same picture):

* hard ``max(c, m)`` + one overhead: A100 8.2% / 5.9%, H100 11.1% / 9.9%
  (GEMMs near the ridge point are up to 30% slower than the max);
* smooth max, fitted k (kept): A100 6.3% / 5.3%, H100 10.0% / 8.6%;
* + Hill-shaped curves ``w^n / (w^n + h^n)``: no change (6.2% / 5.3%, 9.9% / 8.6%);
* + wave quantisation ``tiles / (waves x SMs)`` (tile 128x128 or 128x256,
  108/132 SMs): worse, 11-23% (cuBLAS changes tiles and split-K with the shape;
  a hard staircase predicts the wrong steps); softened as ``q^0.2-0.35``:
  6.1% / 5.0% and 9.4% / 8.3%, under 0.5 point for GEMM shapes the ops do not
  carry (they would be derived from FLOPs and bytes), so not kept;
* + an epilogue cost per output element: fitted to 0, no gain;
* robust losses (soft-L1, Cauchy) or a relative instead of a log residual: within
  0.5 point either way on GEMMs and on all ops, so the plain log loss is kept.

What remains on H100 is the staircase of cuBLAS's kernel choice (the same GEMM
runs 36 us at 512 tokens and 69 us at 536): no function of FLOPs and bytes
follows it, which bounds a physics model near 8-10% there. Memory-bound ops are
priced per kind, and ``elementwise`` holds rope (~45% of HBM bandwidth), the
gated activation (~50%) and the residual add (~85%): one curve cannot fit all
three (rope -22%, add +54% on H100), the largest remaining error.

Through the cost model (leave one model out; GEMM all tokens / >= 512 tokens / all ops):
A100 CodeLlama-34b 6.5/5.6/17.1, Llama-2-70b 6.3/5.4/17.0, Llama-2-7b 7.4/6.5/18.7,
Meta-Llama-3-8B 6.0/5.3/17.8, phi-2 7.0/6.7/16.1; H100 CodeLlama-34b 9.3/8.0/18.2,
Llama-2-70b 9.6/8.1/18.5, Llama-2-7b 9.5/9.0/19.4, phi-2 9.7/10.3/19.0.

Collectives: the ring formula alone (2(n-1) alpha) misses NCCL's fixed cost per
call (30-40 us at 2, 4 and 8 ranks alike): MAPE 25-28% on intra all-reduce;
with the base latency 10-11% (a group size held out of the fit: A100 9.6-14.4%,
H100 9.7-17.8%).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._platform import Platform
from .._profile import Efficiency, Profile
from ._check import LARGE_TOKENS, collective_report, error_stats, kernel_report, price_collectives
from ._devices import platform_for
from ._fitlinks import fit_links, with_links
from ._lsq import WEAK_DECADES, WEAK_RELATIVE, sig, solve_with_errors, weak
from ._read import Measurements, read_measurements
from ._rows import GEMM_OPS, CollectiveRows, KernelRows, collective_rows, kernel_rows

FORMULA = "t = (c^k + m^k)^(1/k) + overhead(kind); c = F/(peak*ce(F)), m = B/(bw*me(B)), eff(w) = p*w/(w+h)"
LOSS = "sum of squared log(predicted/measured), scipy.optimize.least_squares (trf, bounded, fixed start)"
WEAK_NOTE = (
    f"standard error above {WEAK_DECADES:g} decade (halves, fitted on a log scale) or {WEAK_RELATIVE:.0%} of the "
    "value: the rows fitted barely constrain these (a half far below the sizes measured acts as a fixed latency and "
    "trades off with the overhead), so another machine's fit may differ there while predicting the same times; "
    "compare fits by their predictions (calibration.prediction_gap)"
)
#: Kinds whose curves are not fitted but taken from the fitted ones (kind -> (compute from, memory from)).
DERIVED = {"default": ("matmul", "elementwise"), "moe": ("matmul", "matmul"), "attention": (None, "matmul")}


@dataclass(frozen=True)
class FitResult:
    """The fitted profile and the report ``paratune calibrate fit`` prints."""

    profile: Profile
    report: dict[str, Any]


# -- kernels --------------------------------------------------------------------------------------------


def _with_kernel(base: Profile, kind: str, v: dict[str, float]) -> Profile:
    compute, memory = dict(base.compute), dict(base.memory)
    if "compute_peak" in v:
        compute[kind] = Efficiency(v["compute_peak"], v["compute_half_flops"])
    memory[kind] = Efficiency(v["memory_peak"], v["memory_half_bytes"])
    overheads = {**base.kernel_overheads, kind: v["overhead_us"] * 1e-6}
    exponent = v.get("roofline_exponent", base.roofline_exponent)
    return dataclasses.replace(base, compute=compute, memory=memory, kernel_overheads=overheads,
                               roofline_exponent=exponent)  # fmt: skip


def _fit_kind(rows: KernelRows, kind: str, platform: Platform) -> tuple[dict[str, float], list[str]]:
    """The fitted values of ``kind``'s parameters, and the names of those weakly determined (:mod:`._lsq`)."""
    price = rows.pricer()
    log_y = np.log(rows.seconds)
    if kind == "matmul":
        names = ["compute_peak", "compute_half_flops", "memory_peak", "memory_half_bytes", "overhead_us",
                 "roofline_exponent"]  # fmt: skip
        x0, lo, hi = [0.8, 9.0, 0.8, 6.0, 3.0, 2.0], [0.05, 0.0, 0.05, 0.0, 0.0, 1.0], [1.0, 15.0, 1.0, 15.0, 200, 10]
    else:
        names = ["memory_peak", "memory_half_bytes", "overhead_us"]
        x0, lo, hi = [0.8, 6.0, 3.0], [0.01, 0.0, 0.0], [1.0, 15.0, 200.0]
    logs = {"compute_half_flops", "memory_half_bytes"}

    def values(x: np.ndarray | list) -> dict[str, float]:
        return {n: float(10 ** x[i]) if n in logs else float(x[i]) for i, n in enumerate(names)}

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = _with_kernel(platform.profile, kind, values(x))
        return np.log(price(dataclasses.replace(platform, profile=prof))) - log_y

    x, stderr = solve_with_errors(residuals, x0, lo, hi)
    weakly = [n for n, v, e in zip(names, x, stderr, strict=True) if weak(v, e, log_scale=n in logs)]
    return {k: sig(v) for k, v in values(x).items()}, weakly


def _assemble(base: Profile, fitted: dict[str, dict[str, float]]) -> Profile:
    """``base`` with the fitted kinds, then the kinds derived from them (:data:`DERIVED`)."""
    prof = base
    for kind, v in fitted.items():
        prof = _with_kernel(prof, kind, v)
    compute, memory, overheads = dict(prof.compute), dict(prof.memory), dict(prof.kernel_overheads)
    default_overhead = prof.kernel_overhead_s
    for kind, (c_from, m_from) in DERIVED.items():
        if c_from in fitted:
            compute[kind] = compute[c_from]
        if m_from in fitted:
            memory[kind] = memory[m_from]
            if kind == "default":
                default_overhead = overheads[m_from]
            else:
                overheads[kind] = overheads[m_from]
    return dataclasses.replace(prof, compute=compute, memory=memory, kernel_overheads=overheads,
                               kernel_overhead_s=default_overhead)  # fmt: skip


# -- the fit ----------------------------------------------------------------------------------------------


def fit_profile(
    profiles_dir: Path | str,
    device: str,
    *,
    holdout: Sequence[str] = (),
    name: str | None = None,
    host_overhead_us: float = 0.0,
) -> FitResult:
    """Fit a profile of ``device`` to the measurements under ``profiles_dir``, keeping ``holdout`` models out.

    Args:
        profiles_dir: a Vidur-format folder (``compute/``, ``network/``) or one holding
            ``vidur/`` and ``llmcompass/`` (e.g. ``../shared/data/profiles``).
        device: the device folder (``a100``, ``h100``, ``cpu``, ``cuda``): also the platform
            whose datasheet the efficiencies are fractions of, and whose current profile
            gives what the data cannot fit (attention curves, host links).
        holdout: model folder names left out of the fit; the report and the profile's
            ``holdout_error`` give the error on them.
        name: the profile's name (default ``<device>-fit``).
        host_overhead_us: host time per kernel that the measurements include besides the
            kernel (``Profile.host_overhead_s``): 0 for kernel timings (Vidur, CUDA events);
            for ops timed one by one with a synchronisation, the harness's cost of an
            empty op. It is held fixed, not fitted, and kept in the profile, so the fitted
            overheads are the kernels' own.

    Raises:
        ValueError: unreadable or missing measurements, an unknown device or holdout model.
    """
    meas = read_measurements(profiles_dir, device)
    platform = platform_for(device, meas)
    if host_overhead_us < 0:
        raise ValueError(f"host_overhead_us must be >= 0, got {host_overhead_us}")
    base = dataclasses.replace(platform.profile, host_overhead_s=host_overhead_us * 1e-6)
    platform = dataclasses.replace(platform, profile=base)
    krows, crows = kernel_rows(meas), collective_rows(meas)
    models = sorted(set(krows.model.tolist()))
    unknown = sorted(set(holdout) - set(models))
    if unknown:
        raise ValueError(f"holdout model(s) {', '.join(unknown)} not in {profiles_dir} for {device!r}; "
                         f"models: {', '.join(models)}")  # fmt: skip
    held = np.isin(krows.model, list(holdout))
    train = krows.subset(~held)
    if not len(train) and not len(crows):
        raise ValueError(f"{profiles_dir}: nothing left to fit for {device!r} once {', '.join(holdout)} are held out")
    fitted: dict[str, dict[str, float]] = {}
    weakly: dict[str, list[str]] = {}
    kinds = train.kinds
    for kind in sorted(set(kinds.tolist()), key=lambda k: (k != "matmul", k)):  # matmul first: it sets k
        prof = _assemble(platform.profile, fitted)
        fitted[kind], weak_names = _fit_kind(train.subset(kinds == kind), kind,
                                             dataclasses.replace(platform, profile=prof))  # fmt: skip
        if weak_names:
            weakly[kind] = weak_names
    profile = _assemble(platform.profile, fitted)
    own = crows.subset(crows.on(platform))
    links = fit_links(own, dataclasses.replace(platform, profile=profile))
    profile = with_links(profile, links)
    return _finish(meas, platform, profile, krows, held, train, crows, own, fitted, weakly, links,
                   name or f"{device}-fit")  # fmt: skip


def _finish(
    meas: Measurements,
    platform: Platform,
    profile: Profile,
    krows: KernelRows,
    held: np.ndarray,
    train: KernelRows,
    crows: CollectiveRows,
    own: CollectiveRows,
    fitted: dict[str, dict[str, float]],
    weakly: dict[str, list[str]],
    links: dict[str, dict[str, float]],
    name: str,
) -> FitResult:
    """Errors, ranges, provenance; the profile returned is the one its YAML loads back as."""
    plat = dataclasses.replace(platform, profile=profile)
    fit_err = kernel_report(train, train.pricer()(plat)) if len(train) else {}
    held_rows = krows.subset(held)
    held_err = {}
    if len(held_rows):
        predicted = held_rows.pricer()(plat)
        held_err = kernel_report(held_rows, predicted)
        held_err["classes"].update(_unseen_shapes(held_rows, train, predicted))
    coll_err = collective_report(crows, price_collectives(crows, plat), plat) if len(crows) else {}
    held_models = sorted(set(held_rows.model.tolist()))
    fitted_models = sorted(set(train.model.tolist()))
    holdout_error = {**held_err, "collectives": coll_err} if held_err else {}
    if holdout_error:
        holdout_error["collectives_note"] = "collectives have no model split: errors on the rows fitted"
    record = {
        "tool": "paratune calibrate fit",
        "device": meas.device,
        "platform": platform.name,
        "dtype": meas.dtype,
        "formula": FORMULA,
        "loss": LOSS,
        "split": {"fitted": fitted_models, "held_out": held_models},
        "kernels": fitted,
        "weakly_determined": weakly,
        "weakly_determined_note": WEAK_NOTE,
        "links": links,
        "derived": {k: {"compute": c, "memory": m} for k, (c, m) in DERIVED.items()},
        "not_fitted": "attention compute curve; host, mesh and default links; inter-node terms without rows",
        "kept_from": platform.profile.fit.get("kept_from", platform.profile.name),
        "fit_error": {
            k: v for k, v in fit_err.items() if k in ("rows", "mape", "max_abs_pct_error", "classes", "per_op")
        },
        "files": meas.sources(),
    }
    if platform.profile.host_overhead_s:
        record["host_overhead_us"] = sig(platform.profile.host_overhead_s * 1e6)
        record["host_overhead_note"] = "held fixed: host time per op the timings include, besides the kernel"
    profile = dataclasses.replace(
        profile,
        name=name,
        source=_source(meas, fitted_models, held_models, sorted(set(own.cluster.tolist())), platform.profile.name),
        ranges=_ranges(train, own),
        holdout_error=holdout_error,
        fit=record,
    )
    profile = Profile.from_dict(profile.to_dict(), f"fitted profile {name}")
    on = held_err or fit_err
    report = {
        **on,
        "evaluated_on": f"held-out models: {', '.join(held_models)}" if held_err else "the rows fitted (no hold-out)",
        "profile": name,
        "split": record["split"],
        "fit_error": record["fit_error"],
        "collectives": coll_err,
        "parameters": {"kernels": fitted, "links": links},
        "weakly_determined": weakly,
    }
    return FitResult(profile=profile, report=report)


def _unseen_shapes(held: KernelRows, train: KernelRows, predicted: np.ndarray) -> dict[str, Any]:
    """Errors of the held-out GEMMs whose per-device shape (K x N at that TP degree) no fitted row has.

    Held-out models share some projections with fitted ones (Llama-2-70b and
    CodeLlama-34b have the same attention shapes): these rows say how the fit
    does on shapes it has never seen.
    """

    def key(op: Any, tp: int) -> tuple[float, float, int]:
        return (op.weight_bytes, op.flops / op.output_bytes if op.output_bytes else 0.0, tp)

    gemm = np.isin(held.op_class, GEMM_OPS)
    seen = {key(o, int(t)) for o, t, c in zip(train.ops, train.tp, train.op_class, strict=True) if c in GEMM_OPS}
    unseen = gemm & np.array([key(o, int(t)) not in seen for o, t in zip(held.ops, held.tp, strict=True)])
    if not unseen.any():
        return {}
    big = unseen & (held.tokens >= LARGE_TOKENS)
    return {
        "gemm_unseen_shapes": error_stats(predicted[unseen], held.seconds[unseen]),
        f"gemm_unseen_shapes_ge{LARGE_TOKENS}_tokens": error_stats(predicted[big], held.seconds[big]),
    }


def _ranges(train: KernelRows, own: CollectiveRows) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}

    def span(key: str, values: np.ndarray) -> None:
        if values.size:
            out[key] = (sig(float(values.min())), sig(float(values.max())))

    if len(train):
        flops, nbytes = train.work_per_device()
        span("flops_per_device", flops[flops > 0])
        span("bytes_per_device", nbytes[nbytes > 0])
        span("tokens", train.tokens.astype(float))
        span("tp", train.tp.astype(float))
    span("message_bytes", own.size_bytes)
    span("group_size", own.workers.astype(float))
    return out


def _licence(folder: Path) -> str:
    lic = folder / "LICENSE"
    if lic.is_file():
        first = next((ln.strip() for ln in lic.read_text().splitlines() if ln.strip()), "")
        return first or "LICENSE file"
    return "no LICENSE file"


def _source(meas: Measurements, fitted: list[str], held: list[str], clusters: list[str], base: str) -> str:
    """Which files (relative to the folder given), under which licence, fitted which models."""

    def rel(path: Path) -> str:
        return str(path.relative_to(meas.root)) if path.is_relative_to(meas.root) else path.name

    parts = []
    if meas.compute or meas.network:
        top = meas.compute[0].path.parents[4] if meas.compute else meas.network[0].path.parents[2]
        date = f", measured {meas.meta['date']}" if meas.meta.get("date") else ""
        vidur_models = [m for m in fitted if m != "llmcompass"]
        others = sorted({f.cluster for f in meas.network} - set(clusters))
        parts.append(
            f"Vidur-format profiles {rel(top) if top != meas.root else '.'}/ ({_licence(top)}{date}): "
            f"compute/{meas.device}/ models {', '.join(vidur_models) or 'none'}"
            + (f"; network/{', '.join(clusters)}" if clusters else "")
            + (f" (checked, not fitted: {', '.join(others)})" if others else "")
        )
    for g in meas.gemms:
        parts.append(f"LLMCompass {rel(g.path)} ({_licence(g.path.parent)})")
    held_txt = f" Held out: {', '.join(held)}." if held else ""
    kept = "" if meas.compute else f" Kinds and links without rows here are kept from {base}."
    return "Fitted by `paratune calibrate fit` to " + "; ".join(parts) + "." + held_txt + kept
