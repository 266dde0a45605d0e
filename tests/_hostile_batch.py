"""Run many ``paratune`` command lines in one process: the child of :func:`_hostile.run_batch`.

``python _hostile_batch.py CASES.json RESULTS.jsonl SECONDS``: for each case (``{"args": [...], "cwd": ...}``)
change to its folder, call the CLI's app with stdout and stderr captured, and append one JSON line
``{"code", "stdout", "stderr"}`` to RESULTS as soon as the case ends (so a crash loses only the case
that caused it). What a process would show is reproduced: ``sys.exit`` codes, an uncaught exception
as its traceback and exit code 1. A case running past SECONDS is stopped by ``SIGALRM`` and reported
with exit code -14; one stuck where no signal is handled (inside C code) makes a watchdog end the whole
process, and the parent runs the cases left one per process. The parent's memory limit covers the run.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` of the code under test stops it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


#: When the case running now must have ended (monotonic seconds), or None between cases.
_deadline: list[float | None] = [None]
#: Seconds past its alarm a case may take before the watchdog ends the process.
GRACE_S = 10.0


def _watchdog() -> None:
    while True:
        time.sleep(0.5)
        deadline = _deadline[0]
        if deadline is not None and time.monotonic() > deadline:
            os._exit(70)  # the parent runs this case and the rest again, one per process


def _run_one(app: Any, args: list[str], limit_s: float) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.stdout, sys.stderr = out, err
    _deadline[0] = time.monotonic() + limit_s + GRACE_S
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with warnings.catch_warnings():  # a fresh warnings registry: a warning shows in every case, as in a process
            app(args, prog_name="paratune")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): Python prints it and exits with 1
            print(exc.code, file=err)
            code = 1
    except _Hang:
        print(f"(hung: stopped after {limit_s} s)", file=err)
        code = -signal.SIGALRM
    except BaseException:  # what Python prints for an uncaught exception
        err.write(traceback.format_exc())
        code = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _deadline[0] = None
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return code, out.getvalue(), err.getvalue()


def main(cases_path: str, results_path: str, limit_s: str) -> None:
    from paratune.cli import app

    cases = json.loads(Path(cases_path).read_text())
    signal.signal(signal.SIGALRM, _alarm)
    threading.Thread(target=_watchdog, daemon=True).start()
    with open(results_path, "a", encoding="utf-8") as results:
        for case in cases:
            os.chdir(case["cwd"])
            code, stdout, stderr = _run_one(app, case["args"], float(limit_s))
            results.write(json.dumps({"code": code, "stdout": stdout, "stderr": stderr}) + "\n")
            results.flush()


if __name__ == "__main__":
    main(*sys.argv[1:4])
