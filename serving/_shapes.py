"""Shapes of the analytic serving model's distributions: queues, counts, lengths, and one pool's steady state.

Kept apart from the fixed points (:mod:`._analytic`) because they are plain probability: an M/D/c queue by
Sakasegawa's approximation, Poisson and normal percentiles, the percentiles of a :class:`Lengths`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

#: Percentiles every result reports (an SLO's own percentile is added when it is another).
PERCENTILES = (50.0, 90.0, 99.0)
_Z = {p: NormalDist().inv_cdf(p / 100.0) for p in PERCENTILES}
INF = math.inf


def z_score(p: float) -> float:
    """The standard normal's p-th percentile (p in percent)."""
    z = _Z.get(p)
    return NormalDist().inv_cdf(p / 100.0) if z is None else z


@dataclass
class Side:
    """One pool's steady state: its period, throughput and latency terms per request."""

    rate: float  # requests/s the pool serves (all instances)
    capacity: float  # requests/s at its cap
    saturated: bool
    period: float  # mean period of a batch's iterations (s)
    tpot: float  # mean time per output token after the first (s); 0 for a prefill pool
    tpot_std: float
    decoding: float  # sequences decoding per instance
    service: float = 0.0  # a prompt's own prefill iterations (s)
    join: float = 0.0  # mean wait for the iteration under way (aggregated), s
    join_short: float = 0.0  # the iterations under way: without this prompt's chunk (period) ...
    join_long: float = 0.0  # ... and with one more chunk (period), the latter a share ``join_pi`` of the time
    join_pi: float = 0.0
    sharing: float = 0.0  # mean count of other prompts' chunks sharing this prompt's iterations ...
    included: float = 0.0  # ... of which ``service`` already holds this many (j per iteration) ...
    per_chunk: float = 0.0  # ... and what each adds (s)
    marginal: float = 0.0  # the prompt's own share of ``service`` (what scales with its length), s
    p_wait: float = 0.0  # probability that a request queues before its prefill
    wait_cond: float = 0.0  # mean queueing of those who queue (s)

    @property
    def wait_mean(self) -> float:
        return self.p_wait * self.wait_cond if self.p_wait > 0.0 else 0.0

    def join_quantile(self, p: float) -> float:
        """The join at percentile p: uniform over the iteration under way, short or long (length-biased)."""
        if self.join <= 0.0:
            return 0.0
        q, pi, short, long = p / 100.0, self.join_pi, self.join_short, self.join_long
        density = (1.0 - pi) / short + pi / long if short > 0.0 else pi / long
        if short > 0.0 and q <= short * density:
            return q / density
        return long * (q - (1.0 - pi)) / pi if pi > 0.0 else short

    def wait_quantile(self, p: float) -> float:
        """Queueing at percentile p: 0 with probability 1 - p_wait, else exponential of mean ``wait_cond``."""
        if not math.isfinite(self.wait_cond):
            return INF
        tail = 1.0 - p / 100.0
        if self.p_wait <= tail:
            return 0.0
        return self.wait_cond * math.log(self.p_wait / tail)


def mdc(rho: float, servers: float, service: float) -> tuple[float, float]:
    """(probability of waiting, mean wait of those who wait) in an M/D/c queue of utilisation ``rho``.

    Sakasegawa's approximation of M/M/c, P(wait) = rho^(sqrt(2 (c + 1)) - 1) (exact for c = 1), and the mean
    wait of those who wait S / (c (1 - rho)), halved for deterministic service (M/D/1's Pollaczek-Khinchine).
    """
    if rho >= 1.0:
        return 1.0, INF
    if rho <= 0.0:
        return 0.0, 0.0
    return rho ** (math.sqrt(2.0 * (servers + 1.0)) - 1.0), 0.5 * service / (servers * (1.0 - rho))


def poisson_quantile(mean: float, p: float) -> float:
    """The p-th percentile of a Poisson count of ``mean`` (normal beyond a mean of 50)."""
    if mean <= 0.0:
        return 0.0
    if mean > 50.0:
        return max(mean + z_score(p) * math.sqrt(mean), 0.0)
    target, term, count = p / 100.0, math.exp(-mean), 0
    total = term
    while total < target and count < 400:
        count += 1
        term *= mean / count
        total += term
    return float(count)


def length_quantile(lengths: Any, p: float) -> float:
    """The p-th percentile of a :class:`Lengths` (fixed, uniform, lognormal of the given mean, empirical)."""
    kind = getattr(lengths, "kind", "fixed")
    mean = float(lengths.mean)
    if kind == "uniform":
        return lengths.low + p / 100.0 * (lengths.high - lengths.low)
    if kind == "lognormal" and lengths.sigma > 0.0:
        value = mean * math.exp(-0.5 * lengths.sigma**2 + lengths.sigma * z_score(p))
        return min(max(value, float(lengths.low)), float(lengths.high))
    if kind == "empirical" and lengths.values:
        ordered = _sorted(lengths.values)
        return float(ordered[min(int(p / 100.0 * len(ordered)), len(ordered) - 1)])
    return mean


_SORTED: dict[int, tuple[tuple[int, ...], list[int]]] = {}


def _sorted(values: tuple[int, ...]) -> list[int]:
    """``sorted(values)``, kept for the few empirical distributions a search reuses (keyed by identity)."""
    hit = _SORTED.get(id(values))
    if hit is None or hit[0] is not values:
        if len(_SORTED) >= 8:
            _SORTED.clear()
        hit = _SORTED[id(values)] = (values, sorted(values))
    return hit[1]
