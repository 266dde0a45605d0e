"""Discrete-event simulator: agreement with the analytic evaluator, any DAG, lifetimes, timeline."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from paratune.costmodel import (
    AnalyticEvaluator,
    Plan,
    SimulationResult,
    Simulator,
    Stage,
    get_platform,
    p2p_time,
    pair_link,
    platform_from_dict,
    random_plans,
    toy_platform,
)
from paratune.costmodel._platform import platforms_dir
from paratune.costmodel._profile import profiles_dir
from paratune.graphs import Op, Task, TaskGraph, build_graph, coarsen, toy_graph

PLATFORM = get_platform("dgx-h100x2")  # 16 GPUs: pp 4 x tp 2 x replicas 2 fits
MODELS = ["gpt2", "llama2-7b:layers=4", "mixtral-8x7b:layers=2"]
PHASES = ["prefill", "decode", "train"]
#: The lifetime peak may exceed the analytic's activations by this many hidden-state tensors of a
#: micro-batch (the residual stream, an early-received next input): see the simulator's docstring.
HIDDEN_SLACK = 2.0

_graphs: dict[tuple[str, str, str], TaskGraph] = {}


def _graph(model: str, phase: str, granularity: str) -> TaskGraph:
    key = (model, phase, granularity)
    if key not in _graphs:
        seq, context = (1, 256) if phase == "decode" else (128, 0)
        g = build_graph(model, phase=phase, batch=8, seq=seq, context=context)
        _graphs[key] = g if granularity == "op" else coarsen(g, granularity)
    return _graphs[key]


def _analytic_static(ev: AnalyticEvaluator, plan: Plan) -> list[float]:
    """Weights + training state or KV cache per stage, from the analytic evaluator's own tables."""
    n, out = ev.n_layers, []
    for st in plan.stages:
        a, b = st.layers or (0, n - 1)
        lo, hi = (0 if a == 0 else a + 1), (n + 2 if b == n - 1 else b + 2)
        col = ev.tp_tables(st.tp).lists
        need = col["weights"][hi] - col["weights"][lo]
        if ev.phase == "train":
            need += col["state"][hi] - col["state"][lo]
        else:
            need += (col["kv"][hi] - col["kv"][lo]) * ev.batch / plan.replicas * ev.kv_len
        out.append(need)
    return out


@pytest.mark.parametrize("granularity", ["layer", "op"])
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("model", MODELS)
def test_agrees_with_analytic_evaluator(model: str, phase: str, granularity: str) -> None:
    g = _graph(model, phase, granularity)
    ev, sim = AnalyticEvaluator(g, PLATFORM), Simulator(g, PLATFORM)
    hidden = g.meta.hidden * g.meta.batch * (1 if phase == "decode" else g.meta.seq) * 2
    schedules = ["1f1b", "gpipe"] if phase == "train" else ["1f1b"]
    checked = 0
    for pp, tp, m, r, schedule in itertools.product([1, 2, 4], [1, 2], [1, 2, 4], [1, 2], schedules):
        if pp > g.meta.n_layers:
            continue
        plan = Plan.uniform(g.meta.n_layers, tp=tp, pp=pp, micro_batches=m, replicas=r, schedule=schedule)
        a, res = ev.evaluate(plan), sim.run(plan, timeline=False)
        s = res.metrics
        where = f"{model} {phase} {granularity} pp{pp} tp{tp} m{m} r{r} {schedule}"
        assert s.latency_s == pytest.approx(a.latency_s, rel=0.01), where
        assert s.feasible == a.feasible or abs(s.max_memory_bytes - a.max_memory_bytes) < 0.05 * a.max_memory_bytes
        assert res.static_memory_bytes == pytest.approx(_analytic_static(ev, plan), rel=1e-9), where
        for st, static, act in zip(plan.stages, res.static_memory_bytes, res.activation_bytes, strict=True):
            analytic_act = a.peak_memory_bytes[st.devices[0]] - static
            assert act <= analytic_act + HIDDEN_SLACK * hidden / (r * m) * (1 + 1e-9), where
        assert s.stage_times_s == pytest.approx(a.stage_times_s, rel=1e-9), where
        assert s.tokens_per_s == pytest.approx(a.tokens_per_s, rel=0.01)
        if phase == "train":
            assert s.mfu == pytest.approx(a.mfu, rel=0.01)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("model", ["gpt2", "llama2-7b:layers=8"])
def test_uneven_training_pipelines_agree(model: str) -> None:
    """Random uneven stages, both schedules, recomputation on some stages, replicas: within 1%."""
    graph = coarsen(build_graph(model, phase="train", batch=16, seq=256), "layer")
    ev, sim = AnalyticEvaluator(graph, PLATFORM), Simulator(graph, PLATFORM)
    batch = random_plans(graph, PLATFORM, 40, np.random.default_rng(7), max_stages=4, max_micro_batches=8)
    schedules = set()
    for i in range(len(batch)):
        plan = batch.to_plan(i)
        schedules.add((plan.schedule, any(st.recompute for st in plan.stages)))
        a, s = ev.evaluate(plan), sim.evaluate(plan)
        assert s.step_s == pytest.approx(a.step_s, rel=0.01), plan.to_dict()
    assert len(schedules) == 4  # both schedules, with and without recomputation


def test_recompute_and_sublayer_agree() -> None:
    g = _graph("llama2-7b:layers=4", "train", "sublayer")
    ev, sim = AnalyticEvaluator(g, PLATFORM), Simulator(g, PLATFORM)
    for schedule, m in itertools.product(["1f1b", "gpipe"], [1, 4]):
        plain = Plan.uniform(4, tp=2, pp=2, micro_batches=m, schedule=schedule)
        rc = Plan.uniform(4, tp=2, pp=2, micro_batches=m, schedule=schedule, recompute=True)
        s_plain, s_rc = sim.run(plain, timeline=False), sim.run(rc, timeline=False)
        assert s_rc.metrics.latency_s == pytest.approx(ev.evaluate(rc).latency_s, rel=0.01)
        assert s_rc.metrics.latency_s > s_plain.metrics.latency_s  # the forward runs twice
        assert s_rc.activation_bytes[0] < s_plain.activation_bytes[0]


def test_lifetimes_are_below_the_1f1b_stash_formula_on_early_stages() -> None:
    g = _graph("llama2-7b:layers=4", "train", "layer")
    plan = Plan.uniform(4, tp=1, pp=4, micro_batches=1)
    a, res = AnalyticEvaluator(g, PLATFORM).evaluate(plan), Simulator(g, PLATFORM).run(plan, timeline=False)
    act0 = a.peak_memory_bytes[0] - res.static_memory_bytes[0]
    assert res.activation_bytes[0] < 0.95 * act0


def test_gpipe_stashes_more_than_1f1b() -> None:
    g = _graph("gpt2", "train", "layer")
    sim = Simulator(g, PLATFORM)
    one = sim.run(Plan.uniform(12, pp=4, micro_batches=4), timeline=False)
    gp = sim.run(Plan.uniform(12, pp=4, micro_batches=4, schedule="gpipe"), timeline=False)
    # Stage 2 keeps min(m, p - 2) = 2 micro-batches in flight under 1F1B, all 4 under GPipe.
    assert gp.activation_bytes[2] > 1.5 * one.activation_bytes[2]
    assert gp.metrics.step_s == pytest.approx(one.metrics.step_s, rel=0.01)


def test_decode_period_is_steady() -> None:
    g = _graph("llama2-7b:layers=4", "decode", "layer")
    plan = Plan.uniform(4, tp=2, pp=2, micro_batches=4)
    four = Simulator(g, PLATFORM).evaluate(plan).tbt_s
    assert four == pytest.approx(Simulator(g, PLATFORM, decode_steps=7).evaluate(plan).tbt_s, rel=1e-9)


# -- any DAG --------------------------------------------------------------------------------------
def _task_plan(*stages: tuple[str, ...], micro_batches: int = 1) -> Plan:
    return Plan(
        tuple(Stage(1, (i,), tasks=tasks) for i, tasks in enumerate(stages)),
        granularity="op",
        micro_batches=micro_batches,
    )


def test_diamond_branches_run_in_parallel() -> None:
    g, plat = toy_graph("diamond"), toy_platform()
    sim = Simulator(g, plat)
    one = sim.evaluate(_task_plan(("a", "b", "c", "d")))
    two = sim.evaluate(_task_plan(("a", "b", "d"), ("c",)))
    assert not g.is_layered and one.feasible and two.feasible
    task = one.latency_s / 4
    assert two.latency_s < one.latency_s
    assert two.latency_s == pytest.approx(3 * task + 2 * p2p_time(1e6, *pair_link(plat, (0,), (1,))), rel=1e-9)


def test_chain_across_two_devices_pays_the_transfer() -> None:
    g, plat = toy_graph("chain"), toy_platform()
    sim = Simulator(g, plat)
    one = sim.run(_task_plan(("a", "b", "c")))
    two = sim.run(_task_plan(("a", "b"), ("c",)))
    hop = p2p_time(1e6, *pair_link(plat, (0,), (1,)))
    assert two.metrics.latency_s == pytest.approx(one.metrics.latency_s + hop, rel=1e-9)
    assert two.metrics.breakdown["communication_s"] == pytest.approx(hop, rel=1e-9)
    (xfer,) = [e for e in two.timeline if e.kind == "transfer"]
    assert (xfer.task, xfer.stage, xfer.dst_stage) == ("b", 0, 1)


def test_pipeline_of_micro_batches_follows_the_flow_shop_formula() -> None:
    g, plat = toy_graph("chain", batch=4), toy_platform(devices_per_node=3)
    sim = Simulator(g, plat)
    for m in (1, 2, 4):
        for stages in ((("a",), ("b",), ("c",)), (("a", "b"), ("c",))):
            res = sim.run(_task_plan(*stages, micro_batches=m))
            tau = res.metrics.stage_times_s
            hops = [p2p_time(1e6 / m, *pair_link(plat, (s,), (s + 1,))) for s in range(len(stages) - 1)]
            expected = sum(tau) + sum(hops) + (m - 1) * max(*tau, *hops)
            assert res.metrics.ttft_s == pytest.approx(expected, rel=1e-9)


def _with_edge(graph: TaskGraph, src: str, dst: str) -> TaskGraph:
    out = TaskGraph(graph.meta)
    for t in graph.tasks:
        out.add_task(t)
    for u, v, b in graph.edges():
        out.add_edge(u, v, b)
    out.add_edge(src, dst, graph.task(src).output_bytes)
    return out


def test_tensor_consumed_late_raises_the_peak() -> None:
    chain = toy_graph("chain")
    late = _with_edge(chain, "a", "c")  # a's output now lives until c ends, across b
    plan = _task_plan(("a", "b", "c"))
    early = Simulator(chain, toy_platform()).run(plan)
    held = Simulator(late, toy_platform()).run(plan)
    assert held.activation_bytes[0] == pytest.approx(early.activation_bytes[0] + 1e6)
    assert held.metrics.peak_memory_bytes[0] > early.metrics.peak_memory_bytes[0]
    assert held.memory_timeline is not None and max(v for _, v in held.memory_timeline[0]) == pytest.approx(3e6)


# -- timeline and metrics -----------------------------------------------------------------------------
def _check_timeline(res: SimulationResult, tasks: list[str], micro_batches: int) -> None:
    by_stage = defaultdict(list)
    for e in res.timeline:
        assert e.end >= e.start
        if e.kind != "transfer":
            by_stage[e.stage].append(e)
    for events in by_stage.values():
        events.sort(key=lambda e: e.start)
        for prev, nxt in itertools.pairwise(events):
            assert nxt.start >= prev.end - 1e-12 * max(1.0, prev.end), (prev, nxt)
    spans: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for e in res.timeline:
        if e.kind != "transfer" and e.task != "dp-allreduce" and e.micro_batch >= 0:
            spans[(e.task, e.micro_batch)].append((e.start, e.end))
    once = {e.task for e in res.timeline if e.micro_batch < 0 and e.kind == "compute"}
    assert set(spans) == {(t, j) for t in tasks if t not in once for j in range(micro_batches)}
    for bars in spans.values():  # one run per micro-batch: its bars (kernels, all-reduces) are back to back
        bars.sort()
        assert all(b[0] == pytest.approx(a[1], abs=1e-12) for a, b in itertools.pairwise(bars))


@pytest.mark.parametrize("phase", ["prefill", "train"])
def test_timeline_has_no_overlap_and_every_task_once_per_micro_batch(phase: str) -> None:
    g = _graph("gpt2", phase, "layer")
    plan = Plan.uniform(12, tp=2, pp=3, micro_batches=4, replicas=2)
    res = Simulator(g, PLATFORM).run(plan)
    _check_timeline(res, [t.id for t in g.tasks], 4)
    m = res.metrics
    assert sum(m.breakdown.values()) == pytest.approx(m.latency_s, rel=1e-9)
    assert min(m.breakdown.values()) >= 0.0
    assert len(m.peak_memory_bytes) == PLATFORM.num_devices
    dpr = plan.devices_per_replica
    assert m.peak_memory_bytes[:dpr] == m.peak_memory_bytes[dpr : 2 * dpr]
    assert all(v == 0.0 for v in m.peak_memory_bytes[2 * dpr :])
    assert m.latency_s >= m.lower_bound_s > 0.0
    if phase == "train":
        assert 0.0 < m.mfu < 1.0
        assert any(e.task == "dp-allreduce" for e in res.timeline)


def test_decode_timeline_keeps_steps() -> None:
    g = _graph("gpt2", "decode", "op")
    res = Simulator(g, PLATFORM, decode_steps=3).run(Plan.uniform(12, pp=2, micro_batches=2))
    assert {(e.micro_batch, e.step) for e in res.timeline if e.task == "embed"} == {
        (j, k) for j in range(2) for k in range(3)
    }
    assert sum(res.metrics.breakdown.values()) == pytest.approx(res.metrics.tbt_s, rel=1e-9)


def test_invalid_plan_is_infeasible_not_an_exception() -> None:
    g = _graph("gpt2", "prefill", "layer")
    res = Simulator(g, PLATFORM).run(Plan.uniform(12, tp=5))
    assert not res.metrics.feasible and "TP degree 5" in res.metrics.reason and res.timeline == []
    missing = Simulator(toy_graph(), toy_platform()).evaluate(_task_plan(("a", "b")))
    assert not missing.feasible and "not placed" in missing.reason


def test_out_of_memory_names_the_device_and_the_excess() -> None:
    big = TaskGraph(toy_graph().meta)
    big.add_task(Task.from_op(Op("w", "matmul", flops=1e9, bytes=1e9, param_bytes=2**31), layer=0, block="x"))
    res = Simulator(big, toy_platform()).evaluate(_task_plan(("w",)))
    assert not res.feasible and "device 0" in res.reason and "over by 1.0 GiB" in res.reason


def test_extrapolation_warnings_match_the_analytic(tmp_path: Path) -> None:
    profile = yaml.safe_load((profiles_dir() / "h100-default.yaml").read_text())
    profile["ranges"] = {"flops_per_device": [1e9, 1e12], "bytes_per_device": [1e6, 1e9]}
    (tmp_path / "narrow.yaml").write_text(yaml.safe_dump(profile))
    data = yaml.safe_load((platforms_dir() / "dgx-h100.yaml").read_text())
    plat = platform_from_dict({**data, "profile": str(tmp_path / "narrow.yaml")}, "narrow")
    g = _graph("gpt2", "prefill", "op")
    plan = Plan.uniform(12, tp=2, pp=2, micro_batches=2)
    sim = Simulator(g, plat).evaluate(plan)
    assert sim.warnings and sim.warnings == AnalyticEvaluator(g, plat).evaluate(plan).warnings
