"""Plan-wide training techniques as search decisions (search/_techniques.py): every choice gives a valid
plan, and a tuner searching them never does worse than one that does not."""

from __future__ import annotations

import pytest

from paratune.costmodel import Plan
from paratune.search import Problem, tune
from paratune.search._techniques import SEARCHED, technique_choices, with_techniques

MODEL = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=1000"
PLATFORM = "dgx-a100:devices_per_node=4,nodes=1"


def _problem(**kw: object) -> Problem:
    return Problem(MODEL, PLATFORM, phase="train", objective="step", batch=8, seq=256, **kw)  # type: ignore[arg-type]


def test_off_is_todays_plan_and_search_lists_every_combination() -> None:
    assert technique_choices("off") == [{}]
    combos = technique_choices("search")
    expected = 1
    for values in SEARCHED.values():
        expected *= len(values)
    assert len(combos) == expected
    assert len({tuple(sorted(c.items())) for c in combos}) == expected
    with pytest.raises(ValueError, match="allowed: off, search"):
        technique_choices("all")


@pytest.mark.parametrize("tp, pp, m", [(1, 1, 1), (2, 2, 2), (1, 4, 4), (4, 1, 2), (2, 2, 1)])
def test_every_choice_gives_a_valid_plan(tp: int, pp: int, m: int) -> None:
    problem = _problem()
    graph, platform = problem.graph(), problem.resolved_platform
    layout = Plan.uniform(4, tp=tp, pp=pp, micro_batches=m)
    for choice in technique_choices("search"):
        plan = with_techniques(layout, choice)
        assert plan.problems(graph, platform) == [], (choice, plan.to_dict())
        # what cannot apply is dropped, the rest kept
        assert plan.zero == choice["zero"] and plan.overlap == choice["overlap"]
        assert plan.sequence_parallel == (choice["sequence_parallel"] and tp > 1)
        interleaved = choice["virtual_stages"] == 2 and pp >= 2 and m % pp == 0 and 4 // pp >= 2
        assert plan.virtual_stages == (2 if interleaved else 1)


def test_interleaving_keeps_each_devices_layers_and_the_model_order() -> None:
    plan = with_techniques(Plan.uniform(8, tp=1, pp=2, micro_batches=2), {"virtual_stages": 2})
    assert plan.pp == 2 and len(plan.stages) == 4
    assert [st.layers for st in plan.stages] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [st.devices for st in plan.stages] == [(0,), (1,), (0,), (1,)]


def test_enumerate_with_techniques_is_never_worse() -> None:
    problem = _problem()
    plain = tune(problem, "enumerate", max_micro_batches=2)
    searched = tune(problem, "enumerate", max_micro_batches=2, techniques="search")
    assert plain.objective_value is not None and searched.objective_value is not None
    assert searched.objective_value <= plain.objective_value * (1 + 1e-12)
    assert searched.optimal


def test_optuna_space_draws_techniques_only_when_asked() -> None:
    import optuna

    from paratune.search._optuna_spaces import make_space

    problem = _problem()
    params = {"stages": 2, "replicas": 0, "micro_batches": 1, **{f"t_{k}": len(v) - 1 for k, v in SEARCHED.items()}}
    for s in range(4):
        params.update({f"tp_{s}": 1, f"w_{s}": 1.0, f"recompute_{s}": 0})
    plan = make_space("hybrid", problem, techniques="search").suggest(optuna.trial.FixedTrial(params))
    assert plan.techniques() == {
        "zero": 3, "sequence_parallel": True, "selective_recompute": True, "overlap": True, "virtual_stages": 2
    }  # fmt: skip
    assert plan.problems(problem.graph(), problem.resolved_platform) == []
    assert not make_space("hybrid", problem).suggest(optuna.trial.FixedTrial(params)).techniques()
    with pytest.raises(ValueError, match="not to 'placement'"):
        make_space("placement", problem, techniques="search")
    res = tune(problem, "optuna-tpe", budget=30, seed=3, techniques="search")
    assert res.best_plan is not None and res.options.get("techniques") == "search"


def test_a_study_without_techniques_does_not_start_from_the_technique_heuristics() -> None:
    """megatron / fsdp / deepspeed-zero3 plan with ZeRO and SP; with techniques='off' their plans stay out."""
    problem = _problem()
    res = tune(problem, "optuna-tpe", budget=200, seed=0)
    assert res.best_plan is not None and not res.best_plan.techniques()
