"""Microbenchmarks of this machine (CPU) or a GPU, written in the Vidur profile format.

Why the Vidur format: ``fit_profile`` and ``check_profile`` read it, so a machine
measured here is calibrated and checked by exactly the code that fits the public
A100/H100 profiles. What is written under ``out_dir``:

* ``compute/<device>/<org>/<model>/mlp.csv`` — Vidur's columns: per
  (num_tokens, num_tensor_parallel_workers) the ms statistics
  (``time_stats.<op>.{min,max,mean,median,std}``) of every op of one decoder layer
  as run on ONE device of a TP group of t (shapes sharded by t in one process, as
  Vidur does), and the model-shape columns.
* ``compute/<device>/<org>/<model>/attention.csv`` — our own format, close to
  Vidur's attention profile: ``time_stats.attn_prefill.*`` (causal attention over
  a prompt of ``prefill_chunk_size`` tokens, rows with ``is_prefill`` True) or
  ``time_stats.attn_decode.*`` (one new token per sequence attending to
  ``kv_cache_size`` cached tokens plus itself, ``is_prefill`` False; the op writes
  the new k, v into the cache), per ``batch_size``, with ``n_embd``, ``n_q_head``,
  ``n_kv_head`` (model totals) and ``num_tensor_parallel_workers`` (heads / t run).
* ``network/<device>_local/{all_reduce,send_recv}.csv`` — Vidur's columns, ``size``
  in bytes as Vidur's profiler writes it (see :mod:`._measure_net`).
* ``README.md`` and ``meta.json`` — per part (compute, network) the date and the
  CPU other processes used meanwhile (:class:`OtherLoad`), machine, torch, dtype, threads.

Conventions: one CPU "device" of the ``cpu-local`` platform is one process with
ONE torch thread (``torch.set_num_threads(1)``), so the measured times are those
of a process of a 2-process run on the 2-core machine. Tensors are bf16 by default
because the zoo's models (and so the cost model's dtype) are bf16 (the zoo has no
fp32); this CPU has no bf16 arithmetic (AVX2 only), so its bf16 GEMMs run about 8x
slower than fp32 ones — that is what the profile records, and what the end-to-end
model runs. Each time is a statistic over repeats after warm-up (see
:func:`._torchops.time_calls`), weights and KV caches read cold (see
:mod:`._measure_ops`); the fit uses the median. The op implementations are those
of :mod:`._torchops`, shared with the end-to-end model (:mod:`._e2e_model`).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .._machine import this_machine
from ._measure_net import measure_collectives
from ._measure_spec import DEVICES, FULL, GPU_FULL, PARTS, QUICK, Grid, progress


def measure(
    device: str,
    out_dir: Path,
    *,
    quick: bool = False,
    dtype: str = "bf16",
    parts: Sequence[str] = PARTS,
    grid: Grid | None = None,
    command: str = "",
) -> Path:
    """Run the microbenchmarks on ``device`` (``cpu`` or ``cuda``) and write them under ``out_dir``.

    Returns ``out_dir``. ``quick`` runs a tiny grid (a test, a first look: seconds);
    ``grid`` another one (``calibrate local`` runs :data:`LOCAL`); ``command`` is what
    ``meta.json`` records as the command that measured.
    ``parts`` picks ``compute`` (ops and attention) and/or ``network`` (collectives: 2
    processes, 2 GPUs on CUDA), e.g. to measure again a part that another busy process
    spoiled (``meta.json`` records, per part, the cores other processes used meanwhile).
    """
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of: {', '.join(DEVICES)}")
    if not parts or set(parts) - set(PARTS):
        raise ValueError(f"parts {list(parts)!r}: choose among {', '.join(PARTS)}")
    from . import _torchops as ops
    from ._measure_ops import ColdPool, attention_rows, layer_rows

    if dtype not in ops.DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of: {', '.join(ops.DTYPES)}")
    if device == "cuda" and not ops.torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no GPU")
    grid = grid or (QUICK if quick else GPU_FULL if device == "cuda" else FULL)
    out_dir = Path(out_dir)
    previous = ops.set_threads(1) if device == "cpu" else None
    runs: dict[str, Any] = {}
    try:
        if "compute" in parts:
            t0 = time.perf_counter()
            with OtherLoad() as load:
                pool = ColdPool(device, ops.DTYPES[dtype])
                for i, shape in enumerate(grid.shapes):
                    folder = out_dir / "compute" / device / shape.org / shape.model
                    _write_csv(folder / "mlp.csv", layer_rows(shape, grid, pool))
                    if i < grid.attention_shapes:
                        _write_csv(folder / "attention.csv", attention_rows(shape, grid, pool))
                del pool
            runs["compute"] = (time.perf_counter() - t0, load.cores)
        if "network" in parts:
            t0 = time.perf_counter()
            with OtherLoad() as load:
                done = measure_collectives(device, out_dir / "network" / f"{device}_local", grid.sizes, dtype,
                                           budget_s=grid.budget_s, min_reps=grid.min_reps,
                                           max_reps=grid.max_reps)  # fmt: skip
            if done is not None:
                runs["network"] = (time.perf_counter() - t0, load.cores)
    finally:
        if previous is not None:
            ops.set_threads(previous)
    command = command or f"paratune calibrate measure --device {device} -o DIR" + (" --quick" if quick else "")
    _write_meta(out_dir, device, dtype, grid, quick, runs, command)
    return out_dir


class OtherLoad:
    """CPU used by OTHER processes while a block runs, in cores (Linux ``/proc/stat``; None elsewhere).

    Why: this machine's 2 cores are the devices being measured; any other busy
    process (a test run, a build) shows up as slower kernels. The measurement and
    the end-to-end validation record it, and warn, rather than guess afterwards.
    ``cores`` = (all busy CPU time - this process's and its waited-for children's)
    / wall time.
    """

    def __enter__(self) -> OtherLoad:
        self.cores: float | None = None
        self._start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, own0, t0 = self._start
        busy1 = _busy_seconds()
        if busy0 is None or busy1 is None:
            return
        wall = max(time.perf_counter() - t0, 1e-9)
        self.cores = max(0.0, ((busy1 - busy0) - (_own_seconds() - own0)) / wall)
        if self.cores > 0.15:
            progress(f"warning: other processes used {self.cores:.2f} cores meanwhile; timings are suspect")


def _busy_seconds() -> float | None:
    import os

    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_seconds() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError(f"nothing measured for {path}: the grid skipped every case")
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def machine_info(device: str) -> dict[str, Any]:
    """Where a measurement was taken: CPU model, cores and vector extensions (:mod:`.._machine`), torch, GPU."""
    from . import _torchops as ops

    here = this_machine()
    info: dict[str, Any] = {"cpu": here.cpu, "cores": here.cores, "isa": list(here.isa),
                            "torch": ops.torch.__version__, "python": platform.python_version()}  # fmt: skip
    if device == "cuda":
        info["gpu"] = ops.torch.cuda.get_device_name(0)
        info["gpus"] = ops.torch.cuda.device_count()
    return info


def _write_meta(
    out_dir: Path, device: str, dtype: str, grid: Grid, quick: bool, runs: dict[str, Any], command: str
) -> None:
    """Write ``meta.json`` and ``README.md``; a part not measured this time keeps its earlier record.

    ``runs`` maps a part to ``(seconds, cores other processes used meanwhile)``.
    """
    old: Any = json.loads((out_dir / "meta.json").read_text()) if (out_dir / "meta.json").is_file() else {}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    earlier = old.get("parts") if isinstance(old, dict) else None
    parts = {k: v for k, v in earlier.items() if k not in runs} if isinstance(earlier, dict) else {}
    for part, (seconds, cores) in runs.items():
        parts[part] = {"date": now, "seconds": round(seconds, 1),
                       "other_processes_cores": cores if cores is None else round(cores, 3)}  # fmt: skip
    parts = dict(sorted(parts.items()))
    meta: dict[str, Any] = {
        "date": now,
        "device": device,
        "machine": machine_info(device),
        "dtype": dtype,
        "threads_per_process": 1 if device == "cpu" else None,
        "quick": quick,
        "parts": parts,
        "other_processes_cores": {k: v["other_processes_cores"] for k, v in parts.items()},
        "grid": {k: v for k, v in asdict(grid).items() if k != "shapes"},
        "shapes": [asdict(s) for s in grid.shapes],
        "command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    m = meta["machine"]
    done = "; ".join(f"{k} on {v['date']} in {v['seconds']} s (other processes: {v['other_processes_cores']} cores)"
                     for k, v in parts.items())  # fmt: skip
    (out_dir / "README.md").write_text(
        f"# Measured profiles: {device} ({m.get('gpu', m['cpu'])}, {m['cores']} cores)\n\n"
        f"Written by `{meta['command']}`: {done}. torch {m['torch']}, dtype {dtype}, "
        f"{'one torch thread per process' if device == 'cpu' else 'one GPU per process'}.\n\n"
        "Format: Vidur's (`compute/<device>/<org>/<model>/mlp.csv`, `network/<device>_local/*.csv`, times in ms,\n"
        "network `size` in bytes) plus `attention.csv` (see `paratune.costmodel.calibration._measure`).\n"
        f"Fit with `paratune.costmodel.calibration.fit_with_attention(DIR, '{device}')` (`fit_profile` and the\n"
        "attention curves), or `paratune calibrate fit --profiles DIR --device " + device + "` without attention.\n"
    )
