"""Timing loops of the end-to-end validation: one process, or 2 processes over gloo (TP2, PP2).

What is timed (all ranks read the same monotonic clock, so a run lasts from the
moment the last rank starts to the moment the last rank ends):

* prefill: embedding to last-token logits of ``batch x seq`` tokens (TTFT). PP2
  with m micro-batches sends each micro-batch's hidden state from stage 0 to
  stage 1 as soon as it is ready (isend), so the stages overlap like the cost
  model's flow shop.
* decode: ``steps`` consecutive decode steps over a KV cache of ``seq`` tokens
  (+ the new one); each rank stamps the end of every step and the TBT is the
  steady-state interval ``(last - first) / (steps - 1)`` (the slowest rank's), so
  a pipeline's fill and drain do not count. PP2 decodes autoregressively: the
  last stage sends each micro-batch's next tokens back to stage 0, which starts
  that micro-batch's next step on receipt (with m=2 the stages overlap in the
  steady state, as the cost model's ``m x bottleneck`` assumes). That return
  send is real work the cost model's TBT leaves out (one p2p latency per step
  at m=1).

Imports torch at the top: import it lazily.
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...graphs import ModelSpec
from . import _torchops as ops
from ._e2e_model import Shard


@dataclass(frozen=True)
class Case:
    """One measured configuration: ``mode`` single | tp2 | pp2, ``phase`` prefill | decode.

    ``seq`` is the prompt length (prefill) or the cached context (decode).
    """

    mode: str
    phase: str
    batch: int
    seq: int
    micro_batches: int = 1

    @property
    def tp(self) -> int:
        return 2 if self.mode == "tp2" else 1

    @property
    def pp(self) -> int:
        return 2 if self.mode == "pp2" else 1

    @property
    def label(self) -> str:
        what = "prompt" if self.phase == "prefill" else "context"
        mb = f" m={self.micro_batches}" if self.micro_batches > 1 else ""
        return f"{self.mode} {self.phase} batch={self.batch} {what}={self.seq}{mb}"


def stage_layers(n_layers: int, pp: int, stage: int) -> tuple[int, int]:
    """Layer range of ``stage`` as ``Plan.uniform`` cuts it (the first stages get the extra layers)."""
    base, extra = divmod(n_layers, pp)
    first = sum(base + (1 if s < extra else 0) for s in range(stage))
    return first, first + base + (1 if stage < extra else 0) - 1


def _allreduce(x: torch.Tensor) -> None:
    dist.all_reduce(x)


def build_shard(spec: ModelSpec, case: Case, rank: int, seed: int) -> Shard:
    if case.mode == "tp2":
        return Shard(spec, tp=2, rank=rank, seed=seed, allreduce=_allreduce)
    if case.mode == "pp2":
        return Shard(spec, layers=stage_layers(spec.layers, 2, rank), seed=seed)
    return Shard(spec, seed=seed)


Marks = list[float]


def case_fn(shard: Shard, case: Case, rank: int, steps: int) -> Callable[[], Marks]:
    """A closure running ``case`` once on this rank; decode runs ``steps`` steps and returns their end times."""
    gen = torch.Generator().manual_seed(1234)
    vocab = shard.spec.vocab
    if case.mode == "pp2":
        return _pp_fn(shard, case, rank, steps, gen)
    if case.phase == "prefill":
        prompt = torch.randint(0, vocab, (case.batch, case.seq), generator=gen)

        def prefill() -> Marks:
            shard.prefill(prompt)
            return []

        return prefill
    ids = torch.randint(0, vocab, (case.batch,), generator=gen)
    caches = shard.new_caches(case.batch, case.seq)

    def decode() -> Marks:
        marks = []
        for _ in range(steps):
            shard.decode(ids, caches, case.seq)
            marks.append(time.perf_counter())
        return marks

    return decode


def _pp_fn(shard: Shard, case: Case, rank: int, steps: int, gen: torch.Generator) -> Callable[[], Marks]:
    m, h = case.micro_batches, shard.spec.hidden
    if case.batch % m:
        raise ValueError(f"{case.label}: micro_batches must divide the batch")
    mb = case.batch // m
    prefill = case.phase == "prefill"
    tokens = mb * (case.seq if prefill else 1)
    ids = [torch.randint(0, shard.spec.vocab, (mb, case.seq) if prefill else (mb,), generator=gen) for _ in range(m)]
    caches = None if prefill else [shard.new_caches(mb, case.seq) for _ in range(m)]
    bufs = [torch.empty(tokens, h, dtype=shard.dtype) for _ in range(m)]
    n_steps = 1 if prefill else steps

    def stage0() -> Marks:
        handles: list[Any] = []
        sent: list[torch.Tensor] = []  # kept alive until the sends complete
        marks = []
        for step in range(n_steps):
            for j in range(m):
                if step:
                    dist.recv(ids[j], 1)
                x = shard.embed(ids[j].reshape(-1))
                sent.append(shard.run_layers(x, mb, caches=None if caches is None else caches[j], pos=case.seq))
                handles.append(dist.isend(sent[-1], 1))
            marks.append(time.perf_counter())
        for hd in handles:
            hd.wait()
        return marks

    def stage1() -> Marks:
        handles: list[Any] = []
        sent: list[torch.Tensor] = []
        marks = []
        for step in range(n_steps):
            for j in range(m):
                dist.recv(bufs[j], 0)
                x = shard.run_layers(bufs[j], mb, caches=None if caches is None else caches[j], pos=case.seq)
                logits = shard.logits(x, mb)
                if step < n_steps - 1:
                    sent.append(logits.argmax(-1))  # kept alive until the send completes
                    handles.append(dist.isend(sent[-1], 0))
            marks.append(time.perf_counter())
        for hd in handles:
            hd.wait()
        return marks

    return stage0 if rank == 0 else stage1


Span = tuple[float, float, Marks]


def time_case(fn: Callable[[], Marks], reps: int, *, distributed: bool, warmup: int = 1) -> list[Span]:
    """(start, end, step marks) of ``reps`` runs after ``warmup`` (a barrier before each when distributed).

    The garbage collector is off meanwhile (:func:`._torchops.no_gc`), in the
    microbenchmarks too.
    """
    with ops.no_gc():
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(reps):
            if distributed:
                dist.barrier()
            t0 = time.perf_counter()
            marks = fn()
            out.append((t0, time.perf_counter(), marks))
        return out


def run_single(spec: ModelSpec, cases: list[Case], *, reps: int, steps: int, seed: int,
               progress: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Time single-process cases in this process with one torch thread (restored afterwards)."""
    previous = ops.set_threads(1)
    try:
        shard = Shard(spec, seed=seed)
        out = []
        for case in cases:
            spans = time_case(case_fn(shard, case, 0, steps), reps, distributed=False)
            out.append(_result(case, [[s] for s in spans]))
            progress(f"{case.label}: {out[-1]['measured_s'] * 1e3:.1f} ms")
        return out
    finally:
        ops.set_threads(previous)


def _result(case: Case, spans: list[list[Span]]) -> dict[str, Any]:
    """Median over reps of: prefill, last rank's start to last rank's end; decode, the slowest rank's step interval."""
    if case.phase == "decode":
        runs = [max((m[-1] - m[0]) / (len(m) - 1) for _, _, m in rep) for rep in spans]
    else:
        runs = [max(e for _, e, _ in rep) - max(s for s, _, _ in rep) for rep in spans]
    return {**asdict(case), "measured_s": statistics.median(runs), "runs_s": runs}


def dist_worker(rank: int, world: int, tmp: str, spec_fields: dict[str, Any], case_fields: list[dict[str, Any]],
                reps: int, steps: int, seed: int, check: bool) -> None:  # fmt: skip
    """One of 2 gloo ranks: run every TP2/PP2 case; rank 0 writes ``results.json`` in ``tmp``."""
    ops.set_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))  # fmt: skip
    try:
        spec = ModelSpec(**spec_fields)
        cases = [Case(**c) for c in case_fields]
        results: list[dict[str, Any]] = []
        shards: dict[str, Shard] = {}
        for case in cases:
            shard = shards.get(case.mode) or shards.setdefault(case.mode, build_shard(spec, case, rank, seed))
            spans = time_case(case_fn(shard, case, rank, steps), reps, distributed=True)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, spans)
            results.append(_result(case, [list(rep) for rep in zip(*gathered, strict=True)]))
        checks = {mode: _consistency(spec, shard, rank, seed) for mode, shard in shards.items()} if check else {}
        if rank == 0:
            (Path(tmp) / "results.json").write_text(json.dumps({"cases": results, "checks": checks}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _consistency(spec: ModelSpec, shard: Shard, rank: int, seed: int) -> float:
    """Max |sharded - unsharded| / max |unsharded| of prefill logits (TP2: gathered; PP2: on stage 1)."""
    ids = torch.randint(0, spec.vocab, (2, 8), generator=torch.Generator().manual_seed(7))
    ref = Shard(spec, seed=seed).prefill(ids).float()
    if shard.tp > 1:
        parts = [torch.empty(2, spec.vocab // shard.tp, dtype=shard.dtype) for _ in range(shard.tp)]
        dist.all_gather(parts, shard.prefill(ids).contiguous())
        got = torch.cat(parts, dim=-1).float()
    else:
        out = torch.empty(2, spec.vocab)
        if rank == 0:
            dist.send(shard.run_layers(shard.embed(ids.reshape(-1)), 2), 1)
        else:
            buf = torch.empty(16, spec.hidden, dtype=shard.dtype)
            dist.recv(buf, 0)
            out = shard.logits(shard.run_layers(buf, 2), 2).float()
        dist.broadcast(out, 1)
        got = out
    err = torch.tensor([float((got - ref).abs().max() / ref.abs().max())])
    dist.broadcast(err, 0)
    return float(err.item())
