"""``paratune calibrate fit --from aiconfigurator``: a profile fitted to a system's measured tables.

What comes from where:

* GEMMs (bf16 and fp8): the shape-aware model (:mod:`._aic_gemm`) fitted on the system's
  ``gemm_perf`` table; its roofline base also becomes the ``matmul`` curves that price
  GEMMs whose shape is unknown (backward GEMMs, imported graphs without weights).
* Attention, prefill and decode, bf16 and fp8 KV cache: the terms fitted on the context
  and generation attention tables (:mod:`._aic_attention`, the ``attention_phases`` section).
* MoE expert GEMMs, bf16 and fp8: the grouped-GEMM terms fitted on the ``moe_perf`` table
  (:mod:`._aic_moe`, the ``moe`` section); a system without MoE rows gets none (the report
  says why) and keeps the template's ``moe`` curves. SGLang's own MoE kernel (Triton fused
  MoE): the same terms fitted on its ``sglang`` table (``moe_engines.sglang``, :func:`fit_moe_engines`).
* Collectives inside the NVLink domain: NCCL's and the engine's custom all-reduce, by
  algorithm and size (:mod:`._aic_comm`, the ``collectives`` section).
* The ops the tables do not measure (norms, elementwise, embeddings) and the links keep
  the curves of a template profile (``h100-vidur``, fitted on Vidur's H100 tables): they
  are fractions of the datasheet bandwidths, which is what carries across GPUs.
* Held-out error: the GEMM model of a *sibling* system of the same architecture (H100 for
  H200, GB200 for B200, ...) predicting this system's table, so the error recorded is that
  of a system the fit never saw. Systems without a sibling record their in-sample error
  and say so (``holdout_error.classes.gemm.method``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._profile import Efficiency, Profile, load_profile
from ._aic_attention import fit_attention_tables
from ._aic_comm import fit_collectives
from ._aic_gemm import GEMM_DTYPES, GemmRows, fit_gemm, gemm_errors, gemm_rows
from ._aic_moe import fit_moe, fit_moe_engines
from ._aiconfigurator import LICENCE, package_version
from ._fit import FitResult

TEMPLATE = "h100-vidur"
#: A system of the same architecture (same kernels, other datasheet) for the held-out check.
SIBLINGS = {
    "h100_sxm": "h200_sxm",
    "h200_sxm": "h100_sxm",
    "b200_sxm": "gb200",
    "gb200": "b200_sxm",
    "b300_sxm": "gb300",
    "gb300": "b300_sxm",
}
#: paratune's name for a system's GPU (the fitted profile is ``<gpu>-aic``).
GPU_NAMES = {
    "a100_sxm": "a100",
    "h100_sxm": "h100",
    "h200_sxm": "h200",
    "b200_sxm": "b200",
    "b300_sxm": "b300",
    "gb200": "gb200",
    "gb300": "gb300",
    "l40s": "l40s",
    "rtx_pro_6000_server": "rtx-pro-6000",
}


def default_name(system: str) -> str:
    """``<gpu>-aic``: the name a profile fitted on ``system`` is committed under."""
    return f"{GPU_NAMES.get(system, system.replace('_', '-'))}-aic"


def fit_from_aiconfigurator(
    system: str, *, backend: str = "trtllm", version: str | None = None, name: str | None = None
) -> FitResult:
    """A profile of ``system`` fitted to AIConfigurator's measured tables, and the fit's report."""
    rows: dict[str, GemmRows] = {}
    for dtype in GEMM_DTYPES:
        try:
            rows[dtype] = gemm_rows(system, dtype, backend, version)
        except ValueError:
            if dtype == "bf16":
                raise
    models = {dtype: fit_gemm([r]) for dtype, r in rows.items()}
    report: dict[str, Any] = {"system": system, "backend": backend, "gemm": {}}
    for dtype, model in models.items():
        report["gemm"][dtype] = {"in_sample": gemm_errors(model, rows[dtype]), "table": rows[dtype].provenance["table"]}
    held = _sibling_errors(system, backend, rows)
    for dtype, errors in held.items():
        report["gemm"][dtype]["held_out"] = errors
    template = load_profile(TEMPLATE)
    bf16 = models["bf16"]
    compute = {**template.compute, "matmul": Efficiency(bf16.compute_peak, bf16.compute_half)}
    memory = {**template.memory, "matmul": Efficiency(bf16.memory_peak, bf16.memory_half)}
    overheads = {**template.kernel_overheads, "matmul": bf16.overhead_s}
    first = rows["bf16"]
    provenance = {
        **{k: v for k, v in first.provenance.items() if k not in ("table", "rows", "dropped_rows")},
        "package_version": package_version(),
        "licence": LICENCE,
        "tables": {dtype: r.provenance["table"] for dtype, r in rows.items()},
        "peaks": {"bf16_flops": first.peak, "memory_bytes_per_s": first.bw},
    }
    collectives, comm_report = fit_collectives(system, backend)
    report["collectives"] = {k: comm_report[k] for k in ("in_sample", "held_out", "held_out_from") if k in comm_report}
    gemm_class = held.get("bf16") or report["gemm"]["bf16"]["in_sample"]
    holdout = dict(template.holdout_error)
    holdout["classes"] = {
        **holdout.get("classes", {}),
        "gemm": {
            "rows": gemm_class["rows"],
            "mape": gemm_class["mape"],
            "method": f"fitted on {SIBLINGS[system]}" if system in SIBLINGS else "in-sample: no sibling system",
        },
    }
    holdout["collectives"] = {"aiconfigurator": _collective_errors(comm_report, backend)}
    source = (
        f"Fitted by `paratune calibrate fit --from aiconfigurator --system {system}` to NVIDIA AIConfigurator's "
        f"measured tables ({provenance['package']} {provenance['package_version']}, {LICENCE}; engine {backend} "
        f"{first.provenance['engine_version']}). Norms, elementwise ops and links: template {TEMPLATE}."
    )
    profile = dataclasses.replace(
        template,
        name=name or default_name(system),
        source=source,
        compute=compute,
        memory=memory,
        kernel_overheads=overheads,
        gemm=models,
        ranges={**template.ranges, **_ranges(list(rows.values()))},
        holdout_error=holdout,
        fit={"from": "aiconfigurator", "system": system, "provenance": provenance},
    )
    attention, report["attention"] = fit_attention_tables(system, backend, version)
    # The MoE tables' engine versions differ from the GEMM ones: fit_moe picks the richest.
    moe, report["moe"] = fit_moe(system, backend)
    engines, report["moe_engines"] = fit_moe_engines(system)
    data = _merged(_merged(_merged(_merged(profile.to_dict(), collectives), attention), moe), engines)
    return FitResult(Profile.from_dict(data, f"fit of {system}"), report)


def _merged(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``fragment`` merged in: mappings merged key by key, other values replaced."""
    out = dict(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _collective_errors(comm_report: dict[str, Any], backend: str) -> dict[str, Any]:
    """The TP all-reduce's error in the shape :mod:`.._trust` reads (held out where a sibling exists)."""
    errors = comm_report.get("held_out") or comm_report["in_sample"]
    row = errors.get(f"all_reduce/{backend}") or errors["all_reduce/nccl"]
    return {"all_reduce.intra": {"rows": row["points"], "mape": row["mape_pct"], "max_abs_pct_error": row["max_pct"]}}


def _sibling_errors(system: str, backend: str, rows: dict[str, GemmRows]) -> dict[str, dict[str, Any]]:
    """Errors on this system's rows of the GEMM models fitted on its sibling (none without one)."""
    sibling = SIBLINGS.get(system)
    out: dict[str, dict[str, Any]] = {}
    if sibling is None:
        return out
    for dtype, own in rows.items():
        try:
            other = gemm_rows(sibling, dtype, backend)
        except ValueError:
            continue
        out[dtype] = {**gemm_errors(fit_gemm([other]), own), "fitted_on": sibling}
    return out


def _ranges(rows: list[GemmRows]) -> dict[str, tuple[float, float]]:
    """The span of the GEMM rows, as the profile's calibrated range of kernels."""
    flops = [r.flops for r in rows]
    nbytes = [r.nbytes for r in rows]
    return {
        "flops_per_device": (float(min(f.min() for f in flops)), float(max(f.max() for f in flops))),
        "bytes_per_device": (float(min(b.min() for b in nbytes)), float(max(b.max() for b in nbytes))),
        "tokens": (float(min(r.m.min() for r in rows)), float(max(r.m.max() for r in rows))),
    }
