"""Planning headroom: a deployment that still meets its SLO when the cost model is off by its known error.

A deployment chosen at the very edge of its SLO breaks on the first few percent of model error or load noise:
a decode step priced 3% fast puts a TPOT run at 39.9 ms over a 40 ms target. Operators size for a margin;
``slo_margin`` says how much. With a margin ``e`` a deployment is accepted at a load L only when the model's
metrics at L (1 + e) meet TTFT <= target / (1 + e) and TPOT <= target / (1 + e), the *planning* targets.

Why both: when every iteration is ``e`` slower than the model says, serving L requests/s is the model's own
serving of L (1 + e) requests/s with every time (1 + e) longer (time dilation: the same queue, on a slower
clock). Dividing the targets alone (``SLO / (1 + e)`` at L) misses the queueing: a deployment near its batch
cap or KV capacity then breaks on a 10% slower step although its latencies had 10% to spare
(``benchmarks/serving_margin.py`` measures it). A closed loop dilates at the same users: only the targets
shrink. Without an SLO there is nothing to plan for: no margin. The disaggregated pools' own errors differ; the
load is scaled by the larger.

``slo_margin`` is a percent (``0``: plan at the SLO itself, the behaviour before the option) or ``"auto"``:
the cost model's own held-out error for the iterations that make each latency, per deployment:

* TPOT: the step of the decoding pool (the mixed pool, or the decode pool of a disaggregated pair) at its batch
  cap (or as many sequences as its KV cache holds, if fewer), each reading the traffic's mean context; a mixed
  pool's step also runs the prompt tokens that arrive with those decodes (x ISL, x = decodes / (OSL - 1)), up to
  its token budget;
* TTFT: the prefill pool's step (as many whole prompts as its token budget holds, or one chunk of it); an
  aggregated deployment's prompts run in the mixed steps above, so TTFT takes their error.

A step's error is the time-weighted held-out MAPE of what it sums (:mod:`paratune.costmodel._trust`'s rule):
token ops (GEMMs, norms, element-wise, MoE, embedding) and the LM head each by their op kind, attention by the
fitted attention's, TP all-reduces and pipeline hops by the collectives'. Engine overhead is outside the sum (it
has no held-out rows): the figure is the relative error of the priced part. A hand-set or borrowed profile has
no held-out error; ``auto`` then plans with :data:`UNCALIBRATED_MARGIN_PCT`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._limits import is_finite_number
from ..costmodel._iteration import IterationModel
from ..costmodel._iteration_grid import workloads
from ..costmodel._pricing import KernelPricer, tp_allreduce_time
from ..costmodel._trust import ErrorModel
from ._types import Deployment, Mix, Pool, Slo, Traffic

#: The margin ``auto`` plans with when the profile has no held-out error (hand-set or another device's).
UNCALIBRATED_MARGIN_PCT = 10.0
#: Largest margin accepted, in percent: past it the planning target is under half the user's.
MAX_MARGIN_PCT = 100.0
AUTO = "auto"

SloMargin = float | str


def check_margin(value: Any, field: str = "slo_margin") -> SloMargin:
    """``value`` as a margin: ``"auto"`` or a percent in 0..100 (``"5"`` and ``"5%"`` read as 5.0).

    Raises:
        ValueError: naming ``field``, for anything else.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = float(text.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{field} is {value!r}; allowed: auto, or a percent in 0..{MAX_MARGIN_PCT:g}") from None
    if isinstance(value, bool) or not is_finite_number(value) or not 0.0 <= float(value) <= MAX_MARGIN_PCT:
        raise ValueError(f"{field} is {value!r}; allowed: auto, or a percent in 0..{MAX_MARGIN_PCT:g}")
    return float(value)


@dataclass(frozen=True)
class Margins:
    """The headroom one deployment is planned with, in percent, per target, and where it comes from."""

    ttft_pct: float
    tpot_pct: float
    source: str  # "fixed" (a percent given), "auto" (held-out errors), "auto-default" (no held-out error)

    def planning(self, slo: Slo | None) -> Slo | None:
        """The targets the search requires: each of ``slo``'s divided by 1 + its margin."""
        if slo is None or (self.ttft_pct == 0.0 and self.tpot_pct == 0.0):
            return slo
        return replace(
            slo,
            ttft_ms=None if slo.ttft_ms is None else slo.ttft_ms / (1.0 + self.ttft_pct / 100.0),
            tpot_ms=None if slo.tpot_ms is None else slo.tpot_ms / (1.0 + self.tpot_pct / 100.0),
        )

    def to_dict(self, slo: Slo | None) -> dict[str, Any]:
        plan = self.planning(slo)
        return {
            "ttft_pct": self.ttft_pct,
            "tpot_pct": self.tpot_pct,
            "source": self.source,
            "planning_slo": None
            if plan is None
            else {"ttft_ms": plan.ttft_ms, "tpot_ms": plan.tpot_ms, "percentile": plan.percentile},
        }


def deployment_margins(margin: SloMargin, deployment: Deployment, costs: dict[str, Any], traffic: Traffic) -> Margins:
    """The margins of ``deployment`` (``costs``: its pools' iteration costs by role) under ``margin``."""
    if margin != AUTO:
        pct = float(margin)
        return Margins(pct, pct, "fixed")
    isl, osl = traffic.prompt.mean, traffic.output.mean
    decode_pool = deployment.pool("decode")
    tpot = step_error_pct(costs[decode_pool.role], decode_step(costs[decode_pool.role], decode_pool, isl, osl))
    prefill_pool = deployment.pool("prefill")
    if prefill_pool.role == "mixed":
        ttft = tpot
    else:
        cost = costs[prefill_pool.role]
        ttft = step_error_pct(cost, prefill_step(prefill_pool, isl))
    if ttft is None or tpot is None:
        return Margins(UNCALIBRATED_MARGIN_PCT, UNCALIBRATED_MARGIN_PCT, "auto-default")
    return Margins(ttft, tpot, "auto")


def decode_step(cost: Any, pool: Pool, isl: float, osl: float) -> Mix:
    """The step a decoding pool runs at its batch cap (or its KV cache's, if fewer), per batch in flight."""
    pp = max(int(getattr(cost, "pp", pool.pp)), 1)
    held = max(cost.kv_capacity_tokens / (isl + osl), 1.0)
    n = max(int(min(pool.max_num_seqs, held) / pp), 1)
    context = round(n * (isl + osl / 2.0))
    prompt = 0
    if pool.role == "mixed":
        arriving = n * isl / max(osl - 1.0, 1.0)
        prompt = int(max(min(arriving, pool.max_batched_tokens - n), 0.0))
    work = prompt * (isl + 1.0) / 2.0  # the chunks' causal work, whole prompts on average
    return Mix(prefill_tokens=prompt, prefill_attention=work, decode_seqs=n, decode_context=context, sampled=n)


def prefill_step(pool: Pool, isl: float) -> Mix:
    """The step a prefill pool runs: as many whole prompts as its token budget holds, or one chunk of it."""
    prompts = int(pool.max_batched_tokens // isl)
    if prompts >= 1:
        tokens = round(prompts * isl)
        return Mix(prefill_tokens=tokens, prefill_attention=tokens * (isl + 1.0) / 2.0, sampled=prompts)
    chunk = pool.max_batched_tokens
    return Mix(prefill_tokens=chunk, prefill_attention=chunk * (isl + 1.0) / 2.0, sampled=0)


def step_error_pct(cost: Any, mix: Mix) -> float | None:
    """The held-out error (percent) of one iteration of ``cost`` running ``mix``: the time-weighted MAPE of its
    kernels and communication; None when the profile has no held-out error or ``cost`` is not an
    :class:`~paratune.costmodel._iteration.IterationModel` (whose tables it reads)."""
    if not isinstance(cost, IterationModel):
        return None
    rates = _rates(cost)
    if rates is None:
        return None
    tokens = mix.prefill_tokens + mix.decode_seqs
    if tokens <= 0:
        return 0.0
    # The model's own split of a step (its stage curves, attention grid and head curve): read, not recomputed.
    _stages, hops = cost.stage_times(mix)
    layers = float(sum(cost.stage_layers))
    attention = layers * cost._per_layer_attention(mix)
    token_ops = sum(curve(tokens) for _n, curve, *_rest in cost._stages)
    head = cost._head(mix.sampled) if mix.sampled > 0 else 0.0
    allreduce = sum(
        tp_allreduce_time(per_token * tokens, count, cost.tp, link)
        for _n, _curve, count, per_token, link in cost._stages
        if count > 0.5
    )
    comm = allreduce + sum(hops)
    total = token_ops + attention + head + comm
    if not total > 0.0 or not math.isfinite(total):
        return 0.0
    err = (
        token_ops * rates.token(tokens)
        + attention * rates.attention
        + head * rates.head(mix.sampled)
        + comm * rates.communication
    )
    return 100.0 * err / total


@dataclass(frozen=True)
class _Rates:
    """Held-out error (fraction) per second of each part of an instance's step, from its profile."""

    tokens: tuple[int, ...]
    token_rates: tuple[float, ...]  # token ops (layers and embedding) at each token grid point
    heads: tuple[int, ...]
    head_rates: tuple[float, ...]
    attention: float
    communication: float

    def token(self, tokens: float) -> float:
        return self.token_rates[_nearest(self.tokens, tokens)]

    def head(self, rows: float) -> float:
        return self.head_rates[_nearest(self.heads, rows)] if rows > 0 else 0.0


_RATES: dict[tuple[object, ...], _Rates] = {}


def _rates(cost: IterationModel) -> _Rates | None:
    """The error rates of ``cost``'s instance (cached per model, platform, errors, TP, dtypes, engine, node span)."""
    platform, spec = cost.platform, cost.spec
    errors: ErrorModel | None = None if platform.uncalibrated else ErrorModel.from_profile(platform.profile)
    if errors is None:
        return None
    spans = platform.topology == "switch" and cost.tp * cost.pp > platform.devices_per_node
    key = (spec, platform.name, platform.profile.name, repr(errors), cost.tp, spec.dtype, spec.kv_dtype,
           cost.engine, spans, tuple(cost.stage_layers))  # fmt: skip
    hit = _RATES.get(key)
    if hit is not None:
        return hit
    pricer = KernelPricer(platform, spec.dtype, phase="decode", kv_dtype=spec.kv_dtype, engine=cost.engine)
    w = workloads(spec)
    layers = float(sum(cost.stage_layers))
    layer_t, layer_e = _per_group(pricer, w.layer, w.layer_group, len(w.tokens), cost.tp)
    embed_t, embed_e = _per_group(pricer, w.embed, w.embed_group, len(w.tokens), cost.tp)
    head_t, head_e = _per_group(pricer, w.head, w.head_group, len(w.heads), cost.tp)
    token_rates = (layers * layer_e + embed_e) / np.maximum(layers * layer_t + embed_t, 1e-30)
    head_rates = head_e / np.maximum(head_t, 1e-30)
    out = _Rates(
        tuple(w.tokens),
        tuple(float(r) for r in token_rates),
        tuple(w.heads),
        tuple(float(r) for r in head_rates),
        errors.of("attention"),
        errors.communication_inter if spans else errors.communication,
    )
    if len(_RATES) >= 256:
        _RATES.pop(next(iter(_RATES)))
    _RATES[key] = out
    return out


def _per_group(pricer: KernelPricer, table: Any, group: np.ndarray, n: int, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds and error-weighted seconds of ``table``'s ops summed per grid point."""
    times = pricer.op_times(table, tp)
    weighted = times * pricer.error_weights(table)
    return np.bincount(group, weights=times, minlength=n), np.bincount(group, weights=weighted, minlength=n)


def _nearest(grid: tuple[int, ...], x: float) -> int:
    """Index of the grid point nearest ``x`` on a log scale."""
    i = bisect_left(grid, x)
    if i <= 0:
        return 0
    if i >= len(grid):
        return len(grid) - 1
    lo, hi = grid[i - 1], grid[i]
    return i - 1 if math.log(x / lo) <= math.log(hi / x) else i
