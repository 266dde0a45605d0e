"""``python -m paratune.campaign worker --storage URL NAME``: the worker process that ``campaign run`` starts.

The launcher uses this entry (not the ``paratune`` script) so that workers start
with the same interpreter and need nothing on ``PATH``. SIGTERM is handled like
Ctrl-C: the current job goes back to the queue. Exit codes: 0 when the queue is
empty, 130 when interrupted, 2 on a usage or storage error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paratune.campaign")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="claim and run jobs of a campaign until none waits")
    w.add_argument("name")
    w.add_argument("--storage", required=True)
    w.add_argument("--output", default=None)
    w.add_argument("--heartbeat", type=float, default=5.0)
    w.add_argument("--stale-after", type=float, default=120.0)
    w.add_argument("--max-jobs", type=int, default=None)
    args = parser.parse_args(argv)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # The launcher stops workers with SIGINT; a launcher started in the background (`cmd &`) passes SIGINT on
    # as ignored, and Python then installs no handler: restore it, or a clean stop becomes a kill.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ._runner import work

    try:
        work(args.storage, args.name, output=args.output, heartbeat_s=args.heartbeat,
             stale_after_s=args.stale_after, max_jobs=args.max_jobs, say=lambda s: print(s, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        print("worker interrupted: its job is back in the queue", flush=True)
        return 130
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
