"""Every tuner of the serving space by name, one signature: ``SERVING_TUNERS[name](problem, budget=, seed=)``.

The command line (``paratune serve-tune --tuner NAME``), the benchmark (``benchmarks/serving_tuners.py``) and a
campaign dispatch through :data:`SERVING_TUNERS`; each entry returns a
:class:`~._serve.ServingSearchResult` from :func:`~._serve.finish`, so results compare field for field.

* ``exhaustive``: :func:`~._serve.search_deployments`, the certified optimum of the grid (``budget`` ignored);
* ``optuna-tpe`` / ``optuna-nsga2`` / ``random``: :func:`~._serve_optuna.optuna_deployments` with ``budget``
  trials (default :data:`OPTUNA_TRIALS`), seeded;
* ``vllm-default`` / ``sglang-default`` / ``trtllm-default``: what a practitioner launches without a search, the
  engine's own batch cap and token budget (:func:`~._serve.engine_defaults`), aggregated, at the smallest TP
  that holds the weights and at one instance per node (the two usual rules), the better kept. The problem's
  engine prices them (its iteration overhead): only the engine's defaults come from the tuner's name;
* ``rl``: the shipped Serving-v0 policy's greedy and sampled rollouts (``budget`` rollouts in all). Policies live
  above this layer (``paratune.agents``), so the entry reaches them the way the plan ``rl`` tuner is reached:
  through the ``paratune.tuners`` entry point ``rl``, whose class carries ``serving_search``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ._serve import Candidate, ServingProblem, ServingSearchResult, default_deployment, finish, search_deployments

#: Optuna trials when the caller gives no budget.
OPTUNA_TRIALS = 200


class ServingTuner(Protocol):
    def __call__(self, problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult: ...


def _exhaustive(problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult:
    del budget, seed  # the whole grid, deterministic
    return search_deployments(
        problem.model, problem.resolved_platform(), problem.traffic, problem.slo, gpus=problem.gpus,
        engine=problem.engine, dtype=problem.dtype, kv_dtype=problem.kv_dtype, carry=problem.carry,
        space=problem.space(), slo_margin=problem.slo_margin,
    )  # fmt: skip


def _optuna(sampler: str) -> ServingTuner:
    def run(problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult:
        from ._serve_optuna import optuna_deployments

        trials = OPTUNA_TRIALS if budget is None else budget
        if trials < 1:
            raise ValueError(f"budget must be >= 1 trial, got {trials}")
        return optuna_deployments(
            problem.model, problem.resolved_platform(), problem.traffic, problem.slo, gpus=problem.gpus,
            trials=trials, seed=seed, sampler=sampler, engine=problem.engine, dtype=problem.dtype,
            kv_dtype=problem.kv_dtype, carry=problem.carry, space=problem.space(), slo_margin=problem.slo_margin,
        )  # fmt: skip

    return run


def _engine_default(engine: str) -> ServingTuner:
    def run(problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult:
        del budget, seed  # a rule, not a search
        started = time.perf_counter()
        ev = problem.evaluator()
        plat = problem.resolved_platform()
        candidates: list[Candidate] = []
        for rule in ("smallest", "node"):
            dep = default_deployment(
                problem.model, plat, gpus=problem.gpus, engine=engine, dtype=problem.dtype,
                kv_dtype=problem.kv_dtype, tp_rule=rule,
            )  # fmt: skip
            if dep is not None and (cand := ev.aggregated(dep.pools[0])) is not None:
                candidates.append(cand)
        return finish(ev, candidates, problem.space(), started)

    return run


def _rl(problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult:
    from ._registry import tuner_class

    try:
        cls = tuner_class("rl")
    except ValueError:
        raise ValueError(
            "serving tuner 'rl' needs paratune.agents (the 'rl' entry point of the paratune.tuners group); "
            "install paratune with its metadata (pip install -e .)"
        ) from None
    search: Callable[..., ServingSearchResult] | None = getattr(cls, "serving_search", None)
    if search is None:
        raise ValueError(f"the installed 'rl' tuner ({cls.__module__}) has no serving search")
    return search(problem, budget=budget, seed=seed)


#: Name -> tuner; every entry takes ``(problem, *, budget, seed)`` and returns a ServingSearchResult.
SERVING_TUNERS: dict[str, ServingTuner] = {
    "exhaustive": _exhaustive,
    "optuna-tpe": _optuna("tpe"),
    "optuna-nsga2": _optuna("nsga2"),
    "random": _optuna("random"),
    "rl": _rl,
    "vllm-default": _engine_default("vllm"),
    "sglang-default": _engine_default("sglang"),
    "trtllm-default": _engine_default("trtllm"),
}


def serve_tune(
    problem: ServingProblem, tuner: str = "exhaustive", *, budget: int | None = None, seed: int = 0
) -> ServingSearchResult:
    """Run the serving tuner called ``tuner`` on ``problem`` (a ValueError lists the names when unknown)."""
    run = SERVING_TUNERS.get(tuner)
    if run is None:
        raise ValueError(f"unknown serving tuner {tuner!r}; allowed: {', '.join(SERVING_TUNERS)}")
    return run(problem, budget=budget, seed=seed)
