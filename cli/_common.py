"""Helpers shared by the ``paratune`` command modules: error handling and JSON output."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from .._limits import DOC, MAX_BATCH, MAX_DEVICES, MAX_SEQ

# Wide enough for the tables when the output is piped (rich falls back to 80 columns).
console = Console(emoji=False) if sys.stdout.isatty() else Console(width=160, emoji=False)  # ":train:" stays text
F = TypeVar("F", bound=Callable[..., Any])

#: Bounds of CLI counts that drive work. The library bounds models, platforms and workloads itself, but in
#: words of its fields (``workload: field 'batch'``); the options check the same bounds first, naming the flag.
MAX_PLAN_DEGREE = MAX_DEVICES  # --tp, --pp: no platform has more devices
MAX_SEED = 2**32 - 1  # numpy's and Optuna's seeded generators take 32-bit seeds
MAX_PROCESSES = 256  # --workers, --n-envs: processes started on this machine (each imports numpy, maybe torch)


def positive_number(param: typer.CallbackParam, value: float | None) -> float | None:
    """Option callback: a finite number > 0 (a memory cap or a latency SLO of 0 or ``inf`` means nothing).

    The message also names the field of a scenario's ``limits`` the option sets (``memory_gib``).
    """
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value:g} (limits field {param.name})")
    return value


def finite_number(value: float | None) -> float | None:
    """Option callback: a finite number (``nan`` and ``inf`` parse as floats but poison every result)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value:g}")
    return value


def at_most(maximum: int) -> Callable[[int | None], int | None]:
    """Option callback: a count that drives work is at most ``maximum`` (a bound of ``paratune._limits``).

    Checked where the flag is read, so the one-line error names the flag the user typed
    (``--batch``), not the library field it becomes.
    """

    def check(value: int | None) -> int | None:
        if value is not None and value > maximum:
            raise typer.BadParameter(f"at most {maximum:,} is accepted, got {value:,} (bounds: {DOC})")
        return value

    return check


def flag_named(exc: ValueError, options: Iterable[str]) -> ValueError:
    """``exc`` with each library option it names (``option 'max_buckets'``) as the flag typed (``--max-buckets``).

    For options the command passes on under the flag's name (``--storage`` -> a tuner's ``storage``).
    """
    text = str(exc)
    for name in options:
        text = text.replace(f"option '{name}'", "--" + name.replace("_", "-"))
    return ValueError(text)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (a stable contract) instead of a table.")]
# Options that describe a problem, shared by `tune`, `study`, `transfer`, `evaluate` and `graph build`.
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Zoo name[:field=v], YAML, graph JSON, hf:TYPE.")]
PlatformOpt = Annotated[str | None, typer.Option("--platform", "-p", help="Platform preset, NAMExN or YAML.")]
PhaseOpt = Annotated[str, typer.Option("--phase", help="prefill | decode | train.")]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", "-O", help="ttft | tbt | step | throughput | tbt+memory | ... (default: by phase)")
]
BatchOpt = Annotated[
    int, typer.Option("--batch", "-b", min=1, callback=at_most(MAX_BATCH), help="Sequences in the batch.")
]
SeqOpt = Annotated[
    int,
    typer.Option("--seq", "-s", min=1, callback=at_most(MAX_SEQ), help="Prompt (prefill) or sequence (train) length."),
]
ContextOpt = Annotated[
    int,
    typer.Option(
        "--context", "-c", min=0, callback=at_most(MAX_SEQ), help="KV length of a decode step (default: seq)."
    ),
]
GranOpt = Annotated[str, typer.Option("--granularity", "-g", help="op | sublayer | layer | layers:k.")]
MemoryOpt = Annotated[
    float | None, typer.Option("--memory-gib", callback=positive_number, help="Memory cap per device, GiB (> 0).")
]
ScenarioOpt = Annotated[Path | None, typer.Option("--scenario", help="A scenario YAML instead of the flags above.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Seed of every random choice.")]


#: What a user's mistake raises: bad values (ValueError, its subclasses included), missing or misplaced files,
#: unreadable YAML. Anything else (a KeyError, a TypeError...) is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


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
            print(f"error: {error_line(exc)}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def error_line(exc: BaseException) -> str:
    """The one line that describes a user mistake.

    Library messages are written as one line; this is the net under them: a raw YAML error
    (several lines with a caret) becomes its problem and position, an ``OSError`` its file and
    reason (not ``[Errno 21] ...``), and any other message has its line breaks folded.
    """
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        text = _yaml_line(exc)
    elif isinstance(exc, yaml.YAMLError):
        text = f"not valid YAML: {exc}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror.lower()}" if exc.filename else exc.strerror
    else:
        text = str(exc)
        inner = exc.__context__
        if isinstance(inner, yaml.MarkedYAMLError) and str(inner) in text:  # "FILE: not valid YAML (<several lines>)"
            text = text.replace(str(inner), _yaml_line(inner, prefix=""))
    return one_line(text)


#: Characters of an error line at most: a message quoting a 1 MB argument stays readable.
MAX_ERROR_CHARS = 2000


def one_line(text: str) -> str:
    """``text`` on one line of printable characters, at most :data:`MAX_ERROR_CHARS` long.

    Line breaks and tabs fold into spaces; other control characters (an escape sequence in a
    file name would recolour or retitle the terminal) are shown as ``\\x1b``; the middle of a
    very long message is cut.
    """
    text = " ".join(text.split())
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} ...[{len(text) - 2 * half:,} characters cut]... {text[-half:]}"
    return text


def _yaml_line(exc: Any, prefix: str = "not valid YAML: ") -> str:
    mark = exc.problem_mark or exc.context_mark
    where = ""
    if mark is not None:
        name = "" if str(mark.name).startswith("<") else f"{mark.name}: "
        where = f"{name}line {mark.line + 1}, column {mark.column + 1}: "
    problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
    return f"{where}{prefix}{problem}"


def print_text(line: str) -> None:
    """Print a line of text as it is: brackets in a user's names (``[/x]``) are not rich markup."""
    from rich.markup import escape

    console.print(escape(line), highlight=False)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON (numpy arrays as lists)."""
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def problem_from_options(
    scenario: Path | None,
    model: str | None,
    platform: str | None,
    fields: dict[str, Any],
    limits: dict[str, Any],
    *,
    command: Callable[..., Any] | None = None,
) -> Any:
    """The problem the options describe: ``--scenario FILE``, or ``--model/--platform`` with fields and limits.

    With ``--scenario`` the file sets every field: an option of ``command`` set away from its default beside it
    would be silently dropped, so it is an error that names it.
    """
    from ..search import Limits, Problem

    if scenario is not None:
        if model or platform:
            raise ValueError("give either --scenario or --model/--platform, not both")
        defaults = signature_defaults(command) if command is not None else {}
        ignored = [k for k, v in {**fields, **limits}.items() if k in defaults and v != defaults[k]]
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise ValueError(f"--scenario sets the whole problem; {flags} would be ignored: set that in the file")
        return Problem.load(scenario)
    if not model or not platform:
        raise ValueError("--model and --platform are required (or --scenario FILE)")
    phase = fields.get("phase")
    if phase is not None:  # Problem's message names its field ('problem: field phase'); the user typed --phase
        from ..graphs import PHASES

        if phase not in PHASES:
            raise ValueError(f"--phase is {phase!r}; allowed: {', '.join(PHASES)}")
    problem = Problem(model=model, platform=platform, limits=Limits(**limits), **fields)
    cap = limits.get("max_devices")
    if cap is not None:  # the library's message names 'limits.max_devices', a field of a scenario file
        from ..costmodel import get_platform

        n = get_platform(platform).num_devices
        if cap > n:
            raise ValueError(f"--max-devices is {cap} but platform {platform!r} has {n} devices; give at most {n}")
    return problem


def signature_defaults(command: Callable[..., Any]) -> dict[str, Any]:
    """The default value of each parameter of a command function (what an option is when the user omits it)."""
    import inspect

    params = inspect.signature(command).parameters.items()
    return {name: p.default for name, p in params if p.default is not inspect.Parameter.empty}


def output_file(path: Path, option: str = "-o", *, example: str = "plan.json") -> Path:
    """Check, before any work, that ``path`` can be written as a file; returns it.

    A command writes its output last, after minutes of tuning: a folder given where a file is
    expected, or a folder that does not exist, must fail first, and no folder is created for
    the user (a typo in the path must not leave directories behind).
    """
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give the file to write (e.g. {path / example})")
    _check_parent(path, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {path}: the file is not writable")
    return path


def output_folder(path: Path, option: str = "-o") -> Path:
    """Check, before any work, that ``path`` is a folder or can be made one inside an existing folder."""
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{option} {path}: is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {path}: the folder is not writable")
        return path
    _check_parent(path, option)
    return path


def _check_parent(path: Path, option: str) -> None:
    parent = path.absolute().parent
    if not parent.exists():
        raise ValueError(f"{option} {path}: folder {parent} does not exist (paratune creates no parent folders)")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: folder {parent} is not writable")
