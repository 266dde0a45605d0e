"""Collective microbenchmarks through torch.distributed: 2 processes, gloo on CPU, NCCL on 2 GPUs.

Written as Vidur's ``network/<cluster>/{all_reduce,send_recv}.csv`` so the same
fit reads them: one row per (num_workers, size), ``size`` in **bytes** of the
buffer, as Vidur's collective profiler writes it (``"size": self._size * 2  #
bytes`` for fp16 elements; ``_read.py`` reads it so), ``devices_per_node`` = ``max_devices_per_node`` =
the group size (one node). all_reduce rows time one all-reduce on rank 0 (calls
back to back, so the ranks stay in step); send_recv rows time half a ping-pong
(rank 0 sends, rank 1 sends it back), i.e. one one-way transfer.

Why 2 processes even on a 2-core CPU: the ``cpu-local`` platform models this
machine as 2 devices (one process, one thread each), so its links are what two
such processes see — including the scheduling noise of sharing the cores.

On CPU each timed call follows ``CPU_GAP_S`` of busy work on both ranks (not
timed), as in a model, where a collective comes after compute, when gloo's
worker and socket threads have gone to sleep. Waking them costs from a few
hundred microseconds to milliseconds on this virtual machine, more the longer
they slept (a small all-reduce, mean: 1.4 ms back to back, 1.8 ms after 2 ms of
compute, 2.7-3 ms after 5 ms, 4 ms after 20 ms). The alpha-beta model has one
latency, so one gap is chosen: 2 ms, the geometric middle of the compute between
two collectives of a TP layer in decode on this CPU (0.5 ms at batch 1, 8 ms at
batch 16). TP decode at batch 1 is then predicted somewhat slow and at batch 8-16
somewhat fast (see ``configs/measurements/cpu-local``). The times are also bimodal
and heavy-tailed (a call takes either ~0.5 or ~2.5 ms), so the median of single
calls flips between the modes from one size to the next, while what a step pays
is the mean over its many collectives: one repeat on CPU is the mean of a burst
of ``CPU_BURST`` calls, and the statistics (median, ...) are over repeats.
"""

from __future__ import annotations

import csv
import datetime
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._measure_spec import STATS, progress

COLLECTIVES = ("all_reduce", "send_recv")
#: Busy seconds before each timed CPU collective (a model's compute between collectives).
CPU_GAP_S = 0.002
#: Calls averaged into one repeat on CPU (see the module docstring).
CPU_BURST = 8


def measure_collectives(
    device: str,
    out: Path,
    sizes: Sequence[int],
    dtype: str,
    *,
    budget_s: float,
    min_reps: int,
    max_reps: int,
    world: int = 2,
) -> Path | None:
    """Spawn ``world`` processes, time all-reduce and send/recv per size, write the CSVs under ``out``.

    Returns ``out``, or None when CUDA has fewer than ``world`` GPUs (nothing to measure).
    """
    from . import _torchops as ops

    if device == "cuda" and ops.torch.cuda.device_count() < world:
        progress(f"network skipped: {ops.torch.cuda.device_count()} GPU(s), the collectives need {world}")
        return None
    progress(f"network: {world} processes ({'gloo' if device == 'cpu' else 'nccl'}), {len(sizes)} sizes")
    with tempfile.TemporaryDirectory(prefix="paratune-net-") as tmp:
        args = (world, device, tmp, list(sizes), dtype, budget_s, min_reps, max_reps)
        ops.torch.multiprocessing.spawn(_worker, args=args, nprocs=world, join=True)
        results = json.loads((Path(tmp) / "rows.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in COLLECTIVES:
        rows = [r for r in results if r["collective"] == name]
        with (out / f"{name}.csv").open("w", newline="") as fh:
            fields = ["", *[f"time_stats.{name}.{k}" for k in STATS], "rank", "num_workers", "size", "collective",
                      "devices_per_node", "max_devices_per_node"]  # fmt: skip
            writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow({"": i, **{f"time_stats.{name}.{k}": row[k] for k in STATS},
                                 "rank": 0, "num_workers": world, "size": row["bytes"], "collective": name,
                                 "devices_per_node": world, "max_devices_per_node": world})  # fmt: skip
    return out


def _worker(
    rank: int,
    world: int,
    device: str,
    tmp: str,
    sizes: list[int],
    dtype: str,
    budget_s: float,
    min_reps: int,
    max_reps: int,
) -> None:
    """One rank: time every collective and size; rank 0 writes ``rows.json``."""
    from . import _torchops as ops

    torch = ops.torch
    dist = torch.distributed
    if device == "cpu":
        ops.set_threads(1)
        backend, dev = "gloo", torch.device("cpu")
    else:
        torch.cuda.set_device(rank)
        backend, dev = "nccl", torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5))  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        for name in COLLECTIVES:
            for size in sizes:
                x = torch.zeros(size, dtype=ops.DTYPES[dtype], device=dev)
                fn = _all_reduce(x) if name == "all_reduce" else _ping_pong(x, rank)
                times = _timed(fn, device, dev, budget_s, min_reps, max_reps)
                if name == "send_recv":
                    times = [t / 2 for t in times]
                ms = [t * 1e3 for t in times]
                rows.append({"collective": name, "size": size, "bytes": size * x.element_size(), "min": min(ms),
                             "max": max(ms),
                             "mean": statistics.fmean(ms), "median": statistics.median(ms),
                             "std": statistics.pstdev(ms)})  # fmt: skip
                if rank == 0 and size == sizes[-1]:
                    progress(f"network {name}: {len(sizes)} sizes done")
        if rank == 0:
            (Path(tmp) / "rows.json").write_text(json.dumps(rows))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _all_reduce(x: Any) -> Callable[[], None]:
    from . import _torchops as ops

    def run() -> None:
        ops.torch.distributed.all_reduce(x)

    return run


def _ping_pong(x: Any, rank: int) -> Callable[[], None]:
    from . import _torchops as ops

    dist = ops.torch.distributed

    def run() -> None:
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)

    return run


def _timed(fn: Callable[[], None], device: str, dev: Any, budget_s: float, min_reps: int, max_reps: int) -> list[float]:
    """Warm-up, then as many timed repeats as fit ``budget_s`` — the same count on every rank (rank 0 decides).

    A repeat is one call (GPU) or the mean of a burst of :data:`CPU_BURST` calls (CPU).
    """
    from . import _torchops as ops

    torch = ops.torch
    gap, burst = (CPU_GAP_S, CPU_BURST) if device == "cpu" else (0.0, 1)
    for _ in range(3):
        fn()
    per_rep = burst * (_one(fn, device, gap) + gap)
    count = torch.tensor([max(min_reps, min(max_reps, int(budget_s / max(per_rep, 1e-7))))], device=dev)
    torch.distributed.broadcast(count, 0)
    return [sum(_one(fn, device, gap) for _ in range(burst)) / burst for _ in range(int(count.item()))]


def _one(fn: Callable[[], None], device: str, gap_s: float = 0.0) -> float:
    from . import _torchops as ops

    end = time.perf_counter() + gap_s
    while time.perf_counter() < end:  # busy, like compute between collectives (see CPU_GAP_S)
        pass
    ops.sync(device)
    t0 = time.perf_counter()
    fn()
    ops.sync(device)
    return time.perf_counter() - t0
