"""Usage errors in one line: ``error: --batch: 0 is not in the range x>=1 (see 'paratune tune --help')``.

Click and Typer print a usage error (a value out of range, an unknown option, a missing
argument) as a usage line and a framed box of four to seven lines. The promise of this CLI
is one line on stderr and exit code 2 for every user mistake, so the top-level group
catches Click's exceptions itself and writes that line. It lives in the group's ``main``
(not only in :func:`paratune.cli.main`) so that Typer's ``CliRunner``, which calls the
group directly, sees the same output as a user does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from ._common import one_line

try:  # typer 0.22+ carries its own copy of Click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older typer, on Click itself
    from click import exceptions as _click_errors  # type: ignore[no-redef]


class OneLineErrorGroup(TyperGroup):
    """The ``paratune`` group: Click's usage errors become ``error: <option>: <problem>``, exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # the caller handles Click's exceptions itself
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except _click_errors.NoArgsIsHelpError as exc:  # Typer has printed the help already
            sys.exit(exc.exit_code)
        except _click_errors.ClickException as exc:
            print(f"error: {usage_line(exc)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        # Without standalone mode Click returns typer.Exit's code instead of exiting; commands return None.
        sys.exit(rv if isinstance(rv, int) else 0)


def usage_line(exc: Any) -> str:
    """One line for a Click exception: the option or argument at fault first, then the problem and where to look."""
    if isinstance(exc, _click_errors.NoSuchOption):
        text = f"{exc.option_name}: no such option"
        if exc.possibilities:
            text += f"; did you mean {' or '.join(sorted(exc.possibilities))}?"
    elif isinstance(exc, _click_errors.MissingParameter):
        what = "missing argument" if _is_argument(exc.param) else "missing (this option is required)"
        text = f"{_param_name(exc.param)}: {what}"
    elif isinstance(exc, _click_errors.BadParameter):
        text = f"{_param_name(exc.param)}: {_lower_first(exc.message)}"
    elif isinstance(exc, _click_errors.BadOptionUsage):
        # "Option '--batch' requires an argument." -> "--batch: requires a value"
        problem = exc.message.split("' ", 1)[-1] if exc.message.startswith("Option '") else exc.message
        text = f"{exc.option_name}: {_lower_first(problem.replace('an argument', 'a value'))}"
    else:
        text = _lower_first(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    return one_line(text)


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _param_name(param: Any) -> str:
    """``--batch`` for an option (its longest name), ``NAME`` for an argument."""
    if param is None:
        return "value"
    opts = getattr(param, "opts", None)
    if not _is_argument(param) and opts:
        return str(max(opts, key=len))
    name = getattr(param, "human_readable_name", None) or getattr(param, "name", None) or "value"
    return str(name).upper()
