"""The granularity study: one row per (granularity, tuner) cell, gaps, sweet spots, checkpoints, files, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from paratune.search import Limits, Problem
from paratune.search._layered_space import LayeredSpace
from paratune.study._common import load_study
from paratune.study._granularity import (
    GranularityCell,
    default_granularities,
    granularity_figures,
    granularity_summary,
    run_cell,
    run_granularity_study,
)
from paratune.study._space_size import (
    count_dag_placement,
    count_layered,
    count_placement,
    cut_units,
    layered_pairs,
    space_log10,
)

GRANS = ["sublayer", "layer", "layers:2", "layers:4"]
TUNERS = ["dp", "balanced-pp", "optuna-random"]


def _problem(**changes: Any) -> Problem:
    # Three devices, prefill: the best plan cuts 6 layers unevenly, so layers:4 (cuts at 0 and 4) loses.
    base = Problem(
        "llama2-7b:layers=6",
        "dgx-a100",
        phase="prefill",
        objective="ttft",
        batch=8,
        seq=512,
        limits=Limits(max_devices=3),
    )
    return base.with_(**changes) if changes else base


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    out = tmp_path_factory.mktemp("granularity")
    lines: list[str] = []
    data = run_granularity_study(
        _problem(), granularities=GRANS, tuners=TUNERS, budget=20, out_dir=out, say=lines.append
    )
    return out, data, lines


def _rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["granularity"], r["tuner"]): r for r in data["rows"]}


def test_every_cell_has_a_row_with_gaps_against_the_best(study: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, data, lines = study
    assert data["kind"] == "granularity" and data["version"] == 1
    assert data["granularities"] == GRANS and data["tuners"] == TUNERS
    assert [(r["granularity"], r["tuner"]) for r in data["rows"]] == [(g, t) for g in GRANS for t in TUNERS]
    assert len(lines) == len(GRANS) * len(TUNERS) and lines[0].startswith(f"[1/{len(lines)}] sublayer x dp: ")
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert len(ok) == len(data["rows"])
    best = min(r["best"] for r in ok)
    assert data["best"]["value"] == best and data["direction"] == "minimize" and data["unit"] == "s"
    assert all(r["gap"] >= 0 and r["gap_to_tuner_best"] >= 0 for r in ok)
    assert min(r["gap"] for r in ok) == 0.0
    for r in ok:
        assert math.isclose(r["gap"], max(0.0, r["best"] / best - 1), abs_tol=1e-9)
        assert r["tasks"] >= 1 and r["space_log10"] is not None and r["wall_s"] > 0
        assert r["pp"] == len(r["tp"]) and r["plan"]["stages"]
    assert "granularity" not in data["problem"] and data["provenance"]["study"] == "granularity"


def test_exact_solver_never_gains_from_coarser_tasks(study: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, data, _ = study
    rows = _rows(data)
    dp = {g: rows[(g, "dp")] for g in GRANS}
    assert all(r["certified"] is True and r["space"] == "layered" for r in dp.values())
    layer = dp["layer"]["best"]
    for g in ("layers:2", "layers:4"):
        assert layer <= dp[g]["best"] * (1 + 1e-9)
        assert dp[g]["space_log10"] < dp["layer"]["space_log10"]
    # sublayer gives the dp the same space (cuts only between layers) and so the same optimum
    assert math.isclose(dp["sublayer"]["best"], layer, rel_tol=1e-9)
    assert dp["sublayer"]["space_log10"] == dp["layer"]["space_log10"]
    # layers:4 can only cut at layer 4: more than 1% worse here, so the dp's sweet spot is layers:2
    assert dp["layers:4"]["gap_to_tuner_best"] > 0.01
    assert data["sweet_spot"]["dp"]["granularity"] == "layers:2"
    assert rows[("sublayer", "optuna-random")]["space"] == "placement"
    assert rows[("layer", "optuna-random")]["space"] == "hybrid"
    assert rows[("layers:2", "balanced-pp")]["plan_granularity"] == "layer"
    summary = " ".join(data["summary"])
    assert "Best ttft" in summary and "dp: sweet spot layers:2" in summary


def test_files_tables_and_figures(study: tuple[Path, dict[str, Any], list[str]]) -> None:
    out, data, _ = study
    for name in ("study.json", "granularity_cells.csv", "granularity_gap.csv", "plots.html", "summary.md"):
        assert (out / name).is_file(), name
    assert load_study(out)["rows"] == data["rows"]
    assert (out / "granularity_cells.csv").read_text().count("\n") == 1 + len(data["rows"])
    assert "Best ttft" in (out / "summary.md").read_text()
    figures = granularity_figures(data)
    assert len(figures) == 3
    assert list(figures[0].layout.xaxis.categoryarray) == GRANS
    assert figures[1].layout.yaxis.type == "log" and figures[2].layout.xaxis.type == "log"
    assert all("(" in f.layout.title.text for f in figures)  # titles carry their units


def test_a_rerun_reuses_every_finished_cell(study: tuple[Path, dict[str, Any], list[str]]) -> None:
    out, data, _ = study
    lines: list[str] = []
    again = run_granularity_study(
        _problem(), granularities=GRANS, tuners=TUNERS, budget=20, out_dir=out, say=lines.append
    )
    assert len(lines) == len(data["rows"]) and all(line.endswith("(reused)") for line in lines)
    assert again["rows"] == data["rows"] and again["best"] == data["best"]
    # another budget is another cell for a search tuner; dp runs to completion whatever the budget
    lines.clear()
    run_granularity_study(
        _problem(), granularities=["layer"], tuners=["dp", "optuna-random"], budget=21, out_dir=out, say=lines.append
    )
    assert len(lines) == 2 and lines[0].endswith("(reused)") and "reused" not in lines[1]


def test_maximised_objective_and_skipped_cells() -> None:
    p = Problem("llama3-8b:layers=4", "dgx-a100", phase="decode", objective="throughput", batch=8, context=512)
    data = run_granularity_study(p, granularities=["op", "layer"], tuners=["dp", "dag-exact"])
    rows = _rows(data)
    assert data["unit"] == "tokens/s" and data["direction"] == "maximize"
    skipped = rows[("op", "dag-exact")]
    assert skipped["status"] == "skipped" and "max_tasks" in skipped["reason"] and skipped["best"] is None
    assert skipped["space_log10"] > 20  # a device group per task: far beyond any enumeration
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    top = max(r["best"] for r in ok)
    for r in ok:
        assert math.isclose(r["gap"], (top - r["best"]) / top, abs_tol=1e-9) and r["gap"] >= 0


def test_bad_inputs_are_refused_with_what_is_allowed() -> None:
    p = _problem()
    with pytest.raises(ValueError, match=r"'layers:0'.*op, sublayer, layer, layers:k"):
        run_granularity_study(p, granularities=["layer", "layers:0"])
    with pytest.raises(ValueError, match=r"unknown tuner 'nope'; registered: .*dp"):
        run_granularity_study(p, tuners=["dp", "nope"])
    with pytest.raises(ValueError, match=r"'ttft\+memory'.*one number"):
        run_granularity_study(p.with_(objective="ttft+memory"))


def test_default_granularities_keep_at_least_three_groups() -> None:
    assert default_granularities(32) == ["op", "sublayer", "layer", "layers:2", "layers:4", "layers:8"]
    assert default_granularities(6) == ["op", "sublayer", "layer", "layers:2"]
    assert default_granularities(4) == ["op", "sublayer", "layer"]


@pytest.mark.parametrize("phase", ["decode", "train"])
def test_layered_count_matches_the_solvers_space(phase: str) -> None:
    p = Problem("llama2-7b:layers=6", "dgx-a100:devices_per_node=4", phase=phase, batch=4, seq=256)
    for g in ("layer", "layers:2", "layers:4"):
        q = p.with_(granularity=g)
        flags = 2 if phase == "train" else 1
        mine = count_layered(
            cut_units(q, g), q.max_devices, q.tp_degrees(), layered_pairs(q, 64), per_stage_choices=flags
        )
        assert mine == LayeredSpace.build(q).count_plans()
        assert math.isclose(space_log10(q, g, "layered") or 0.0, math.log10(mine))


def test_placement_counts_by_hand() -> None:
    # 3 tasks on 2 devices, TP 1 or 2, batch 1: TP1 one group (1) + TP1 two groups (3 partitions) + TP2 (1)
    assert count_placement(3, 2, [1, 2], 1) == 5
    # 2 tasks, layouts (1), (2), (1, 1): both tasks on the single group (2), or one per group of (1, 1) (2)
    assert count_dag_placement(2, 2, 2, [1, 2]) == 4


def test_summary_says_when_finer_tasks_pay_off() -> None:
    def row(g: str, t: str, best: float, gap: float, wall: float) -> dict[str, Any]:
        cell = {"granularity": g, "tuner": t, "status": "ok", "best": best, "gap": gap, "gap_to_tuner_best": gap}
        return {**cell, "wall_s": wall, "tasks": 10, "plan_granularity": g}

    data = {
        "unit": "s",
        "objective": "tbt",
        "direction": "minimize",
        "granularities": ["op", "layer"],
        "tuners": ["optuna-tpe"],
        "rows": [row("op", "optuna-tpe", 0.9, 0.0, 2.0), row("layer", "optuna-tpe", 1.0, 1 / 9, 0.5)],
        "best": {"value": 0.9, "granularity": "op", "tuner": "optuna-tpe", "ties": 1},
        "sweet_spot": {"optuna-tpe": {"granularity": "op", "value": 0.9, "gap": 0.0, "wall_s": 2.0}},
    }
    text = "\n".join(granularity_summary(data))
    assert "Finer than layer paid off: optuna-tpe at op found 900 ms, 11.11% better than the best at layer" in text
    assert "optuna-tpe: op takes 4.0x the time of layer" in text


def test_a_cell_is_a_typed_row_whose_dict_is_the_file_row(study: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, data, _ = study
    cell = run_cell(_problem(), "layer", "balanced-pp", budget=20, seed=0)
    assert isinstance(cell, GranularityCell) and cell.status == "ok" and cell.family == "heuristic"
    assert cell.best is not None and cell.tp is not None and len(cell.tp) == cell.pp
    with pytest.raises(AttributeError):
        cell.best = 0.0  # type: ignore[misc]  # frozen
    row = _rows(data)[("layer", "balanced-pp")]
    assert list(cell.to_dict()) == list(row)  # same keys, same order as study.json's rows
    assert cell.to_dict()["best"] == pytest.approx(row["best"], rel=1e-12)
    assert GranularityCell.from_dict(row).to_dict() == row
