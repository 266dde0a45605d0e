"""Studies: what the tuners tell us about how to split work between a compiler and a run time.

* :func:`run_granularity_study` (:mod:`._granularity`): how coarse should tasks be?
  Every tuner at every granularity: best value, gap, optimisation time, space size.
* :func:`run_runtime_study` (:mod:`._runtime`): which decisions must wait for run
  time? One static plan vs per-shape optima vs K precompiled plans over a workload
  of request shapes (:func:`load_workload`, :mod:`._workload`), with the cost of
  switching between plans (:mod:`._switching`).
* :func:`run_study` (:mod:`._run`): either, by kind, as the CLI and campaigns run them.
* :func:`load_study` / :func:`find_studies`: read what a study wrote (``study.json``).

Names load lazily: ``import paratune.study`` imports neither Optuna nor Plotly.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_NAMES = {
    "STUDY_KINDS": "._run",
    "check_study_options": "._run",
    "run_study": "._run",
    "study_outputs": "._run",
    "find_studies": "._run",
    "load_study": "._common",
    "StudyTable": "._common",
    "GranularityCell": "._granularity",
    "run_granularity_study": "._granularity",
    "run_runtime_study": "._runtime",
    "load_workload": "._workload",
    "Workload": "._workload",
    "ReshardCost": "._switching",
    "reshard_cost": "._switching",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
