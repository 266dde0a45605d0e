"""Helpers shared by the ``paratune`` command modules: error handling and JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

# Wide enough for the tables when the output is piped (rich falls back to 80 columns).
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=160, emoji=False)  # ":train:" stays text
F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable contract) instead of a table.")]
# Options that describe a problem, shared by `tune`, `study`, `transfer`, `evaluate` and `graph build`.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Zoo name[:field=v], YAML, graph JSON, hf:TYPE.")]
PlatformOpt = Annotated[str | None, typer.Option("--platform", "-p", help="Platform preset, NAMExN or YAML.")]
PhaseOpt = Annotated[str, typer.Option("--phase", help="prefill | decode | train.")]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", "-O", help="ttft | tbt | step | throughput | tbt+memory | ... (default: by phase)")
]
BatchOpt = Annotated[int, typer.Option("--batch", "-b", min=1, help="Sequences in the batch.")]
SeqOpt = Annotated[int, typer.Option("--seq", "-s", min=1, help="Prompt (prefill) or sequence (train) length.")]
ContextOpt = Annotated[int, typer.Option("--context", "-c", min=0, help="KV length of a decode step (default: seq).")]
GranOpt = Annotated[str, typer.Option("--granularity", "-g", help="op | sublayer | layer | layers:k.")]
MemoryOpt = Annotated[float | None, typer.Option("--memory-gib", min=0, help="Memory cap per device, GiB.")]
ScenarioOpt = Annotated[Path | None, typer.Option("--scenario", help="A scenario YAML instead of the flags above.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice.")]


#: What a user's mistake raises: bad values (ValueError, its subclasses included), missing or misplaced files,
#: unreadable YAML. Anything else (a KeyError, a TypeError...) is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def user_errors(func: F) -> F:
    """Turn user mistakes (:data:`USER_ERRORS`, YAML errors) into a one-line message and exit code 2.

    A programming error is not a user mistake: it propagates with its traceback. ``PARATUNE_DEBUG=1``
    shows the traceback of user mistakes too.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import yaml

        caught: tuple[type[BaseException], ...] = (*USER_ERRORS, yaml.YAMLError)
        try:
            return func(*args, **kwargs)
        except caught as exc:
            if os.environ.get("PARATUNE_DEBUG", "").strip() not in ("", "0"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (numpy arrays as lists)."""
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def problem_from_options(
    scenario: Path | None, model: str | None, platform: str | None, fields: dict[str, Any], limits: dict[str, Any]
) -> Any:
    """The problem the options describe: ``--scenario FILE``, or ``--model/--platform`` with fields and limits."""
    from ..search import Limits, Problem

    if scenario is not None:
        if model or platform:
            raise ValueError("give either --scenario or --model/--platform, not both")
        return Problem.load(scenario)
    if not model or not platform:
        raise ValueError("--model and --platform are required (or --scenario FILE)")
    return Problem(model=model, platform=platform, limits=Limits(**limits), **fields)
