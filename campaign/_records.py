"""What the campaign store hands back: frozen records with typed fields, one class per table.

Readers (``paratune campaign status``, the dashboard, the report, tests) get these
instead of database rows, so they depend on the store's API, not on its tables or
SQL; JSON columns (the spec, a problem, options, a result and its provenance)
arrive decoded. Field names are the column names, so the store's schema (and old
run folders) stay as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

from ._states import AttemptOutcome, JobState, Role

_R = TypeVar("_R")


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign: its expanded spec, the spec's fingerprint and its run folder."""

    name: str
    description: str
    spec: dict[str, Any] = field(repr=False)
    fingerprint: str
    output: str
    created_at: float
    paratune_version: str


@dataclass(frozen=True)
class ScenarioRecord:
    """One scenario of a campaign as a problem mapping (``Problem.from_dict`` reads it back)."""

    campaign: str
    name: str
    problem: dict[str, Any]
    source: str


@dataclass(frozen=True)
class JobRecord:
    """One job (campaign x scenario x tuner label x seed), its queue state and, once finished, its result's summary.

    ``found`` ... ``wall_s`` come from the result row and are None until the job has one.
    """

    id: int
    campaign: str
    scenario: str
    tuner: str
    tuner_name: str
    budget: int | None
    options: dict[str, Any]
    seed: int
    role: Role
    optimum_job: int | None
    state: JobState
    worker: str | None = None
    host: str | None = None
    pid: int | None = None
    attempts: int = 0
    claimed_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    log: str | None = None
    found: bool | None = None
    objective_value: float | None = None
    optimal: bool | None = None
    evaluations: int | None = None
    wall_s: float | None = None

    @property
    def is_study(self) -> bool:
        """A study's job: its value is a study's headline figure, not a plan's (kept out of tuner tables)."""
        return self.role == Role.STUDY


@dataclass(frozen=True)
class ResultRecord:
    """A finished job's result: ``result`` is ``TuneResult.to_dict`` (a study's ``study.json`` for study jobs)."""

    job: int
    campaign: str
    found: bool
    objective_value: float | None
    optimal: bool
    evaluations: int
    wall_s: float
    result: dict[str, Any] = field(repr=False)
    provenance: dict[str, Any] = field(repr=False)
    created_at: float


@dataclass(frozen=True)
class AttemptRecord:
    """One claim of a job by a worker: the audit trail that shows no job ran twice."""

    id: int
    job: int
    worker: str
    host: str
    pid: int
    started_at: float
    ended_at: float | None
    outcome: AttemptOutcome


#: JSON-encoded columns of each record, decoded on the way out.
_JSON = {"spec", "problem", "options", "result", "provenance"}
#: Columns holding a vocabulary word, handed out as its member (a StrEnum: it still equals the string).
_WORDS: dict[str, type[StrEnum]] = {"role": Role, "state": JobState, "outcome": AttemptOutcome}


def record(cls: type[_R], row: Mapping[Any, Any]) -> _R:
    """A record of class ``cls`` from a database row: the row's columns that are the record's fields."""
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in row:
            continue
        value = row[f.name]
        if f.name in _JSON and isinstance(value, str):
            value = json.loads(value)
        elif f.name in ("found", "optimal") and value is not None:
            value = bool(value)
        elif f.name in _WORDS and value in _WORDS[f.name]._value2member_map_:
            value = _WORDS[f.name](value)  # a word this version does not know stays a string
        values[f.name] = value
    return cls(**values)
