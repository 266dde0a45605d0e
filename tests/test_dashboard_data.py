"""The dashboard's numbers (no browser): loading stores, the leaderboard, anytime curves, Pareto fronts,
plan views, transfer rows, and the self-contained HTML report."""

from __future__ import annotations

import html
import json
import re
import statistics
from pathlib import Path

import pytest

from paratune.campaign import Store, locate
from paratune.dashboard import _data as data
from paratune.dashboard._figures import gantt_figure, leaderboard_table, text

#: the fixture campaign's first scenario name (conftest.py's ``dashboard_run``)
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run_dir(dashboard_run: Path) -> Path:
    return dashboard_run


@pytest.fixture(scope="module")
def results(run_dir: Path) -> data.Results:
    return data.load_runs(run_dir)


def test_load_finds_campaign_scenarios_and_jobs(run_dir: Path, results: data.Results) -> None:
    assert [c.name for c in results.campaigns] == ["fixture"]
    assert [k[1] for k in results.scenarios] == [EVIL, "tiny-prefill", "tiny-pareto"]
    located = locate(run_dir)
    store = Store(located.storage)
    try:
        assert len(results.jobs) == len([j for j in store.jobs("fixture") if j.role != "study"])
        assert [s.kind for s in results.studies] == ["granularity"]
        assert results.campaigns[0].counts == store.counts("fixture")
    finally:
        store.close()
    # a folder of run folders and the SQLite file itself load the same campaign
    assert [c.name for c in data.load_runs(run_dir.parent).campaigns] == ["fixture"]
    assert len(data.load_runs(run_dir / "campaign.db").jobs) == len(results.jobs)


def test_bad_target_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no campaign\.json"):
        data.load_runs(tmp_path)
    with pytest.raises(ValueError, match="not a run folder"):
        data.load_runs(tmp_path / "missing")


def test_reference_is_the_certified_optimum_or_the_best_known(results: data.Results) -> None:
    single = results.scenarios[("fixture", EVIL)]
    dp = next(j for j in results.jobs_of(single.key) if j.role == "optimum")
    assert dp.optimal and single.reference_kind == data.OPTIMUM and single.reference == dp.value
    multi = results.scenarios[("fixture", "tiny-pareto")]
    assert multi.multi and multi.reference_kind == data.BEST_KNOWN
    assert multi.reference == min(j.value for j in results.jobs_of(multi.key) if j.value is not None)


def test_leaderboard_numbers_match_the_store(run_dir: Path, results: data.Results) -> None:
    """Recompute one cell (optuna-random on the tiny prefill scenario) straight from the store's rows."""
    store = Store(locate(run_dir).storage)
    try:
        rows = [j for j in store.jobs("fixture") if j.scenario == "tiny-prefill"]
        optimum = next(j.objective_value for j in rows if j.role == "optimum")
        mine = [j for j in rows if j.tuner == "optuna-random"]
        values = [j.objective_value for j in mine]
        histories = [store.result(j.id).result["history"] for j in mine]  # type: ignore[union-attr]
    finally:
        store.close()
    entry = next(e for e in data.leaderboard(results, ("fixture", "tiny-prefill")) if e.tuner == "optuna-random")
    assert entry.done == 2 and entry.values == tuple(values)
    assert entry.median == pytest.approx(statistics.median(values))
    assert entry.best == pytest.approx(min(values)) and entry.worst == pytest.approx(max(values))
    assert entry.gap_median == pytest.approx(statistics.median(values) / optimum - 1.0)
    assert entry.spread == pytest.approx((max(values) - min(values)) / optimum)
    hits = [next((e for e, _, b in h if b <= optimum * 1.01), None) for h in histories]
    reached = sorted(h for h in hits if h is not None)
    assert entry.reached == len(reached)
    expected = statistics.median(reached) if len(reached) == 2 else None
    assert entry.evals_to_within == expected
    # the dp row is the optimum: gap 0, reached within 1% on its one seed
    dp = next(e for e in data.leaderboard(results, ("fixture", "tiny-prefill")) if e.role == "optimum")
    assert dp.gap_median == 0.0 and dp.reached == 1
    # the formatted table shows the same numbers with units
    table = leaderboard_table(results, ("fixture", "tiny-prefill"))
    row = table.rows[table.row_keys.index("optuna-random")]
    assert row[3] == data.fmt_value("ttft", entry.median) and row[3].endswith(" ms")
    assert row[5] == f"{100 * entry.gap_median:.2f}%"


def test_overall_ranks_dp_first_and_counts_every_scenario(results: data.Results) -> None:
    standings = data.overall(results)
    by = {s.tuner: s for s in standings}
    assert set(by) == {"megatron", "balanced-pp", "dp", "optuna-random"}
    assert by["dp"].scenarios == 3 and by["dp"].within == 3 and by["dp"].median_gap == 0.0
    ranks = [s.mean_rank for s in standings]
    assert ranks == sorted(ranks)


def test_filters_change_the_selection(results: data.Results) -> None:
    only = results.select(tuner=["dp"], phase="decode")
    assert {j.tuner for j in only.jobs} == {"dp"}
    assert {k[1] for k in only.scenarios} == {EVIL, "tiny-pareto"}
    assert results.select(scenario=[EVIL]).choices("scenario") == [EVIL]
    assert results.choices("objective") == ["tbt", "tbt+memory", "ttft"]
    with pytest.raises(ValueError, match="allowed: campaign, model"):
        results.select(colour=["red"])


def test_anytime_curves_are_monotone_with_a_band(results: data.Results) -> None:
    key = ("fixture", "tiny-prefill")
    for axis in ("evaluations", "wall_s"):
        curves = {c.tuner: c for c in data.anytime(results, key, axis)}
        c = curves["optuna-random"]
        assert c.seeds == 2 and c.x == sorted(c.x)
        assert all(lo <= m <= hi for lo, m, hi in zip(c.low, c.median, c.high, strict=True))
        assert all(b <= a for a, b in zip(c.median, c.median[1:], strict=False))  # minimised: never worse
    assert data.anytime(results, key, "evaluations")[0].x[-1] >= 1
    with pytest.raises(ValueError, match="axis"):
        data.anytime(results, key, "time")


def test_pareto_front_is_non_dominated(results: data.Results) -> None:
    points = data.pareto_points(results, ("fixture", "tiny-pareto"))
    assert points, "optuna-random records a Pareto front on tbt+memory"
    best = data.front(points)
    for p in best:
        assert not any(q.latency_s <= p.latency_s and q.memory_bytes < p.memory_bytes for q in points)


def test_plan_view_has_a_timeline_and_memory(results: data.Results) -> None:
    key = ("fixture", EVIL)
    job = next(j for j in results.jobs_of(key) if j.role == "optimum")
    view = data.plan_view(job, results.scenarios[key].problem)
    assert view is not None and view.events and view.stages
    assert {e.kind for e in view.events} >= {"compute"}
    assert view.simulated_s == pytest.approx(view.latency_s, rel=0.05)
    assert len(view.memory_bytes) == 8 and max(view.memory_bytes) <= view.capacity_bytes
    fig = gantt_figure(view)
    assert any(t.type == "bar" and t.orientation == "h" for t in fig.data)


def test_transfer_rows_read_saved_transfer_reports(tmp_path: Path, results: data.Results) -> None:
    folder = tmp_path / "run"
    (folder / "transfer").mkdir(parents=True)
    report = {
        "policy": "p.zip",
        "problem": {"name": "tiny"},
        "optimum": {"value": 1.0, "source": "dp (certified)", "certified": True},
        "rows": [
            {"label": "zero-shot greedy", "value": 1.2, "gap_to_optimum": 0.2},
            {"label": "fine-tuned greedy", "value": 1.05, "gap_to_optimum": 0.05},
            {"label": "dp", "value": 1.0, "gap_to_optimum": 0.0},
        ],
        "notes": [],
    }
    (folder / "transfer" / "tiny.json").write_text(json.dumps(report))
    (folder / "transfer" / "junk.json").write_text("{not json")
    loaded = data.load_transfers(folder)
    assert len(loaded) == 1
    results.transfers = loaded
    try:
        rows = data.transfer_rows(results)
    finally:
        results.transfers = []
    assert [(r.kind, r.gap) for r in rows] == [("zero-shot", 0.2), ("fine-tuned", 0.05), ("optimum", 0.0)]


def test_units_and_escaping() -> None:
    assert data.fmt_value("tbt", 0.0076301) == "7.63 ms"
    assert data.fmt_value("step", 1.95) == "1.95 s"
    assert data.fmt_value("throughput", 8387.7) == "8388 tokens/s"
    assert data.fmt_value("ttft", None) == "-" and data.fmt_pct(0.0123) == "1.23%"
    assert text(EVIL) == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_report_is_self_contained_and_escapes_names(run_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from paratune.cli._dashboard import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src\s*=\s*[\"']?(https?:)?//", page, re.I), "no script from the network"
    assert "Plotly.newPlot" in page
    assert html.escape(EVIL) in page and EVIL not in page
    assert "Pareto front" in page and "pipeline timeline" in page
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "-o", str(out)])
    assert bad.exit_code == 2


# -- the store's read API and studies kept apart ---------------------------------------------------


def test_store_reads_frozen_typed_records(run_dir: Path) -> None:
    import dataclasses

    from paratune.campaign import CampaignRecord, JobRecord, ResultRecord

    store = Store.reader(locate(run_dir).storage)
    try:
        (camp,) = store.campaigns()
        jobs = store.jobs("fixture")
        dp = next(j for j in jobs if j.role == "optimum" and j.scenario == "tiny-prefill")
        result = store.result(dp.id)
        scenario = store.scenarios("fixture")["tiny-prefill"]
        with pytest.raises(RuntimeError, match="read-only"):
            store.retry_failed("fixture")
    finally:
        store.close()
    assert isinstance(camp, CampaignRecord) and camp.name == "fixture" and isinstance(camp.spec, dict)
    assert all(isinstance(j, JobRecord) and isinstance(j.options, dict) for j in jobs)
    assert dp.optimal is True and dp.state == "done" and isinstance(dp.objective_value, float)
    assert (
        isinstance(result, ResultRecord) and result.result["best_plan"] and result.objective_value == dp.objective_value
    )
    assert scenario.problem["phase"] == "prefill"
    with pytest.raises(dataclasses.FrozenInstanceError):
        dp.state = "waiting"  # type: ignore[misc]


def test_reader_creates_nothing_and_names_what_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(ValueError, match="no such SQLite file"):
        Store.reader(f"sqlite:///{missing}")
    assert not missing.exists()
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not a campaign store"):
        Store.reader(f"sqlite:///{other}")


def test_status_keeps_studies_out_of_the_tuner_table(run_dir: Path) -> None:
    """The granularity study runs on a scenario dp certified: its headline must not get a gap to dp's optimum."""
    from typer.testing import CliRunner

    from paratune.campaign import campaign_status
    from paratune.cli import app

    status = campaign_status(str(run_dir))
    (study,) = [j for j in status["jobs"] if j["role"] == "study"]
    assert study["study"] == "granularity" and study["scenario"] == "tiny-prefill"
    store = Store.reader(locate(run_dir).storage)
    try:
        assert next(j for j in store.jobs("fixture") if j.is_study).optimum_job is not None  # the case that mattered
    finally:
        store.close()
    assert study["gap"] is None and study["optimum_value"] is None and study["objective_value"] is not None
    tuned = [j for j in status["jobs"] if j["role"] != "study" and j["scenario"] == "tiny-prefill"]
    assert tuned and all(j["study"] is None and j["gap"] is not None for j in tuned)
    res = CliRunner().invoke(app, ["campaign", "status", str(run_dir)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    tuner_table, _, studies_table = res.output.partition("studies (")
    assert study["tuner"] not in tuner_table and "megatron" in tuner_table
    assert study["tuner"] in studies_table and "granularity" in studies_table
