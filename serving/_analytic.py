"""The steady-state analytic serving model: throughput and latency percentiles of a deployment under a traffic.

Fast (tens of microseconds a call with cached :class:`IterationCost` s) and approximate; the request-level
simulator checks it under load. Everything is per *batch in flight*: an instance with PP degree p keeps p
batches in flight (vLLM's virtual engines), each receiving 1/p of the instance's arrivals and iterating with
period P(mix) = max(latency_s(mix), p x interval_s(mix)); replicas split the arrivals evenly (a router).
Lengths enter through their means: ISL (prompt) and OSL (output); a request decodes OSL - 1 tokens after
the first, which its last prefill chunk samples.

**Aggregated** (``mixed`` pool, continuous batching with chunked prefill, decodes scheduled first as vLLM
and SGLang do). The state is x, the requests arriving per iteration of a batch; then n = x (OSL - 1)
sequences decode (Little's law), a prompt is cut into k = ceil(ISL / (budget - n)) chunks of q = ISL / k
tokens, and m = x k chunks run per iteration on average: a fraction f = m - floor(m) of the iterations
carries one chunk more than the others, so the mean period is T(x) = (1 - f) P(n, j) + f P(n, j + 1) with
j = floor(m) and P(n, j) the period of n decodes (mean context ISL + OSL / 2) and j chunks (each sampled
1/k of the time). The arrival rate per batch is lambda = x / T(x): the model solves x = lambda T(x) (a
fixed point, by regula falsi). Caps on x: the batch cap (p n <= max_num_seqs), the token budget
(n + m q <= budget), the KV cache (p n (ISL + OSL) <= capacity: no request is ever preempted, TRT-LLM's
guaranteed-no-evict rule; vLLM allocates as tokens come and would admit a little more). No fixed point
under the caps: ``saturated``, throughput is that at the cap and TTFT infinite (queues grow).

* TPOT = the mean period (with at least one decoding sequence: the request itself); its percentiles come
  from chunk interleaving: a request's OSL - 1 iterations carry the extra chunk Binomial(OSL - 1, f) times,
  a normal approximation of that mean.
* TTFT = the wait for the next iteration (T / 2) + the queue of requests + the prompt's own k chunk
  iterations (k P(n, j + 1)). The queue is an M/D/1 on the capacity-equivalent server of a batch in
  flight: utilisation rho = rate / capacity (the pool's requests/s at its cap), service 1 / mu with mu the
  capacity per batch, mean wait rho / (2 mu (1 - rho)): nothing at light load, unbounded at the cap,
  whichever cap binds (a prompt waits for a KV or batch slot as for the budget). Its percentiles take the
  wait as 0 with probability 1 - rho and exponential otherwise (exact in the tail of M/M/1, an
  approximation for M/D/1, which is lighter-tailed).

**Disaggregated**: the prefill pool runs prompts only (x prompts per iteration, up to the budget, chunked
when a prompt exceeds it; the M/D/1 wait above without the iteration wait: an idle prefill engine starts at
once), then the KV cache of the ISL tokens moves to a decode instance (NVLink when both instances fit one
node, the network otherwise: ``kv_transfer_s``), and TTFT includes the transfer. The decode pool runs
decodes only (the same fixed point with no chunks): TPOT has no interference spread.

**Closed loop** (``concurrency`` N): lambda solves lambda (TTFT + (OSL - 1) TPOT) = N (bisection; the cycle
grows without bound at saturation when the prompts' queue is the bottleneck). When the decode side of a
disaggregated pair binds, the cycle stays bounded at its capacity: the users it cannot hold wait for admission,
(N - lambda cycle) / lambda seconds more of TTFT (Little's law), rather than being dropped from the figures.

What is approximate: lengths enter by their means (the spread of lengths widens the simulator's
percentiles, not these), prefill chunks are fluid (a fraction of a prompt per iteration), the queue is an
M/D/1 stand-in for a batching server, and percentiles use normal or exponential shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, cast

from ._types import Deployment, IterationCost, Mix, Pool, ServingMetrics, Slo, Traffic

#: Percentiles every result reports (an SLO's own percentile is added when it is another).
PERCENTILES = (50.0, 90.0, 99.0)
_Z = {p: NormalDist().inv_cdf(p / 100.0) for p in PERCENTILES}
INF = math.inf


class _Fluid:
    """A :class:`Mix` with fractional counts (a steady-state average), accepted by any IterationCost."""

    __slots__ = ("decode_context", "decode_seqs", "prefill_attention", "prefill_tokens", "sampled")

    def __init__(self, prefill_tokens: float, prefill_attention: float, decode_seqs: float, context: float,
                 sampled: float) -> None:  # fmt: skip
        self.prefill_tokens = prefill_tokens
        self.prefill_attention = prefill_attention
        self.decode_seqs = decode_seqs
        self.decode_context = context
        self.sampled = sampled


def _z(p: float) -> float:
    z = _Z.get(p)
    return NormalDist().inv_cdf(p / 100.0) if z is None else z


@dataclass
class _Side:
    """One pool's steady state: its period, throughput and latency terms per request."""

    rate: float  # requests/s the pool serves (all instances)
    capacity: float  # requests/s at its cap
    saturated: bool
    period: float  # mean period of a batch's iterations (s)
    tpot: float  # mean time per output token after the first (s); 0 for a prefill pool
    tpot_std: float
    service: float  # a prompt's own prefill time (s)
    join: float  # wait for the iteration under way to end (aggregated: half a period), s
    wait_mean: float  # queueing of prompts before their prefill (s)
    rho: float  # utilisation of the prefill queue
    decoding: float  # sequences decoding per instance


class _PoolModel:
    """The fixed point of one pool: ``decode`` (decoding sequences), ``prefill`` (prompts), or both."""

    def __init__(self, cost: IterationCost, pool: Pool, isl: float, osl: float, *, prefill: bool,
                 decode: bool) -> None:  # fmt: skip
        self.cost, self.pool = cost, pool
        self.isl, self.osl = isl, osl
        self.prefill, self.decode = prefill, decode
        self.pp = max(int(getattr(cost, "pp", pool.pp)), 1)
        self.steps = max(osl - 1.0, 0.0) if decode else 0.0  # decode iterations per request
        self.context = isl + osl / 2.0  # mean KV a decoding sequence reads
        self.work = isl * (isl + 1.0) / 2.0  # causal attention work of a whole prompt
        self.budget = float(pool.max_batched_tokens)
        caps = [INF]
        if self.steps > 0:
            caps.append(pool.max_num_seqs / (self.pp * self.steps))
            held = isl + osl  # KV reserved per decoding sequence (no preemption)
            caps.append(cost.kv_capacity_tokens / (self.pp * self.steps * held))
        if prefill:
            # Tokens per iteration: n decodes plus m chunks of q tokens, m q = x ISL on average.
            caps.append(self.budget / (self.steps + isl))
            if not decode:
                caps.append(cost.kv_capacity_tokens / (self.pp * isl))
        else:
            caps.append(self.budget / max(self.steps, 1e-12))
        self.x_cap = min(caps)
        self._memo: dict[tuple[float, float | None], tuple[float, float, float, float]] = {}

    # -- one period -------------------------------------------------------------------------------
    def _p(self, mix: _Fluid) -> float:
        m = cast(Mix, mix)
        lat = self.cost.latency_s(m)
        if self.pp > 1:
            iv = self.pp * self.cost.interval_s(m)
            return lat if lat >= iv else iv
        return lat

    def chunks(self, n: float) -> tuple[float, float]:
        """(k, q): a prompt's chunks and their tokens when n decodes take their share of the budget."""
        avail = self.budget - n if self.decode else self.budget
        k = math.ceil(self.isl / max(avail, 1.0) - 1e-9)
        k = max(k, 1)
        return float(k), self.isl / k

    def periods(self, x: float, n: float | None = None) -> tuple[float, float, float, float]:
        """(mean period, period with j chunks, with j + 1, f) at x arrivals per iteration (memoised)."""
        key = (x, n)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._periods(x, x * self.steps if n is None else n)
        return hit

    def _periods(self, x: float, n: float) -> tuple[float, float, float, float]:
        if not self.prefill:
            p = self._p(_Fluid(0.0, 0.0, n, n * self.context, n))
            return p, p, p, 0.0
        k, q = self.chunks(x * self.steps)
        m = x * k
        j = math.floor(m)
        f = m - j
        per_chunk_work = self.work / k
        ctx = n * self.context
        p0 = self._p(_Fluid(j * q, j * per_chunk_work, n, ctx, n + j / k))
        p1 = self._p(_Fluid((j + 1) * q, (j + 1) * per_chunk_work, n, ctx, n + (j + 1) / k)) if f > 0 else p0
        return (1.0 - f) * p0 + f * p1, p0, p1, f

    # -- the fixed point ----------------------------------------------------------------------------
    def capacity(self) -> tuple[float, float, float]:
        """(x at the cap, the period there, the requests/s the pool sustains there)."""
        x_cap = self.x_cap if math.isfinite(self.x_cap) else 1e9
        t_cap = self.periods(x_cap)[0]
        return x_cap, t_cap, x_cap / t_cap * self.pool.replicas * self.pp

    def solve(self, rate: float) -> _Side:
        """The steady state at ``rate`` requests/s on the whole pool."""
        per_batch = rate / (self.pool.replicas * self.pp)
        x_cap, t_cap, capacity = self.capacity()
        if per_batch * t_cap >= x_cap:  # no fixed point under the caps
            return self._side(x_cap, capacity / (self.pool.replicas * self.pp), capacity, saturated=True)
        x = _root(lambda v: per_batch * self.periods(v)[0] - v, 0.0, per_batch * self.periods(0.0)[0], x_cap,
                  per_batch * t_cap - x_cap)  # fmt: skip
        return self._side(x, per_batch, capacity, saturated=False)

    def _side(self, x: float, per_batch: float, capacity: float, *, saturated: bool) -> _Side:
        mean, p0, p1, f = self.periods(x)
        n = x * self.steps
        rate = per_batch * self.pool.replicas * self.pp
        tpot = std = 0.0
        if self.steps > 0:
            if n >= 1.0:
                tpot, q0, q1 = mean, p0, p1
            else:  # a request decodes with itself at least
                tpot, q0, q1, f = self.periods(x, n=1.0)
            std = abs(q1 - q0) * math.sqrt(f * (1.0 - f) / self.steps)
        service = wait = rho = 0.0
        if self.prefill:
            k, _ = self.chunks(n)
            service = k * p1
            rho = rate / capacity
            if saturated or rho >= 1.0:
                wait = INF
            else:  # M/D/1 on the capacity-equivalent server of one batch in flight
                wait = rho * (self.pool.replicas * self.pp / capacity) / (2.0 * (1.0 - rho))
        join = mean / 2.0 if self.prefill and self.decode else 0.0  # an aggregated engine never idles
        return _Side(rate, capacity, saturated, mean, tpot, std, service, join, wait, rho, n * self.pp)


def _root(g: Callable[[float], float], lo: float, g_lo: float, hi: float, g_hi: float) -> float:
    """A root of ``g`` in [lo, hi] with g(lo) > 0 >= g(hi) (regula falsi, Illinois variant)."""
    side = 0
    c = hi
    for _ in range(100):
        c = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
        g_c = g(c)
        if abs(g_c) <= 1e-7 * max(c, 1e-12) or hi - lo <= 1e-9 * hi:
            return c
        if g_c > 0:
            lo, g_lo = c, g_c
            if side == 1:
                g_hi /= 2.0
            side = 1
        else:
            hi, g_hi = c, g_c
            if side == -1:
                g_lo /= 2.0
            side = -1
    return c


def _wait_quantile(mean: float, rho: float, p: float) -> float:
    """Queueing wait at percentile p: 0 with probability 1 - rho, else exponential of mean ``mean / rho``."""
    if not math.isfinite(mean):
        return INF
    tail = 1.0 - p / 100.0
    if rho <= tail or mean <= 0.0:
        return 0.0
    return mean / rho * math.log(rho / tail)


def _lengths(traffic: Traffic) -> tuple[float, float]:
    isl, osl = float(traffic.prompt.mean), float(traffic.output.mean)
    if not isl >= 1.0 or not osl >= 1.0 or not math.isfinite(isl + osl):
        raise ValueError(f"traffic lengths: prompt and output means must be >= 1 token, got {isl!r} and {osl!r}")
    return isl, osl


class _Evaluator:
    """The open-loop model of a deployment at any rate (the pools' fixed points, combined)."""

    def __init__(self, deployment: Deployment, traffic: Traffic, costs: Mapping[str, IterationCost]) -> None:
        self.deployment = deployment
        self.isl, self.osl = _lengths(traffic)
        self.notes: list[str] = []
        if deployment.disaggregated:
            pre, dec = deployment.pool("prefill"), deployment.pool("decode")
            for role in ("prefill", "decode"):
                if role not in costs:
                    raise ValueError(f"costs: a disaggregated deployment needs a cost for role {role!r}")
            self.pools = [
                _PoolModel(costs["prefill"], pre, self.isl, self.osl, prefill=True, decode=False),
                _PoolModel(costs["decode"], dec, self.isl, self.osl, prefill=False, decode=True),
            ]
            self.transfer = self._transfer(costs["prefill"], pre, dec)
        else:
            cost = costs.get("mixed")
            if cost is None:
                raise ValueError("costs: an aggregated deployment needs a cost for role 'mixed'")
            self.pools = [_PoolModel(cost, deployment.pools[0], self.isl, self.osl, prefill=True, decode=True)]
            self.transfer = 0.0

    def _transfer(self, cost: IterationCost, pre: Pool, dec: Pool) -> float:
        send = getattr(cost, "kv_transfer_s", None)
        platform = getattr(cost, "platform", None)
        if send is None or platform is None:
            self.notes.append("the prefill cost gives no kv_transfer_s: the KV transfer is not counted")
            return 0.0
        same_node = pre.gpus_per_instance + dec.gpus_per_instance <= platform.devices_per_node
        return float(send(self.isl, same_node=same_node))

    def capacity(self) -> float:
        """Requests/s the deployment sustains (the smaller pool capacity)."""
        return min(p.capacity()[2] for p in self.pools)

    def sides(self, rate: float) -> list[_Side]:
        return [p.solve(rate) for p in self.pools]

    def cycle(self, rate: float) -> float:
        """Mean time a request spends in the deployment at ``rate`` (TTFT + (OSL - 1) TPOT)."""
        sides = self.sides(rate)
        ttft = sum(s.join + s.wait_mean + s.service for s in sides) + self.transfer
        return ttft + max(self.osl - 1.0, 0.0) * sides[-1].tpot


def analytic(
    deployment: Deployment, traffic: Traffic, costs: Mapping[str, IterationCost], slo: Slo | None = None
) -> ServingMetrics:
    """Steady-state throughput and latency of ``deployment`` serving ``traffic`` (see the module docstring).

    ``costs`` maps a pool role (``mixed``, or ``prefill`` and ``decode``) to the iteration cost of one of
    its instances (:func:`paratune.serving.instance_cost`). Rates above capacity give ``saturated=True``,
    the capacity's throughput and an infinite TTFT.

    Example:
        >>> from paratune.costmodel import get_platform
        >>> from paratune.serving import Deployment, Lengths, Pool, Traffic, instance_cost
        >>> dep = Deployment((Pool(tp=1, replicas=2),))
        >>> cost = instance_cost("llama3-8b", get_platform("dgx-h100"), dep.pools[0], dep)
        >>> traffic = Traffic(Lengths(mean=1000), Lengths(mean=200), rate=4.0)
        >>> m = analytic(dep, traffic, {"mixed": cost})
        >>> m.saturated, round(m.requests_per_s, 3)
        (False, 4.0)
    """
    ev = _Evaluator(deployment, traffic, costs)
    notes = ev.notes
    backlog = 0.0  # closed loop: seconds a request waits for admission beyond the pools' own queues
    if traffic.concurrency is not None:
        users = float(traffic.concurrency)
        rate = _closed_loop_rate(ev, users)
        held = rate * ev.cycle(rate)
        if users - held > 1e-3 * users:  # more users than the deployment holds (a decode-bound disaggregated pair)
            backlog = (users - held) / rate  # Little's law on the users left waiting for a slot
            notes.append(f"closed loop: {users - held:.4g} users wait for admission ({backlog * 1e3:.4g} ms)")
    else:
        rate = float(traffic.rate or 0.0)
        if not rate > 0.0 or not math.isfinite(rate):
            raise ValueError(f"traffic rate must be a positive number of requests/s, got {traffic.rate!r}")
    sides = ev.sides(rate)
    saturated = any(s.saturated for s in sides)
    served = min(s.rate for s in sides) if saturated else rate
    if saturated:
        notes.append(f"saturated: {rate:.4g} req/s offered, {served:.4g} req/s sustained")
    decode = sides[-1]
    base = sum(s.service + s.join for s in sides) + ev.transfer + backlog
    waits = [(s.wait_mean, s.rho) for s in sides if s.service > 0.0]
    wait_mean = sum(w for w, _ in waits)
    percentiles = list(PERCENTILES)
    if slo is not None and slo.percentile not in percentiles:
        percentiles.append(float(slo.percentile))
    ttft = {"mean": (base + wait_mean) * 1e3}
    tpot = {"mean": decode.tpot * 1e3}
    for p in percentiles:
        key = f"p{p:g}"
        ttft[key] = (base + sum(_wait_quantile(w, r, p) for w, r in waits)) * 1e3
        tpot[key] = (decode.tpot + _z(p) * decode.tpot_std) * 1e3 if decode.tpot > 0 else 0.0
    out_tokens = served * ev.osl
    in_flight = served * (ttft["mean"] / 1e3 + max(ev.osl - 1.0, 0.0) * decode.tpot)
    instances = deployment.pools[-1].replicas
    return ServingMetrics(
        tokens_per_s_per_gpu=out_tokens / deployment.gpus,
        tokens_per_s_per_user=1e3 / tpot["mean"] if tpot["mean"] > 0 else 0.0,
        requests_per_s=served,
        ttft_ms=ttft,
        tpot_ms=tpot,
        concurrency=in_flight / instances if math.isfinite(in_flight) else INF,
        saturated=saturated,
        meets_slo=_meets(slo, ttft, tpot, saturated),
        notes=tuple(notes),
    )


def _meets(slo: Slo | None, ttft: dict[str, float], tpot: dict[str, float], saturated: bool) -> bool | None:
    if slo is None:
        return None
    if saturated:
        return False
    key = f"p{slo.percentile:g}"
    ok = slo.ttft_ms is None or ttft[key] <= slo.ttft_ms
    return ok and (slo.tpot_ms is None or tpot[key] <= slo.tpot_ms)


def _closed_loop_rate(ev: _Evaluator, users: float) -> float:
    """The rate at which ``users`` requests are always in flight: rate x cycle(rate) = users (bisection)."""
    if not users > 0:
        raise ValueError(f"traffic concurrency must be >= 1, got {users!r}")
    hi = ev.capacity()
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mid * ev.cycle(mid) > users:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-6 * hi:
            break
    return 0.5 * (lo + hi)


def describe(metrics: ServingMetrics) -> dict[str, Any]:
    """The metrics as a JSON-ready dict (infinite latencies as None)."""
    out = metrics.to_dict()
    for key in ("ttft_ms", "tpot_ms"):
        out[key] = {k: (v if math.isfinite(v) else None) for k, v in out[key].items()}
    if not math.isfinite(out["concurrency"]):
        out["concurrency"] = None
    return out
