"""Campaigns: many tuners x scenarios x seeds, stored in a database, resumable, shared by workers.

* :class:`CampaignSpec` (:mod:`._spec`): the YAML spec (``configs/campaigns/demo.yaml``),
  validated with errors that name the file and the field; list-valued scenario
  fields expand to their product.
* :class:`Store` (:mod:`._store`): results and the job queue on SQLite (default, in
  the run folder) or any SQLAlchemy URL such as PostgreSQL; jobs are claimed
  atomically by the database, with heartbeats so a killed worker's job is re-run.
  Reads return frozen records (:mod:`._records`: :class:`CampaignRecord`,
  :class:`ScenarioRecord`, :class:`JobRecord`, :class:`ResultRecord`,
  :class:`AttemptRecord`); :meth:`Store.reader` opens a store read-only (the dashboard).
* :func:`run_campaign`, :func:`resume_campaign`, :func:`work`, :func:`campaign_status`
  (:mod:`._runner`): the ``paratune campaign run | resume | worker | status`` commands.

Names load lazily: a process that only claims jobs (``Store``) imports SQLAlchemy, not the
tuners; nothing here imports Optuna or torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_NAMES = {
    "AttemptRecord": "._records",
    "CampaignRecord": "._records",
    "JobRecord": "._records",
    "ResultRecord": "._records",
    "ScenarioRecord": "._records",
    "CampaignSpec": "._spec",
    "JobSpec": "._spec",
    "TunerSpec": "._spec",
    "AttemptOutcome": "._states",
    "JobState": "._states",
    "Role": "._states",
    "JobLost": "._store",
    "Store": "._store",
    "StoreError": "._store",
    "Worker": "._store",
    "Located": "._runner",
    "Outcome": "._runner",
    "campaign_status": "._runner",
    "create_campaign": "._runner",
    "locate": "._runner",
    "resume_campaign": "._runner",
    "run_campaign": "._runner",
    "work": "._runner",
    "run_file_storage": "._secrets",
    "read_run_file": "._runfile",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
