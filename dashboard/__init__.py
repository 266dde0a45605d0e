"""The dashboard and the report: campaign results as tables and figures.

* :func:`load_runs` (:mod:`._data`): run folders, folders of them, SQLite files or
  database URLs -> :class:`Results` (one row per job), with the leaderboard,
  anytime curves, Pareto fronts, plan views and transfer rows computed from it.
* :mod:`._figures`: the Plotly figures and formatted tables both views share.
* :func:`create_app` / :func:`serve` (:mod:`._app`): ``paratune dashboard``, a Dash app.
* :func:`write_report` (:mod:`._report`): ``paratune report``, one self-contained HTML file.

Names load lazily: ``import paratune.dashboard`` imports neither Dash nor Plotly.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_NAMES = {
    "Results": "._data",
    "load_runs": "._data",
    "leaderboard": "._data",
    "overall": "._data",
    "anytime": "._data",
    "plan_view": "._data",
    "transfer_rows": "._data",
    "create_app": "._app",
    "serve": "._app",
    "build_report": "._report",
    "write_report": "._report",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
