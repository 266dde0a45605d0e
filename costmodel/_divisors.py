"""Divisors of a number, computed from its prime factors (never by counting up to the number).

Tuners enumerate the batch splits (replicas x micro-batches) among the divisors of the batch; counting
to ``n`` would make a batch of 10**20 hang. Factoring by Pollard's rho with a deterministic Miller-Rabin
test takes milliseconds for any 64-bit number, and the divisors follow from the factors.
"""

from __future__ import annotations

import math
import random

#: Bases that make Miller-Rabin deterministic below 3.3e24 (above every number factored here).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
#: Numbers above this are refused: the factoring is fast for them too, but nothing paratune sizes gets there.
MAX_FACTORED = 1 << 80


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _rho(n: int, rng: random.Random) -> int:
    """A non-trivial factor of the composite odd ``n`` (Pollard-Brent)."""
    while True:
        c = rng.randrange(1, n)
        x = y = rng.randrange(2, n)
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = math.gcd(abs(x - y), n)
        if d != n:
            return d


def prime_factors(n: int) -> dict[int, int]:
    """``{prime: exponent}`` of ``n`` (>= 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"prime_factors: n must be an integer >= 1, got {n!r}")
    if n > MAX_FACTORED:
        raise ValueError(f"prime_factors: n must be at most 2**80, got {n:,}")
    out: dict[int, int] = {}
    for p in (2, 3, 5, 7, 11, 13):
        while n % p == 0:
            out[p] = out.get(p, 0) + 1
            n //= p
    rng = random.Random(0)  # deterministic: the same n always factors the same way
    todo = [n] if n > 1 else []
    while todo:
        m = todo.pop()
        if _is_prime(m):
            out[m] = out.get(m, 0) + 1
            continue
        d = _rho(m, rng)
        todo += [d, m // d]
    return dict(sorted(out.items()))


def divisors(n: int) -> list[int]:
    """Every divisor of ``n`` (>= 1), ascending, from its prime factors."""
    out = [1]
    for p, k in prime_factors(n).items():
        out = [d * p**e for d in out for e in range(k + 1)]
    return sorted(out)
