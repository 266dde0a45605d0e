"""Tuners: one interface (``tune(problem, budget, seed, callback) -> TuneResult``) and a registry by name.

Families: practitioners' heuristics, exact solvers that certify the optimum under
the cost model (``dp``, ``enumerate``, ``dag-exact``), Optuna black-box searches
(``optuna-*``). Reinforcement-learning policies live above this layer:
``paratune.agents.register_tuners()`` registers the ``rl`` tuner. Importing this package
imports neither Optuna nor torch; each tuner imports what it needs.
"""

from __future__ import annotations

from typing import Any

from ._objective import OBJECTIVES, Objective, get_objective
from ._options import OptionInfo, TunerOptions, about
from ._plans import contiguous_plan, even_cuts
from ._problem import Evaluation, Limits, Problem
from ._registry import TunerEntry, make_tuner, register_tuner, tuner_class, tuner_entries, tuner_names
from ._result import HistoryPoint, TuneResult
from ._tuner import Callback, Family, Progress, Recorder, Tuner

for _name, _target in (
    ("megatron", "_heuristics:Megatron"),
    ("serving-default", "_heuristics:ServingDefault"),
    ("min-tp-replicas", "_heuristics:MinTpReplicas"),
    ("balanced-pp", "_heuristics:BalancedPP"),
    ("dp", "_dp:DPSolver"),
    ("enumerate", "_enumerate:Enumerate"),
    ("dag-exact", "_dag_exact:DagExact"),
    ("optuna-tpe", "_optuna:OptunaTPE"),
    ("optuna-cmaes", "_optuna:OptunaCmaEs"),
    ("optuna-gp", "_optuna:OptunaGP"),
    ("optuna-random", "_optuna:OptunaRandom"),
    ("optuna-qmc", "_optuna:OptunaQMC"),
    ("optuna-nsga2", "_optuna:OptunaNSGA2"),
):
    register_tuner(_name, f"{__name__}.{_target}")  # the class holds the family, description and options


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
