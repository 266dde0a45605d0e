"""Activation stash: Korthikanti et al. 2022's per-layer bytes, the dropout option, the tables' time columns."""

from __future__ import annotations

import numpy as np
import pytest

from paratune.costmodel import AnalyticEvaluator, Plan, Simulator, get_platform
from paratune.costmodel._layer_tables import range_max
from paratune.graphs import build_graph, coarsen, get_model

PLATFORM = get_platform("dgx-h100x2")
#: A small GPT-3-shaped model: a = 8 heads, h = 512, s = 256, b = 2 (5 a s / h = 20).
SMALL = (
    "gpt3-175b:layers=2,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=1024,positions=256,attention=unfused,dropout=true"
)
S, B, H, A = 256, 2, 512, 8


def korthikanti(t: int, *, sp: bool = False, selective: bool = False) -> float:
    """Bytes per layer per device (Korthikanti et al. 2022, Table 2 with 16-bit activations and dropout)."""
    sbh = S * B * H
    core = 0.0 if selective else 5 * A * S / (H * t)
    return sbh * ((34 / t if sp else 10 + 24 / t) + core)


def _layer(ev: AnalyticEvaluator, t: int, column: str) -> float:
    col = ev.tp_tables(t).lists[column]
    return col[2] - col[1]  # unit 1 = layer 0


@pytest.fixture(scope="module")
def unfused() -> AnalyticEvaluator:
    return AnalyticEvaluator(build_graph(SMALL, phase="train", batch=B, seq=S), PLATFORM)


@pytest.mark.parametrize("t", [1, 2, 4, 8])
@pytest.mark.parametrize(
    ("column", "sp", "selective"),
    [("stash", False, False), ("stash_sp", True, False), ("stash_sel", False, True), ("stash_sel_sp", True, True)],
)
def test_stash_matches_korthikanti(unfused: AnalyticEvaluator, t: int, column: str, sp: bool, selective: bool) -> None:
    expected = korthikanti(t, sp=sp, selective=selective)
    assert _layer(unfused, t, column) == pytest.approx(expected, rel=0.05)
    assert _layer(unfused, t, column) == pytest.approx(expected, rel=1e-9)  # the count is exact on this shape


def test_full_recompute_keeps_the_layer_input(unfused: AnalyticEvaluator) -> None:
    col = unfused.tp_tables(4).lists["inputs"]
    assert col[2] - col[1] == pytest.approx(2 * S * B * H, rel=0.05)


def test_flash_stashes_no_scores_and_selective_saves_nothing() -> None:
    ev = AnalyticEvaluator(build_graph(SMALL.replace("unfused", "flash"), phase="train", batch=B, seq=S), PLATFORM)
    sbh = S * B * H
    for t in (1, 4):
        assert _layer(ev, t, "stash") == pytest.approx(sbh * (10 + 24 / t), rel=1e-9)
        assert _layer(ev, t, "stash_sel") == pytest.approx(_layer(ev, t, "stash"), rel=1e-12)
        assert _layer(ev, t, "stash_sel_sp") == pytest.approx(34 * sbh / t, rel=1e-9)


def test_without_dropout_the_probabilities_are_stashed_once() -> None:
    ev = AnalyticEvaluator(build_graph(SMALL.replace(",dropout=true", ""), phase="train", batch=B, seq=S), PLATFORM)
    # no masks (2 sbh) and no dropout output (2 a s^2 b): sbh (32 + 2 a s / h)
    assert _layer(ev, 1, "stash") == pytest.approx(S * B * H * (32 + 2 * A * S / H), rel=1e-9)


def test_dropout_is_off_by_default_and_only_in_training() -> None:
    assert "dropout" not in get_model("gpt3-175b").to_dict()  # saved graphs and models stay as they were
    plain = build_graph("gpt2:layers=2", phase="train", batch=2, seq=64)
    assert not any("dropout" in t.id for t in plain.tasks)
    prefill = build_graph("gpt2:layers=2,dropout=true,attention=unfused", phase="prefill", batch=2, seq=64)
    assert not any("dropout" in t.id for t in prefill.tasks)
    train = build_graph("gpt2:layers=2,dropout=true,attention=unfused", phase="train", batch=2, seq=64)
    names = {t.id for t in train.tasks if t.step == "forward"}
    assert {"L0.attn_probs_dropout", "L0.attn_dropout", "L0.mlp_dropout"} <= names
    assert get_model("gpt2:dropout=true").to_dict()["dropout"] is True


def test_stash_is_the_same_at_every_granularity(unfused: AnalyticEvaluator) -> None:
    g = build_graph(SMALL, phase="train", batch=B, seq=S)
    for granularity in ("sublayer", "layer"):
        ev = AnalyticEvaluator(coarsen(g, granularity), PLATFORM)
        for column in ("stash", "stash_sp", "stash_sel", "stash_sel_sp"):
            assert ev.tp_tables(2).lists[column] == pytest.approx(unfused.tp_tables(2).lists[column], rel=1e-12)


def test_time_columns_split_the_forward_kernels(unfused: AnalyticEvaluator) -> None:
    sc = unfused.scaled_tables(2, 2)
    fwd = np.diff(sc.fwd_l)
    attn, repl_f, repl_b = np.diff(sc.attn_fwd_l), np.diff(sc.repl_fwd_l), np.diff(sc.repl_bwd_l)
    layers = slice(1, 3)
    assert np.all(attn[layers] > 0) and np.all(repl_f[layers] > 0) and np.all(repl_b[layers] > 0)
    assert np.all(attn + repl_f < fwd + 1e-15)  # disjoint parts of the forward kernels
    assert attn[0] == 0.0 and attn[-1] == 0.0  # no attention in the embedding or the head
    # the unfused core of 2 layers: scores, softmax, probability dropout, context (forward ops)
    assert int(unfused.units.core.sum()) == 2 * 4


def test_simulator_keeps_what_backward_reads(unfused: AnalyticEvaluator) -> None:
    """The lifetimes hold each forward's stash until its backward: the activation peak follows the analytic stash."""
    g = build_graph(SMALL, phase="train", batch=B, seq=S)
    sim = Simulator(g, PLATFORM)
    plan = Plan.uniform(2, tp=2, pp=1, micro_batches=1)
    res = sim.run(plan, timeline=False)
    a = unfused.evaluate(plan)
    analytic_act = a.peak_memory_bytes[0] - res.static_memory_bytes[0]
    stash = unfused.tp_tables(2).lists["stash"]
    assert res.activation_bytes[0] >= 0.9 * stash[-1]  # the whole stash is alive when backward starts
    assert res.activation_bytes[0] <= analytic_act + 2 * S * B * H * 2


def test_recompute_with_sp_rebuilds_the_split_stash(unfused: AnalyticEvaluator) -> None:
    tt = unfused.tp_tables(4)
    per_unit = np.diff(tt.lists["stash_sp"])
    assert range_max(tt.stash_sp_max_l, 1, 3) == pytest.approx(per_unit[1:3].max(), rel=1e-12)
    assert range_max(tt.stash_sp_max_l, 0, 4) == pytest.approx(per_unit.max(), rel=1e-12)


@pytest.mark.parametrize(("pp", "tp", "m", "recompute"), [(2, 1, 2, False), (2, 2, 4, False), (2, 2, 2, True)])
def test_simulator_agrees_on_dropout_graphs(
    unfused: AnalyticEvaluator, pp: int, tp: int, m: int, recompute: bool
) -> None:
    """The dropout ops are priced alike (step within 1%) and the lifetimes stay within the analytic stash + slack."""
    g = build_graph(SMALL, phase="train", batch=B * 2, seq=S)
    ev, sim = AnalyticEvaluator(g, PLATFORM), Simulator(g, PLATFORM)
    plan = Plan.uniform(2, tp=tp, pp=pp, micro_batches=m, recompute=recompute)
    a, res = ev.evaluate(plan), sim.run(plan, timeline=False)
    assert res.metrics.step_s == pytest.approx(a.step_s, rel=0.01)
    hidden = S * B * 2 * H * 2 / m  # one hidden-state tensor of a micro-batch
    for st, static, act in zip(plan.stages, res.static_memory_bytes, res.activation_bytes, strict=True):
        assert act <= a.peak_memory_bytes[st.devices[0]] - static + 2 * hidden


@pytest.mark.parametrize(("sp", "selective"), [(False, False), (True, False), (False, True), (True, True)])
def test_first_1f1b_stage_keeps_l_layers_worth(sp: bool, selective: bool) -> None:
    """Korthikanti et al. 4.2.3: the first of p stages keeps p micro-batches of L/p layers, in both evaluators."""
    layers, t, p = 4, 2, 2
    g = coarsen(build_graph(SMALL.replace("layers=2", f"layers={layers}"), phase="train", batch=B * p, seq=S), "layer")
    plan = Plan.uniform(layers, tp=t, pp=p, micro_batches=p, sequence_parallel=sp, selective_recompute=selective)
    expected = layers * korthikanti(t, sp=sp, selective=selective)
    analytic = AnalyticEvaluator(g, PLATFORM).evaluate(plan).memory_breakdown
    simulated = Simulator(g, PLATFORM).evaluate(plan).memory_breakdown["activations"]
    assert analytic["activations"] == pytest.approx(expected, rel=0.05)
    # the lifetimes count the workspace (the analytic's buffers) with the activations, and at most two more
    # hidden-state tensors of a micro-batch (see the simulator's docstring)
    hidden = S * B * H * 2
    assert expected <= simulated <= expected + analytic["buffers"] + 2 * hidden
