"""A minimal continuous-batching inference engine in torch on this CPU, for ``serving_cpu.py``.

A small decoder-only transformer (random weights built in code: RMSNorm, multi-head attention, SwiGLU MLP; no
positional encoding, which costs nothing worth timing) served by an iteration-level scheduler with the rules of
``paratune.serving``'s simulator: running decodes first (one token each), then the running prompts' next chunks,
then waiting requests first come first served while the token budget lasts, at most ``max_num_seqs`` running;
a KV slot per running request (padded to the longest request). One process, or TP ranks over gloo: the QKV and
gate/up projections column-parallel, the attention output and down projections row-parallel, each followed by an
all-reduce; rank 0 schedules, broadcasts each iteration's plan, samples (greedy, LM head on rank 0 only) and
stamps the times. Requests arrive on the wall clock at their Poisson times; the engine sleeps when idle.

Records per request arrival, first-token and finish times; per iteration its :class:`paratune.serving.Mix` fields
and its duration (scheduling, forward and sampling: the whole loop, so iterations tile the busy time).
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class EngineConfig:
    layers: int = 4
    hidden: int = 512
    heads: int = 8
    inner: int = 1408
    vocab: int = 4096
    max_num_seqs: int = 16
    max_batched_tokens: int = 256
    seed: int = 0


class Model:
    """The weights of one TP rank (``rank`` of ``tp``), fp32, drawn from ``cfg.seed`` (the same on every rank)."""

    def __init__(self, cfg: EngineConfig, rank: int, tp: int, max_len: int) -> None:
        g = torch.Generator().manual_seed(cfg.seed)
        h, d = cfg.hidden, cfg.hidden // cfg.heads
        self.cfg, self.tp, self.rank = cfg, tp, rank
        self.heads = cfg.heads // tp
        self.d = d

        def draw(rows: int, cols: int) -> torch.Tensor:
            return torch.randn(rows, cols, generator=g) / math.sqrt(rows)

        def cols(w: torch.Tensor) -> torch.Tensor:  # column-parallel: this rank's output columns
            n = w.shape[1] // tp
            return w[:, rank * n : (rank + 1) * n].contiguous()

        def rows(w: torch.Tensor) -> torch.Tensor:  # row-parallel: this rank's input rows
            n = w.shape[0] // tp
            return w[rank * n : (rank + 1) * n].contiguous()

        self.embed = torch.randn(cfg.vocab, h, generator=g)
        self.layers = []
        for _ in range(cfg.layers):
            q, k, v = (cols(draw(h, h)) for _ in range(3))
            gate, up = cols(draw(h, cfg.inner)), cols(draw(h, cfg.inner))
            self.layers.append(
                {
                    "qkv": torch.cat([q, k, v], dim=1).contiguous(),
                    "o": rows(draw(h, h)),
                    "gate_up": torch.cat([gate, up], dim=1).contiguous(),
                    "down": rows(draw(cfg.inner, h)),
                }
            )
        self.head = draw(h, cfg.vocab) if rank == 0 else None
        slots = cfg.max_num_seqs
        shape = (slots, self.heads, max_len, d)
        self.k = [torch.zeros(shape) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape) for _ in range(cfg.layers)]

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp > 1:
            dist.all_reduce(x)
        return x

    def forward(self, ids: torch.Tensor, segs: list[tuple[int, int, int]]) -> torch.Tensor:
        """Hidden states of the tokens ``ids``: segments (slot, start position, tokens) in order."""
        x = self.embed[ids]
        hl = self.heads * self.d
        for li, w in enumerate(self.layers):
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            qkv = h @ w["qkv"]
            outs = []
            at = 0
            for slot, start, n in segs:
                part = qkv[at : at + n]
                at += n
                q = part[:, :hl].view(n, self.heads, self.d).transpose(0, 1)
                k = part[:, hl : 2 * hl].view(n, self.heads, self.d).transpose(0, 1)
                v = part[:, 2 * hl :].view(n, self.heads, self.d).transpose(0, 1)
                self.k[li][slot, :, start : start + n] = k
                self.v[li][slot, :, start : start + n] = v
                kk = self.k[li][slot, :, : start + n]
                vv = self.v[li][slot, :, : start + n]
                mask = None
                if n > 1:
                    mask = torch.arange(start + n)[None, :] <= (start + torch.arange(n))[:, None]
                o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
                outs.append(o.transpose(0, 1).reshape(n, hl))
            x = x + self._reduce(torch.cat(outs) @ w["o"])
            h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            gu = h @ w["gate_up"]
            half = gu.shape[1] // 2
            x = x + self._reduce((F.silu(gu[:, :half]) * gu[:, half:]) @ w["down"])
        return x


@dataclass
class _Req:
    rid: int
    arrival: float
    prompt: int
    output: int
    slot: int = -1
    done: int = 0  # prompt tokens in the cache
    generated: int = 0
    last_token: int = 0
    first: float = math.nan
    finish: float = math.nan


def _plan(running: list[_Req], waiting: deque[_Req], free: list[int], cfg: EngineConfig) -> list[tuple[_Req, int]]:
    """This iteration's (request, tokens): decodes, running prompts' chunks, then admissions (the simulator's rules)."""
    budget = cfg.max_batched_tokens
    plan = [(r, 1) for r in running if r.done == r.prompt]
    budget -= len(plan)
    for r in running:
        if r.done < r.prompt and budget > 0:
            q = min(r.prompt - r.done, budget)
            plan.append((r, q))
            budget -= q
    cap = min(cfg.max_num_seqs, cfg.max_batched_tokens)
    while waiting and budget > 0 and len(running) < cap:
        r = waiting.popleft()
        r.slot = free.pop()
        running.append(r)
        q = min(r.prompt, budget)
        plan.append((r, q))
        budget -= q
    return plan


class Clock:
    """Seconds since the start: the wall clock, or ``cpu``: a dedicated-machine clock.

    On a shared machine other processes take the cores for milliseconds at a time, and the wall clock counts
    that as the engine's time. The ``cpu`` clock advances by the process's CPU time (every thread: torch's and
    gloo's) while the engine works, and jumps to the next arrival while it is idle instead of sleeping: the run
    a core of its own would give, its iterations still really computed. Waits on a descheduled TP peer do not
    count either (an approximation: a blocking wait costs no CPU time even when the peer is working).
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("wall", "cpu"):
            raise ValueError(f"clock {kind!r}; allowed: wall, cpu")
        self.kind = kind
        self.wall0, self.cpu0, self.skipped = time.perf_counter(), time.process_time(), 0.0

    def now(self) -> float:
        if self.kind == "wall":
            return time.perf_counter() - self.wall0
        return time.process_time() - self.cpu0 + self.skipped

    def idle_until(self, t: float) -> None:
        gap = t - self.now()
        if gap <= 0:
            return
        if self.kind == "wall":
            time.sleep(gap)
        else:
            self.skipped += gap


def serve(
    model: Model, arrivals: list[float], prompts: list[int], outputs: list[int], *, tp: int, clock: str = "wall"
) -> dict[str, Any]:
    """Rank 0: serve the requests on ``clock``; other ranks: follow the broadcast plans. Rank 0's record."""
    cfg = model.cfg
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if model.rank != 0:
        while True:
            head = torch.zeros(2, dtype=torch.int64)
            dist.broadcast(head, 0)
            if head[0] < 0:
                return {}
            body = torch.zeros(int(head[0]) * 3 + int(head[1]), dtype=torch.int64)
            dist.broadcast(body, 0)
            segs = body[: 3 * int(head[0])].view(-1, 3).tolist()
            model.forward(body[3 * int(head[0]) :], [tuple(s) for s in segs])  # type: ignore[misc]
    reqs = [_Req(i, a, p, o) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=True))]
    pending = deque(reqs)
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    free = list(range(cfg.max_num_seqs))[::-1]
    iterations: list[dict[str, float]] = []
    clk = Clock(clock)
    while pending or waiting or running:
        now = clk.now()
        while pending and pending[0].arrival <= now:
            waiting.append(pending.popleft())
        if not waiting and not running:
            clk.idle_until(pending[0].arrival)
            continue
        start = clk.now()
        plan = _plan(running, waiting, free, cfg)
        ids, segs, sampled = [], [], []
        prefill_tokens, attention, decodes, context = 0, 0.0, 0, 0
        for r, q in plan:
            if r.done == r.prompt:  # a decode step: feed the last token, attend to prompt + generated
                ids.append(r.last_token)
                pos = r.prompt + r.generated - 1
                segs.append((r.slot, pos, 1))
                decodes += 1
                context += pos + 1
                sampled.append(r)
            else:
                ids.extend(torch.randint(cfg.vocab, (q,), generator=gen).tolist())
                segs.append((r.slot, r.done, q))
                prefill_tokens += q
                attention += q * (r.done + (q + 1) / 2)
                if r.done + q == r.prompt:
                    sampled.append(r)
        ids_t = torch.tensor(ids, dtype=torch.int64)
        if tp > 1:
            dist.broadcast(torch.tensor([len(segs), len(ids)], dtype=torch.int64), 0)
            dist.broadcast(torch.cat([torch.tensor(segs, dtype=torch.int64).view(-1), ids_t]), 0)
        x = model.forward(ids_t, segs)
        ends = torch.tensor(_ends(segs))
        chosen = {id(r) for r in sampled}
        rows = [i for i, (r, _) in enumerate(plan) if id(r) in chosen]  # plan order = segment order
        assert model.head is not None
        tokens = (x[ends[rows]] @ model.head).argmax(-1).tolist() if rows else []
        end = clk.now()
        for i, tok in zip(rows, tokens, strict=True):
            r = plan[i][0]
            if r.done < r.prompt:
                r.done = r.prompt
                r.first = end
            r.generated += 1
            r.last_token = int(tok)
            if r.generated == r.output:
                r.finish = end
                running.remove(r)
                free.append(r.slot)
        for r, q in plan:
            if r.done < r.prompt:
                r.done += q
        iterations.append(
            {
                "start_s": start,
                "duration_s": end - start,
                "prefill_tokens": prefill_tokens,
                "prefill_attention": attention,
                "decode_seqs": decodes,
                "decode_context": context,
                "sampled": len(rows),
            }
        )
    if tp > 1:
        dist.broadcast(torch.tensor([-1, 0], dtype=torch.int64), 0)
    return {
        "requests": [
            {"arrival_s": r.arrival, "prompt": r.prompt, "output": r.output, "first_s": r.first, "finish_s": r.finish}
            for r in reqs
        ],
        "iterations": iterations,
        "wall_s": clk.now(),
        "clock": clock,
    }


def _ends(segs: list[tuple[int, int, int]]) -> list[int]:
    """The index of each segment's last token in the iteration's flat batch."""
    out, at = [], 0
    for _, _, n in segs:
        at += n
        out.append(at - 1)
    return out


def run(
    cfg: EngineConfig,
    arrivals: list[float],
    prompts: list[int],
    outputs: list[int],
    *,
    rank: int = 0,
    tp: int = 1,
    clock: str = "wall",
) -> dict[str, Any]:
    """Build the model and serve; one thread per process."""
    torch.set_num_threads(1)
    max_len = max(p + o for p, o in zip(prompts, outputs, strict=True))
    model = Model(cfg, rank, tp, max_len)
    # warm the kernels up (a prefill chunk and a decode) so the first request does not pay it
    model.forward(torch.zeros(8, dtype=torch.int64), [(0, 0, 8)])
    model.forward(torch.zeros(1, dtype=torch.int64), [(0, 8, 1)])
    return serve(model, arrivals, prompts, outputs, tp=tp, clock=clock)


def tp_worker(
    rank: int, world: int, tmp: str, cfg_fields: dict[str, Any], runs: list[dict[str, Any]], clock: str
) -> None:
    """One of ``world`` gloo ranks; serves every run in turn, rank 0 writing ``results.json`` in ``tmp``."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10)
    )
    try:
        results = []
        for spec in runs:
            dist.barrier()
            cfg = EngineConfig(**cfg_fields)
            results.append(
                run(cfg, spec["arrivals"], spec["prompts"], spec["outputs"], rank=rank, tp=world, clock=clock)
            )
        if rank == 0:
            (Path(tmp) / "results.json").write_text(json.dumps(results))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def config_dict(cfg: EngineConfig) -> dict[str, Any]:
    return asdict(cfg)
