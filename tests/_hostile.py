"""A harness for hostile-input tests: run ``paratune`` in a fresh process with hard limits.

A user's mistake must end in one line on stderr and exit code 2, with no traceback, no
file written and no runaway use of time or memory. Running each case in its own process
is the only honest way to check the last two: the child gets an address-space limit
(``RLIMIT_AS``) and a wall-clock timeout, and the working folder is compared before and
after. Start-up costs about half a second per case.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Address space a hostile case may use. torch and stable-baselines3 import within it.
MEMORY_LIMIT_BYTES = 3 << 30
#: Seconds a hostile case may run before it counts as a hang.
TIME_LIMIT_S = 30.0


@dataclass(frozen=True)
class Run:
    """What one ``paratune`` process did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    written: tuple[str, ...]  # paths created or changed under the working folder

    def describe(self) -> str:
        return (
            f"paratune {' '.join(self.args)}\n  exit {self.returncode}\n  stderr: {self.stderr[-2000:]!r}\n"
            f"  stdout: {self.stdout[-500:]!r}\n  written: {list(self.written)}"
        )


def _limit_memory() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def run_paratune(
    args: Sequence[str],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = TIME_LIMIT_S,
    input_text: str | None = None,
) -> Run:
    """Run ``python -m paratune.cli ARGS`` in ``cwd`` under the memory and time limits.

    A timeout raises :class:`subprocess.TimeoutExpired` (the child is killed), which fails the test
    that called it: a hang is never a pass.
    """
    before = _snapshot(cwd)
    full_env = {**os.environ, "PARATUNE_DEBUG": "0", "COLUMNS": "160", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "paratune.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=_limit_memory,
        input=input_text,
    )
    after = _snapshot(cwd)
    written = tuple(sorted(p for p, stamp in after.items() if before.get(p) != stamp))
    return Run(tuple(args), proc.returncode, proc.stdout, proc.stderr, written)


def assert_refused(run: Run, *, mentions: Sequence[str] = ()) -> None:
    """The promise for a user mistake: exit 2, one ``error:`` line, no traceback, nothing written.

    ``mentions`` are words the line must contain (case-insensitive), e.g. the field or file at fault.
    """
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    problems = []
    if run.returncode != 2:
        problems.append(f"exit code {run.returncode}, not 2")
    if "Traceback" in run.stderr or "Traceback" in run.stdout:
        problems.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"{len(lines)} stderr lines, not one 'error: ...' line")
    if run.written:
        problems.append(f"files written: {list(run.written)}")
    text = " ".join(lines).lower()
    problems += [f"the message does not mention {word!r}" for word in mentions if word.lower() not in text]
    assert not problems, "; ".join(problems) + "\n" + run.describe()
