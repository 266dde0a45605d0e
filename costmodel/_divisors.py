"""Divisors of a number, computed from its prime factors (never by counting up to the number).

Tuners enumerate the batch splits (replicas x micro-batches) among the divisors of the batch, and TP
degrees among the divisors of the heads. Every size paratune accepts is at most 2^24 (``_limits``), so
trial division by the primes up to sqrt(2^24) = 4,096 (564 of them) factors any of them in microseconds;
counting up to ``n`` instead made a batch of 10**20 hang before the sizes were bounded.
"""

from __future__ import annotations

import math

#: Numbers above this are refused: no size paratune accepts is larger (the largest bound, MAX_SEQ, is 2^24).
MAX_FACTORED = 1 << 24


def _primes_up_to(n: int) -> tuple[int, ...]:
    """The primes <= ``n`` (sieve of Eratosthenes)."""
    sieve = bytearray([1]) * (n + 1)
    sieve[:2] = b"\x00\x00"
    for p in range(2, math.isqrt(n) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n + 1, p)))
    return tuple(p for p in range(n + 1) if sieve[p])


#: Every prime that can divide a number <= MAX_FACTORED below its square root.
_PRIMES = _primes_up_to(math.isqrt(MAX_FACTORED))


def prime_factors(n: int) -> dict[int, int]:
    """``{prime: exponent}`` of ``n`` (1 <= n <= :data:`MAX_FACTORED`), by trial division.

    Raises:
        ValueError: ``n`` is not an integer in that range.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"prime_factors: n must be an integer >= 1, got {n!r}")
    if n > MAX_FACTORED:
        raise ValueError(f"prime_factors: n must be at most 2**24 = {MAX_FACTORED:,} (every bounded size), got {n:,}")
    out: dict[int, int] = {}
    for p in _PRIMES:
        if p * p > n:
            break
        while n % p == 0:
            out[p] = out.get(p, 0) + 1
            n //= p
    if n > 1:  # what is left has no factor below its square root: a prime
        out[n] = out.get(n, 0) + 1
    return out


def divisors(n: int) -> list[int]:
    """Every divisor of ``n`` (1 <= n <= :data:`MAX_FACTORED`), ascending, from its prime factors."""
    out = [1]
    for p, k in prime_factors(n).items():
        out = [d * p**e for d in out for e in range(k + 1)]
    return sorted(out)
