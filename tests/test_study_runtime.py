"""The static-vs-runtime study: workloads, bucketing, regrets, plan switching, checkpoints and files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from paratune.costmodel import Plan
from paratune.search import Limits, Problem
from paratune.study import _runtime
from paratune.study._runtime import run_runtime_study, runtime_figures, runtime_summary, runtime_tables
from paratune.study._switching import changed_decisions, fit_plan, reshard_cost, transplant
from paratune.study._workload import (
    WORKLOADS,
    generate_workload,
    load_workload,
    read_workload_csv,
    shipped_path,
)

MODEL, PLATFORM = "llama2-7b:layers=4", "dgx-a100"
# Four buckets whose prefill optima differ (TP 8 alone, TP 1 x 8 replicas, TP 4 x 2 replicas).
TRACE = "prompt_tokens,output_tokens,batch,count\n100,50,1,10\n3000,200,8,5\n900,100,32,3\n8000,20,2,4\n"


def _trace(tmp_path: Path, text: str = TRACE, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("runtime")
    workload = read_workload_csv(_trace(out))
    data = run_runtime_study(MODEL, PLATFORM, workload, phase="prefill", budget=20, seed=0, out_dir=out / "study")
    return data, out / "study"


# -- workloads ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_shipped_traces_regenerate_identically(name: str) -> None:
    assert generate_workload(name).csv_text() == shipped_path(name).read_text()
    w = load_workload(name)
    assert 200 <= w.rows <= 500 and w.source == f"shipped:{name}"


def test_bucketing_rounds_up_to_powers_of_two_and_caps_the_count(tmp_path: Path) -> None:
    w = read_workload_csv(_trace(tmp_path, "prompt_tokens,output_tokens,batch\n130,10,3\n200,30,4\n"))
    (b,) = w.buckets()
    assert (b.prompt, b.batch, b.requests, b.batches, b.output) == (256, 4, 7, 2, 20.0)
    chat = load_workload("chat")
    buckets = chat.buckets(max_buckets=5)
    assert len(buckets) == 5
    assert sum(b.requests for b in buckets) == chat.requests
    assert all(b.prompt & (b.prompt - 1) == 0 and b.batch & (b.batch - 1) == 0 for b in buckets)
    # every trace row lands in a bucket at least as large as itself
    for p, bt in zip(chat.prompt_tokens, chat.batch, strict=True):
        assert any(b.prompt >= p and b.batch >= bt for b in buckets)


@pytest.mark.parametrize(
    ("text", "row", "column"),
    [
        ("prompt_tokens,output_tokens,batch\n100,10,2\n100,10,0\n", "row 3", "'batch'"),
        ("prompt_tokens,output_tokens,batch\n# comment\n1.5,10,2\n", "row 3", "'prompt_tokens'"),
        ("prompt_tokens,output_tokens,batch,count\n100,-1,2,1\n", "row 2", "'output_tokens'"),
        ("prompt_tokens,output_tokens\n100,10\n", "row 1", "'batch'"),
        ("prompt_tokens,output_tokens,batch,weight\n100,10,2,1\n", "row 1", "'weight'"),
    ],
)
def test_bad_csv_names_file_row_and_column(tmp_path: Path, text: str, row: str, column: str) -> None:
    path = _trace(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError) as err:
        load_workload(str(path))
    message = str(err.value)
    assert str(path) in message and row in message and column in message
    assert "allowed" in message or "required" in message


def test_unknown_workload_lists_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="chat, summarise, mixed, train-mixed"):
        load_workload("no-such-trace")


# -- switching -----------------------------------------------------------------------


def test_reshard_cost_is_zero_for_identical_plans_and_positive_from_tp2_to_tp4() -> None:
    p = Problem(MODEL, PLATFORM, phase="decode", batch=8, context=512)
    same = reshard_cost(Plan.uniform(4, tp=2), Plan.uniform(4, tp=2), p)
    assert same.bytes == 0 and same.time_s == 0 and same.devices == 0
    up = reshard_cost(Plan.uniform(4, tp=2), Plan.uniform(4, tp=4), p)
    assert up.bytes > 0 and up.time_s > 0 and up.to_dict()["bytes"] == up.bytes
    # devices 2 and 3 need their whole quarter; device 1 a quarter it lacks; device 0 holds its part already
    total = reshard_cost(Plan.uniform(4, tp=1), Plan.uniform(4, tp=1, first_device=1), p).bytes
    assert up.bytes == pytest.approx(0.75 * total)
    # replicas of a full copy need nothing to shard down
    assert reshard_cost(Plan.uniform(4, tp=1, replicas=8), Plan.uniform(4, tp=4, replicas=2), p).bytes == 0


def test_fit_plan_clips_micro_batches_and_pads_to_the_replicas() -> None:
    plan = Plan.uniform(4, tp=2, replicas=4, micro_batches=4)
    fitted, padded = fit_plan(plan, 2)
    assert padded == 4 and fitted.micro_batches == 1 and fitted.replicas == 4
    fitted, padded = fit_plan(plan, 32)
    assert padded == 32 and fitted == plan


def test_changed_decisions_and_transplant() -> None:
    static, best = Plan.uniform(4, tp=2, replicas=4), Plan.uniform(4, tp=8)
    assert changed_decisions(static, best) == ["tp", "replicas"]
    tp_only = transplant(static, best, "tp", max_devices=8)
    assert tp_only is not None and [s.tp for s in tp_only.stages] == [8] and tp_only.replicas == 1  # repaired
    assert transplant(static, static, "tp", max_devices=8) is None
    split = Plan.uniform(4, tp=2, pp=2)
    assert changed_decisions(Plan.uniform(4, tp=2), split) == ["stages"]


# -- the study -------------------------------------------------------------------------


def test_regrets_are_consistent(study: tuple[dict[str, Any], Path]) -> None:
    data, _ = study
    assert data["kind"] == "static-vs-runtime" and data["version"] == 1
    assert len(data["buckets"]) == 4
    for b in data["buckets"]:
        assert b["optimum"] <= b["static"] * (1 + 1e-9)
        assert b["static_regret"] >= 0
    assert data["static"]["regret"] > 0.01  # the optima differ: one plan must lose somewhere
    assert "not certified" in data["static"]["note"]
    regrets = [e["regret"] for e in data["k_plans"]]
    assert [e["k"] for e in data["k_plans"]] == [1, 2, 4, 8]
    assert regrets[0] == pytest.approx(data["static"]["regret"])
    assert all(r >= 0 for r in regrets)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(regrets))
    assert regrets[-1] == 0 and regrets[2] == 0  # K >= buckets: every bucket runs its optimum
    oracle = sum(b["weight"] * b["optimum"] for b in data["buckets"])
    assert data["oracle"]["total"] == pytest.approx(oracle)
    for e in data["k_plans"]:
        assert set(e["assignment"]) == {b["id"] for b in data["buckets"]}
        assert all(0 <= j < len(e["plans"]) for j in e["assignment"].values())
        assert e["rule"] and all("-> plan" in line for line in e["rule"])
        assert len(e["switches"]) == len(e["plans"]) * (len(e["plans"]) - 1)


def test_decisions_and_break_even(study: tuple[dict[str, Any], Path]) -> None:
    data, _ = study
    by = {d["decision"]: d for d in data["decisions"]}
    assert by["tp"]["buckets_changed"] >= 1
    changed = sum(1 for b in data["buckets"] if b["changed"])
    assert all(d["buckets_changed"] <= changed for d in data["decisions"])
    for d in data["decisions"]:
        assert 0 <= d["regret_removed"] <= 1 + 1e-9
    assert data["break_even"]
    for row in data["break_even"]:
        assert (
            row["gain_s"] > 0
            and row["switch_s"] >= 0
            and row["batches"] == pytest.approx(row["switch_s"] / row["gain_s"])
        )


def test_files_written_and_outputs_render(study: tuple[dict[str, Any], Path]) -> None:
    data, folder = study
    for name in ("study.json", "summary.md", "plots.html", "runtime_buckets.csv", "runtime_k_plans.csv"):
        assert (folder / name).is_file()
    assert json.loads((folder / "study.json").read_text())["summary"] == data["summary"]
    assert len(runtime_figures(data)) == 4
    assert {t.name for t in runtime_tables(data)} >= {"runtime_buckets", "runtime_k_plans", "runtime_decisions"}
    assert any("static" in line.lower() for line in runtime_summary(data))


def test_checkpoints_are_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workload = read_workload_csv(_trace(tmp_path))
    first = run_runtime_study(MODEL, PLATFORM, workload, phase="prefill", budget=10, out_dir=tmp_path / "s")

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("recomputed a checkpointed cell")

    monkeypatch.setattr(_runtime, "tune", fail)
    monkeypatch.setattr(_runtime, "_static_search", fail)
    lines: list[str] = []
    again = run_runtime_study(
        MODEL, PLATFORM, workload, phase="prefill", budget=10, out_dir=tmp_path / "s", say=lines.append
    )
    assert [e["regret"] for e in again["k_plans"]] == [e["regret"] for e in first["k_plans"]]
    assert sum("reused" in line for line in lines) == 5  # four optima and the static search
    with pytest.raises(AssertionError):  # another budget is another static search
        run_runtime_study(MODEL, PLATFORM, workload, phase="prefill", budget=11, out_dir=tmp_path / "s")


def test_refuses_throughput_and_traces_without_output(tmp_path: Path) -> None:
    workload = read_workload_csv(_trace(tmp_path))
    with pytest.raises(ValueError, match="only latencies"):
        run_runtime_study(MODEL, PLATFORM, workload, objective="throughput", budget=0)
    train = read_workload_csv(_trace(tmp_path, "prompt_tokens,output_tokens,batch\n1024,0,8\n", "train.csv"))
    with pytest.raises(ValueError, match="nothing to decode"):
        run_runtime_study(MODEL, PLATFORM, train, phase="decode", budget=0)


def test_a_plan_that_fits_a_short_context_can_fail_a_long_one(tmp_path: Path) -> None:
    trace = "prompt_tokens,output_tokens,batch\n100,100,1\n4000,200,16\n"
    workload = read_workload_csv(_trace(tmp_path, trace))
    items = _runtime._bucket_problems(
        MODEL, PLATFORM, workload, "decode", "tbt", Limits(memory_gib=2.0), "layer", max_buckets=12
    )
    pricer = _runtime._Pricer(items)
    short, long = (0, 1) if items[0].context < items[1].context else (1, 0)
    tp2 = Plan.uniform(4, tp=2)
    assert pricer.cost(tp2, short) < float("inf")
    assert pricer.cost(tp2, long) == float("inf")  # its KV cache no longer fits 2 GiB per device
    assert pricer.cost(Plan.uniform(4, tp=8), long) < float("inf")


def test_choose_is_exact_and_greedy_stays_monotone(monkeypatch: pytest.MonkeyPatch) -> None:
    inf = float("inf")
    costs = [[1.0, 5.0, 5.0], [1.2, 1.0, inf], [3.0, 3.0, 1.0], [1.5, 1.5, 1.5]]
    weights = [1.0, 1.0, 1.0]
    assert _runtime._choose(costs, weights, 1) == ([3], "exact")
    assert _runtime._choose(costs, weights, 2)[0] == [1, 2]
    monkeypatch.setattr(_runtime, "MAX_SUBSETS", 0)
    totals = []
    for k in (1, 2, 3, 4):
        chosen, how = _runtime._choose(costs, weights, k)
        assert how.startswith("greedy")
        totals.append(sum(w * min(costs[j][i] for j in chosen) for i, w in enumerate(weights)))
    assert all(a >= b for a, b in itertools.pairwise(totals)) and totals[-1] == 3.0


def test_rule_reads_as_shape_thresholds() -> None:
    from paratune.study._workload import Bucket

    buckets = [Bucket(128, 1, 1, 1, 1.0, 1), Bucket(1024, 1, 1, 1, 1.0, 1), Bucket(128, 8, 8, 1, 1.0, 1)]
    rule = _runtime._rule(buckets, {"p128-b1": 0, "p1024-b1": 1, "p128-b8": 1})
    assert rule == [
        "batch <= 1 and prompt <= 128 -> plan 0",
        "batch <= 1 and prompt > 128 -> plan 1",
        "batch > 1 -> plan 1",
    ]
    assert _runtime._rule(buckets, dict.fromkeys(["p128-b1", "p1024-b1", "p128-b8"], 0)) == ["every shape -> plan 0"]
