"""Tuners: one interface (``tune(problem, budget, seed, callback) -> TuneResult``) and a registry by name.

Families: practitioners' heuristics, exact solvers that certify the optimum under
the cost model (``dp``, ``enumerate``, ``dag-exact``), Optuna black-box searches
(``optuna-*``). Reinforcement-learning policies live above this layer: the ``rl`` tuner is an
entry point (group ``paratune.tuners``) that the registry finds. Importing this package
imports neither Optuna nor torch; each tuner imports what it needs.
"""

from __future__ import annotations

from typing import Any

from ..problem import OBJECTIVES, Evaluation, Limits, Objective, Problem, contiguous_plan, even_cuts, get_objective
from ._options import OptionInfo, TunerOptions, about
from ._registry import TunerEntry, make_tuner, register_tuner, tuner_class, tuner_entries, tuner_names
from ._result import HistoryPoint, TuneResult
from ._tuner import Callback, Family, Progress, Recorder, Tuner

# Each entry names the module and class literally (the import test sees it); the class holds the family,
# description and options. The module is imported when the tuner is built or listed.
for _name, _target in (
    ("megatron", "paratune.search._heuristics:Megatron"),
    ("serving-default", "paratune.search._heuristics:ServingDefault"),
    ("min-tp-replicas", "paratune.search._heuristics:MinTpReplicas"),
    ("balanced-pp", "paratune.search._heuristics:BalancedPP"),
    ("fsdp", "paratune.search._heuristics:Fsdp"),
    ("deepspeed-zero3", "paratune.search._heuristics:DeepSpeedZero3"),
    ("dp", "paratune.search._dp:DPSolver"),
    ("enumerate", "paratune.search._enumerate:Enumerate"),
    ("dag-exact", "paratune.search._dag_exact:DagExact"),
    ("optuna-tpe", "paratune.search._optuna:OptunaTPE"),
    ("optuna-cmaes", "paratune.search._optuna:OptunaCmaEs"),
    ("optuna-gp", "paratune.search._optuna:OptunaGP"),
    ("optuna-random", "paratune.search._optuna:OptunaRandom"),
    ("optuna-qmc", "paratune.search._optuna:OptunaQMC"),
    ("optuna-nsga2", "paratune.search._optuna:OptunaNSGA2"),
):
    register_tuner(_name, _target)


def tune(
    problem: Problem,
    tuner: str = "dp",
    budget: int | None = None,
    seed: int = 0,
    callback: Callback | None = None,
    **options: Any,
) -> TuneResult:
    """Run tuner ``tuner`` (by name) on ``problem``."""
    return make_tuner(tuner, **options).tune(problem, budget=budget, seed=seed, callback=callback)


__all__ = [
    "OBJECTIVES",
    "Callback",
    "Evaluation",
    "Family",
    "HistoryPoint",
    "Limits",
    "Objective",
    "OptionInfo",
    "Problem",
    "Progress",
    "Recorder",
    "TuneResult",
    "Tuner",
    "TunerEntry",
    "TunerOptions",
    "about",
    "contiguous_plan",
    "even_cuts",
    "get_objective",
    "make_tuner",
    "register_tuner",
    "tune",
    "tuner_class",
    "tuner_entries",
    "tuner_names",
]
