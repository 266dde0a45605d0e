"""The campaign's vocabularies: a job's state, its role, and how an attempt ended.

Members are strings (``JobState.DONE == "done"``): the store's columns, the
``--json`` output and the dashboard keep the plain names, and code compares with
the members instead of spelling the strings again.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's life: ``waiting`` -> ``running`` -> ``done`` | ``failed`` (back to ``waiting`` when requeued)."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Role(StrEnum):
    """What a job is for: a tuner's run, the scenario's ``dp`` optimum (the reference of the gaps), or a study."""

    TUNE = "tune"
    OPTIMUM = "optimum"
    STUDY = "study"


class AttemptOutcome(StrEnum):
    """How one claim of a job ended (``running`` while it runs; ``lost``: requeued after a stale heartbeat)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    LOST = "lost"
