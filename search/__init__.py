"""Tuners: one interface (``tune(problem, budget, seed, callback) -> TuneResult``) and a registry by name.

Families: practitioners' heuristics, exact solvers that certify the optimum under
the cost model (``dp``, ``enumerate``, ``dag-exact``), Optuna black-box searches
(``optuna-*``), and reinforcement-learning policies (issue 5). Importing this
package imports none of Optuna, highspy or torch; each tuner imports what it needs.
"""

from __future__ import annotations

from typing import Any

from ..problem import OBJECTIVES, Evaluation, Limits, Objective, Problem, contiguous_plan, even_cuts, get_objective
from ._registry import make_tuner, register_tuner, tuner_entries, tuner_names
from ._result import HistoryPoint, TuneResult
from ._tuner import Callback, Progress, Recorder, Tuner

_H = "paratune.search._heuristics"
register_tuner(
    "megatron",
    "heuristic",
    _H,
    "Megatron",
    "TP = GPUs per node (dividing the heads), PP across nodes, even layers, 4 x PP micro-batches when training",
)
register_tuner(
    "serving-default",
    "heuristic",
    _H,
    "ServingDefault",
    "largest TP inside one node that fits memory, PP only across nodes (vLLM's default)",
)
register_tuner(
    "min-tp-replicas",
    "heuristic",
    _H,
    "MinTpReplicas",
    "smallest TP that fits memory, replicated over the remaining devices (MLPerf throughput)",
)
register_tuner(
    "balanced-pp",
    "heuristic",
    _H,
    "BalancedPP",
    "stages balanced by FLOPs, one TP degree (best of the TP/PP pairs that fit)",
)
register_tuner(
    "dp",
    "exact",
    "paratune.search._dp",
    "DPSolver",
    "dynamic programming over (layer, devices, TP): the optimum of layered graphs, hybrids included",
)
register_tuner(
    "enumerate",
    "exact",
    "paratune.search._enumerate",
    "Enumerate",
    "brute force over every plan of the dp's space (tiny problems only)",
)
register_tuner(
    "dag-exact",
    "exact",
    "paratune.search._dag_exact",
    "DagExact",
    "branch and bound over task placements of any DAG (small instances)",
)
_O = "paratune.search._optuna"
for _sampler, _text in (
    ("tpe", "Optuna TPE"),
    ("cmaes", "Optuna CMA-ES"),
    ("gp", "Optuna Gaussian-process Bayesian optimisation"),
    ("random", "Optuna random sampling"),
    ("qmc", "Optuna quasi-Monte Carlo (Sobol)"),
    ("nsga2", "Optuna NSGA-II (multi-objective: Pareto front of latency vs memory)"),
):
    register_tuner(f"optuna-{_sampler}", "optuna", _O, "OptunaTuner", _text, sampler=_sampler)
register_tuner(
    "rl",
    "rl",
    "paratune.agents._rl_tuner",
    "RLTuner",
    "a trained RL policy (option policy, default: the shipped one): greedy rollout, then best of sampled rollouts",
)


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
    "HistoryPoint",
    "Limits",
    "Objective",
    "Problem",
    "Progress",
    "Recorder",
    "TuneResult",
    "Tuner",
    "contiguous_plan",
    "even_cuts",
    "get_objective",
    "make_tuner",
    "register_tuner",
    "tune",
    "tuner_entries",
    "tuner_names",
]
