"""Campaign results as tidy tables: one row per job, then the leaderboard, anytime curves and Pareto fronts.

The dashboard and the HTML report both read campaigns through :func:`load_runs`,
which accepts run folders (``runs/demo``), a folder of run folders (``runs/``), a
SQLite file or any SQLAlchemy URL. The stores are read through the campaign
store's API (:meth:`paratune.campaign.Store.reader`: its frozen records, nothing
created, no write lock taken), so a dashboard open on a running campaign never
blocks the workers, and nothing here knows the store's tables or SQL.

Every number a page shows is computed here, once, so the app, the report and the
tests agree:

* the **reference** of a scenario is the value of its ``dp`` job when dp certified
  it optimal (``"optimum"``), otherwise the best value any job found (``"best known"``);
* a tuner's **gap** is :meth:`Objective.gap` of its value to the reference (0.05 = 5% worse);
* **evaluations / wall time to within 1%** read the anytime history: the first point
  whose best-so-far is within 1% of the reference (median over the seeds that got there);
* the **spread over seeds** is (worst - best) / reference of the seeds' final values.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..campaign import JobState, Role, run_file_storage

if TYPE_CHECKING:
    from ..campaign import JobRecord, ResultRecord

WITHIN = 0.01  # "within 1%" of the reference
OPTIMUM, BEST_KNOWN = "optimum", "best known"


@dataclass(frozen=True)
class Campaign:
    """One campaign of a store: its description, where it lives and its jobs per state."""

    name: str
    description: str
    storage: str
    output: str
    created_at: float
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Job:
    """One job (tuner x scenario x seed) and, once finished, its result (``TuneResult.to_dict``)."""

    campaign: str
    id: int
    scenario: str
    tuner: str
    tuner_name: str
    seed: int
    role: str
    state: str
    budget: int | None
    error: str | None
    optimum_job: int | None
    value: float | None = None
    optimal: bool = False
    evaluations: int | None = None
    wall_s: float | None = None
    result: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    provenance: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def history(self) -> list[tuple[int, float, float]]:
        """(evaluation, wall seconds, best-so-far) at each improvement."""
        return [(int(e), float(w), float(b)) for e, w, b in self.result.get("history", [])]

    @property
    def plan(self) -> dict[str, Any] | None:
        plan: dict[str, Any] | None = self.result.get("best_plan")
        return plan

    @property
    def metrics(self) -> dict[str, Any] | None:
        metrics: dict[str, Any] | None = self.result.get("best_metrics")
        return metrics

    @property
    def label(self) -> str:
        return f"{self.tuner} seed {self.seed} (job {self.id})"


@dataclass(frozen=True)
class Scenario:
    """A scenario of a campaign, its problem mapping and the reference its gaps refer to."""

    campaign: str
    name: str
    problem: dict[str, Any]
    direction: str
    multi: bool
    reference: float | None
    reference_kind: str | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.campaign, self.name)

    @property
    def objective(self) -> str:
        return str(self.problem.get("objective", ""))

    def field(self, name: str) -> str:
        return str(self.problem.get(name, ""))


@dataclass(frozen=True)
class Study:
    """A study's ``study.json``: from a campaign's study job, or a study folder found on disk."""

    kind: str
    campaign: str  # "" for a study run on its own (``paratune study ... -o DIR``)
    scenario: str
    where: str  # its folder
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def title(self) -> str:
        phase = self.field("phase")
        head = f"{self.kind} study: {self.field('model')} on {self.field('platform')}" + (f", {phase}" if phase else "")
        workload = self.data.get("workload", {}).get("name") if self.kind == "static-vs-runtime" else None
        return head + (f", workload {workload}" if workload else "") + (f" ({self.campaign})" if self.campaign else "")

    def field(self, name: str) -> str:
        """model, platform, phase or objective: at the top level (static-vs-runtime) or in ``problem``."""
        value = self.data.get(name)
        if value is None or isinstance(value, dict):
            value = self.data.get("problem", {}).get(name, "")
        return str(value)


@dataclass
class Results:
    """Everything loaded from one or many stores; filter with :meth:`select`."""

    campaigns: list[Campaign]
    scenarios: dict[tuple[str, str], Scenario]
    jobs: list[Job]
    transfers: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)

    @cached_property
    def many_campaigns(self) -> bool:
        return len(self.campaigns) > 1

    def scenario_label(self, key: tuple[str, str]) -> str:
        """The scenario's name, prefixed by its campaign when several campaigns are loaded."""
        return f"{key[0]}: {key[1]}" if self.many_campaigns else key[1]

    def choices(self, name: str) -> list[str]:
        """Distinct values of a filter field: campaign, model, platform, phase, objective, scenario, tuner."""
        if name == "campaign":
            return [c.name for c in self.campaigns]
        if name == "tuner":
            return list(dict.fromkeys(j.tuner for j in self.jobs))
        if name == "scenario":
            return [self.scenario_label(k) for k in self.scenarios]
        return sorted({s.field(name) for s in self.scenarios.values()} | {st.field(name) for st in self.studies})

    def select(self, **filters: Sequence[str] | str | None) -> Results:
        """The results whose fields are among the given values (None or empty: no filter on that field).

        Fields: campaign, model, platform, phase, objective, scenario (its label), tuner.

        Raises:
            ValueError: an unknown field.
        """
        allowed = ("campaign", "model", "platform", "phase", "objective", "scenario", "tuner")
        wanted: dict[str, set[str]] = {}
        for key, value in filters.items():
            if key not in allowed:
                raise ValueError(f"unknown filter {key!r}; allowed: {', '.join(allowed)}")
            if value:
                wanted[key] = {value} if isinstance(value, str) else set(value)

        def keep(s: Scenario) -> bool:
            for key, values in wanted.items():
                if key == "campaign" and s.campaign not in values:
                    return False
                if key == "scenario" and self.scenario_label(s.key) not in values:
                    return False
                if key in ("model", "platform", "phase", "objective") and s.field(key) not in values:
                    return False
            return True

        kept = {k: s for k, s in self.scenarios.items() if keep(s)}
        tuners = wanted.get("tuner")
        jobs = [j for j in self.jobs if (j.campaign, j.scenario) in kept and (not tuners or j.tuner in tuners)]
        names = {k[0] for k in kept}

        def keep_study(st: Study) -> bool:
            for key, values in wanted.items():
                if key == "campaign" and st.campaign not in values:
                    return False
                if key in ("model", "platform", "phase", "objective") and st.field(key) not in values:
                    return False
            return True

        studies = [st for st in self.studies if keep_study(st)]
        out = Results(
            [c for c in self.campaigns if c.name in names or not kept],
            kept,
            jobs,
            self.transfers,
            self.sources,
            studies,
        )
        out.many_campaigns = self.many_campaigns  # labels stay the same under a filter
        return out

    def jobs_of(self, key: tuple[str, str]) -> list[Job]:
        return [j for j in self.jobs if (j.campaign, j.scenario) == key]

    def job(self, campaign: str, job_id: int) -> Job | None:
        return next((j for j in self.jobs if j.campaign == campaign and j.id == job_id), None)


# -- loading ------------------------------------------------------------------------------------


def load_runs(targets: str | Path | Iterable[str | Path]) -> Results:
    """Load every campaign found in ``targets``: run folders, folders of run folders, SQLite files, URLs.

    Raises:
        ValueError: a target that is none of these (the message says what was looked for).
    """
    from ..study import find_studies

    items = [targets] if isinstance(targets, (str, Path)) else list(targets)
    urls: list[tuple[str, Path | None]] = []
    on_disk: list[tuple[Path, dict[str, Any]]] = []
    for item in items:
        try:
            urls.extend(_store_urls(item))
        except ValueError:
            found = find_studies([item]) if Path(str(item)).is_dir() else []
            if not found:
                raise
        if Path(str(item)).is_dir():
            on_disk.extend(find_studies([item]))
    seen: set[str] = set()
    out = Results([], {}, [], [], [str(i) for i in items])
    for url, folder in urls:
        if url in seen:
            continue
        seen.add(url)
        _load_store(url, out)
        if folder is not None:
            out.transfers.extend(load_transfers(folder))
    known = {Path(st.where).resolve() for st in out.studies}
    for folder, data in on_disk:
        if folder not in known:
            known.add(folder)
            out.studies.append(Study(str(data.get("kind", "")), "", "", str(folder), data))
    return out


def _store_urls(target: str | Path) -> list[tuple[str, Path | None]]:
    """(storage URL, run folder or None) for one target."""
    from ..campaign import read_run_file

    text = str(target)
    if "://" in text:
        return [(text, None)]
    path = Path(target)
    if path.is_file():
        if path.name == "campaign.json":
            return _store_urls(path.parent)
        return [(f"sqlite:///{path.resolve()}", path.resolve().parent)]
    if (path / "campaign.json").is_file():
        info = read_run_file(path / "campaign.json")
        if info.get("storage_file"):
            return [(f"sqlite:///{path.resolve() / info['storage_file']}", path.resolve())]
        return [(run_file_storage(info, path / "campaign.json"), path.resolve())]  # its password from the env
    if path.is_dir():
        found = [u for sub in sorted(path.iterdir()) if (sub / "campaign.json").is_file() for u in _store_urls(sub)]
        if found:
            return found
        raise ValueError(f"{path}: no campaign.json in it or in its sub-folders (give a run folder such as runs/demo)")
    raise ValueError(f"{text}: not a run folder, a folder of run folders, a SQLite file or a database URL")


def _load_store(url: str, out: Results) -> None:
    from ..campaign import Store

    store = Store.reader(url)
    try:
        taken = {x.name for x in out.campaigns}
        for camp in store.campaigns():
            name = camp.name
            if name in taken:
                continue  # the same campaign through two paths (a shared database)
            scenario_records = store.scenarios(name)
            results = store.results(name)
            counts = store.counts(name)
            loaded = []
            for record in store.jobs(name):
                job = _job(record, results.get(record.id))
                if not record.is_study:
                    loaded.append(job)
                elif job.state == JobState.DONE and job.result:  # a study's result is its study.json, not a plan
                    where = str(job.result.get("out_dir", ""))
                    out.studies.append(Study(job.tuner_name.split(":", 1)[-1], name, job.scenario, where, job.result))
            out.campaigns.append(Campaign(name, camp.description or "", store.safe_url, camp.output, camp.created_at,
                                          counts))  # fmt: skip
            out.jobs.extend(loaded)
            order = {n: i for i, n in enumerate(dict.fromkeys(j.scenario for j in loaded))}  # queue order
            for s in sorted(scenario_records.values(), key=lambda s: (order.get(s.name, len(order)), s.name)):
                if s.name not in order and any(st.scenario == s.name for st in out.studies):
                    continue  # only studies ran on it: it belongs to the Studies page, not the leaderboard
                key = (name, s.name)
                out.scenarios[key] = _scenario(name, s.name, s.problem, [j for j in loaded if j.scenario == key[1]])
    finally:
        store.close()


def _job(j: JobRecord, r: ResultRecord | None) -> Job:
    job = Job(j.campaign, j.id, j.scenario, j.tuner, j.tuner_name, j.seed, j.role, j.state, j.budget, j.error,
              j.optimum_job)  # fmt: skip
    if r is None:
        return job
    return replace(job, value=r.objective_value, optimal=r.optimal, evaluations=r.evaluations, wall_s=r.wall_s,
                   result=r.result, provenance=r.provenance)  # fmt: skip


def _scenario(campaign: str, name: str, problem: dict[str, Any], jobs: list[Job]) -> Scenario:
    from ..problem import get_objective

    obj = get_objective(problem["objective"], problem["phase"])
    done = [j for j in jobs if j.state == JobState.DONE and j.value is not None and math.isfinite(j.value)]
    ref, kind = None, None
    certified = [j for j in done if j.role == Role.OPTIMUM and j.optimal]
    if certified:
        ref, kind = certified[0].value, OPTIMUM
    elif done:
        pick = max if obj.direction == "maximize" else min
        ref, kind = pick(j.value for j in done if j.value is not None), BEST_KNOWN
    return Scenario(campaign, name, problem, obj.direction, obj.multi, ref, kind)


def load_transfers(folder: Path) -> list[dict[str, Any]]:
    """Reports of ``paratune transfer --json`` saved under ``RUN_DIR/transfer/*.json`` (zero-shot vs fine-tuned)."""
    out = []
    for path in sorted((folder / "transfer").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "rows" in data and "optimum" in data:
            out.append({**data, "file": str(path)})
    return out


# -- the leaderboard ------------------------------------------------------------------------------


def gap(scenario: Scenario, value: float | None) -> float | None:
    """Relative gap of ``value`` to the scenario's reference (None when either is unknown)."""
    if value is None or scenario.reference is None:
        return None
    if scenario.direction == "maximize":
        return scenario.reference / value - 1.0 if value > 0 else math.inf
    return value / scenario.reference - 1.0 if scenario.reference > 0 else math.inf


def within(value: float, target: float, direction: str, rel: float = WITHIN) -> bool:
    if direction == "maximize":
        return value >= target * (1.0 - rel)
    return value <= target * (1.0 + rel)


def to_within(job: Job, scenario: Scenario, rel: float = WITHIN) -> tuple[int, float] | None:
    """(evaluations, wall seconds) when the job's best-so-far first came within ``rel`` of the reference."""
    if scenario.reference is None:
        return None
    for evaluation, wall, best in job.history:
        if within(best, scenario.reference, scenario.direction, rel):
            return evaluation, wall
    return None


@dataclass(frozen=True)
class Entry:
    """One leaderboard cell group: a tuner on a scenario, over its seeds."""

    key: tuple[str, str]
    tuner: str
    tuner_name: str
    role: str
    jobs: int
    done: int
    failed: int
    values: tuple[float, ...]
    best: float | None
    median: float | None
    worst: float | None
    gap_best: float | None
    gap_median: float | None
    spread: float | None
    reached: int
    evals_to_within: float | None
    wall_to_within: float | None
    evaluations: float | None
    wall_s: float | None


def leaderboard(results: Results, key: tuple[str, str]) -> list[Entry]:
    """A scenario's tuners, best median value first (failed-only tuners last)."""
    scenario = results.scenarios[key]
    by_tuner: dict[str, list[Job]] = {}
    for j in results.jobs_of(key):
        by_tuner.setdefault(j.tuner, []).append(j)
    sign = -1.0 if scenario.direction == "maximize" else 1.0
    out = []
    for tuner, jobs in by_tuner.items():
        done = [j for j in jobs if j.state == JobState.DONE and j.value is not None]
        values = tuple(float(j.value) for j in done if j.value is not None)
        ordered = sorted(values, key=lambda v: sign * v)
        best, worst = (ordered[0], ordered[-1]) if ordered else (None, None)
        median = statistics.median(values) if values else None
        spread = None
        if best is not None and worst is not None and scenario.reference:
            spread = abs(worst - best) / abs(scenario.reference)
        hits = [h for h in (to_within(j, scenario) for j in done) if h is not None]
        # median over every seed, a seed that never got within 1% counting as infinitely late
        evals = _median_or_none([h[0] for h in hits], len(done))
        walls = _median_or_none([h[1] for h in hits], len(done))
        out.append(
            Entry(
                key,
                tuner,
                jobs[0].tuner_name,
                jobs[0].role,
                len(jobs),
                len(done),
                sum(j.state == JobState.FAILED for j in jobs),
                values,
                best,
                median,
                worst,
                gap(scenario, best),
                gap(scenario, median),
                spread,
                len(hits),
                evals,
                walls,
                _median([j.evaluations for j in done]),
                _median([j.wall_s for j in done]),
            )
        )
    return sorted(out, key=lambda e: (e.median is None, sign * (e.median or 0.0)))


def _median(values: Iterable[float | int | None]) -> float | None:
    got = [float(v) for v in values if v is not None]
    return statistics.median(got) if got else None


def _median_or_none(hits: list[float] | list[int], seeds: int) -> float | None:
    """Median over ``seeds`` values where the missing ones are +inf; None when that median is infinite."""
    if seeds == 0:
        return None
    padded = sorted(float(h) for h in hits) + [math.inf] * (seeds - len(hits))
    m = statistics.median(padded)
    return None if math.isinf(m) else m


@dataclass(frozen=True)
class Standing:
    """A tuner over all selected scenarios: how often it is within 1%, its gaps and its mean rank."""

    tuner: str
    scenarios: int
    within: int
    median_gap: float | None
    mean_gap: float | None
    mean_rank: float | None
    failed: int


def overall(results: Results) -> list[Standing]:
    """Tuners ranked over the selected scenarios (median gap of the median value per scenario)."""
    gaps: dict[str, list[float]] = {}
    ranks: dict[str, list[float]] = {}
    failed: dict[str, int] = {}
    seen: dict[str, int] = {}
    for key in results.scenarios:
        entries = leaderboard(results, key)
        ranked = [e for e in entries if e.median is not None]
        for e in entries:
            seen[e.tuner] = seen.get(e.tuner, 0) + 1
            failed[e.tuner] = failed.get(e.tuner, 0) + e.failed
            if e.gap_median is not None:
                gaps.setdefault(e.tuner, []).append(e.gap_median)
        # tied values share the mean of their ranks
        for e in ranked:
            better = sum(1 for o in ranked if o.median != e.median and _better(results.scenarios[key], o, e))
            ties = sum(1 for o in ranked if o.median == e.median)
            ranks.setdefault(e.tuner, []).append(better + (ties + 1) / 2)
    out = []
    for tuner in seen:
        g = gaps.get(tuner, [])
        r = ranks.get(tuner, [])
        out.append(
            Standing(
                tuner,
                seen[tuner],
                sum(x <= WITHIN + 1e-12 for x in g),
                statistics.median(g) if g else None,
                statistics.fmean(g) if g else None,
                statistics.fmean(r) if r else None,
                failed.get(tuner, 0),
            )
        )
    return sorted(out, key=lambda s: (s.mean_rank is None, s.mean_rank or 0.0, s.tuner))


def _better(s: Scenario, a: Entry, b: Entry) -> bool:
    assert a.median is not None and b.median is not None
    return a.median > b.median if s.direction == "maximize" else a.median < b.median


# -- anytime curves ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Best-so-far of one tuner over its seeds on a shared x grid: median and min-max band."""

    tuner: str
    x: list[float]
    median: list[float]
    low: list[float]
    high: list[float]
    seeds: int


def anytime(results: Results, key: tuple[str, str], axis: str = "evaluations") -> list[Curve]:
    """One curve per tuner of a scenario against ``axis`` (``evaluations`` or ``wall_s``).

    Each seed's best-so-far is a step function, kept at its final value after the seed
    stopped; a curve starts where every seed has a feasible plan, so the median and
    the min-max band are best-so-far values themselves (never worse later on).

    Raises:
        ValueError: an unknown axis.
    """
    if axis not in ("evaluations", "wall_s"):
        raise ValueError(f"axis must be 'evaluations' or 'wall_s', got {axis!r}")
    col = 0 if axis == "evaluations" else 1
    by_tuner: dict[str, list[Job]] = {}
    for j in results.jobs_of(key):
        if j.state == JobState.DONE and j.history:
            by_tuner.setdefault(j.tuner, []).append(j)
    curves = []
    for tuner, jobs in by_tuner.items():
        steps = []
        for j in jobs:
            xs = [float(p[col]) for p in j.history]
            ys = [p[2] for p in j.history]
            end = float(j.evaluations if axis == "evaluations" else j.wall_s or 0.0) if j.evaluations else xs[-1]
            steps.append((xs, ys, max(end, xs[-1])))
        grid = sorted({x for xs, _, end in steps for x in [*xs, end]})
        table = np.full((len(steps), len(grid)), np.nan)
        for i, (xs, ys, _end) in enumerate(steps):
            for k, x in enumerate(grid):  # a finished seed keeps its final best-so-far
                idx = int(np.searchsorted(xs, x, side="right")) - 1
                if idx >= 0:
                    table[i, k] = ys[idx]
        have = ~np.any(np.isnan(table), axis=0)  # from where every seed has a feasible plan: monotone
        if not have.any():
            continue
        t = table[:, have]
        curves.append(
            Curve(
                tuner,
                [g for g, h in zip(grid, have, strict=True) if h],
                np.nanmedian(t, axis=0).tolist(),
                np.nanmin(t, axis=0).tolist(),
                np.nanmax(t, axis=0).tolist(),
                len(jobs),
            )
        )
    return curves


# -- Pareto fronts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParetoPoint:
    tuner: str
    job: int
    seed: int
    latency_s: float
    memory_bytes: float


def pareto_points(results: Results, key: tuple[str, str]) -> list[ParetoPoint]:
    """Every (latency, peak memory) point of the jobs' Pareto fronts on a two-objective scenario
    (a job that recorded no front, such as a heuristic's, contributes its best plan)."""
    out = []
    for j in results.jobs_of(key):
        front_of_job = [p.get("values", []) for p in j.result.get("pareto", [])]
        metrics = j.metrics
        if not front_of_job and metrics and metrics.get("feasible"):  # a tuner that keeps no front: its best plan
            front_of_job = [[metrics["latency_s"], max(metrics.get("peak_memory_bytes") or [0.0])]]
        for values in front_of_job:
            if len(values) >= 2:
                out.append(ParetoPoint(j.tuner, j.id, j.seed, float(values[0]), float(values[1])))
    return out


def front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """The non-dominated points (both values minimised), by increasing latency."""
    out: list[ParetoPoint] = []
    for p in sorted(points, key=lambda q: (q.latency_s, q.memory_bytes)):
        if not out or p.memory_bytes < out[-1].memory_bytes:
            out.append(p)
    return out


# -- transfer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferRow:
    """One line of the transfer view: a policy result on a scenario next to the optimum."""

    scenario: str
    kind: str  # zero-shot | rollouts | fine-tuned | optimum | heuristic
    label: str
    value: float | None
    gap: float | None
    source: str


def transfer_rows(results: Results) -> list[TransferRow]:
    """RL results of the campaigns (zero-shot = the greedy rollout, evaluation 1 of the ``rl`` tuner; then
    the best of its sampled rollouts) against each scenario's reference, plus saved ``paratune transfer`` reports."""
    out = []
    for key, scenario in results.scenarios.items():
        rl = [j for j in results.jobs_of(key) if j.tuner_name == "rl" and j.state == JobState.DONE]
        if not rl:
            continue
        label = results.scenario_label(key)
        greedy = [h[0][2] for h in (j.history for j in rl) if h and h[0][0] == 1]
        zero = statistics.median(greedy) if greedy else None
        out.append(
            TransferRow(
                label,
                "zero-shot",
                f"zero-shot greedy ({len(greedy)}/{len(rl)} seeds feasible)",
                zero,
                gap(scenario, zero),
                "campaign",
            )
        )
        budgets = sorted({j.evaluations or 0 for j in rl})
        best = statistics.median(j.value for j in rl if j.value is not None)
        out.append(
            TransferRow(
                label,
                "rollouts",
                f"zero-shot, best of {'/'.join(map(str, budgets))} rollouts",
                best,
                gap(scenario, best),
                "campaign",
            )
        )
        if scenario.reference is not None:
            out.append(
                TransferRow(label, "optimum", scenario.reference_kind or "", scenario.reference, 0.0, "campaign")
            )
    for report in results.transfers:
        name = str(report.get("problem", {}).get("name", "?"))
        for row in report["rows"]:
            text = str(row.get("label", ""))
            kind = next((k for k in ("zero-shot", "fine-tuned") if text.startswith(k)), "other")
            if text.startswith("dp"):
                kind = "optimum"
            elif text.startswith("best heuristic"):
                kind = "heuristic"
            out.append(
                TransferRow(name, kind, text, row.get("value"), row.get("gap_to_optimum"), Path(report["file"]).name)
            )
    return out


# -- plan view -------------------------------------------------------------------------------------


@dataclass
class PlanView:
    """What the plan view draws: stages over the layers, the simulator's timeline, memory per device.

    Memory is the stored result's (the evaluator the tuner used); the timeline is
    re-simulated (:class:`~paratune.costmodel.Simulator`), so its makespan can differ
    a little from the stored latency where the analytic evaluator priced the plan.
    """

    plan: dict[str, Any]
    stages: list[dict[str, Any]]
    events: list[Any]
    memory_bytes: list[float]
    capacity_bytes: float
    limit_bytes: float | None
    latency_s: float | None
    simulated_s: float | None
    notes: list[str]
    memory_breakdown: dict[str, float] = field(default_factory=dict)


def plan_view(job: Job, problem: dict[str, Any], *, max_events: int = 20_000) -> PlanView | None:
    """The plan view of a finished job (None when it has no plan)."""
    plan = job.plan
    if plan is None:
        return None
    stages = []
    for i, st in enumerate(plan.get("stages", [])):
        layers = st.get("layers")
        stages.append(
            {
                "stage": i,
                "tp": int(st.get("tp", 1)),
                "devices": list(st.get("devices", [])),
                "first": None if layers is None else int(layers[0]),
                "last": None if layers is None else int(layers[1]),
                "tasks": len(st.get("tasks") or []),
                "recompute": bool(st.get("recompute", False)),
            }
        )
    metrics = job.metrics or {}
    notes: list[str] = []
    events: list[Any] = []
    simulated = None
    try:
        from ..costmodel import Plan

        prob = _problem(json.dumps(problem, sort_keys=True))
        p = Plan.from_dict(plan, where=f"job {job.id} plan")
        sim = prob.simulator(p.granularity).run(p, timeline=True)
        events = sorted(sim.timeline, key=lambda e: (e.start, e.stage))
        simulated = sim.metrics.latency_s
        if len(events) > max_events:
            notes.append(f"timeline cut to its first {max_events} of {len(events)} bars")
            events = events[:max_events]
        limit = prob.memory_limit_bytes
    except (ValueError, KeyError) as exc:  # a plan the simulator cannot run: still show stages and memory
        notes.append(f"no timeline: {exc}")
        limit = None
    capacity = float(metrics.get("memory_capacity_bytes") or 0.0)
    return PlanView(
        plan,
        stages,
        events,
        [float(m) for m in metrics.get("peak_memory_bytes", [])],
        capacity,
        limit if limit is not None and limit < capacity else None,
        metrics.get("latency_s"),
        simulated,
        notes,
        {str(k): float(v) for k, v in (metrics.get("memory_breakdown") or {}).items()},
    )


@functools.lru_cache(maxsize=16)
def _problem(text: str) -> Any:
    """A scenario's Problem, cached: its graphs and simulator are built once per dashboard process."""
    from ..problem import Problem

    return Problem.from_dict(json.loads(text), where="scenario")


# -- units -------------------------------------------------------------------------------------------

#: objective -> (unit, factor from the stored SI value)
UNITS = {"ttft": ("ms", 1e3), "tbt": ("ms", 1e3), "step": ("s", 1.0), "throughput": ("tokens/s", 1.0)}
GIB = 1024**3


def unit(objective: str) -> tuple[str, float]:
    """Display unit and factor of an objective's primary value (``tbt+memory`` -> TBT's)."""
    return UNITS.get(objective.split("+")[0], ("", 1.0))


def fmt_value(objective: str, value: float | None) -> str:
    """A value with its unit (``7.63 ms``); ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    name, factor = unit(objective)
    return f"{value * factor:.4g} {name}".strip()


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{100 * value:.2f}%"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"
