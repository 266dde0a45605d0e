"""The campaign's vocabularies: a job's state, its role, and how an attempt ended.

Members are strings (``JobState.DONE == "done"``): the store's columns, the
``--json`` output and the dashboard keep the plain names, and code compares with
the members instead of spelling the strings again.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in the queue."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Role(StrEnum):
    """Why a job exists: a tuner's run, the dp run the others' gaps refer to, or a study."""

    TUNE = "tune"
    OPTIMUM = "optimum"
    STUDY = "study"


class AttemptOutcome(StrEnum):
    """How one attempt at a job ended (``lost``: requeued by another process after a stale heartbeat)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"
