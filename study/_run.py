"""Run a study by kind (the CLI and campaign jobs call this) and find the studies a folder holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..graphs import parse_granularity
from ..problem import Problem
from ..search import tuner_names
from ._common import STUDY_FILE, StudyTable, load_study

STUDY_KINDS = ("granularity", "static-vs-runtime")
Say = Callable[[str], None]


def check_study_options(kind: str, options: dict[str, Any]) -> None:
    """Validate a study's options before anything runs (a campaign spec checks them when it is read).

    Raises:
        ValueError: naming the option and what is allowed.
    """
    if kind == "granularity":
        for g in _str_list(options.get("granularities"), "granularities"):
            parse_granularity(g)

        known = tuner_names()
        for t in _str_list(options.get("tuners"), "tuners"):
            if t not in known:
                raise ValueError(f"option 'tuners': {t!r} is not a tuner; allowed: {', '.join(known)}")
    elif kind == "static-vs-runtime":
        from ._workload import load_workload

        workload = options.get("workload")
        if not isinstance(workload, str) or not workload:
            raise ValueError("option 'workload' is required: a shipped workload name or a CSV trace path")
        load_workload(workload)
        ks = options.get("ks")
        if ks is not None and not (
            isinstance(ks, list) and ks and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)
        ):
            raise ValueError(f"option 'ks' must be a list of integers >= 1, got {ks!r}")
        mb = options.get("max_buckets")
        if mb is not None and not (isinstance(mb, int) and mb >= 1):
            raise ValueError(f"option 'max_buckets' must be an integer >= 1, got {mb!r}")
    else:
        raise ValueError(f"study kind {kind!r} is not one of: {', '.join(STUDY_KINDS)}")


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"option '{name}' must be a list of names, got {value!r}")
    return value


def run_study(
    kind: str,
    problem: Problem,
    *,
    options: dict[str, Any] | None = None,
    budget: int = 300,
    seed: int = 0,
    out_dir: Path | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Run study ``kind`` on ``problem`` (model, platform, phase, objective, limits); returns study.json's data.

    The static-vs-runtime study takes its batch and sequence lengths from
    ``options["workload"]``; the granularity study sweeps ``problem``'s granularity.
    """
    options = dict(options or {})
    check_study_options(kind, options)
    if kind == "granularity":
        from ._granularity import run_granularity_study

        return run_granularity_study(
            problem,
            granularities=options.get("granularities") or None,
            tuners=options.get("tuners") or None,
            budget=budget,
            seed=seed,
            out_dir=out_dir,
            say=say,
        )
    from ._runtime import run_runtime_study
    from ._workload import load_workload

    extra: dict[str, Any] = {}
    if options.get("ks"):
        extra["ks"] = tuple(options["ks"])
    if options.get("max_buckets"):
        extra["max_buckets"] = options["max_buckets"]
    return run_runtime_study(
        problem.model,
        problem.platform,
        load_workload(options["workload"]),
        phase=problem.phase,
        objective=problem.objective,
        limits=problem.limits,
        budget=budget,
        seed=seed,
        out_dir=out_dir,
        say=say,
        **extra,
    )


def study_outputs(data: dict[str, Any]) -> tuple[list[StudyTable], list[Any], list[str]]:
    """Tables, figures and summary lines of a study's data (what the dashboard and the report show)."""
    if data.get("kind") == "granularity":
        from ._granularity import granularity_figures, granularity_tables

        return granularity_tables(data), granularity_figures(data), list(data.get("summary", []))
    if data.get("kind") == "static-vs-runtime":
        from ._runtime import runtime_figures, runtime_tables

        return runtime_tables(data), runtime_figures(data), list(data.get("summary", []))
    if data.get("kind") == "serve-tune":
        from ._serve_tune import serve_tune_figures, serve_tune_tables

        return serve_tune_tables(data), serve_tune_figures(data), list(data.get("summary", []))
    if data.get("kind") == "serving-load":
        from ._serving_load import serving_load_figures, serving_load_tables

        return serving_load_tables(data), serving_load_figures(data), list(data.get("summary", []))
    known = ", ".join((*STUDY_KINDS, "serve-tune", "serving-load"))
    raise ValueError(f"unknown study kind {data.get('kind')!r}; known: {known}")


def find_studies(folders: Sequence[str | Path], max_depth: int = 4) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable ``study.json`` at most ``max_depth`` folders below each of ``folders``, once each.

    Unreadable or foreign files are skipped: a dashboard over a runs folder should
    show what it can rather than fail on one broken study.
    """
    seen: set[Path] = set()
    out: list[tuple[Path, dict[str, Any]]] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for depth in range(max_depth + 1):
            for path in sorted(root.glob("/".join(["*"] * depth + [STUDY_FILE]))):
                where = path.parent.resolve()
                if where in seen or any(part.startswith(".") for part in path.parts[-depth - 1 :]):
                    continue
                try:
                    data = load_study(path)
                except ValueError:
                    continue
                seen.add(where)
                out.append((where, data))
    return out
