"""Attention fitted on AIConfigurator's measured context (prefill) and generation (decode) kernels.

Why: the profiles' ``attention`` curve was set by hand and prices the engines'
attention 30-39% too fast. The package ``aiconfigurator-core`` ships, per system and
engine, ``context_attention_perf`` and ``generation_attention_perf`` tables: the
fused kernels the engines run (TensorRT-LLM's FMHA and XQA, vLLM / SGLang's flash and
paged kernels), timed over batch, sequence length, heads, KV heads and head size.

Each measured row becomes the FLOPs, bytes and output bytes of the zoo's
``L<i>.attention`` op for that shape on one device (:func:`attention_work`, the same
counts ``graphs._builder`` writes, causal prefill FLOPs halved as
``OpTable.per_device`` does), so the fitted terms are the ones the cost model applies.
Per phase the model is the sum
``t = overhead + F / (peak * compute_peak) + B / (bw * memory_peak) + output_bytes * rate
+ sequences * (kv_bytes_per_token * rate' + q_bytes_per_token * rate'')``
(:class:`~.._profile.AttentionPhase`), linear in its six parameters (five for decode),
fitted by least absolute relative error (bounded, reweighted least squares; fractions
of the datasheet peaks of ``systems/<system>.yaml`` at most 1). That time is then multiplied
by ``exp(r)``, a log residual on a grid over (context, sequences x KV elements, query heads
per KV head) (:class:`~.._attention.AttentionResidual`), fitted by damped least squares on
the log ratio of the measured times to the terms': the kernels' steps (thread blocks per
sequence and KV head, context splits, tiles) the smooth terms miss.

Held-out checks fit on the other systems of the same SM version (:data:`FAMILIES`):
B300 / GB300 (sm_103) run prefill 8-12% faster than B200 / GB200 (sm_100) at the same
datasheet peaks, which no datasheet number says.

Rows read: full attention (``window_size`` 0), head sizes 64 and 128, heads a multiple
of KV heads. The fit uses bf16 attention with a bf16 KV cache, head size 128 and at most
``FIT_MAX_GQA`` query heads per KV head; the other rows are checked, not fitted (with
``kv_dtype: fp8`` the graph reads half the KV bytes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._attention import MAX_ABS, AttentionResidual
from .._pricing import attention_stream
from .._profile import AttentionPhase
from ._aiconfigurator import DISTRIBUTION, LICENCE, backends, package_version, read_table, system_spec

CONTEXT, GENERATION = "context_attention_perf", "generation_attention_perf"
PHASE_TABLE = {"prefill": CONTEXT, "decode": GENERATION}
HEAD_DIMS = (64, 128)
#: Families of systems for leave-one-system-out checks (each held out, fitted on the others): one SM
#: version each (the systems' ``sm_version``: 90, 100, 103), the kernels and their steps are the same.
FAMILIES = (("h100_sxm", "h200_sxm"), ("b200_sxm", "gb200"), ("b300_sxm", "gb300"))
METHOD = (
    "least absolute relative error (reweighted bounded lsq_linear), then a log residual over "
    "(kv_len, kv_elems, gqa) (damped lsqr); bf16, head size 128, gqa <= 16, per phase"
)
IRLS_ROUNDS = 8
#: Damping of the residual's least squares (log units): cells few rows touch stay near 0.
RESIDUAL_DAMP = 0.1
#: log2 of the largest query heads per KV head on the residual's grid (the rows fitted: at most 16).
RESIDUAL_MAX_LOG2_GQA = 4
#: Query heads per KV head of the rows fitted: the models served have 1-16 (Llama-3 405B, Qwen3:
#: 16); beyond, generation runs another kernel, about 1.8x slower than these terms give.
FIT_MAX_GQA = 16
#: Head size of the rows fitted (Llama, Qwen, Mistral, Mixtral): head size 64 runs the FMHA about
#: 20% below these terms; the cost model does not see the head size, so it is checked, not fitted.
FIT_HEAD_DIM = 128


def attention_work(
    phase: str,
    batch: np.ndarray,
    q_len: np.ndarray,
    kv_len: np.ndarray,
    heads: np.ndarray,
    kv_heads: np.ndarray,
    head_dim: np.ndarray,
    *,
    dtype_bytes: float = 2.0,
    kv_dtype_bytes: Any = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(priced FLOPs, bytes, output bytes, sequences x KV and x query bytes per token) of the zoo's op on one device.

    ``heads`` and ``kv_heads`` are those on the device. Prefill (``q_len`` = ``kv_len`` =
    prompt) reads Q, K and V of the prompt and writes the output; its causal kernel runs
    half the counted ``4 * batch * q_len * kv_len * hidden`` FLOPs. Decode (``q_len`` 1)
    reads the KV cache of ``kv_len`` tokens (``kv_dtype_bytes`` per element) plus Q and
    writes the output.
    """
    hidden, kv_dim = heads * head_dim, kv_heads * head_dim
    tokens = batch * q_len
    kv_per_token = 2.0 * kv_dim * kv_dtype_bytes
    flops = 4.0 * batch * q_len * kv_len * hidden
    out = tokens * hidden * dtype_bytes
    if phase == "prefill":
        return 0.5 * flops, tokens * kv_per_token + 2.0 * out, out, batch * kv_per_token, out / q_len
    if phase == "decode":
        return flops, batch * kv_len * kv_per_token + 2.0 * out, out, batch * kv_per_token, out / q_len
    raise ValueError(f"phase {phase!r}: attention is fitted for prefill or decode")


@dataclass(frozen=True)
class AttentionRows:
    """Measured rows of one phase on one system, as the cost model counts their work."""

    system: str
    phase: str
    flops: np.ndarray
    bytes: np.ndarray
    output_bytes: np.ndarray
    sequence_kv_bytes: np.ndarray  # sequences x KV bytes per token
    sequence_q_bytes: np.ndarray  # sequences x query (output) bytes per token
    seconds: np.ndarray
    fp8_kv: np.ndarray  # bool
    gqa: np.ndarray  # query heads per KV head
    head_dim: np.ndarray
    kv_len: np.ndarray  # tokens each query attends to
    kv_elems: np.ndarray  # sequences x KV elements per token (K and V)
    peak: float
    bw: float
    provenance: dict[str, Any]

    def __len__(self) -> int:
        return len(self.seconds)

    def where(self, mask: np.ndarray) -> AttentionRows:
        names = ("flops", "bytes", "output_bytes", "sequence_kv_bytes", "sequence_q_bytes", "seconds", "fp8_kv", "gqa",
                 "head_dim", "kv_len", "kv_elems")  # fmt: skip
        cols = {k: getattr(self, k)[mask] for k in names}
        return AttentionRows(self.system, self.phase, peak=self.peak, bw=self.bw, provenance=self.provenance, **cols)

    def design(self) -> np.ndarray:
        """Columns multiplying (overhead, 1/compute_peak, 1/memory_peak, s per output byte, s per sequence KV byte,
        s per sequence query byte); decode has one query token, so the last equals the output column and is left out.
        """
        ones = np.ones(len(self))
        cols = [ones, self.flops / self.peak, self.bytes / self.bw, self.output_bytes, self.sequence_kv_bytes]
        if self.phase == "prefill":
            cols.append(self.sequence_q_bytes)
        return np.stack(cols, axis=1)

    def predict(self, terms: AttentionPhase) -> np.ndarray:
        """Seconds the cost model gives these rows with ``terms`` (the formula of ``KernelPricer``)."""
        memory = self.bytes / (self.bw * terms.memory_peak)
        stream = attention_stream(memory, self.sequence_kv_bytes * terms.sequence_s_per_kv_byte, terms.join_exponent)
        base = (
            terms.overhead_s
            + self.flops / (self.peak * terms.compute_peak)
            + stream
            + self.output_bytes * terms.output_s_per_byte
            + self.sequence_q_bytes * terms.sequence_s_per_q_byte
        )
        if terms.residual is None:
            return base
        return base * np.exp(terms.residual.correction(*self.features()))

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kv_len, kv_elems, gqa) of the rows: the residual's axes (``row_features`` gives the same from an op)."""
        return self.kv_len, self.kv_elems, self.gqa


def read_rows(system: str, phase: str, backend: str = "trtllm", version: str | None = None) -> AttentionRows:
    """The measured rows of ``phase`` (``prefill``: context table, ``decode``: generation table)."""
    if phase not in PHASE_TABLE:
        raise ValueError(f"phase {phase!r}: attention is fitted for prefill or decode")
    t = read_table(system, "attention", PHASE_TABLE[phase], backend, version)
    for column in ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "attn_dtype", "kv_cache_dtype"):
        if column not in t.columns:
            raise ValueError(f"{t.provenance['table']}: no {column!r} column")
    if phase == "decode" and "step" not in t.columns:
        raise ValueError(f"{t.provenance['table']}: no 'step' column")
    window = t.columns.get("window_size", np.zeros(len(t)))  # older tables: full attention only
    n, kv, hd = (t[c].astype(float) for c in ("num_heads", "num_key_value_heads", "head_dim"))
    attn_fp8 = np.char.lower(t["attn_dtype"].astype(str)) == "fp8"
    fp8_kv = np.char.lower(t["kv_cache_dtype"].astype(str)) == "fp8"
    keep = (window == 0) & np.isin(hd, HEAD_DIMS) & (n % kv == 0) & ~attn_fp8
    t = t.where(keep)
    n, kv, hd, fp8_kv = n[keep], kv[keep], hd[keep], fp8_kv[keep]
    batch, isl = t["batch_size"].astype(float), t["isl"].astype(float)
    kv_bytes = np.where(fp8_kv, 1.0, 2.0)
    # The step-th generated token attends to the prompt and the tokens before it, and itself.
    kv_len = isl if phase == "prefill" else isl + t["step"].astype(float)
    q_len = isl if phase == "prefill" else np.ones_like(isl)
    work = attention_work(phase, batch, q_len, kv_len, n, kv, hd, kv_dtype_bytes=kv_bytes)
    gpu = system_spec(system)["gpu"]
    return AttentionRows(
        system,
        phase,
        *work,
        t["seconds"],
        fp8_kv,
        n / kv,
        hd,
        kv_len,
        batch * 2.0 * kv * hd,
        float(gpu["bfloat16_tc_flops"]),
        float(gpu["mem_bw"]),
        dict(t.provenance),
    )


def fit_phase(rows: list[AttentionRows], *, fp8_kv: bool = False, residual: bool = True) -> AttentionPhase:
    """Terms of one phase fitted on the :func:`fitted` rows of one or more systems (fractions of each one's peaks).

    ``fp8_kv``: fit the rows measured with an fp8 KV cache instead of bf16. ``residual``: then fit
    the log residual over (kv_len, kv_elems, gqa) on the same rows (False: the smooth terms only).
    """
    from scipy.optimize import lsq_linear

    used = [r.where(fitted(r, fp8_kv=fp8_kv)) for r in rows]
    x = np.concatenate([r.design() / r.seconds[:, None] for r in used])
    if not len(x):
        raise ValueError(f"no attention rows to fit ({'fp8' if fp8_kv else 'bf16'} KV cache)")
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)  # columns of very different magnitudes
    lower = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0][: x.shape[1]]) * scale  # efficiencies at most 1: 1/peak >= 1
    weights = np.ones(len(x))
    for _ in range(IRLS_ROUNDS):  # reweighted: least absolute relative error, what MAPE reports
        sol = lsq_linear(x / scale * weights[:, None], weights, bounds=(lower, np.inf), method="bvls").x / scale
        weights = 1.0 / np.sqrt(np.maximum(np.abs(x @ sol - 1.0), 0.01))
    overhead, inv_c, inv_m, out_rate, kv_rate, q_rate = (float(v) for v in [*sol, 0.0][:6])
    linear = AttentionPhase(1.0 / max(inv_c, 1.0), 1.0 / max(inv_m, 1.0), overhead, out_rate, kv_rate, q_rate)
    best = linear
    if kv_rate > 0:  # decode: try joining the KV stream and the per-sequence term (hidden behind long streams)
        joined = _fit_join(used, linear)
        if _mape(used, joined) < _mape(used, linear):
            best = joined
    terms = AttentionPhase(
        _sig(best.compute_peak),
        _sig(best.memory_peak),
        _sig(best.overhead_s),
        _sig(best.output_s_per_byte),
        _sig(best.sequence_s_per_kv_byte),
        _sig(best.sequence_s_per_q_byte),
        None if best.join_exponent is None else _sig(best.join_exponent),
    )
    return dataclasses.replace(terms, residual=fit_residual(used, terms)) if residual else terms


def fit_residual(rows: list[AttentionRows], terms: AttentionPhase) -> AttentionResidual:
    """Log residual of ``terms`` on ``rows`` over a grid of whole log2 steps spanning their features.

    Damped least squares on ``log(measured / terms)`` with the trilinear weights the pricer
    applies (:meth:`AttentionResidual.corners`): the measured rows sit on powers of two of
    context and sequences x KV heads, so each cell is about the mean log ratio of the rows on
    it; cells no row touches stay 0 (the terms alone).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import lsqr

    kv_len, kv_elems, gqa = (np.concatenate(f) for f in zip(*(r.features() for r in rows), strict=True))
    grids = (_span(kv_len), _span(kv_elems), np.arange(0.0, RESIDUAL_MAX_LOG2_GQA + 1.0))
    empty = AttentionResidual(*grids, values=np.zeros(tuple(len(g) for g in grids)))
    idx, wts = empty.corners(kv_len, kv_elems, gqa)
    n = idx.shape[1]
    design = csr_matrix((wts.ravel(), (np.tile(np.arange(n), 8), idx.ravel())), shape=(n, empty.values.size))
    base = np.concatenate([r.predict(terms) for r in rows])
    target = np.log(np.concatenate([r.seconds for r in rows]) / base)
    values = lsqr(design, target, damp=RESIDUAL_DAMP)[0]
    values = np.clip(np.round(values, 4), -MAX_ABS, MAX_ABS).reshape(empty.values.shape)
    return AttentionResidual(*grids, values=values)


def _span(values: np.ndarray) -> np.ndarray:
    """Whole log2 steps from below the smallest of ``values`` to above the largest (at least two)."""
    log = np.log2(np.maximum(values, 1.0))
    lo, hi = float(np.floor(log.min())), float(np.ceil(log.max()))
    return np.arange(lo, max(hi, lo + 1.0) + 1.0)


def _mape(rows: list[AttentionRows], terms: AttentionPhase) -> float:
    return float(np.mean(np.concatenate([np.abs(r.predict(terms) / r.seconds - 1.0) for r in rows])))


def _fit_join(rows: list[AttentionRows], start: AttentionPhase) -> AttentionPhase:
    """``start`` refitted with the memory and per-sequence KV terms joined (robust loss on relative error)."""
    from scipy.optimize import least_squares

    floor = 1e-30

    def unpack(z: np.ndarray) -> AttentionPhase:
        o, c, m, r_out, r_kv, r_q, k = np.exp(z)
        return AttentionPhase(float(1 / c), float(1 / m), float(o), float(r_out), float(r_kv), float(r_q), 1.0 + k)

    def residuals(z: np.ndarray) -> np.ndarray:
        return np.concatenate([r.predict(unpack(z)) / r.seconds - 1.0 for r in rows])

    z0 = np.log(np.maximum([start.overhead_s, 1 / start.compute_peak, 1 / start.memory_peak,
                            start.output_s_per_byte, start.sequence_s_per_kv_byte, start.sequence_s_per_q_byte,
                            1.0], floor))  # fmt: skip
    lower = np.full(7, -np.inf)
    lower[1:3] = 0.0  # efficiencies at most 1
    x_scale = np.ones(7)
    fit = least_squares(residuals, np.maximum(z0, lower), bounds=(lower, np.inf), loss="soft_l1", f_scale=0.05,
                        x_scale=x_scale, max_nfev=400)  # fmt: skip
    return unpack(fit.x)


def _sig(value: float) -> float:
    return float(f"{value:.6g}")


def errors(rows: AttentionRows, terms: AttentionPhase) -> dict[str, Any]:
    """MAPE, median, 90th percentile and bias (%) of ``terms`` on ``rows``."""
    if not len(rows):
        return {"rows": 0}
    err = (rows.predict(terms) / rows.seconds - 1.0) * 100.0
    return {
        "rows": len(rows),
        "mape": round(float(np.mean(np.abs(err))), 2),
        "median_ape": round(float(np.median(np.abs(err))), 2),
        "p90_ape": round(float(np.percentile(np.abs(err), 90)), 2),
        "bias_pct": round(float(np.mean(err)), 2),
    }


def fitted(rows: AttentionRows, *, fp8_kv: bool = False) -> np.ndarray:
    """The rows a fit uses: head size ``FIT_HEAD_DIM``, at most ``FIT_MAX_GQA`` heads per KV head, the KV dtype."""
    return (rows.fp8_kv == fp8_kv) & (rows.head_dim == FIT_HEAD_DIM) & (rows.gqa <= FIT_MAX_GQA)


def phase_errors(rows: AttentionRows, terms: AttentionPhase, *, fp8_kv: bool = False) -> dict[str, Any]:
    """Errors on the rows fitted, those of them over 20 us, and the kinds of rows not fitted (checked)."""
    kv = rows.fp8_kv == fp8_kv
    used = rows.where(fitted(rows, fp8_kv=fp8_kv))
    return {
        "fitted_rows": errors(used, terms),
        "over_20us": errors(used.where(used.seconds > 20e-6), terms),
        "head_dim_64": errors(rows.where(kv & (rows.head_dim == 64) & (rows.gqa <= FIT_MAX_GQA)), terms),
        "gqa_over_16": errors(rows.where(kv & (rows.head_dim == FIT_HEAD_DIM) & (rows.gqa > FIT_MAX_GQA)), terms),
    }


def _variants(rows: AttentionRows) -> list[tuple[str, bool]]:
    """(profile key, fp8 KV) of the terms the rows allow: ``prefill``, ``prefill_fp8_kv``, ..."""
    keys = [(rows.phase, False)]
    if fitted(rows, fp8_kv=True).any():
        keys.append((f"{rows.phase}_fp8_kv", True))
    return keys


def fit_attention_tables(
    system: str, backend: str = "trtllm", version: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Profile fragment fitted on ``system``'s attention tables, and a JSON-able report.

    The fragment holds ``attention_phases`` (keys ``prefill`` and ``decode``, bf16 KV cache,
    and ``prefill_fp8_kv`` / ``decode_fp8_kv`` where the tables have fp8-KV rows), a
    ``fit.attention`` record (method, tables, in-sample MAPE) and, when ``system`` is in one
    of :data:`FAMILIES`, ``holdout_error.per_op.attention_<key>``: the errors on ``system``'s
    rows of terms fitted on the family's other systems only (their newest tables).
    The report holds, per key, the terms, in-sample and held-out errors and the tables'
    provenance; ``fp8_kv_on_bf16_terms`` the error of pricing fp8-KV rows by halving their KV
    bytes only (what a profile without fp8-KV terms gives).
    """
    family = next((f for f in FAMILIES if system in f), ())
    others = [s for s in family if s != system and backend in backends(s, "attention")]
    phases: dict[str, Any] = {}
    held_out: dict[str, Any] = {}
    report: dict[str, Any] = {"system": system, "backend": backend, "method": METHOD, "phases": {}}
    for phase in PHASE_TABLE:
        rows = read_rows(system, phase, backend, version)
        other_rows = [read_rows(s, phase, backend) for s in others]
        for key, fp8 in _variants(rows):
            terms = fit_phase([rows], fp8_kv=fp8)
            phases[key] = terms.to_dict()
            entry = report["phases"][key] = {
                "terms": terms.to_dict(),
                "in_sample": phase_errors(rows, terms, fp8_kv=fp8),
                "provenance": rows.provenance,
            }
            usable = [r for r in other_rows if fitted(r, fp8_kv=fp8).any()]
            if usable:
                entry["held_out"] = phase_errors(rows, fit_phase(usable, fp8_kv=fp8), fp8_kv=fp8)
                entry["held_out"]["fitted_on"] = [r.system for r in usable]
                held_out[f"attention_{key}"] = entry["held_out"]["fitted_rows"]
        if f"{phase}_fp8_kv" in phases:
            fp8_rows = rows.where(fitted(rows, fp8_kv=True))
            report["phases"][f"{phase}_fp8_kv"]["fp8_kv_on_bf16_terms"] = errors(fp8_rows, fit_phase([rows]))
    record = {
        "method": METHOD,
        "tables": [v["provenance"]["table"] for k, v in report["phases"].items() if not k.endswith("_fp8_kv")],
        "package": DISTRIBUTION,
        "package_version": package_version(),
        "licence": LICENCE,
        "in_sample_mape": {k: v["in_sample"]["fitted_rows"].get("mape") for k, v in report["phases"].items()},
    }
    if held_out:
        record["held_out_fitted_on"] = others
    fragment: dict[str, Any] = {"attention_phases": phases, "fit": {"attention": record}}
    if held_out:
        fragment["holdout_error"] = {"per_op": held_out}
    return fragment, report


def leave_one_out(
    family: tuple[str, ...], backend: str = "trtllm", version: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per system of ``family`` and profile key: errors of terms fitted on the other systems only, and in-sample.

    ``held_out_terms_only``: the held-out errors of the smooth terms without their residual.
    """
    rows = {(s, p): read_rows(s, p, backend, version) for s in family for p in PHASE_TABLE}
    out: dict[str, dict[str, Any]] = {}
    for held in family:
        out[held] = {}
        others_names = [s for s in family if s != held]
        for phase in PHASE_TABLE:
            mine = rows[held, phase]
            for key, fp8 in _variants(mine):
                others = [rows[s, phase] for s in others_names if fitted(rows[s, phase], fp8_kv=fp8).any()]
                if not others:
                    continue
                smooth = fit_phase(others, fp8_kv=fp8, residual=False)
                out[held][key] = {
                    "held_out": phase_errors(mine, fit_phase(others, fp8_kv=fp8), fp8_kv=fp8),
                    "held_out_terms_only": errors(mine.where(fitted(mine, fp8_kv=fp8)), smooth),
                    "in_sample": phase_errors(mine, fit_phase([mine], fp8_kv=fp8), fp8_kv=fp8),
                    "fitted_on": [s for s in others_names if fitted(rows[s, phase], fp8_kv=fp8).any()],
                }
    return out
