"""The vocabulary of serving: a deployment of engine pools, the traffic it serves, its targets, one iteration's mix.

A *deployment* is what an operator launches: one pool of aggregated engine instances
(``role="mixed"``: every instance runs prefill and decode, continuous batching with
chunked prefill), or a prefill pool and a decode pool (disaggregated, DistServe /
Splitwise / Dynamo style: the KV cache moves from the prefill instance to a decode
instance). Each pool has its own TP and PP degree, a number of replicas (instances
behind a router), the batch cap (vLLM ``--max-num-seqs``) and the token budget per
iteration (``--max-num-batched-tokens``: the chunk size of chunked prefill).

The *traffic* is a prompt-length and an output-length distribution with an arrival
process: Poisson at ``rate`` requests/s, or a closed loop of ``concurrency`` users.

One engine iteration runs a :class:`Mix` of prefill chunks and decode steps;
an :class:`IterationCost` prices it. Both evaluators of serving, the steady-state
analytic model and the request-level simulator, price iterations only through it,
so they agree by construction on what an iteration costs and differ only in how
they schedule requests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .._limits import MAX_BATCH, MAX_DEVICES, MAX_SEQ, check_at_most, is_finite_number
from ..costmodel._fields import FieldReader

#: Roles of a pool: aggregated (prefill and decode on the same instances) or one side of a disaggregated pair.
ROLES: tuple[str, ...] = ("mixed", "prefill", "decode")
#: Serving engines whose defaults, per-iteration overhead and launch lines paratune knows.
ENGINES: tuple[str, ...] = ("vllm", "sglang", "trtllm")
#: Most tokens one iteration may schedule (a bound on --max-num-batched-tokens).
MAX_BATCHED_TOKENS = 1 << 20
#: Most requests of a trace or of one simulation (the simulator keeps a few numbers per request).
MAX_REQUESTS = 1_000_000
#: Kinds of a length distribution (:class:`Lengths`).
LENGTH_KINDS: tuple[str, ...] = ("fixed", "uniform", "lognormal", "empirical")
#: Largest lognormal sigma: exp(sigma^2) is the spread of the tail; 4 already gives a mean 8.9e6 x the median.
MAX_SIGMA = 4.0


@dataclass(frozen=True)
class Pool:
    """Identical engine instances with one role: ``replicas`` x (``tp`` x ``pp``) GPUs."""

    role: str = "mixed"
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    max_num_seqs: int = 256  # batch cap: most sequences in one iteration (vLLM --max-num-seqs)
    max_batched_tokens: int = 8192  # token budget per iteration = prefill chunk size (--max-num-batched-tokens)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"pool role {self.role!r}; allowed: {', '.join(ROLES)}")
        for name in ("tp", "pp", "replicas", "max_num_seqs", "max_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"pool field {name!r} must be an integer >= 1, got {value!r}")
        check_at_most(self.tp * self.pp * self.replicas, MAX_DEVICES, "pool GPUs (tp x pp x replicas)")
        check_at_most(self.max_num_seqs, MAX_BATCH, "pool max_num_seqs")
        check_at_most(self.max_batched_tokens, MAX_BATCHED_TOKENS, "pool max_batched_tokens")

    @property
    def gpus_per_instance(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.replicas


@dataclass(frozen=True)
class Deployment:
    """One aggregated pool, or a prefill pool and a decode pool; the engine and the dtypes they run."""

    pools: tuple[Pool, ...]
    engine: str = "vllm"
    dtype: str = "bf16"  # weights and GEMMs
    kv_dtype: str = "bf16"  # KV cache (fp8: --kv-cache-dtype fp8)

    def __post_init__(self) -> None:
        roles = tuple(p.role for p in self.pools)
        if roles not in (("mixed",), ("prefill", "decode")):
            raise ValueError(
                f"deployment pools have roles {list(roles)}; allowed: one 'mixed' pool, or a 'prefill' pool then a "
                "'decode' pool"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"deployment engine {self.engine!r}; allowed: {', '.join(ENGINES)}")

    @property
    def disaggregated(self) -> bool:
        return len(self.pools) == 2

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    def pool(self, role: str) -> Pool:
        """The pool with ``role``; the mixed pool answers for both sides of an aggregated deployment."""
        for p in self.pools:
            if p.role == role or p.role == "mixed":
                return p
        raise KeyError(role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "dtype": self.dtype,
            "kv_dtype": self.kv_dtype,
            "disaggregated": self.disaggregated,
            "gpus": self.gpus,
            "pools": [asdict(p) for p in self.pools],
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "deployment") -> Deployment:
        r = FieldReader(data, where)
        raw_pools = r.raw("pools")
        if not isinstance(raw_pools, list) or not 1 <= len(raw_pools) <= 2:
            raise r.error("pools", "must be a list of one or two pools")
        pools = []
        for i, raw in enumerate(raw_pools):
            p = FieldReader(raw, where, f"pools[{i}]")
            role = p.text("role", "mixed", choices=ROLES)
            tp = p.integer("tp", 1, minimum=1, maximum=MAX_DEVICES)
            pp = p.integer("pp", 1, minimum=1, maximum=MAX_DEVICES)
            replicas = p.integer("replicas", 1, minimum=1, maximum=MAX_DEVICES)
            seqs = p.integer("max_num_seqs", 256, minimum=1, maximum=MAX_BATCH)
            tokens = p.integer("max_batched_tokens", 8192, minimum=1, maximum=MAX_BATCHED_TOKENS)
            try:
                pools.append(Pool(role, tp, pp, replicas, seqs, tokens))
            except ValueError as exc:
                raise ValueError(f"{where}: pools[{i}]: {exc}") from None
            p.finish()
        r.raw("disaggregated", None)  # derived; accepted so that to_dict's output reads back
        r.raw("gpus", None)
        engine = r.text("engine", "vllm", choices=ENGINES)
        dtype = r.text("dtype", "bf16", choices=("bf16", "fp16", "fp8"))
        kv_dtype = r.text("kv_dtype", "bf16", choices=("bf16", "fp16", "fp8"))
        try:
            dep = cls(pools=tuple(pools), engine=engine, dtype=dtype, kv_dtype=kv_dtype)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        r.finish()
        return dep


@dataclass(frozen=True)
class Lengths:
    """A distribution of token counts: ``fixed`` (value), ``uniform`` (low..high), ``lognormal`` (mean, sigma), or
    ``empirical`` (values drawn with equal weight). ``mean`` is exact for every kind (the lognormal's is its mean,
    not its median), so the analytic model and the simulator see the same average. Requests are drawn in whole
    tokens, at least 1 (a fixed mean of 99.6 draws 100; a lognormal's draws are rounded)."""

    kind: str = "fixed"
    mean: float = 1024.0
    low: int = 1
    high: int = MAX_SEQ
    sigma: float = 0.0
    values: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"lengths kind {self.kind!r}; allowed: {', '.join(LENGTH_KINDS)}")
        if not is_finite_number(self.mean) or not 0 < self.mean <= MAX_SEQ:
            raise ValueError(f"lengths field 'mean' must be a finite number > 0 and <= {MAX_SEQ:,}, got {self.mean!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEQ:
                raise ValueError(f"lengths field {name!r} must be an integer in 1..{MAX_SEQ:,}, got {value!r}")
        if self.low > self.high:
            raise ValueError(f"lengths field 'low' ({self.low}) is above 'high' ({self.high})")
        if not is_finite_number(self.sigma) or not 0 <= self.sigma <= MAX_SIGMA:
            raise ValueError(f"lengths field 'sigma' must be a finite number in 0..{MAX_SIGMA}, got {self.sigma!r}")
        if self.kind == "uniform" and not math.isclose(self.mean, (self.low + self.high) / 2):
            raise ValueError(f"uniform lengths: field 'mean' must be (low + high) / 2 = {(self.low + self.high) / 2}")
        if self.kind == "empirical":
            if not self.values:
                raise ValueError("empirical lengths: field 'values' is empty")
            check_at_most(len(self.values), MAX_REQUESTS, "empirical lengths: number of values")
            bad = [v for v in self.values if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SEQ]
            if bad:
                raise ValueError(f"empirical lengths: values must be integers in 1..{MAX_SEQ:,}, got {bad[0]!r}")
            if not math.isclose(self.mean, sum(self.values) / len(self.values), rel_tol=1e-9):
                raise ValueError("empirical lengths: field 'mean' must be the mean of 'values'")


@dataclass(frozen=True)
class Trace:
    """Recorded requests, replayed in order: prompt and output tokens of each, and their arrival times if known.

    ``arrival_s`` is empty when the trace gives lengths only (the traffic's rate or concurrency then sets the
    arrivals), else one non-decreasing time per request.
    """

    prompt: tuple[int, ...]
    output: tuple[int, ...]
    arrival_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.prompt)
        if n == 0:
            raise ValueError("trace has no requests")
        check_at_most(n, MAX_REQUESTS, "trace requests")
        if len(self.output) != n or len(self.arrival_s) not in (0, n):
            raise ValueError(
                f"trace columns differ in length: prompt {n}, output {len(self.output)}, "
                f"arrival_s {len(self.arrival_s)}"
            )
        for name, column in (("prompt", self.prompt), ("output", self.output)):
            for i, v in enumerate(column):
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SEQ:
                    raise ValueError(
                        f"trace request {i}: {name} tokens must be an integer in 1..{MAX_SEQ:,}, got {v!r}"
                    )
        previous = 0.0
        for i, t in enumerate(self.arrival_s):
            if not is_finite_number(t) or t < previous:
                raise ValueError(f"trace request {i}: arrival_s must be finite, >= 0 and non-decreasing, got {t!r}")
            previous = t

    def __len__(self) -> int:
        return len(self.prompt)


@dataclass(frozen=True)
class Traffic:
    """Prompt and output lengths with an open (Poisson ``rate`` req/s) or closed (``concurrency`` users) arrival."""

    prompt: Lengths
    output: Lengths
    rate: float | None = None  # requests per second, Poisson arrivals
    concurrency: int | None = None  # closed loop: this many requests always in flight
    trace: Trace | None = None  # replayed in order (its arrivals too, when it has them and ``rate`` is their rate)

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("traffic needs exactly one of rate (requests/s) or concurrency (requests in flight)")
        if self.rate is not None and (not is_finite_number(self.rate) or self.rate <= 0):
            raise ValueError(f"traffic field 'rate' must be a finite number of requests/s > 0, got {self.rate!r}")
        if self.concurrency is not None:
            c = self.concurrency
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ValueError(f"traffic field 'concurrency' must be an integer >= 1, got {c!r}")
            check_at_most(c, MAX_BATCH, "traffic field 'concurrency'")


@dataclass(frozen=True)
class Slo:
    """Service-level objectives: a percentile of TTFT and of TPOT (time per output token after the first)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    percentile: float = 90.0


@dataclass(frozen=True)
class Mix:
    """What one engine iteration computes on one instance.

    ``prefill_tokens`` prompt tokens in chunks (the sum of the chunks' lengths q_i);
    ``prefill_attention`` the chunks' causal attention work sum_i q_i (c_i + (q_i + 1) / 2), with c_i the tokens
    of that prompt already in the cache (a whole prompt of s tokens: s (s + 1) / 2);
    ``decode_seqs`` sequences that decode one token each, reading ``decode_context`` cached tokens in all;
    ``sampled`` sequences that sample a token this iteration (the decodes and the prompts whose last chunk ran):
    the LM head runs on those rows only.
    """

    prefill_tokens: int = 0
    prefill_attention: float = 0.0
    decode_seqs: int = 0
    decode_context: int = 0
    sampled: int = 0

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs


class IterationCost(Protocol):
    """Seconds of one engine iteration of one instance (TP x PP GPUs of one pool), and its KV capacity.

    ``latency_s`` is the time from the iteration's start to its sampled tokens (every PP stage in turn);
    ``interval_s`` the time between two iterations' starts when PP keeps ``pp`` batches in flight (the slowest
    stage; equal to ``latency_s`` without PP). ``kv_capacity_tokens`` is the KV-cache tokens one instance holds
    after weights and activation workspace, in whole pages; ``None`` would mean the weights alone do not fit.
    """

    pp: int
    kv_capacity_tokens: int

    def latency_s(self, mix: Mix) -> float: ...

    def interval_s(self, mix: Mix) -> float: ...


@dataclass(frozen=True)
class ServingMetrics:
    """What serving a traffic with a deployment gives: throughput per GPU and per user, latency percentiles."""

    tokens_per_s_per_gpu: float  # output tokens per second over all GPUs of the deployment
    tokens_per_s_per_user: float  # 1 / mean TPOT
    requests_per_s: float
    ttft_ms: dict[str, float]  # "p50", "p90", "p99" (the analytic model gives its estimate for each)
    tpot_ms: dict[str, float]
    concurrency: float  # mean requests in flight (decode batch of one instance for the analytic model)
    saturated: bool  # arrivals exceed what the deployment sustains: queues grow without bound
    meets_slo: bool | None = None  # None: no SLO given
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
