"""A harness for hostile-input tests: run ``paratune`` in a child process with hard limits.

A user's mistake must end in one line on stderr and exit code 2, with no traceback, no
file written and no runaway use of time or memory. A child process is the honest way to
check the last two: it gets an address-space limit (``RLIMIT_AS``) and a wall-clock limit,
and the working folder is compared before and after. :func:`run_paratune` runs one case
per process (start-up costs about half a second); :func:`run_batch` runs a table of cases
in one process (``_hostile_batch.py``), each in its own folder under its own alarm, which
is how the tables of ``test_hostile_cli.py`` and ``test_hostile_values.py`` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def run_batch(cases: Sequence[tuple[Sequence[str], Path]], *, timeout_s: float = TIME_LIMIT_S) -> list[Run]:
    """Run each ``(args, cwd)`` case like :func:`run_paratune`, all in one child process; a Run per case, in order.

    The child (``_hostile_batch.py``) imports paratune once and runs the cases one after the other, each in
    its folder, with its output captured and an alarm of ``timeout_s``; the memory limit holds for the
    whole child. Each case's folder is compared before and after the batch, so cases must not share
    folders. Cases a crashed or killed child did not finish are run again one per process, so each
    failure is reported with its own case.
    """
    folders = [Path(cwd) for _, cwd in cases]
    if len(set(folders)) != len(folders):
        raise ValueError("run_batch: each case needs a folder of its own (written files are found per folder)")
    before = [_snapshot(folder) for folder in folders]
    with tempfile.TemporaryDirectory(prefix="hostile-batch-") as scratch:
        cases_file, results_file = Path(scratch, "cases.json"), Path(scratch, "results.jsonl")
        cases_file.write_text(json.dumps([{"args": list(args), "cwd": str(cwd)} for args, cwd in cases]))
        env = {**os.environ, "PARATUNE_DEBUG": "0", "COLUMNS": "160"}
        runner = str(Path(__file__).with_name("_hostile_batch.py"))
        with contextlib.suppress(subprocess.TimeoutExpired):  # what it did not finish runs again below
            subprocess.run(
                [sys.executable, runner, str(cases_file), str(results_file), str(timeout_s)],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s * max(1, len(cases)),  # not reached: a stuck case ends the child (watchdog)
                preexec_fn=_limit_memory,
                check=False,
            )
        done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    runs = []
    for i, (args, cwd) in enumerate(cases):
        if i >= len(done):
            runs.append(run_paratune(args, Path(cwd), timeout_s=timeout_s))
            continue
        after = _snapshot(folders[i])
        written = tuple(sorted(p for p, stamp in after.items() if before[i].get(p) != stamp))
        res = done[i]
        runs.append(Run(tuple(args), res["code"], res["stdout"], res["stderr"], written))
    return runs


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
