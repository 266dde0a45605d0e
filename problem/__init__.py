"""The problem: what to tune, and how a plan scores on it.

A :class:`Problem` binds a model (through its task graph) to a platform, a
phase, a workload shape, an :class:`Objective` and :class:`Limits`; it builds
the cost model's evaluators lazily and scores plans (:class:`Evaluation`). It
sits above the cost model and below every consumer of problems (tuners in
``search``, the gym environments in ``envs``, ``agents``, ``study``,
``campaign``, the dashboard), so none of them imports ``search`` just for it.
The benchmark scenario suite (one YAML file per problem) is read here too.
"""

from __future__ import annotations

from ..costmodel._divisors import divisors
from ._objective import DEFAULT_OBJECTIVE, OBJECTIVES, Objective, get_objective
from ._plan_builders import contiguous_plan, even_cuts
from ._problem import Evaluation, Limits, Problem
from ._scenarios import SUFFIXES, check_problem, default_scenarios_dir, load_scenario, load_scenarios

__all__ = [
    "DEFAULT_OBJECTIVE",
    "OBJECTIVES",
    "SUFFIXES",
    "Evaluation",
    "Limits",
    "Objective",
    "Problem",
    "check_problem",
    "contiguous_plan",
    "default_scenarios_dir",
    "divisors",
    "even_cuts",
    "get_objective",
    "load_scenario",
    "load_scenarios",
]
