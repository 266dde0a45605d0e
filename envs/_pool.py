"""Scenario pools: the problems an environment samples its episodes from.

A pool is a list of :class:`~paratune.problem.Problem`: given in code, read from
a YAML list of :meth:`Problem.from_dict` mappings, or from a directory of
scenario files (``benchmarks/scenarios``). An env samples one per episode with
its own RNG, so training across many models and platforms is one ``reset``.
The reward an episode earns is :mod:`._reward`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..costmodel._fields import load_yaml
from ..problem import Problem, load_scenario, load_scenarios

#: Small models on varied platforms: the default pool of ``gymnasium.make`` with no ``scenarios``.
DEFAULT_POOL: tuple[dict[str, Any], ...] = (
    {"name": "tiny-decode-a100", "model": "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8", "platform": "dgx-a100",
     "phase": "decode", "batch": 8, "seq": 512},
    {"name": "tiny-prefill-h100x2", "model": "llama2-7b:layers=6,hidden=512,heads=8,kv_heads=8",
     "platform": "dgx-h100x2", "phase": "prefill", "batch": 4, "seq": 512},
    {"name": "tiny-train-a100", "model": "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8", "platform": "dgx-a100",
     "phase": "train", "batch": 8, "seq": 256},
    {"name": "gpt2-decode-mesh", "model": "gpt2", "platform": "mesh", "phase": "decode", "batch": 16, "seq": 512,
     "objective": "throughput"},
    {"name": "gpt2-train-h100", "model": "gpt2", "platform": "dgx-h100", "phase": "train", "batch": 8, "seq": 512},
    {"name": "tiny-decode-tight", "model": "llama2-7b:layers=8,hidden=1024,heads=8,kv_heads=8",
     "platform": "cpu-local", "phase": "decode", "batch": 2, "seq": 256, "limits": {"memory_gib": 0.5}},
)  # fmt: skip


#: What an env's ``scenarios`` argument and :func:`load_pool` accept.
Scenarios = str | Path | Sequence[Problem | dict[str, Any] | str | Path] | None


def load_pool(source: Scenarios = None) -> list[Problem]:
    """A scenario pool from any of the accepted forms.

    Args:
        source: ``None`` (the default pool :data:`DEFAULT_POOL`); a YAML file
            holding a list of scenario mappings (or one scenario); a directory of
            scenario files (e.g. ``benchmarks/scenarios``); or a sequence whose
            items are :class:`Problem`, scenario mappings or scenario file paths.

    Raises:
        ValueError: an empty pool, two scenarios with the same name, or a bad file
            or field (the message names it).
    """
    if source is None:
        problems = list(_default_pool())
    elif isinstance(source, (str, Path)):
        problems = _from_path(Path(source))
    else:
        problems = [_one(item, f"scenarios[{i}]") for i, item in enumerate(source)]
    if not problems:
        raise ValueError("scenario pool is empty: give at least one Problem, mapping or scenario file")
    seen: set[str] = set()
    for p in problems:
        if p.name in seen:
            raise ValueError(f"scenario pool: two scenarios are named {p.name!r}; names must be unique")
        seen.add(p.name)
    return problems


_DEFAULT: list[Problem] = []


def _default_pool() -> list[Problem]:
    """The default pool's problems, built once per process so envs share their graphs and tables."""
    if not _DEFAULT:
        _DEFAULT.extend(Problem.from_dict(d, where=f"default pool[{i}]") for i, d in enumerate(DEFAULT_POOL))
    return _DEFAULT


def _from_path(path: Path) -> list[Problem]:
    if path.is_dir():
        return load_scenarios(path, check=False)
    if not path.is_file():
        raise ValueError(f"{path}: no such scenario pool file or directory")
    data = load_yaml(path)
    if isinstance(data, list):
        return [Problem.from_dict(d, where=f"{path}[{i}]") for i, d in enumerate(data)]
    return [load_scenario(path, check=False)]


def _one(item: Problem | dict[str, Any] | str | Path, where: str) -> Problem:
    if isinstance(item, Problem):
        return item
    if isinstance(item, dict):
        return Problem.from_dict(item, where=where)
    if isinstance(item, (str, Path)):
        return load_scenario(item, check=False)
    raise ValueError(f"{where}: expected a Problem, a scenario mapping or a file path, got {type(item).__name__}")


def reset_options(options: dict[str, Any] | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``reset``'s ``options``; a name not in ``allowed`` (a typo) is a ValueError listing them."""
    opts = dict(options or {})
    unknown = set(opts) - set(allowed)
    if unknown:
        raise ValueError(f"reset options {sorted(unknown)} are unknown; allowed: {', '.join(allowed)}")
    return opts


def pick_scenario(choice: Any, pool: Sequence[Problem], rng: np.random.Generator) -> Problem:
    """The problem of an episode: ``reset(options={"scenario": choice})`` of either env.

    None draws one from ``pool`` with the env's ``rng``; a Problem is used as is; a
    pool name picks that scenario; any other string, path or mapping is loaded as a
    scenario (so an episode can run a scenario outside the pool).
    """
    if choice is None:
        return pool[int(rng.integers(len(pool)))]
    if isinstance(choice, Problem):
        return choice
    if isinstance(choice, str):
        for problem in pool:
            if problem.name == choice:
                return problem
    if isinstance(choice, (str, Path, dict)):
        return load_pool([choice])[0]
    raise ValueError(
        f"reset option 'scenario' must be a Problem, a pool name ({', '.join(p.name for p in pool)}), "
        f"a scenario mapping or a scenario file; got {choice!r}"
    )


def problem_key(problem: Problem) -> str:
    """A stable key of the problem's fields (two equal problems share cached tables and references)."""
    return json.dumps(problem.to_dict(), sort_keys=True)
