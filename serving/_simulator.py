"""The request-level serving simulator: continuous batching on every instance, requests from a traffic.

Each instance runs an iteration-level scheduler like vLLM v1's (docs/serving.md, "The request-level simulator"):

- **Order.** Running decodes first (one token each), then the running prompts' next chunks in admission order,
  then waiting requests first come, first served, while the iteration's token budget (``max_batched_tokens``)
  lasts; a prompt that does not fit the budget is chunked. The head of the queue blocks the rest (no skipping).
- **Admission.** A request is admitted while fewer than ``min(max_num_seqs, max_batched_tokens)`` are running
  and its whole KV (prompt + output tokens) fits the free KV capacity, which it then holds until it finishes.
  vLLM allocates pages as tokens arrive and, when they run out, preempts the newest running request (recompute);
  reserving up front never preempts and admits fewer requests when outputs are long beside the capacity.
- **Iterations.** One iteration of ``mix`` takes ``costs[role].latency_s(mix)``. With PP the instance keeps up
  to ``pp`` iterations in flight (vLLM's virtual engines): each *lane* holds its own running requests, a new
  iteration may start ``interval_s(mix)`` after the previous one (the slowest stage) on a lane whose previous
  iteration is done, and its tokens come out ``latency_s(mix)`` after its start.
- **Routing.** A request goes to the instance with the fewest requests in it (waiting or running); ties rotate.
- **Disaggregation.** A prefill instance runs prompts only; the first token is sampled there (TTFT ends), its
  KV is freed and the request reaches the decode pool ``kv_transfer_s(prompt tokens)`` later (0 unless the
  cost objects or the caller give a transfer time), where a decode instance admits it as above.

The bookkeeping is incremental (a heap of finishing steps per lane, running sums of decode contexts), so an
iteration costs O(chunks + admissions + finishes), not O(batch).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .._limits import check_at_most
from ._traffic import Requests, sample_requests
from ._types import MAX_REQUESTS, Deployment, IterationCost, Mix, ServingMetrics, Slo, Traffic

#: Event kinds, in the order they run at equal times (a finishing iteration frees room before arrivals queue).
_DONE, _FREE, _KV, _ARRIVE = 0, 1, 2, 3
#: Saturation: the waiting time grows by more than this many seconds per second of arrivals...
SATURATION_SLOPE = 0.02
#: ...and the last quarter's mean wait is this many times the first quarter's.
SATURATION_GROWTH = 2.0


@dataclass
class _Lane:
    """Requests of one in-flight iteration slot of an instance (the instance itself without PP)."""

    busy: bool = False
    steps: int = 0  # decode iterations done
    finishing: list[tuple[int, int]] = field(default_factory=list)  # heap of (last step, request)
    decoding: int = 0
    context: int = 0  # tokens the decoding requests attend to in the next iteration, summed
    prefilling: list[int] = field(default_factory=list)  # requests with prompt tokens left, in admission order


@dataclass
class _Instance:
    role: str
    index: int
    cost: IterationCost
    cap: int  # most running requests
    budget: int  # tokens per iteration
    kv_capacity: int
    lanes: list[_Lane]
    waiting: deque[int] = field(default_factory=deque)
    running: int = 0
    kv_used: int = 0
    stage_free: float = 0.0  # when the first stage can start another iteration
    next_lane: int = 0

    @property
    def load(self) -> int:
        return len(self.waiting) + self.running


@dataclass
class _Iteration:
    decodes: int
    chunks: list[tuple[int, int]]  # (request, tokens)


class _Sim:
    def __init__(
        self,
        deployment: Deployment,
        costs: Mapping[str, IterationCost],
        reqs: Requests,
        closed: int | None,
        kv_transfer_s: Callable[[int], float],
    ) -> None:
        self.dep = deployment
        self.prompt = reqs.prompt.tolist()
        self.output = reqs.output.tolist()
        n = len(self.prompt)
        self.arrival = reqs.arrival_s.tolist()
        self.first = [math.nan] * n
        self.finish = [math.nan] * n
        self.wait = [0.0] * n  # time in queues before admission, summed over pools
        self.done_prompt = [0] * n
        self.kv_transfer_s = kv_transfer_s
        self.closed = closed
        self.released = 0
        self.emitted_t: list[float] = []
        self.emitted_n: list[int] = []
        self.queued_at = [0.0] * n
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, sequence number, argument)
        self.seq = 0
        self.launched = 0
        self.iterations: dict[int, tuple[_Instance, int, _Iteration]] = {}  # by the _DONE event's number
        self.pools: dict[str, list[_Instance]] = {}
        for pool in deployment.pools:
            cost = costs.get(pool.role)
            if cost is None:
                raise ValueError(f"costs has no entry for the {pool.role!r} pool (keys: {', '.join(costs)})")
            cap = min(pool.max_num_seqs, pool.max_batched_tokens)
            if cost.kv_capacity_tokens is None:
                raise ValueError(f"the {pool.role} cost has no KV capacity: the weights alone do not fit an instance")
            kv = int(cost.kv_capacity_tokens)
            need = [p + o for p, o in zip(self.prompt, self.output, strict=True)]
            if pool.role == "prefill":
                need = self.prompt
            biggest = max(need)
            if biggest > kv:
                raise ValueError(
                    f"a request needs {biggest:,} KV tokens but a {pool.role} instance holds {kv:,} "
                    "(the engine would refuse it: shorten the lengths or give the instance more memory)"
                )
            pp = max(1, int(getattr(cost, "pp", pool.pp)))
            self.pools[pool.role] = [
                _Instance(pool.role, i, cost, cap, pool.max_batched_tokens, kv, [_Lane() for _ in range(pp)])
                for i in range(pool.replicas)
            ]
        self.rr = dict.fromkeys(self.pools, 0)
        self.instances = [inst for insts in self.pools.values() for inst in insts]
        for k, inst in enumerate(self.instances):
            inst.index = k

    # -- events ---------------------------------------------------------------------------------------------
    def push(self, t: float, kind: int, a: int) -> int:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, a))
        return self.seq

    def run(self) -> None:
        n = len(self.prompt)
        first_batch = n if self.closed is None else min(self.closed, n)
        for r in range(first_batch):
            self.push(self.arrival[r], _ARRIVE, r)
        self.released = first_batch
        entry = "prefill" if self.dep.disaggregated else "mixed"
        while self.events:
            t, kind, seq, a = heapq.heappop(self.events)
            if kind == _ARRIVE:
                self.route(t, entry, a)
            elif kind == _KV:
                self.route(t, "decode", a)
            elif kind == _FREE:
                self.launch(t, self.instances[a])
            else:
                inst, lane_no, it = self.iterations.pop(seq)
                self.complete(t, inst, lane_no, it)
                self.launch(t, inst)

    def route(self, t: float, role: str, r: int) -> None:
        insts = self.pools[role]
        start = self.rr[role]
        self.rr[role] = (start + 1) % len(insts)
        best = min(range(len(insts)), key=lambda k: (insts[(start + k) % len(insts)].load, k))
        inst = insts[(start + best) % len(insts)]
        self.queued_at[r] = t
        inst.waiting.append(r)
        self.launch(t, inst)

    # -- one instance ---------------------------------------------------------------------------------------
    def launch(self, t: float, inst: _Instance) -> None:
        """Start an iteration on an idle lane of ``inst`` if its first stage is free and there is work."""
        if t < inst.stage_free:
            return
        pp = len(inst.lanes)
        for k in range(pp):
            lane_no = (inst.next_lane + k) % pp
            lane = inst.lanes[lane_no]
            if lane.busy:
                continue
            it = self.schedule(t, inst, lane)
            if it is None:
                continue
            inst.next_lane = (lane_no + 1) % pp
            mix = self.mix(lane, it)
            latency = float(inst.cost.latency_s(mix))
            interval = float(inst.cost.interval_s(mix)) if pp > 1 else latency
            if not (latency > 0 and math.isfinite(latency) and 0 < interval <= latency * (1 + 1e-9)):
                raise ValueError(f"{inst.role} cost gave latency {latency!r} s, interval {interval!r} s for {mix}")
            interval = min(interval, latency)
            lane.busy = True
            self.launched += 1
            inst.stage_free = t + interval
            self.iterations[self.push(t + latency, _DONE, inst.index)] = (inst, lane_no, it)
            if interval < latency:
                self.push(t + interval, _FREE, inst.index)
            return

    def schedule(self, t: float, inst: _Instance, lane: _Lane) -> _Iteration | None:
        budget = inst.budget - lane.decoding
        chunks: list[tuple[int, int]] = []
        for r in lane.prefilling:
            if budget <= 0:
                break
            q = min(self.prompt[r] - self.done_prompt[r], budget)
            chunks.append((r, q))
            budget -= q
        decode_side = inst.role == "decode"
        while inst.waiting and budget > 0 and inst.running < inst.cap:
            r = inst.waiting[0]
            need = self.prompt[r] if inst.role == "prefill" else self.prompt[r] + self.output[r]
            if inst.kv_used + need > inst.kv_capacity:
                break
            inst.waiting.popleft()
            inst.running += 1
            inst.kv_used += need
            self.wait[r] += t - self.queued_at[r]
            if decode_side:
                self.join_decode(lane, r)
                budget -= 1
                continue
            lane.prefilling.append(r)
            q = min(self.prompt[r], budget)
            chunks.append((r, q))
            budget -= q
        if not chunks and lane.decoding == 0:
            return None
        return _Iteration(lane.decoding, chunks)

    def mix(self, lane: _Lane, it: _Iteration) -> Mix:
        tokens, attention, sampled = 0, 0.0, it.decodes
        for r, q in it.chunks:
            c = self.done_prompt[r]
            tokens += q
            attention += q * (c + (q + 1) / 2)
            sampled += c + q == self.prompt[r]
        return Mix(
            prefill_tokens=tokens,
            prefill_attention=attention,
            decode_seqs=it.decodes,
            decode_context=lane.context,
            sampled=sampled,
        )

    def join_decode(self, lane: _Lane, r: int) -> None:
        """Decode ``r`` from the lane's next iteration on: ``output - 1`` steps after its first token."""
        heapq.heappush(lane.finishing, (lane.steps + self.output[r] - 1, r))
        lane.decoding += 1
        lane.context += self.prompt[r] + 1

    def complete(self, t: float, inst: _Instance, lane_no: int, it: _Iteration) -> None:
        lane = inst.lanes[lane_no]
        lane.busy = False
        emitted = it.decodes
        if it.decodes:
            lane.steps += 1
            lane.context += lane.decoding
            while lane.finishing and lane.finishing[0][0] <= lane.steps:
                _, r = heapq.heappop(lane.finishing)
                lane.decoding -= 1
                lane.context -= self.prompt[r] + self.output[r]
                self.leave(t, inst, r)
        for r, q in it.chunks:
            self.done_prompt[r] += q
            if self.done_prompt[r] < self.prompt[r]:
                continue
            lane.prefilling.remove(r)
            self.first[r] = t
            emitted += 1
            if self.output[r] == 1:
                self.leave(t, inst, r)
            elif inst.role == "prefill":
                self.leave(t, inst, r, done=False)
                self.push(t + float(self.kv_transfer_s(self.prompt[r])), _KV, r)
            else:
                self.join_decode(lane, r)
        if emitted:
            self.emitted_t.append(t)
            self.emitted_n.append(emitted)

    def leave(self, t: float, inst: _Instance, r: int, *, done: bool = True) -> None:
        """``r`` leaves ``inst`` (its KV freed); ``done``: it finished (a closed loop releases the next request)."""
        inst.running -= 1
        inst.kv_used -= self.prompt[r] if inst.role == "prefill" else self.prompt[r] + self.output[r]
        if not done:
            return
        self.finish[r] = t
        if self.closed is not None and self.released < len(self.prompt):
            nxt = self.released
            self.released += 1
            self.arrival[nxt] = t
            self.push(t, _ARRIVE, nxt)


def _default_transfer(costs: Mapping[str, IterationCost]) -> Callable[[int], float]:
    for role in ("prefill", "decode"):  # the analytic model asks the prefill cost too
        fn = getattr(costs.get(role), "kv_transfer_s", None)
        if callable(fn):
            return fn
    return lambda tokens: 0.0


def simulate(
    deployment: Deployment,
    traffic: Traffic,
    costs: Mapping[str, IterationCost],
    slo: Slo | None = None,
    *,
    requests: int = 2000,
    seed: int = 0,
    warmup: float = 0.1,
    kv_transfer_s: Callable[[int], float] | None = None,
) -> ServingMetrics:
    """Serve ``requests`` requests of ``traffic`` on ``deployment``; percentiles measured, warmup dropped.

    ``costs`` maps each pool's role to its instances' :class:`IterationCost`. ``kv_transfer_s(prompt_tokens)`` is
    the prefill-to-decode KV transfer time of a disaggregated deployment (default: the cost object's
    ``kv_transfer_s`` if it has one, else 0). The first ``warmup`` fraction of the requests (by arrival) is left
    out of every figure; throughput counts the output tokens emitted between the first measured request's
    arrival and the last request's arrival (the drain after it is not steady state).

    Raises:
        ValueError: ``requests`` outside 1..1,000,000, ``warmup`` outside [0, 1), a pool without a cost, a request
            whose KV cannot fit an instance, or a cost that returns a non-positive or non-finite time.
    """
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ValueError(f"simulate: requests must be an integer >= 1, got {requests!r}")
    check_at_most(requests, MAX_REQUESTS, "simulate: requests")
    if not 0 <= warmup < 1:
        raise ValueError(f"simulate: warmup must be a fraction in [0, 1), got {warmup!r}")
    reqs = sample_requests(traffic, requests, seed)
    transfer = kv_transfer_s or _default_transfer(costs)
    return simulate_requests(
        deployment, reqs, costs, slo, closed=traffic.concurrency, warmup=warmup, kv_transfer_s=transfer
    )


def simulate_requests(
    deployment: Deployment,
    reqs: Requests,
    costs: Mapping[str, IterationCost],
    slo: Slo | None = None,
    *,
    closed: int | None = None,
    warmup: float = 0.1,
    kv_transfer_s: Callable[[int], float] | None = None,
) -> ServingMetrics:
    """:func:`simulate` on given requests (arrivals and lengths), e.g. those a real server was measured on.

    ``closed``: a closed loop of that many users (``reqs.arrival_s`` is then ignored and overwritten by release
    times: each request is released when an earlier one finishes).
    """
    sim = _Sim(deployment, costs, reqs, closed, kv_transfer_s or _default_transfer(costs))
    sim.run()
    return _metrics(sim, deployment, slo, warmup)


def latency_quantiles(
    deployment: Deployment,
    traffic: Traffic,
    costs: Mapping[str, IterationCost],
    *,
    requests: int = 2000,
    seed: int = 0,
    warmup: float = 0.1,
) -> dict[str, list[float]]:
    """The simulated TTFT and TPOT distributions (ms) as 101 quantiles each (0%, 1%, ..., 100%): a CDF to plot.

    The same run as :func:`simulate` with the same arguments (the same requests), kept compact for a result file.
    """
    check_at_most(requests, MAX_REQUESTS, "latency_quantiles: requests")
    sim = _Sim(
        deployment, costs, sample_requests(traffic, requests, seed), traffic.concurrency, _default_transfer(costs)
    )
    sim.run()
    ttft, tpot = _latencies(sim, _measured(sim, warmup))
    q = np.linspace(0.0, 100.0, 101)
    return {
        "ttft_ms": [float(v) * 1e3 for v in np.percentile(ttft, q)],
        "tpot_ms": [float(v) * 1e3 for v in np.percentile(tpot, q)] if len(tpot) else [],
    }


def _measured(sim: _Sim, warmup: float) -> np.ndarray:
    """Indices of the requests measured: all but the first ``warmup`` fraction by arrival."""
    n = len(sim.prompt)
    order = np.argsort(np.asarray(sim.arrival), kind="stable")
    return order[int(warmup * n) :] if int(warmup * n) < n else order[-1:]


def _latencies(sim: _Sim, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT, TPOT) in seconds of the measured requests (TPOT of those with more than one output token)."""
    first = np.asarray(sim.first)[measured]
    finish = np.asarray(sim.finish)[measured]
    output = np.asarray(sim.output)[measured]
    multi = output > 1
    return first - np.asarray(sim.arrival)[measured], (finish[multi] - first[multi]) / (output[multi] - 1)


def _metrics(sim: _Sim, deployment: Deployment, slo: Slo | None, warmup: float) -> ServingMetrics:
    n = len(sim.prompt)
    arrival = np.asarray(sim.arrival)
    measured = _measured(sim, warmup)
    finish = np.asarray(sim.finish)[measured]
    arr = arrival[measured]
    ttft, tpot = _latencies(sim, measured)
    t0, t1 = float(arr.min()), float(arrival.max())
    notes = [f"simulated {n} requests in {sim.launched} iterations; {n - len(measured)} dropped as warmup"]
    if t1 <= t0:  # one measured request, or all arriving together (a closed loop's first batch)
        t1 = float(finish.max())
        notes.append("measured window: first arrival to last finish (the arrivals span no time)")
    span = t1 - t0
    et, en = np.asarray(sim.emitted_t), np.asarray(sim.emitted_n)
    in_window = (et > t0) & (et <= t1)
    tokens = float(en[in_window].sum())
    completed = int(((np.asarray(sim.finish) > t0) & (np.asarray(sim.finish) <= t1)).sum())
    all_finish = np.asarray(sim.finish)
    overlap = np.clip(np.minimum(all_finish, t1) - np.maximum(arrival, t0), 0, None).sum()
    mean_tpot = float(tpot.mean()) if len(tpot) else math.nan
    saturated = _saturated(sim, measured, arr, span)
    if saturated:
        notes.append("saturated: the waiting time grows with the arrival time (queues grow without bound)")
    pct = (50.0, 90.0, 99.0)
    ttft_ms = {f"p{p:g}": float(np.percentile(ttft, p) * 1e3) for p in pct}
    tpot_ms = {f"p{p:g}": float(np.percentile(tpot, p) * 1e3) if len(tpot) else 0.0 for p in pct}
    ttft_ms["mean"] = float(ttft.mean() * 1e3)
    tpot_ms["mean"] = mean_tpot * 1e3 if len(tpot) else 0.0
    meets = None
    if slo is not None:
        key = f"p{slo.percentile:g}"
        ttft_ms.setdefault(key, float(np.percentile(ttft, slo.percentile) * 1e3))
        if len(tpot):
            tpot_ms.setdefault(key, float(np.percentile(tpot, slo.percentile) * 1e3))
        meets = not saturated
        if slo.ttft_ms is not None:
            meets = meets and ttft_ms[key] <= slo.ttft_ms
        if slo.tpot_ms is not None:
            meets = meets and tpot_ms.get(key, 0.0) <= slo.tpot_ms
    return ServingMetrics(
        tokens_per_s_per_gpu=tokens / span / deployment.gpus if span > 0 else 0.0,
        tokens_per_s_per_user=1.0 / mean_tpot if mean_tpot > 0 else 0.0,
        requests_per_s=completed / span if span > 0 else 0.0,
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        concurrency=float(overlap / span) if span > 0 else 0.0,
        saturated=saturated,
        meets_slo=meets,
        notes=tuple(notes),
    )


def _saturated(sim: _Sim, measured: np.ndarray, arr: np.ndarray, span: float) -> bool:
    """Open loop: the queueing wait trends up with the arrival time (its slope and its growth both large).

    Closed loop (a bounded queue, no trend to see): more users wait than run, i.e. by Little's law the mean wait
    is over half the mean time in the system; the deployment cannot run the concurrency it is given.
    """
    wait = np.asarray(sim.wait)[measured]
    if sim.closed is not None:
        e2e = np.asarray(sim.finish)[measured] - arr
        return bool(wait.mean() > 0.5 * e2e.mean())
    if len(wait) < 8 or span <= 0:
        return False
    slope = float(np.polyfit(arr - arr[0], wait, 1)[0])
    quarter = len(wait) // 4
    head, tail = float(wait[:quarter].mean()), float(wait[-quarter:].mean())
    return slope > SATURATION_SLOPE and tail > SATURATION_GROWTH * head + 1e-9
