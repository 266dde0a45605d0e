"""The benchmark scenario suite: one YAML file per :class:`Problem`, read with errors naming file and field.

The suite lives in ``benchmarks/scenarios/*.yaml`` (fields of
:meth:`Problem.from_dict`: ``name``, ``description``, ``model``, ``platform``,
``phase``, ``objective``, ``batch``, ``seq``, ``context``, ``granularity``,
``limits``). A scenario's name is its ``name`` field, else the file's stem, so
results stay comparable across runs even if a file is renamed.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..costmodel._fields import load_yaml
from ._problem import LimitsError, Problem

SUFFIXES = (".yaml", ".yml")


def default_scenarios_dir() -> Path:
    """``benchmarks/scenarios`` of this checkout (the package is the repository root)."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "scenarios"


def load_scenario(path: str | Path, *, check: bool = True) -> Problem:
    """One scenario file; with ``check`` the model and platform are resolved now, so a typo fails here.

    Raises:
        ValueError: naming the file and the field (``model``, ``platform``, ``limits.memory_gib``...).
    """
    path = Path(path)
    data = load_yaml(path)
    if isinstance(data, dict) and "name" not in data:
        data = {"name": path.stem, **data}
    problem = Problem.from_dict(data, where=str(path))
    if check:
        check_problem(problem, path)
    return problem


def check_problem(problem: Problem, where: str | Path) -> None:
    """Build the platform and the graph now, so an unknown preset or model fails naming ``where`` and its field.

    A scenario file and a campaign spec check their problems with it when they load, not when a tuner first runs.
    """
    try:
        problem.resolved_platform  # noqa: B018 (resolves the platform: an unknown preset fails here)
    except LimitsError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: field 'platform': {exc}") from None
    try:
        problem.graph()
    except ValueError as exc:
        raise ValueError(f"{where}: field 'model': {exc}") from None


def load_scenarios(path: str | Path | None = None, *, pattern: str = "*", check: bool = True) -> list[Problem]:
    """Every scenario of a directory (sorted by file name), or the one file ``path`` names.

    ``pattern`` filters by scenario name (shell glob, e.g. ``"llama3-405b*"``).
    ``None`` reads the suite shipped in ``benchmarks/scenarios``.

    Raises:
        ValueError: a missing path, an empty directory, two files with the same
            scenario name, or any field error (naming the file and field).
    """
    root = default_scenarios_dir() if path is None else Path(path)
    if root.is_dir():
        files = sorted(f for f in root.iterdir() if f.suffix in SUFFIXES)
        if not files:
            raise ValueError(f"{root}: no scenario files (*.yaml) in this directory")
    elif root.is_file():
        files = [root]
    else:
        raise ValueError(f"{root}: no such scenario file or directory")
    out: list[Problem] = []
    seen: dict[str, Path] = {}
    for f in files:
        problem = load_scenario(f, check=False)
        if problem.name in seen:
            raise ValueError(f"{f}: field 'name': {problem.name!r} is already the name of {seen[problem.name]}")
        seen[problem.name] = f
        if fnmatch.fnmatchcase(problem.name, pattern):
            if check:
                check_problem(problem, f)
            out.append(problem)
    return out
