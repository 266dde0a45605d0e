"""Attention timings (``attention.csv`` written by ``calibrate measure``) fitted into a profile.

Why separately: Vidur's ``mlp.csv`` has no attention column, so a profile fitted
from it keeps the default curve for the ``attention`` kind; on a CPU, attention is
a large share of a decode step (bf16 SDPA reads the KV cache at a tenth of the
copy bandwidth) and must be calibrated too. Each row becomes the zoo's
``L0.attention`` op of a one-layer model of the row's shape (prefill: ``batch``
x ``prefill_chunk_size``; decode: ``batch`` sequences with ``kv_cache_size``
cached tokens), priced by :class:`KernelPricer` at the row's TP degree — the same
code the evaluators run — and the ``attention`` compute and memory curves
(peak, half) are chosen to minimise the squared log error (Nelder-Mead on the
logs; peaks capped at 1). The kernel overhead and roofline exponent of the
profile stay as they are.

:func:`fit_with_attention` is ``fit_profile`` followed by this fit, recording both
in the profile: what ``calibrate measure`` output needs (``cpu-local`` is made so).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...graphs import ModelSpec, Op, build_spec_graph
from .._platform import Platform
from .._pricing import KernelPricer, OpTable
from .._profile import Efficiency, Profile
from ._devices import platform_for
from ._fit import FitResult, fit_profile
from ._read import read_measurements

KIND = "attention"


@dataclass(frozen=True)
class AttentionRows:
    """Zoo attention ops with their TP degree, phase and measured seconds."""

    ops: tuple[Op, ...]
    tp: np.ndarray
    prefill: np.ndarray  # bool
    seconds: np.ndarray
    files: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.ops)

    def predict(self, platform: Platform, dtype: str) -> np.ndarray:
        pricer, out = KernelPricer(platform, dtype), np.empty(len(self))
        for t in np.unique(self.tp):
            idx = np.flatnonzero(self.tp == t)
            out[idx] = pricer.op_times(OpTable.from_ops([self.ops[i] for i in idx]), int(t))
        return out


def _root(profiles_dir: Path) -> Path:
    return profiles_dir / "vidur" if (profiles_dir / "vidur" / "compute").is_dir() else profiles_dir


def measured_dtype(profiles_dir: Path | str) -> str:
    """The dtype recorded in ``meta.json`` by ``calibrate measure`` (Vidur's own profiles: fp16)."""
    meta = _root(Path(profiles_dir)) / "meta.json"
    return str(json.loads(meta.read_text()).get("dtype", "fp16")) if meta.is_file() else "fp16"


def read_attention(profiles_dir: Path | str, device: str) -> AttentionRows:
    """Every ``compute/<device>/<org>/<model>/attention.csv`` row as a zoo attention op (may be empty)."""
    root = _root(Path(profiles_dir))
    dtype = measured_dtype(profiles_dir)
    files = tuple(sorted((root / "compute" / device).glob("*/*/attention.csv")))
    ops: list[Op] = []
    tp: list[int] = []
    prefill: list[bool] = []
    seconds: list[float] = []
    for path in files:
        with path.open(newline="") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    is_prefill = row["is_prefill"].strip().lower() == "true"
                    col = "time_stats.attn_prefill.median" if is_prefill else "time_stats.attn_decode.median"
                    secs = float(row[col]) * 1e-3
                    h, heads, kv = (int(row[c]) for c in ("n_embd", "n_q_head", "n_kv_head"))
                    batch, chunk, ctx = (int(row[c]) for c in ("batch_size", "prefill_chunk_size", "kv_cache_size"))
                    t = int(row["num_tensor_parallel_workers"])
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"{path}, line {line}: bad or missing attention column ({exc})") from None
                spec = ModelSpec(name=path.parent.name, layers=1, hidden=h, heads=heads, kv_heads=kv, ffn=4 * h,
                                 vocab=1, dtype=dtype)  # fmt: skip
                if is_prefill:
                    graph = build_spec_graph(spec, phase="prefill", batch=batch, seq=chunk)
                else:
                    graph = build_spec_graph(spec, phase="decode", batch=batch, seq=ctx, context=ctx)
                ops.append(graph.task("L0.attention").ops[0])
                tp.append(t)
                prefill.append(is_prefill)
                seconds.append(secs)
    return AttentionRows(tuple(ops), np.array(tp, dtype=np.int64), np.array(prefill, dtype=bool),
                         np.array(seconds), files)  # fmt: skip


def with_attention(profile: Profile, compute: Efficiency, memory: Efficiency) -> Profile:
    return dataclasses.replace(
        profile, compute={**profile.compute, KIND: compute}, memory={**profile.memory, KIND: memory}
    )


def fit_attention(
    profiles_dir: Path | str, device: str, profile: Profile, platform: Platform
) -> tuple[Profile, dict[str, Any]]:
    """``profile`` with fitted ``attention`` curves, and a report (rows, MAPE and max error per phase).

    ``platform`` supplies the peaks the efficiencies are fractions of (its own profile
    is replaced by ``profile``). Without attention rows the profile comes back unchanged.
    """
    rows = read_attention(profiles_dir, device)
    if not len(rows):
        return profile, {"rows": 0}
    dtype = measured_dtype(profiles_dir)

    def unpack(z: np.ndarray) -> tuple[Efficiency, Efficiency]:
        return (Efficiency(float(min(1.0, np.exp(z[0]))), float(np.exp(z[1]))),
                Efficiency(float(min(1.0, np.exp(z[2]))), float(np.exp(z[3]))))  # fmt: skip

    def predict(z: np.ndarray) -> np.ndarray:
        prof = with_attention(profile, *unpack(z))
        return rows.predict(dataclasses.replace(platform, profile=prof), dtype)

    def loss(z: np.ndarray) -> float:
        return float(np.mean(np.log(predict(z) / rows.seconds) ** 2))

    start = np.log([0.3, 1e6, 0.1, 1e4])
    best = _nelder_mead(loss, start)
    pred = predict(best)
    err = (pred - rows.seconds) / rows.seconds * 100.0
    report: dict[str, Any] = {"rows": len(rows), "files": [str(p) for p in rows.files]}
    for name, mask in (("prefill", rows.prefill), ("decode", ~rows.prefill)):
        if mask.any():
            report[name] = {"rows": int(mask.sum()), "mape": float(np.mean(np.abs(err[mask]))),
                            "max_abs_pct_error": float(np.max(np.abs(err[mask])))}  # fmt: skip
    compute, memory = unpack(best)
    report["compute"], report["memory"] = compute.to_dict(), memory.to_dict()
    return with_attention(profile, compute, memory), report


def fit_with_attention(
    profiles_dir: Path | str, device: str, *, holdout: Sequence[str] = (), name: str | None = None
) -> FitResult:
    """``fit_profile``, then the ``attention`` curves from ``attention.csv`` (when there is one).

    The profile's ``fit`` record gains ``attention`` (rows, errors per phase, curves)
    and ``measured`` (date, machine, torch, dtype, threads, other processes' load from
    ``meta.json``); the report gains ``attention``.
    """
    result = fit_profile(profiles_dir, device, holdout=holdout, name=name)
    meas = read_measurements(profiles_dir, device)  # the platform fit_profile priced them on
    platform = dataclasses.replace(platform_for(device, meas), profile=result.profile)
    profile, report = fit_attention(profiles_dir, device, result.profile, platform)
    if not report["rows"]:
        return result
    report = {k: v for k, v in report.items() if k != "files"}
    record = dict(profile.fit)
    record["attention"] = {"method": "Nelder-Mead on squared log error, KernelPricer at each row's TP degree",
                           **report}  # fmt: skip
    record["not_fitted"] = str(record.get("not_fitted", "")).replace("attention compute curve; ", "")
    meta = _root(Path(profiles_dir)) / "meta.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        keep = ("date", "machine", "dtype", "threads_per_process", "other_processes_cores", "command")
        record["measured"] = {k: m[k] for k in keep if k in m}
    profile = dataclasses.replace(profile, fit=record)
    profile = Profile.from_dict(_rounded(profile.to_dict()), f"fitted profile {profile.name}")
    return FitResult(profile=profile, report={**result.report, "attention": report})


def _rounded(data: Any) -> Any:
    """Floats to 6 significant digits (as ``fit_profile`` rounds), so the YAML reloads equal."""
    if isinstance(data, float):
        return float(f"{data:.6g}")
    if isinstance(data, dict):
        return {k: _rounded(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_rounded(v) for v in data]
    return data


def _nelder_mead(f: Any, x0: np.ndarray, *, iters: int = 600, step: float = 1.0, tol: float = 1e-9) -> np.ndarray:
    """Minimise ``f`` from ``x0`` (a few parameters, smooth enough; no scipy dependency)."""
    n = len(x0)
    pts = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if vals[-1] - vals[0] < tol:
            break
        centroid = np.mean(pts[:-1], axis=0)
        refl = centroid + (centroid - pts[-1])
        fr = f(refl)
        if fr < vals[0]:
            exp = centroid + 2.0 * (centroid - pts[-1])
            fe = f(exp)
            pts[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = refl, fr
        else:
            con = centroid + 0.5 * (pts[-1] - centroid)
            fc = f(con)
            if fc < vals[-1]:
                pts[-1], vals[-1] = con, fc
            else:
                pts = [pts[0] + 0.5 * (p - pts[0]) for p in pts]
                vals = [f(p) for p in pts]
    return pts[int(np.argmin(vals))]
