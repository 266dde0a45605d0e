"""Optuna over the serving space: the same decisions and evaluator as the exhaustive search, sampled.

A trial picks the mode and every instance parameter (a fixed space: the mode decides which are used):
aggregated (TP, PP, batch cap, token budget); disaggregated (prefill TP, PP, token budget; decode TP, PP, batch
cap). TPE is multivariate (it models the parameters jointly). The prefill:decode ratio is not sampled: for a pair of
shapes it is solved exactly from the two sides' capacities (:func:`~._serve.best_ratio`), as the exhaustive search
does. Objectives: tokens/s per GPU alone (TPE, single objective), or tokens/s per GPU and tokens/s per user
(NSGA-II, the Pareto front). A trial whose deployment does not fit or misses the SLO scores 0 (and is reported so):
Optuna's samplers need a value for every trial.
"""

from __future__ import annotations

import time
from typing import Any

from ..costmodel import Platform
from ..graphs import ModelSpec, get_model
from ..serving import Deployment, Pool, Slo, Traffic
from ..serving._margin import SloMargin
from ._serve import (
    Candidate,
    Evaluate,
    Evaluator,
    ServingSearchResult,
    ServingSpace,
    ample_shapes,
    analytic_model,
    best_ratio,
    finish,
)

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random")


def optuna_deployments(
    model: str | ModelSpec,
    platform: Platform,
    traffic: Traffic,
    slo: Slo | None,
    *,
    gpus: int,
    trials: int = 200,
    seed: int = 0,
    sampler: str = "tpe",
    engine: str = "vllm",
    dtype: str = "bf16",
    kv_dtype: str = "bf16",
    carry: bool = False,
    space: ServingSpace | None = None,
    evaluate: Evaluate = analytic_model,
    slo_margin: SloMargin = 0.0,
) -> ServingSearchResult:
    """Sample ``trials`` deployments with Optuna's ``sampler`` (seeded); the best and the fronts of what it saw.

    ``slo_margin``: planning headroom below the SLO, as in :func:`~._serve.search_deployments`.
    """
    import optuna

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    started = time.perf_counter()
    spec = get_model(model) if isinstance(model, str) else model
    space = space or ServingSpace.default(spec, platform, gpus)
    target = (traffic.rate if traffic.rate is not None else traffic.concurrency) if carry else None
    proto = Deployment((Pool(),), engine=engine, dtype=dtype, kv_dtype=kv_dtype)
    ev = Evaluator(
        model, platform, traffic, slo, gpus=gpus, target=target, proto=proto, evaluate=evaluate, slo_margin=slo_margin
    )
    ample = ample_shapes(space, gpus)
    modes = [m for m in space.modes if m == "agg" or (ample is not None and gpus >= 2)]
    if not modes:
        raise ValueError(f"no mode of {list(space.modes)} can run on {gpus} GPU(s)")
    multi = sampler == "nsga2"
    samplers: dict[str, Any] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize", "maximize"] if multi else ["maximize"], sampler=samplers[sampler]()
    )
    candidates: list[Candidate] = []

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        # Every parameter is suggested in every trial, whatever the mode: a fixed space lets NSGA-II's crossover and
        # multivariate TPE model the parameters jointly (a space conditional on the mode left them sampling
        # everything but the mode independently: NSGA-II then equalled random search).
        mode = trial.suggest_categorical("mode", modes)
        tp = trial.suggest_categorical("tp", list(space.tp))
        pp = trial.suggest_categorical("pp", list(space.pp))
        seqs = trial.suggest_categorical("max_num_seqs", list(space.max_num_seqs))
        tokens = trial.suggest_categorical("max_batched_tokens", list(space.max_batched_tokens))
        prefill = Pool(
            "prefill",
            tp=trial.suggest_categorical("prefill_tp", list(space.tp)),
            pp=trial.suggest_categorical("prefill_pp", list(space.pp)),
            max_num_seqs=max(space.max_num_seqs),
            max_batched_tokens=trial.suggest_categorical("prefill_tokens", list(space.max_batched_tokens)),
        )
        decode = Pool(
            "decode",
            tp=trial.suggest_categorical("decode_tp", list(space.tp)),
            pp=trial.suggest_categorical("decode_pp", list(space.pp)),
            max_num_seqs=trial.suggest_categorical("decode_seqs", list(space.max_num_seqs)),
            max_batched_tokens=max(space.max_batched_tokens),
        )
        cand: Candidate | None = None
        if mode == "agg":
            pool = Pool("mixed", tp=tp, pp=pp, max_num_seqs=seqs, max_batched_tokens=tokens)
            cand = ev.aggregated(pool) if pool.gpus_per_instance <= gpus else None
        elif prefill.gpus_per_instance + decode.gpus_per_instance <= gpus:
            assert ample is not None
            cp, cd = ev.side_capacity(prefill, ample[1]), ev.side_capacity(decode, ample[0])
            if cp is not None and cd is not None:
                ratio = best_ratio(prefill.gpus_per_instance, cp, decode.gpus_per_instance, cd, gpus, target)
                if ratio is not None:
                    cand = ev.disaggregated(prefill, decode, ratio[1], ratio[2])
        ok = cand is not None and not cand.metrics.saturated and cand.metrics.meets_slo is not False
        if cand is not None:
            candidates.append(cand)
        trial.set_user_attr("feasible", ok)
        gpu = cand.metrics.tokens_per_s_per_gpu if ok and cand is not None else 0.0
        user = cand.metrics.tokens_per_s_per_user if ok and cand is not None else 0.0
        return (gpu, user) if multi else gpu

    study.optimize(objective, n_trials=trials)
    return finish(ev, candidates, space, started)
