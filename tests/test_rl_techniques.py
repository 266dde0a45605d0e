"""The rl tuner's option ``techniques``: rollout plans priced under the plan-wide training techniques too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from paratune.agents import RLTuner
from paratune.agents._policy import default_policy_path
from paratune.search import Problem, tune

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


# -- policies trained on Mapping-v0 with the techniques decision (observation schema 4) ----------------------

TINY = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8"
TRAIN_POOL = [
    {"name": "tiny-train", "model": TINY, "platform": "dgx-a100", "phase": "train", "batch": 8, "seq": 128},
    {"name": "tiny-decode", "model": TINY, "platform": "dgx-a100", "phase": "decode", "batch": 8, "seq": 256},
]


@pytest.fixture(scope="module")
def technique_policy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from paratune.agents import train

    out = tmp_path_factory.mktemp("tech")
    return train(TRAIN_POOL, timesteps=256, seed=0, out=out, n_envs=1, progress_bar=False, techniques=True)


def test_a_techniques_policy_records_schema_4_and_tunes(technique_policy: Any) -> None:
    from paratune.agents import load_policy
    from paratune.envs._features import mapping_obs_spec

    meta = json.loads(technique_policy.policy_path.with_suffix(".json").read_text())
    assert meta["env_kwargs"]["techniques"] is True
    assert (meta["obs_schema_version"], meta["obs_size"]) == mapping_obs_spec(True)
    policy = load_policy(technique_policy.policy_path)
    problem = Problem(TINY, "dgx-a100", phase="train", batch=8, seq=128)
    result = RLTuner(policy=policy).tune(problem, budget=8, seed=0)
    assert result.best_plan is not None and problem.score(result.best_plan).feasible
    # the sweep covers the bundles too: every setup of the techniques env names one
    from paratune.agents._rl_tuner import setup_order

    order = setup_order(policy, problem)
    assert {f["techniques"] for f in order} == {0, 1, 2, 3}


def test_techniques_metadata_is_checked(technique_policy: Any, tmp_path: Path) -> None:
    from paratune.agents import load_policy

    src = technique_policy.policy_path
    for value, message in (("yes", "must be true or false"), (False, "observation schema version 4")):
        meta = json.loads(src.with_suffix(".json").read_text())
        meta["env_kwargs"]["techniques"] = value
        dst = tmp_path / f"p{value}.zip"
        shutil.copy(src, dst)
        dst.with_suffix(".json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=message):
            load_policy(dst)


def test_imitation_with_techniques_clones_the_best_bundle() -> None:
    from paratune.agents._imitate import best_bundle, demonstrations
    from paratune.envs import load_pool

    pool = load_pool(TRAIN_POOL[:1])
    demos = demonstrations(pool, techniques=True)
    plain = demonstrations(pool)
    assert len(demos.actions) == len(plain.actions) + 1  # one more setup decision: the bundle
    chosen = best_bundle(pool[0], tune(pool[0], "dp").best_plan)
    assert chosen.techniques()  # on this small model a bundle beats dp's plain optimum
    assert demos.returns[0] >= plain.returns[0]


def test_train_cli_techniques_flag(tmp_path: Path) -> None:
    """``paratune train --techniques`` trains on the techniques env; on another env it is a user error (exit 2)."""
    import typer
    from typer.testing import CliRunner

    from paratune.cli._rl import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keeps "train" a subcommand
        pass

    register(app)
    pool = tmp_path / "pool.yaml"
    pool.write_text(f"- {{name: t, model: '{TINY}', platform: dgx-a100, phase: train, batch: 8, seq: 128}}\n")
    base = ["train", "--scenarios", str(pool), "--timesteps", "32", "--n-envs", "1", "--no-progress"]
    bad = CliRunner().invoke(
        app, [*base, "--env", "paratune/Placement-v0", "--techniques", "--out", str(tmp_path / "a")]
    )
    assert bad.exit_code == 2 and "techniques applies to paratune/Mapping-v0 only" in bad.output
    ok = CliRunner().invoke(app, [*base, "--techniques", "--out", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "b" / "policy.json").read_text())["env_kwargs"] == {"techniques": True}


def test_search_is_never_worse_with_a_techniques_policy(technique_policy: Any) -> None:
    """The sampled rollouts follow the best rollout's setup, not a variant's: search runs off's rollouts and adds."""
    from paratune.agents import load_policy

    policy = load_policy(technique_policy.policy_path)
    problem = Problem(TINY, "dgx-a100", phase="train", batch=8, seq=128)
    for seed in (0, 1, 2):
        off = RLTuner(policy=policy).tune(problem, budget=24, seed=seed)
        on = RLTuner(policy=policy, techniques="search").tune(problem, budget=24, seed=seed)
        assert off.objective_value is not None and on.objective_value is not None
        assert on.objective_value <= off.objective_value * (1 + 1e-12)
