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
* TTFT = the prompt's own k chunk iterations (k P(n, j + 1)) + the join + a queue. The join is the rest
  of the iteration under way, length-biased: uniform over a short (j chunks) or a long (j + 1) iteration,
  the long one with probability f P(n, j + 1) / T (a request that arrives during another prompt's chunk
  waits for it). Other prompts' chunks sharing its iterations add Poisson(k m) chunks of
  P(n, j + 2) - P(n, j + 1) each; a longer prompt than the mean (the prompt distribution's percentile) adds
  its extra tokens' share of the chunk iterations. The queue is an M/D/c for the binding resource:
  the sequence and KV slots (c = min(max_num_seqs, capacity / (ISL + OSL)) / p, held for the decode steps,
  utilisation n / c) or the token budget (chunk slots, utilisation x (OSL - 1 + ISL) / budget), both 1
  exactly at the cap; Sakasegawa's P(wait) = rho^(sqrt(2 (c + 1)) - 1) and a mean wait of those who wait of
  S / (2 c (1 - rho)), exponential.

**Disaggregated**: the prefill pool runs prompts only (x prompts per iteration, up to the budget, chunked
when a prompt exceeds it), then the KV cache of the ISL tokens moves to a decode instance (NVLink when both
instances fit one node, the network otherwise: ``kv_transfer_s``), and TTFT includes the transfer. Its queue
is an M/D/1 whose utilisation moves from a lone prompt's (lambda x its prefill time) at light load to the
capacity's (lambda / capacity) near the cap (weights 1 - rho_cap^4 and rho_cap^4): batching lengthens the
service of a prompt that waited but raises the capacity. The decode pool runs decodes only (the same fixed
point with no chunks): TPOT has no interference spread.

**Closed loop** (``concurrency`` N): lambda solves lambda (TTFT + (OSL - 1) TPOT) = N (bisection; the cycle
grows without bound at saturation when the prompts' queue is the bottleneck). When the decode side of a
disaggregated pair binds, the cycle stays bounded at its capacity: the users it cannot hold wait for admission,
(N - lambda cycle) / lambda seconds more of TTFT (Little's law), rather than being dropped from the figures.

What is approximate: lengths enter by their means but for the prompt's own prefill in TTFT's percentiles,
prefill chunks are fluid (a fraction of a prompt per iteration), the queues are
M/D/c stand-ins for batching servers, and percentiles add shapes (uniform, normal, exponential) term by term.
Against the request-level simulator: ``benchmarks/serving_agreement.py`` (figures in ``docs/serving.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

from ._shapes import INF, PERCENTILES, Side, length_quantile, mdc, poisson_quantile, z_score
from ._types import Deployment, IterationCost, Mix, Pool, ServingMetrics, Slo, Traffic


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

    def solve(self, rate: float) -> Side:
        """The steady state at ``rate`` requests/s on the whole pool."""
        per_batch = rate / (self.pool.replicas * self.pp)
        x_cap, t_cap, capacity = self.capacity()
        if per_batch * t_cap >= x_cap:  # no fixed point under the caps
            return self._side(x_cap, capacity / (self.pool.replicas * self.pp), capacity, saturated=True)
        # Start just above 0: with no fixed cost per iteration (a cost without engine overhead), x = 0 is a
        # spurious root (an empty iteration takes no time).
        lo = x_cap * 1e-9
        g_lo = per_batch * self.periods(lo)[0] - lo
        x = lo if g_lo <= 0.0 else _root(lambda v: per_batch * self.periods(v)[0] - v, lo, g_lo, x_cap,
                                         per_batch * t_cap - x_cap)  # fmt: skip
        return self._side(x, per_batch, capacity, saturated=False)

    def _side(self, x: float, per_batch: float, capacity: float, *, saturated: bool) -> Side:
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
        side = Side(rate, capacity, saturated, mean, tpot, std, n * self.pp)
        if self.prefill:
            self._ttft(side, x, n, per_batch)
        elif self.steps > 0:  # a decode pool: requests wait for a sequence / KV slot (M/D/c, as above)
            slots = min(self.pool.max_num_seqs, self.cost.kv_capacity_tokens / (self.isl + self.osl)) / self.pp
            side.p_wait, side.wait_cond = (1.0, INF) if saturated else mdc(n / slots, slots, self.steps * mean)
        return side

    def _ttft(self, side: Side, x: float, n: float, per_batch: float) -> None:
        """Fill the TTFT terms of ``side``: the prompt's own chunks, the join, their spread, the queue."""
        k, q = self.chunks(n)
        m = x * k
        j = math.floor(m)
        ctx, work = n * self.context, self.work / k
        # Iterations carrying j + 1 and j + 2 chunks: the one with this prompt's chunk, and its slope per chunk.
        _, short, long, f = self.periods(x)
        p1 = long if f > 0.0 else self._p(_Fluid((j + 1) * q, (j + 1) * work, n, ctx, n + (j + 1) / k))
        side.service = k * p1
        if side.saturated:
            side.p_wait, side.wait_cond = 1.0, INF
            return
        if self.decode:  # aggregated: the iteration under way, chunks sharing iterations, a multi-server queue
            if f <= 0.0:
                long, f = short, 1.0
            side.join_short, side.join_long = short, long
            if side.period > 0.0:
                side.join_pi = f * long / side.period
                side.join = ((1.0 - f) * short**2 + f * long**2) / (2.0 * side.period)
            p2 = self._p(_Fluid((j + 2) * q, (j + 2) * work, n, ctx, n + (j + 2) / k))
            side.sharing, side.included, side.per_chunk = k * m, k * j, p2 - p1
            side.marginal = k * (p1 - short) if p1 > short else k * (p2 - p1)
            slots = min(self.pool.max_num_seqs, self.cost.kv_capacity_tokens / (self.isl + self.osl)) / self.pp
            queues = []
            if self.steps > 0:  # sequence and KV slots, held for the decode steps (the caps of x)
                queues.append(mdc(n / slots, slots, self.steps * side.period))
            chunk_slots = max(math.floor((self.budget - n) / q + 1e-9), 1)
            queues.append(mdc(x * (self.steps + self.isl) / self.budget, chunk_slots, side.service))
            side.p_wait, side.wait_cond = max(queues, key=lambda w: w[0] * w[1])
        else:  # a prefill pool: an M/D/1 whose service is one prompt's alone at light load, the capacity's at the cap
            alone = k * (p1 if j == 0 else self._p(_Fluid(q, work, 0.0, 0.0, 1.0 / k)))
            rho_cap = side.rate / side.capacity
            blend = rho_cap**4
            rho = (1.0 - blend) * min(per_batch * alone, 1.0) + blend * rho_cap
            side.p_wait, side.wait_cond = mdc(rho, 1.0, rho / per_batch)
            side.marginal = side.service


def _root(g: Callable[[float], float], lo: float, g_lo: float, hi: float, g_hi: float) -> float:
    """A root of ``g`` in [lo, hi] with g(lo) > 0 >= g(hi): secant steps, kept inside the bracket.

    ``g`` is nearly linear (the period is nearly affine in the load), so secants through the last two
    points converge in a few steps; a step that leaves the bracket falls back to its regula falsi point.
    """
    prev, g_prev = lo, g_lo
    c = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
    for _ in range(100):
        g_c = g(c)
        if abs(g_c) <= 1e-6 * max(c, 1e-12) or hi - lo <= 1e-9 * hi:
            return c
        if g_c > 0:
            lo, g_lo = c, g_c
        else:
            hi, g_hi = c, g_c
        step = c - g_c * (c - prev) / (g_c - g_prev) if g_c != g_prev else hi
        prev, g_prev = c, g_c
        c = step if lo < step < hi else (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
    return c


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

    def sides(self, rate: float) -> list[Side]:
        return [p.solve(rate) for p in self.pools]

    def cycle(self, rate: float) -> float:
        """Mean time a request spends in the deployment at ``rate`` (TTFT + (OSL - 1) TPOT)."""
        sides = self.sides(rate)
        first = sides[0]
        shared = (first.sharing - first.included) * first.per_chunk
        ttft = first.join + first.wait_mean + first.service + shared + self.transfer
        admit = sides[-1].wait_mean if len(sides) > 1 else 0.0
        return ttft + max(self.osl - 1.0, 0.0) * sides[-1].tpot + admit


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
    if traffic.concurrency is not None:
        rate = _closed_loop_rate(ev, float(traffic.concurrency))
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
    first = sides[0]  # the pool that runs the prompts
    base = first.service + ev.transfer
    percentiles = list(PERCENTILES)
    if slo is not None and slo.percentile not in percentiles:
        percentiles.append(float(slo.percentile))
    shared = (first.sharing - first.included) * first.per_chunk
    ttft = {"mean": (base + shared + first.join + first.wait_mean) * 1e3}
    # A disaggregated request may wait for a decode slot: spread over its decode steps (TPOT, as measured).
    steps = max(ev.osl - 1.0, 1.0)
    admit = decode.wait_mean / steps if deployment.disaggregated else 0.0
    tpot = {"mean": (decode.tpot + admit) * 1e3 if decode.tpot > 0 else 0.0}
    for p in percentiles:
        key = f"p{p:g}"
        extra = (poisson_quantile(first.sharing, p) - first.included) * first.per_chunk
        longer = (length_quantile(traffic.prompt, p) / ev.isl - 1.0) * first.marginal
        ttft[key] = (base + first.join_quantile(p) + extra + longer + first.wait_quantile(p)) * 1e3
        admit_p = decode.wait_quantile(p) / steps if deployment.disaggregated else 0.0
        tpot[key] = (decode.tpot + z_score(p) * decode.tpot_std + admit_p) * 1e3 if decode.tpot > 0 else 0.0
    if traffic.concurrency is not None and not saturated:
        cycle = ttft["mean"] / 1e3 + max(ev.osl - 1.0, 0.0) * tpot["mean"] / 1e3
        deficit = traffic.concurrency / served - cycle
        if deficit > 1e-3 * cycle:  # users beyond what the caps admit wait in the queue (Little's law)
            notes.append(f"closed loop: {deficit * 1e3:.4g} ms of queueing beyond the caps added to TTFT")
            for key in ttft:
                ttft[key] += deficit * 1e3
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


def metrics_json(metrics: ServingMetrics) -> dict[str, Any]:
    """The metrics as a JSON-ready dict (infinite latencies as None)."""
    out = metrics.to_dict()
    for key in ("ttft_ms", "tpot_ms"):
        out[key] = {k: (v if math.isfinite(v) else None) for k, v in out[key].items()}
    if not math.isfinite(out["concurrency"]):
        out["concurrency"] = None
    return out
