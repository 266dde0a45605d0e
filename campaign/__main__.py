"""``python -m paratune.campaign worker --storage URL NAME``: the worker process that ``campaign run`` starts.

The launcher uses this entry (not the ``paratune`` script) so that workers start
with the same interpreter and need nothing on ``PATH``. SIGTERM is handled like
Ctrl-C: the current job goes back to the queue. Exit codes: 0 when the queue is
empty, 130 when interrupted, 2 on a usage or storage error.

The storage URL comes from ``--storage`` or, as the launcher passes it, from the
``PARATUNE_STORAGE`` environment variable: a password on the command line would be
visible to every user in ``ps``. ``--watch-fd N`` (the launcher's) names the read end
of a pipe whose write end the launcher holds: end-of-file on it means the launcher is
gone, and the worker stops as on SIGTERM (its job goes back to the queue).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paratune.campaign")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="claim and run jobs of a campaign until none waits")
    w.add_argument("name")
    w.add_argument("--storage", default=None, help="database URL (default: $PARATUNE_STORAGE)")
    w.add_argument("--output", default=None)
    w.add_argument("--heartbeat", type=float, default=5.0)
    w.add_argument("--stale-after", type=float, default=120.0)
    w.add_argument("--max-jobs", type=int, default=None)
    w.add_argument("--watch-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from ._secrets import STORAGE_ENV

    storage = args.storage or os.environ.pop(STORAGE_ENV, None)  # popped: the jobs' own children never see it
    if not storage:
        print(f"error: give --storage URL or set {STORAGE_ENV}", file=sys.stderr, flush=True)
        return 2

    def stop(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # The launcher stops workers with SIGINT; a launcher started in the background (`cmd &`) passes SIGINT on
    # as ignored, and Python then installs no handler: restore it, or a clean stop becomes a kill.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    orphaned = threading.Event()
    if args.watch_fd is not None:
        _watch_launcher(args.watch_fd, orphaned)
    from ._runner import work

    try:
        work(storage, args.name, output=args.output, heartbeat_s=args.heartbeat,
             stale_after_s=args.stale_after, max_jobs=args.max_jobs, say=lambda s: print(s, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        why = "its launcher is gone" if orphaned.is_set() else "interrupted"
        print(f"worker stopped ({why}): its job is back in the queue", flush=True)
        return 130
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


#: Seconds an orphaned worker has to put its job back before it exits regardless.
ORPHAN_GRACE_S = 15.0


def _watch_launcher(fd: int, orphaned: threading.Event) -> None:
    """Stop this worker (as SIGTERM does) when the launcher's end of the pipe ``fd`` closes: the launcher died."""

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass  # a bad descriptor counts as a gone launcher too: never run unsupervised
        orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)
        # A library may swallow the interrupt (it arrives as an exception anywhere); never run on unsupervised:
        # after a grace period, exit. The job left `running` has a dead pid, which the next launcher or worker
        # on this host requeues at once.
        time.sleep(ORPHAN_GRACE_S)
        print("worker stopped (its launcher is gone; the interrupt was not honoured in time)", flush=True)
        os._exit(130)

    threading.Thread(target=watch, name="paratune-launcher-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
