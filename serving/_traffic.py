"""Traffic from a spec (named length distributions, presets, a CSV trace) and requests drawn from it.

A spec is what a user types after ``--workload``:

- a preset: ``chat`` or ``long-context`` (:data:`PRESETS`);
- ``PROMPT/OUTPUT``, two length specs: ``fixed:N``, ``uniform:LO-HI`` (inclusive), ``lognormal:MEAN,SIGMA``
  (MEAN is the distribution's mean, not its median; draws rounded to whole tokens, at least 1), e.g.
  ``lognormal:1024,0.8/fixed:256``;
- a CSV file (``*.csv``) with the columns ``prompt_tokens,output_tokens`` and an optional ``arrival_s``; every
  row is one request, replayed in order. With ``arrival_s`` and neither ``rate`` nor ``concurrency`` given, the
  recorded arrivals are replayed; otherwise the rate or concurrency sets the arrivals and the file only the lengths.

:func:`sample_requests` draws ``n`` requests. Arrivals, prompts and outputs come from three independent streams
spawned from the seed, so two traffics that differ only in their rate see the same lengths and the same
exponential gaps scaled (common random numbers: a search compares candidates on the same requests).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._limits import MAX_SEQ, check_at_most, read_text
from ._types import MAX_REQUESTS, Lengths, Trace, Traffic

#: Named traffics: (prompt lengths, output lengths). Round means with lognormal tails (see docs/serving.md): chat
#: after ShareGPT-style conversation traces (prompts of hundreds to a few thousand tokens, outputs of a few hundred),
#: long-context after RAG / summarisation (prompts of thousands of tokens, short answers).
PRESETS: dict[str, tuple[Lengths, Lengths]] = {
    "chat": (Lengths("lognormal", mean=1024.0, sigma=0.8), Lengths("lognormal", mean=256.0, sigma=0.8)),
    "long-context": (Lengths("lognormal", mean=8192.0, sigma=0.4), Lengths("lognormal", mean=512.0, sigma=0.5)),
}
TRACE_COLUMNS = ("prompt_tokens", "output_tokens")
TRACE_OPTIONAL = ("arrival_s",)


class Requests(NamedTuple):
    """``n`` requests: arrival times (s; zeros for a closed loop, which releases them as others finish), lengths."""

    arrival_s: np.ndarray  # float64
    prompt: np.ndarray  # int64, tokens >= 1
    output: np.ndarray  # int64, tokens >= 1 (the first token included)


def lengths_from_spec(spec: str, what: str = "lengths") -> Lengths:
    """``fixed:N``, ``uniform:LO-HI`` or ``lognormal:MEAN,SIGMA`` as :class:`Lengths`; errors name ``what``."""
    kind, sep, args = spec.strip().partition(":")
    forms = "fixed:N, uniform:LO-HI or lognormal:MEAN,SIGMA"
    if not sep:
        raise ValueError(f"{what}: {spec!r} is not a length spec; allowed: {forms}")
    try:
        if kind == "fixed":
            return Lengths("fixed", mean=float(_integer(args)), low=1, high=MAX_SEQ)
        if kind == "uniform":
            lo_text, dash, hi_text = args.partition("-")
            if not dash:
                raise ValueError("uniform needs LO-HI")
            lo, hi = _integer(lo_text), _integer(hi_text)
            return Lengths("uniform", mean=(lo + hi) / 2, low=lo, high=hi)
        if kind == "lognormal":
            mean_text, comma, sigma_text = args.partition(",")
            if not comma:
                raise ValueError("lognormal needs MEAN,SIGMA")
            return Lengths("lognormal", mean=_number(mean_text), sigma=_number(sigma_text))
    except ValueError as exc:
        raise ValueError(f"{what}: {spec!r}: {exc}; allowed: {forms}") from None
    raise ValueError(f"{what}: {spec!r}: unknown kind {kind!r}; allowed: {forms}")


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text.strip()!r} is not a finite number")
    return value


def read_trace(path: Path) -> Trace:
    """A CSV trace (header ``prompt_tokens,output_tokens[,arrival_s]``; ``#`` lines and blank lines skipped).

    Raises:
        ValueError: naming the file, the row (its line number), the column and what is allowed.
    """
    text = read_text(path, "a trace CSV")
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and line.strip()[0] != "#"]
    if not numbered:
        raise ValueError(f"{path}: empty trace; expected a header {','.join(TRACE_COLUMNS)}[,arrival_s] and rows")
    check_at_most(len(numbered) - 1, MAX_REQUESTS, f"{path}: rows")
    header_line, header_text = numbered[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    allowed = (*TRACE_COLUMNS, *TRACE_OPTIONAL)
    for h in header:
        if h not in allowed or header.count(h) > 1:
            why = "repeated" if h in allowed else f"unknown; allowed: {', '.join(allowed)}"
            raise ValueError(f"{path}: row {header_line} (header), column {h!r} is {why}")
    for c in TRACE_COLUMNS:
        if c not in header:
            raise ValueError(f"{path}: row {header_line} (header), column {c!r} is missing")
    cols: dict[str, list[float]] = {c: [] for c in header}
    previous = 0.0
    for line_no, line in numbered[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != len(header):
            raise ValueError(f"{path}: row {line_no} has {len(cells)} value(s); the header has {len(header)}")
        for h, cell in zip(header, cells, strict=True):
            cols[h].append(_trace_cell(path, line_no, h, cell.strip(), previous))
        if "arrival_s" in cols:
            previous = cols["arrival_s"][-1]
    if len(numbered) == 1:
        raise ValueError(f"{path}: the trace has a header but no rows")
    return Trace(
        prompt=tuple(int(v) for v in cols["prompt_tokens"]),
        output=tuple(int(v) for v in cols["output_tokens"]),
        arrival_s=tuple(cols.get("arrival_s", ())),
    )


def _trace_cell(path: Path, line_no: int, column: str, text: str, previous: float) -> float:
    where = f"{path}: row {line_no}, column {column!r}: {text[:40]!r}"
    if column == "arrival_s":
        try:
            t = float(text)
        except ValueError:
            t = math.nan
        if not math.isfinite(t) or t < previous:
            raise ValueError(f"{where} is not allowed; allowed: a finite time in s, >= 0 and >= the row above's")
        return t
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SEQ:
        raise ValueError(f"{where} is not allowed; allowed: an integer in 1..{MAX_SEQ:,}")
    return value


def traffic_from_spec(workload: str | Path, *, rate: float | None = None, concurrency: int | None = None) -> Traffic:
    """The traffic of ``workload`` (a preset, ``PROMPT/OUTPUT`` length specs, or a CSV trace) at a rate or concurrency.

    A trace with ``arrival_s`` needs neither: its arrivals are replayed and its mean rate is the traffic's ``rate``.

    Raises:
        ValueError: an unknown preset, a bad length spec or trace row, or a missing / doubled rate and concurrency.
    """
    text = str(workload).strip()
    trace: Trace | None = None
    if text in PRESETS:
        prompt, output = PRESETS[text]
    elif text.lower().endswith(".csv"):
        trace = read_trace(Path(text))
        prompt, output = _empirical(trace.prompt), _empirical(trace.output)
        if trace.arrival_s and rate is None and concurrency is None:
            span = trace.arrival_s[-1] - trace.arrival_s[0]
            if len(trace) < 2 or span <= 0:
                raise ValueError(f"{text}: the arrivals span no time; give a rate or a concurrency")
            rate = (len(trace) - 1) / span
        elif trace.arrival_s:
            trace = Trace(trace.prompt, trace.output)  # the rate or concurrency given sets the arrivals
    elif "/" in text:
        p_text, _, o_text = text.partition("/")
        prompt, output = lengths_from_spec(p_text, "prompt lengths"), lengths_from_spec(o_text, "output lengths")
    else:
        raise ValueError(
            f"workload {text!r}: allowed: a preset ({', '.join(PRESETS)}), PROMPT/OUTPUT length specs "
            "(e.g. lognormal:1024,0.8/fixed:256) or a CSV trace file (*.csv)"
        )
    if rate is None and concurrency is None:
        raise ValueError(f"workload {text!r}: give a rate (requests/s) or a concurrency (requests in flight)")
    return Traffic(prompt, output, rate=rate, concurrency=concurrency, trace=trace)


def _empirical(values: tuple[int, ...]) -> Lengths:
    return Lengths("empirical", mean=sum(values) / len(values), low=min(values), high=max(values), values=values)


def sample_lengths(lengths: Lengths, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token counts drawn from ``lengths`` (int64, each in ``lengths.low..lengths.high``, at least 1)."""
    if lengths.kind == "fixed":
        return np.full(n, min(max(round(lengths.mean), 1, lengths.low), lengths.high), dtype=np.int64)
    if lengths.kind == "uniform":
        return rng.integers(lengths.low, lengths.high + 1, size=n, dtype=np.int64)
    if lengths.kind == "empirical":
        return np.asarray(lengths.values, dtype=np.int64)[rng.integers(0, len(lengths.values), size=n)]
    mu = math.log(lengths.mean) - lengths.sigma**2 / 2  # so that the mean, not the median, is lengths.mean
    draws = np.rint(rng.lognormal(mu, lengths.sigma, size=n))
    return np.clip(draws, max(1, lengths.low), lengths.high).astype(np.int64)


def sample_requests(traffic: Traffic, n: int, seed: int) -> Requests:
    """``n`` requests of ``traffic``; every random choice is drawn from ``seed``.

    Poisson arrivals at ``traffic.rate`` (the first one gap after 0); a closed loop (``concurrency``) gets zeros,
    its simulator releasing each request when an earlier one finishes. A trace is replayed in order, cycling when
    ``n`` exceeds its rows; its recorded arrivals (when kept) start at 0 and repeat, shifted by the span plus one
    mean gap, per cycle.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"requests must be an integer >= 1, got {n!r}")
    check_at_most(n, MAX_REQUESTS, "requests")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    if traffic.trace is not None:
        trace = traffic.trace
        idx = np.arange(n) % len(trace)
        prompt = np.asarray(trace.prompt, dtype=np.int64)[idx]
        output = np.asarray(trace.output, dtype=np.int64)[idx]
    else:
        prompt = sample_lengths(traffic.prompt, n, streams[1])
        output = sample_lengths(traffic.output, n, streams[2])
    if traffic.concurrency is not None:
        arrival = np.zeros(n)
    elif traffic.trace is not None and traffic.trace.arrival_s:
        recorded = np.asarray(traffic.trace.arrival_s) - traffic.trace.arrival_s[0]
        rows = len(recorded)
        period = recorded[-1] * rows / (rows - 1) if rows > 1 else 0.0
        arrival = recorded[idx] + (np.arange(n) // rows) * period
    else:
        rate = traffic.rate if traffic.rate is not None else 1.0
        arrival = np.cumsum(streams[0].exponential(1.0 / rate, size=n))
    return Requests(arrival.astype(np.float64), prompt, output)
