"""The rl tuner's option ``techniques``: rollout plans priced under the plan-wide training techniques too."""

from __future__ import annotations

import pytest

from paratune.agents import RLTuner
from paratune.agents._policy import default_policy_path
from paratune.search import Problem

pytestmark = pytest.mark.needs("torch", "sb3_contrib")

MODEL = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=1000"
PLATFORM = "dgx-a100:devices_per_node=4,nodes=1"


@pytest.fixture(scope="module", autouse=True)
def _shipped_policy() -> None:
    import torch

    torch.set_num_threads(1)
    if not default_policy_path().is_file():
        pytest.skip("default policy not trained yet (scripts/train_default_policy.sh)")


def _train(**kw: object) -> Problem:
    return Problem(MODEL, PLATFORM, phase="train", objective="step", batch=8, seq=256, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1])
def test_search_is_never_worse_than_off_and_keeps_the_budget(seed: int) -> None:
    problem = _train()
    off = RLTuner().tune(problem, budget=12, seed=seed)
    on = RLTuner(techniques="search").tune(problem, budget=12, seed=seed)
    assert off.objective_value is not None and on.objective_value is not None
    assert on.objective_value <= off.objective_value * (1 + 1e-12)
    # the budget counts rollouts; the variants are priced on top and reported
    assert off.evaluations == on.evaluations == 12
    assert not off.best_plan.techniques()  # type: ignore[union-attr]
    assert not any("technique combinations" in n for n in off.notes)
    assert any("under the 48 technique combinations" in n for n in on.notes)
    assert on.options.get("techniques") == "search"
    # the same rollouts (same seed), so the best with techniques is a variant of one of them
    best = on.best_plan
    assert best is not None and problem.score(best).feasible
    assert problem.score(best).value == pytest.approx(on.objective_value, rel=1e-12)


def test_search_finds_a_technique_plan_the_layouts_alone_miss() -> None:
    """On this small model ZeRO-3 with overlap beats every plain layout of the rollouts."""
    problem = _train()
    off = RLTuner().tune(problem, budget=12, seed=0)
    on = RLTuner(techniques="search").tune(problem, budget=12, seed=0)
    assert on.best_plan is not None and on.best_plan.techniques()
    assert on.objective_value is not None and off.objective_value is not None
    assert on.objective_value < off.objective_value * 0.99


def test_search_changes_nothing_for_inference() -> None:
    problem = Problem(MODEL, PLATFORM, phase="decode", batch=8, seq=256)
    off = RLTuner().tune(problem, budget=6, seed=0)
    on = RLTuner(techniques="search").tune(problem, budget=6, seed=0)
    assert on.best_plan == off.best_plan and on.objective_value == off.objective_value
    assert not any("technique" in n for n in on.notes)


def test_unknown_techniques_mode_names_the_option() -> None:
    with pytest.raises(ValueError, match="techniques"):
        RLTuner(techniques="all").tune(_train(), budget=1)
