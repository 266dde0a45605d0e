"""Fit the grouped-GEMM MoE model (:mod:`paratune.costmodel._moe`) to AIConfigurator's ``moe_perf`` tables.

What a row is: one MoE block timed in TensorRT-LLM (``seconds``: both expert GEMMs, the
activation, the routing's permute and finalize) for ``num_tokens`` tokens routed to
``topk`` of ``num_experts`` experts of ``hidden_size`` x ``inter_size``, with the
intermediate size split over ``moe_tp_size`` ranks and the experts over ``moe_ep_size``.

What is fitted: rows with ``moe_ep_size`` 1 (paratune has no expert parallelism yet; TP
gives ``moe_tp_size``), the ``balanced`` token distribution, the gated (SwiGLU, kernel
``moe_torch_flow_cutlass`` / ``moe_torch_flow``) and non-gated (``moe_torch_flow_nongated``)
kernels, per dtype (``bfloat16`` -> bf16, ``fp8`` -> fp8; block-scaled fp8, fp4 and
mixed-precision kernels are other kernels and are left out). Each row becomes the ops
paratune's graph builds for that block (``graphs/_builder.py``: ``moe_up``, ``moe_act``,
``moe_down``, ``shard="experts"``), priced through the same features as
``KernelPricer.op_times``; the balanced rows touch ``min(E, tokens x topk)`` experts.
The fit is least squares on log(predicted / measured) with a soft-L1 loss: a few groups of
rows in the tables are 3-5x slower than their neighbours at the next TP degree (e.g. H200
4096 x 2048, 256 experts at TP 8), and a plain fit would bend every other row towards them.

The ``power_law_*`` rows are a check, priced as paratune prices a graph (the experts a
uniform routing is expected to touch, ``E (1 - (1 - topk/E)^T)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...graphs import Op
from .._moe import MoeFeatures, MoeModel, moe_features
from .._pricing import OpTable
from ._aic_gemm import system_peaks
from ._aiconfigurator import DISTRIBUTION, LICENCE, Table, backends, package_version, read_table, tables, versions

#: Kernels fitted -> gated (the up GEMM has 2 x inter outputs). TensorRT-LLM's in the ``trtllm`` tables;
#: SGLang's default (Triton fused MoE) in the ``sglang`` ones, fitted as that engine's own terms.
KERNELS = {
    "moe_torch_flow_cutlass": True,
    "moe_torch_flow": True,
    "moe_torch_flow_nongated": False,
    "sglang_fused_moe_triton": True,
}
#: Serving engine -> the AIConfigurator backend whose ``moe_perf`` table gives its own terms (``moe_engines``).
#: vLLM is not there yet: its tables time a different kernel per system (Triton, FlashInfer), not one default.
ENGINE_BACKENDS = {"sglang": "sglang"}
#: paratune dtype -> (the table's ``moe_dtype``, bytes per element).
MOE_DTYPES = {"bf16": ("bfloat16", 2), "fp8": ("fp8", 1)}
#: Fewest rows a dtype needs to be fitted.
MIN_ROWS = 50
#: Families for the leave-one-system-out check: same kernels, other datasheets.
FAMILIES = {"hopper": ("h100_sxm", "h200_sxm"), "blackwell": ("b200_sxm", "b300_sxm", "gb200", "gb300")}
_COLUMNS = (
    "kernel_source",
    "moe_dtype",
    "num_tokens",
    "hidden_size",
    "inter_size",
    "topk",
    "num_experts",
    "moe_tp_size",
    "moe_ep_size",
    "distribution",
)


def block_ops(
    tokens: float, hidden: int, inter: int, topk: int, experts: int, *, gated: bool, elem_bytes: int, touched: float
) -> list[Op]:
    """The expert ops paratune's graph builds for one MoE block (``graphs/_builder.py``), ``touched`` experts read."""
    routed = tokens * topk
    up_n = (2 if gated else 1) * inter

    def gemm(name: str, k: int, n: int, out: float, allreduce: float) -> Op:
        return Op(
            name=name,
            kind="moe",
            flops=2.0 * routed * k * n,
            bytes=touched * k * n * elem_bytes + routed * (k + n) * elem_bytes,
            weight_bytes=touched * k * n * elem_bytes,
            param_bytes=experts * k * n * elem_bytes,
            output_bytes=out,
            allreduce_bytes=allreduce,
            shard="experts",
            gemm_k=k,
            gemm_n=n,
        )

    act = Op(
        name="moe_act",
        kind="elementwise",
        bytes=(routed * up_n + routed * inter) * elem_bytes,
        output_bytes=routed * inter * elem_bytes,
        shard="experts",
    )
    combined = tokens * hidden * elem_bytes
    up = gemm("moe_up", hidden, up_n, routed * up_n * elem_bytes, 0.0)
    return [up, act, gemm("moe_down", inter, hidden, combined, combined)]


@dataclass(frozen=True)
class MoeRows:
    """Measured MoE blocks of one dtype on one system, as the features of their two expert GEMMs."""

    system: str
    dtype: str
    up: MoeFeatures
    down: MoeFeatures
    seconds: np.ndarray
    tokens: np.ndarray
    tp: np.ndarray
    shape: list[str]
    peak: float
    bw: float
    provenance: dict[str, Any]

    def __len__(self) -> int:
        return len(self.seconds)

    def predict(self, model: MoeModel) -> np.ndarray:
        """Seconds of each block: the two expert GEMMs (the activation is fused)."""
        return model.times(self.up, self.peak, self.bw) + model.times(self.down, self.peak, self.bw)


def moe_version(system: str, backend: str = "trtllm") -> str | None:
    """The version of ``backend`` whose ``moe_perf`` table has the most fittable rows (None: no table).

    Versions measure different model shapes (TensorRT-LLM 1.3.0rc23 only Nemotron-style
    non-gated blocks; rc20 about 15 gated and non-gated shapes in bf16 and fp8), so the newest
    is not always the one to fit.
    """
    if backend not in backends(system, "moe"):
        return None
    best, count = None, 0
    for v in versions(system, "moe", backend):
        if "moe_perf" not in tables(system, "moe", backend, v):
            continue
        t = _fittable(read_table(system, "moe", "moe_perf", backend, v, _COLUMNS))
        n = int(np.count_nonzero(t["distribution"] == "balanced"))
        if n > count:
            best, count = v, n
    return best


def _fittable(t: Table) -> Table:
    known = np.isin(t["kernel_source"], list(KERNELS)) & np.isin(t["moe_dtype"], [v[0] for v in MOE_DTYPES.values()])
    return t.where(known & (t["moe_ep_size"] == 1))


def moe_rows(
    system: str, dtype: str = "bf16", backend: str = "trtllm", version: str | None = None, *, balanced: bool = True
) -> MoeRows:
    """The measured MoE blocks of ``dtype`` (balanced, or the power-law rows with ``balanced`` False)."""
    if dtype not in MOE_DTYPES:
        raise ValueError(f"MoE dtype {dtype!r} is not fitted; allowed: {', '.join(MOE_DTYPES)}")
    version = version or moe_version(system, backend)
    if version is None:
        raise ValueError(f"no moe_perf table of {backend} for {system}")
    name, elem = MOE_DTYPES[dtype]
    t = _fittable(read_table(system, "moe", "moe_perf", backend, version, _COLUMNS))
    dist = t["distribution"].astype(str)
    t = t.where((t["moe_dtype"] == name) & ((dist == "balanced") if balanced else np.char.startswith(dist, "power")))
    if not len(t):
        raise ValueError(f"{t.provenance['table']}: no {'balanced' if balanced else 'power-law'} rows of {name}")
    ops: list[Op] = []
    shape = []
    for i in range(len(t)):
        tokens, topk, experts = float(t["num_tokens"][i]), int(t["topk"][i]), int(t["num_experts"][i])
        routed = tokens * topk
        touched = min(experts, routed) if balanced else experts * (1.0 - (1.0 - topk / experts) ** tokens)
        gated = KERNELS[str(t["kernel_source"][i])]
        h, inter = int(t["hidden_size"][i]), int(t["inter_size"][i])
        block = block_ops(tokens, h, inter, topk, experts, gated=gated, elem_bytes=elem, touched=touched)
        ops += [block[0], block[2]]
        shape.append(f"{'gated' if gated else 'nongated'} h{h} i{inter} e{experts} k{topk}")
    tp = np.repeat(t["moe_tp_size"].astype(float), 2)
    table = OpTable.from_ops(ops)
    gemm_k, gemm_n = (np.array([getattr(o, name) for o in ops], dtype=float) for name in ("gemm_k", "gemm_n"))
    # Each row has its own TP degree: the per-device split broadcasts over the array.
    flops, nbytes = table.per_device(tp)  # type: ignore[arg-type]
    split = table.split(tp)  # type: ignore[arg-type]
    x = moe_features(flops, nbytes, table.weight_bytes, gemm_k, gemm_n, table.allreduce_bytes > 0, split, elem)
    peaks = system_peaks(system)
    if dtype not in peaks:
        raise ValueError(f"the spec of {system} gives no {dtype} peak")
    return MoeRows(
        system=system,
        dtype=dtype,
        up=_take(x, slice(0, None, 2)),
        down=_take(x, slice(1, None, 2)),
        seconds=t["seconds"],
        tokens=t["num_tokens"].astype(float),
        tp=t["moe_tp_size"].astype(float),
        shape=shape,
        peak=peaks[dtype],
        bw=peaks["bw"],
        provenance=t.provenance,
    )


def _take(x: MoeFeatures, rows: slice) -> MoeFeatures:
    return MoeFeatures(x.flops[rows], x.nbytes[rows], x.tokens_per_expert[rows], x.split_dim[rows], x.token_bytes[rows])


def fit_model(rows: list[MoeRows]) -> MoeModel:
    """Terms fitted on the rows of one or more systems (each priced against its own peaks)."""
    from scipy.optimize import least_squares

    y = np.concatenate([r.seconds for r in rows])

    def unpack(z: np.ndarray) -> MoeModel:
        cp, ht, hs, mp, ex, ov, tok = np.exp(z)
        return MoeModel(min(cp, 1.0), ht, hs, min(mp, 1.0), 1.0 + ex, ov, tok)

    def residuals(z: np.ndarray) -> np.ndarray:
        model = unpack(z)
        return np.log(np.concatenate([r.predict(model) for r in rows]) / y)

    lower = np.log([1e-3, 1e-2, 1e-2, 1e-3, 1e-3, 1e-8, 1e-19])
    upper = np.log([1.0, 1e4, 1e5, 1.0, 20.0, 1e-3, 1e-9])
    z0 = np.log([0.7, 32.0, 64.0, 0.8, 1.0, 1e-5, 1e-13])
    best = least_squares(residuals, z0, bounds=(lower, upper), loss="soft_l1", f_scale=0.1)
    m = unpack(best.x)
    return MoeModel(*(float(f"{v:.6g}") for v in (m.compute_peak, m.half_tokens, m.half_split, m.memory_peak,
                                                    m.exponent, m.overhead_s, m.token_s_per_byte)))  # fmt: skip


def moe_errors(model: MoeModel, rows: MoeRows) -> dict[str, Any]:
    """MAPE, median, 90th percentile and worst |error| (percent) of ``model`` on ``rows``, and per token range."""
    ratio = rows.predict(model) / rows.seconds
    err = np.abs(ratio - 1.0) * 100.0
    out: dict[str, Any] = {
        "rows": len(rows),
        "mape": round(float(err.mean()), 2),
        "median_ape": round(float(np.median(err)), 2),
        "p90_ape": round(float(np.percentile(err, 90)), 2),
        "max_ape": round(float(err.max()), 1),
        "median_ratio": round(float(np.median(ratio)), 3),
        "by_tokens": {},
    }
    for lo, hi in ((1, 16), (16, 256), (256, 2048), (2048, None)):
        mask = (rows.tokens >= lo) & (rows.tokens < (hi or np.inf))
        if mask.any():
            out["by_tokens"][f"{lo}-{hi - 1}" if hi else f">={lo}"] = round(float(err[mask].mean()), 2)
    return out


def fit_moe(system: str, backend: str = "trtllm", version: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MoE profile fragment of ``system`` and its report (an empty fragment when it has no MoE rows).

    The fragment holds ``moe`` (terms per dtype), a ``fit.moe`` record (tables, in-sample MAPE)
    and, when ``system`` is in one of :data:`FAMILIES`, ``holdout_error.per_op.moe_<dtype>``:
    the errors on ``system``'s rows of terms fitted on the family's other systems only.
    """
    version = version or moe_version(system, backend)
    report: dict[str, Any] = {"system": system, "backend": backend, "version": version, "dtypes": {}}
    if version is None:
        report["skipped"] = (
            f"no moe_perf rows of {backend} for {system} at expert parallelism 1 with a fitted kernel "
            f"({', '.join(_backend_kernels(backend))}; bfloat16 or fp8)"
        )
        return {}, report
    family = next((f for f in FAMILIES.values() if system in f), ())
    section: dict[str, Any] = {}
    held_out: dict[str, Any] = {}
    for dtype in MOE_DTYPES:
        try:
            rows = moe_rows(system, dtype, backend, version)
        except ValueError as exc:
            report["dtypes"][dtype] = {"skipped": str(exc)}
            continue
        if len(rows) < MIN_ROWS:
            report["dtypes"][dtype] = {"skipped": f"{len(rows)} balanced rows; at least {MIN_ROWS} are needed"}
            continue
        model = fit_model([rows])
        section[dtype] = model.to_dict()
        entry: dict[str, Any] = {"table": rows.provenance["table"], "in_sample": moe_errors(model, rows)}
        entry["shapes"] = sorted(set(rows.shape))
        try:
            entry["power_law"] = moe_errors(model, moe_rows(system, dtype, backend, version, balanced=False))
        except ValueError as exc:  # a table without power-law rows: the check is left out, and said so
            entry["power_law"] = {"skipped": str(exc)}
        others = [r for r in (_rows_or_none(s, dtype, backend) for s in family if s != system) if r is not None]
        if others:
            entry["held_out"] = {**moe_errors(fit_model(others), rows), "fitted_on": [r.system for r in others]}
            held_out[f"moe_{dtype}"] = {k: entry["held_out"][k] for k in ("rows", "mape", "median_ape", "fitted_on")}
        report["dtypes"][dtype] = entry
    if not section:
        report["skipped"] = "no dtype had enough rows of the fitted kernels at expert parallelism 1"
        return {}, report
    record = {
        "method": "grouped-GEMM terms, soft-L1 least squares on log(predicted / measured), balanced rows, EP 1",
        "tables": sorted({v["table"] for v in report["dtypes"].values() if "table" in v}),
        "package": DISTRIBUTION,
        "package_version": package_version(),
        "licence": LICENCE,
        "in_sample_mape": {k: v["in_sample"]["mape"] for k, v in report["dtypes"].items() if "in_sample" in v},
    }
    fragment: dict[str, Any] = {"moe": section, "fit": {"moe": record}}
    if held_out:
        fragment["holdout_error"] = {"per_op": held_out}
    return fragment, report


def _backend_kernels(backend: str) -> list[str]:
    """The fitted kernels a ``backend``'s table may hold (TensorRT-LLM's are not prefixed by its name)."""
    own = [k for k in KERNELS if k.startswith(backend)]
    return own or [k for k in KERNELS if not k.startswith(tuple(ENGINE_BACKENDS.values()))]


def fit_moe_engines(system: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``moe_engines`` fragment of ``system``: each engine of :data:`ENGINE_BACKENDS` fitted on its own table.

    Why: the engines run different MoE kernels. On B200, Mixtral-8x7B's block at TP 2 and
    929 tokens measures 0.36 ms in TensorRT-LLM (what ``moe`` is fitted on) and 0.78 ms with
    SGLang's Triton fused MoE. The engine's held-out errors go into the ``fit`` record, not
    ``holdout_error`` (which holds those of the terms every other engine is priced with).
    """
    section: dict[str, Any] = {}
    record: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for engine, backend in ENGINE_BACKENDS.items():
        fragment, report[engine] = fit_moe(system, backend)
        if not fragment:
            continue
        section[engine] = fragment["moe"]
        record[engine] = {
            **fragment["fit"]["moe"],
            "kernel": _backend_kernels(backend),
            "held_out": {
                d: {k: e["held_out"][k] for k in ("rows", "mape", "median_ape", "fitted_on")}
                for d, e in report[engine]["dtypes"].items()
                if "held_out" in e
            },
        }
    if not section:
        return {}, report
    return {"moe_engines": section, "fit": {"moe_engines": record}}, report


def _rows_or_none(system: str, dtype: str, backend: str) -> MoeRows | None:
    """The balanced rows of another system, or None when it has none to fit."""
    try:
        rows = moe_rows(system, dtype, backend)
    except ValueError:
        return None
    return rows if len(rows) >= MIN_ROWS else None


def leave_one_out(family: tuple[str, ...], dtype: str = "bf16", backend: str = "trtllm") -> dict[str, Any]:
    """Each system of ``family`` predicted by the terms fitted on the others (errors per held-out system)."""
    rows = {s: moe_rows(s, dtype, backend) for s in family}
    out: dict[str, Any] = {}
    for held in family:
        model = fit_model([r for s, r in rows.items() if s != held])
        out[held] = {**moe_errors(model, rows[held]), "fitted_on": [s for s in family if s != held]}
    return out
