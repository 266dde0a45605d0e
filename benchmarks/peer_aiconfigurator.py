"""Whole model against a peer: paratune's TTFT and TPOT next to NVIDIA AIConfigurator's, same cases, one run.

AIConfigurator (``pip install aiconfigurator``, Apache-2.0) prices a serving step from
kernel and collective timings measured on real GPUs with TensorRT-LLM, vLLM and
SGLang. It is the peer here, not a dependency: only this benchmark imports it, in
process, through its public ``aiconfigurator.cli.api.cli_estimate`` (the programmatic
``aiconfigurator cli estimate``), in its static mode.

Both tools price the same plan (tensor parallelism only, PP 1, one replica) of the same
model on the same GPU:

* **TTFT** is the prefill of ``batch`` prompts of ``isl`` tokens: AIConfigurator's
  ``static`` context latency; paratune's ``ttft_s`` of the prefill graph (batch x isl).
* **TPOT** follows AIConfigurator's definition: the generation latency of a static
  batch divided by ``osl - 1``, where the decode steps are sampled every ``stride``
  tokens (step ``i`` at KV length ``isl + 1 + i`` for ``i`` in ``0, stride, ...``,
  weighted by the steps it stands for, ``min(stride, osl - 1 - i)``). paratune prices
  a decode step (``tbt_s``) at each of those KV lengths and takes the same weighted
  mean (:func:`decode_points`), so both sides average the same steps.
* **dtype** ``bf16``: bf16 GEMMs, KV cache and attention on both sides. ``fp8``:
  AIConfigurator's ``fp8`` GEMMs (and MoE experts), fp8 KV cache, bf16 attention
  (``fmha``); paratune's model with ``dtype=fp8`` (fp8 weights, activations and KV).
* MoE experts are split by tensor parallelism on both sides (``moe_tp = tp``,
  ``moe_ep = 1``); paratune shards an expert's work across the group alike.
* The peer backend is ``trtllm`` at its default ("current") database version unless
  ``--backend`` / ``--version`` say otherwise.

Models: Llama-3.1 8B / 70B / 405B (paratune ``llama3-*``, same shapes), Qwen3-8B,
Mixtral-8x7B (AIConfigurator ships its config but no longer lists it, so it is read from
a temporary folder holding that config). Systems and paratune platforms:
:data:`PLATFORMS`. A platform paratune does not define yet is reported as one line
``skipped: platform X not defined`` and its cases are left out of the medians.

Printed: a table with TTFT and TPOT of both tools and their ratio (paratune / peer) per
case, then the median |ratio - 1| of each, overall and per system (and per dtype). The
error of a case is ``|paratune / peer - 1|``; the issue's target is a median of 7% on
both. The ``calib`` column tells whether paratune's profile was calibrated in the range
of the prefill / decode step (``y`` / ``n``).

Run: ``python benchmarks/peer_aiconfigurator.py [--json] [--out FILE] [--only SUBSTR]
[--backend trtllm] [--version V] [--stride N]``. Exits with 2 and one line when
AIConfigurator is not installed. ``--serving`` runs the serving-search comparison instead
(``benchmarks/peer_serving.py``, issue 17).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: AIConfigurator system -> paratune platform preset.
PLATFORMS = {
    "h100_sxm": "dgx-h100",
    "h200_sxm": "hgx-h200",
    "b200_sxm": "dgx-b200",
    "gb200": "gb200-nvl72",
}

#: Model key -> (paratune zoo model, AIConfigurator model path). A path of the form
#: ``cached:NAME`` is a config AIConfigurator ships in ``model_configs`` without listing
#: it; it is handed over as a local folder (:func:`_peer_model_path`).
MODELS = {
    "llama3.1-8b": ("llama3-8b", "meta-llama/Meta-Llama-3.1-8B"),
    "llama3.1-70b": ("llama3-70b", "meta-llama/Meta-Llama-3.1-70B"),
    "llama3.1-405b": ("llama3-405b", "meta-llama/Meta-Llama-3.1-405B"),
    "qwen3-8b": ("qwen3-8b", "Qwen/Qwen3-8B"),
    "mixtral-8x7b": ("mixtral-8x7b", "cached:mistralai/Mixtral-8x7B-v0.1"),
}
DTYPES = ("bf16", "fp8")
#: The issue's target: median |paratune / peer - 1| on TTFT and on TPOT.
TARGET_MEDIAN_ERROR = 0.07


@dataclass(frozen=True)
class Case:
    """One configuration both tools price: a model on ``tp`` GPUs of a system, a static batch."""

    model: str
    system: str
    tp: int
    batch: int
    isl: int = 1024
    osl: int = 128
    dtype: str = "bf16"

    @property
    def name(self) -> str:
        return f"{self.model} {self.dtype} {self.system} tp{self.tp} b{self.batch} {self.isl}/{self.osl}"


def _cases() -> list[Case]:
    """The configurations: 5 models x 4 systems, TP 1-16, batch 1-256, bf16 and fp8, ISL 1k-4k.

    Chosen so that the model fits on the GPUs of the plan in both tools (405B bf16 needs
    more than 8 x 80 GB, so it runs on B200 / GB200 or in fp8).
    """
    c = Case
    return [
        # H100 SXM
        c("llama3.1-8b", "h100_sxm", 1, 1),
        c("llama3.1-8b", "h100_sxm", 1, 64, isl=2048),
        c("llama3.1-8b", "h100_sxm", 1, 16, dtype="fp8"),
        c("llama3.1-70b", "h100_sxm", 4, 16),
        c("llama3.1-70b", "h100_sxm", 8, 64),
        c("llama3.1-70b", "h100_sxm", 4, 32, dtype="fp8"),
        c("qwen3-8b", "h100_sxm", 2, 32),
        c("mixtral-8x7b", "h100_sxm", 4, 8),
        # H200 SXM
        c("llama3.1-8b", "h200_sxm", 1, 256),
        c("llama3.1-70b", "h200_sxm", 8, 1),
        c("llama3.1-70b", "h200_sxm", 8, 32, isl=4096, osl=256),
        c("llama3.1-70b", "h200_sxm", 2, 16, dtype="fp8"),
        c("llama3.1-405b", "h200_sxm", 8, 16, dtype="fp8"),
        c("qwen3-8b", "h200_sxm", 1, 64, dtype="fp8"),
        c("mixtral-8x7b", "h200_sxm", 4, 64),
        c("mixtral-8x7b", "h200_sxm", 2, 32, dtype="fp8"),
        # B200 SXM
        c("llama3.1-8b", "b200_sxm", 1, 32),
        c("llama3.1-70b", "b200_sxm", 4, 64, dtype="fp8"),
        c("llama3.1-405b", "b200_sxm", 8, 8),
        c("qwen3-8b", "b200_sxm", 1, 128),
        c("mixtral-8x7b", "b200_sxm", 2, 64, dtype="fp8"),
        # GB200 NVL72
        c("llama3.1-70b", "gb200", 4, 32),
        c("llama3.1-405b", "gb200", 8, 64, dtype="fp8"),
        c("qwen3-8b", "gb200", 2, 256, dtype="fp8"),
        c("llama3.1-405b", "gb200", 16, 32),  # an NVLink domain wider than 8
    ]


CASES = _cases()


def decode_points(isl: int, osl: int, stride: int) -> list[tuple[int, int]]:
    """The decode steps AIConfigurator samples for TPOT: ``(KV length, steps it stands for)``.

    Its static generation phase prices step ``i`` (0-based) at KV length ``isl + 1 + i``
    for ``i`` in ``range(0, osl - 1, stride)``, each counted ``min(stride, osl - 1 - i)``
    times; TPOT is that sum over ``osl - 1``. The weights add up to ``osl - 1``.
    """
    if osl < 2:
        raise ValueError(f"field 'osl' must be >= 2 for a TPOT, got {osl}")
    if stride < 1:
        raise ValueError(f"field 'stride' must be >= 1, got {stride}")
    return [(isl + 1 + i, min(stride, osl - 1 - i)) for i in range(0, osl - 1, stride)]


# -- paratune ------------------------------------------------------------------
class PlatformMissing(LookupError):
    """paratune has no preset for the case's system (yet)."""


def _platform(name: str) -> Any:
    from paratune.costmodel import get_platform

    try:
        return get_platform(name)
    except ValueError as exc:
        if "unknown platform" in str(exc):
            raise PlatformMissing(name) from exc
        raise


def paratune_estimate(case: Case, *, stride: int = 32) -> dict[str, Any]:
    """paratune's TTFT and TPOT (ms) of ``case``, TP only, through the analytic evaluator."""
    from paratune.costmodel import AnalyticEvaluator, Plan
    from paratune.graphs import load_graph

    plat = _platform(PLATFORMS[case.system])
    model = MODELS[case.model][0] + (":dtype=fp8" if case.dtype == "fp8" else "")

    def step(phase: str, context: int) -> Any:
        graph = load_graph(model, phase=phase, batch=case.batch, seq=case.isl, context=context, granularity="layer")
        plan = Plan.uniform(graph.meta.n_layers, tp=case.tp)
        plan.check(graph, plat)
        return AnalyticEvaluator(graph, plat).evaluate(plan)

    prefill = step("prefill", 0)
    points = decode_points(case.isl, case.osl, stride)
    decodes = [(step("decode", kv), weight) for kv, weight in points]
    tpot_s = sum(m.tbt_s * w for m, w in decodes) / sum(w for _, w in points)
    return {
        "ttft_ms": prefill.ttft_s * 1e3,
        "tpot_ms": tpot_s * 1e3,
        "feasible": prefill.feasible and all(m.feasible for m, _ in decodes),
        "calibrated_prefill": prefill.calibrated,
        "calibrated_decode": all(m.calibrated for m, _ in decodes),
        "platform": plat.name,
        "profile": plat.profile.name,
    }


# -- the peer ------------------------------------------------------------------
def peer_available() -> bool:
    """True when AIConfigurator can be imported (it is an optional, benchmark-only peer)."""
    return importlib.util.find_spec("aiconfigurator") is not None


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the peer's per-table loading notes (logging and warnings) while it runs."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


class _PeerModels:
    """AIConfigurator model paths, with ``cached:`` configs copied into a temporary folder each."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def path(self, model: str) -> str:
        source = MODELS[model][1]
        if not source.startswith("cached:"):
            return source
        hf_id = source.removeprefix("cached:")
        from importlib.resources import files

        config = Path(str(files("aiconfigurator_core") / "model_configs")) / f"{hf_id.replace('/', '--')}_config.json"
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="paratune-peer-")
        folder = Path(self._tmp.name) / hf_id.replace("/", "--")
        folder.mkdir(exist_ok=True)
        shutil.copyfile(config, folder / "config.json")
        return str(folder)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def peer_estimate(
    case: Case, models: _PeerModels, *, backend: str = "trtllm", version: str | None = None, stride: int = 32
) -> dict[str, Any]:
    """AIConfigurator's static TTFT and TPOT (ms) of ``case``."""
    from aiconfigurator.cli.api import cli_estimate

    quant: dict[str, Any] = {
        "gemm_quant_mode": "bfloat16",
        "kvcache_quant_mode": "bfloat16",
        "fmha_quant_mode": "bfloat16",
    }
    if case.dtype == "fp8":
        quant.update(gemm_quant_mode="fp8", kvcache_quant_mode="fp8")
    if case.model == "mixtral-8x7b":
        quant.update(moe_quant_mode=quant["gemm_quant_mode"], moe_tp_size=case.tp, moe_ep_size=1)
    with _quiet():
        result = cli_estimate(
            models.path(case.model),
            case.system,
            mode="static",
            backend_name=backend,
            backend_version=version,
            isl=case.isl,
            osl=case.osl,
            batch_size=case.batch,
            tp_size=case.tp,
            pp_size=1,
            stride=stride,
            **quant,
        )
    return {
        "ttft_ms": float(result.ttft),
        "tpot_ms": float(result.tpot),
        "oom": bool(result.kv_cache_warning),
        "backend": backend,
        "version": result.backend_version,
        "quant": {k: result.raw.get(k) for k in ("gemm", "kvcache", "fmha", "moe")},
    }


# -- both ----------------------------------------------------------------------
def evaluate_cases(
    cases: Iterable[Case],
    *,
    backend: str = "trtllm",
    version: str | None = None,
    stride: int = 32,
    say: Any = print,
) -> list[dict[str, Any]]:
    """Price every case in both tools; a row per case with ``status`` ok / skipped / error.

    A missing paratune platform is said once (``say``) and its cases are skipped without
    asking the peer; any other failure of either tool is kept in the row's ``error``.
    """
    rows: list[dict[str, Any]] = []
    missing: dict[str, int] = {}
    models = _PeerModels()
    try:
        for case in cases:
            row: dict[str, Any] = {"case": case.name, **asdict(case), "platform": PLATFORMS[case.system]}
            rows.append(row)
            try:
                row["paratune"] = paratune_estimate(case, stride=stride)
            except PlatformMissing as exc:
                if str(exc) not in missing:
                    say(f"skipped: platform {exc} not defined")
                missing[str(exc)] = missing.get(str(exc), 0) + 1
                row["status"] = "skipped"
                row["error"] = f"platform {exc} not defined"
                continue
            except ValueError as exc:
                row["status"], row["error"] = "error", f"paratune: {exc}"
                continue
            try:
                row["peer"] = peer_estimate(case, models, backend=backend, version=version, stride=stride)
            except Exception as exc:  # the peer's own errors are figures of this benchmark, not crashes
                row["status"], row["error"] = "error", f"aiconfigurator: {type(exc).__name__}: {exc}"
                continue
            ours, peer = row["paratune"], row["peer"]
            row["ttft_ratio"] = ours["ttft_ms"] / peer["ttft_ms"] if peer["ttft_ms"] > 0 else math.nan
            row["tpot_ratio"] = ours["tpot_ms"] / peer["tpot_ms"] if peer["tpot_ms"] > 0 else math.nan
            ok = all(math.isfinite(row[k]) for k in ("ttft_ratio", "tpot_ratio"))
            row["status"] = "ok" if ok else "error"
            if not ok:
                row["error"] = "a non-finite or zero latency"
    finally:
        models.close()
    return rows


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median |ratio - 1| and median ratio of TTFT and TPOT over ``rows`` (ok rows only)."""
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, Any] = {"cases": len(ok)}
    for metric in ("ttft", "tpot"):
        ratios = [r[f"{metric}_ratio"] for r in ok]
        out[f"{metric}_median_abs_error"] = statistics.median(abs(x - 1) for x in ratios) if ratios else None
        out[f"{metric}_median_ratio"] = statistics.median(ratios) if ratios else None
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures: overall medians, per system and per dtype, counts by status, against the target."""
    overall = _medians(rows)
    groups = {
        "by_system": {s: _medians([r for r in rows if r["system"] == s]) for s in PLATFORMS},
        "by_dtype": {d: _medians([r for r in rows if r["dtype"] == d]) for d in DTYPES},
    }
    status = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    met = {
        m: overall[f"{m}_median_abs_error"] is not None and overall[f"{m}_median_abs_error"] <= TARGET_MEDIAN_ERROR
        for m in ("ttft", "tpot")
    }
    return {
        "overall": overall,
        **groups,
        "status": status,
        "target_median_abs_error": TARGET_MEDIAN_ERROR,
        "meets_target": met,
    }


# -- printing ------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _print(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title="paratune against AIConfigurator (static batch, TP only; ms)")
    for col in ("config", "TTFT pt", "TTFT peer", "ratio", "TPOT pt", "TPOT peer", "ratio", "calib"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        if r["status"] == "skipped":
            continue
        if r["status"] == "error":
            table.add_row(r["case"], f"[red]{r['error'][:100]}[/red]", *[""] * 6)
            continue
        ours, peer = r["paratune"], r["peer"]
        calib = ("y" if ours["calibrated_prefill"] else "n") + "/" + ("y" if ours["calibrated_decode"] else "n")
        flags = (" [yellow]OOM(peer)[/yellow]" if peer["oom"] else "") + (
            "" if ours["feasible"] else " [yellow]OOM(pt)[/yellow]"
        )
        table.add_row(
            r["case"] + flags,
            f"{ours['ttft_ms']:.2f}",
            f"{peer['ttft_ms']:.2f}",
            f"{r['ttft_ratio']:.3f}",
            f"{ours['tpot_ms']:.3f}",
            f"{peer['tpot_ms']:.3f}",
            f"{r['tpot_ratio']:.3f}",
            calib,
        )
    console.print(table)
    groups = [("all", summary["overall"])]
    groups += [(s, v) for s, v in summary["by_system"].items()] + [(d, v) for d, v in summary["by_dtype"].items()]
    for label, g in groups:
        if not g["cases"]:
            continue
        console.print(
            f"{label:>9}: {g['cases']:>2} cases  median |error| TTFT {_pct(g['ttft_median_abs_error']):>6}"
            f" (median ratio {g['ttft_median_ratio']:.3f}), TPOT {_pct(g['tpot_median_abs_error']):>6}"
            f" (median ratio {g['tpot_median_ratio']:.3f})"
        )
    met = summary["meets_target"]
    console.print(
        f"target median |error| <= {_pct(TARGET_MEDIAN_ERROR)}: TTFT {'ok' if met['ttft'] else 'MISSED'}, "
        f"TPOT {'ok' if met['tpot'] else 'MISSED'}; status {summary['status']}"
    )


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if "--serving" in args_in:  # issue 17's serving search against the peer's: benchmarks/peer_serving.py
        from peer_serving import main as serving_main

        return serving_main([a for a in args_in if a != "--serving"])
    from _figures import emit, figure_parser, provenance

    parser = figure_parser(__doc__)
    parser.add_argument("--only", default=None, help="only the cases whose name contains this text")
    parser.add_argument("--backend", default="trtllm", choices=("trtllm", "vllm", "sglang"), help="peer backend")
    parser.add_argument("--version", default=None, help="peer database version (default: its current one)")
    parser.add_argument("--stride", type=int, default=32, help="decode sampling stride, both tools (default 32)")
    args = parser.parse_args(argv)
    if not peer_available():
        print(
            "aiconfigurator is not installed: pip install aiconfigurator (the peer of this benchmark)", file=sys.stderr
        )
        return 2
    cases = [c for c in CASES if args.only is None or args.only in c.name]
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    start = time.perf_counter()
    rows = evaluate_cases(cases, backend=args.backend, version=args.version, stride=args.stride, say=say)
    summary = summarise(rows)
    peer_versions = sorted({r["peer"]["version"] for r in rows if "peer" in r})
    from importlib.metadata import version as dist_version

    figures = {
        "summary": summary,
        "rows": rows,
        "peer": {
            "package": "aiconfigurator",
            "version": dist_version("aiconfigurator"),
            "licence": "Apache-2.0",
            "backend": args.backend,
            "database_versions": peer_versions,
        },
        "stride": args.stride,
        "seconds": time.perf_counter() - start,
        "provenance": provenance(),
    }
    if emit(json.loads(json.dumps(figures, default=str)), args.out, args.json):
        return 0
    _print(rows, summary)
    print(f"{len(rows)} cases in {figures['seconds']:.1f} s; peer aiconfigurator {figures['peer']['version']} "
          f"{args.backend} {', '.join(peer_versions)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
