"""Agents: a tiny training run, saved policies (round-trip, schema check), the rl tuner, transfer, CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from paratune.agents import RLTuner, load_policy, train, transfer
from paratune.agents._policy import default_policy_path, read_metadata
from paratune.agents._rl_tuner import make_env, rollout, setup_order
from paratune.cli._rl import register
from paratune.envs import OBS_SCHEMA_VERSION
from paratune.search import Problem

pytestmark = pytest.mark.needs("torch", "sb3_contrib")

TINY = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8"
POOL = [
    {"name": "tiny-decode", "model": TINY, "platform": "dgx-a100", "phase": "decode", "batch": 8, "seq": 256},
    {"name": "tiny-prefill-x2", "model": TINY, "platform": "dgx-h100x2", "phase": "prefill", "batch": 4, "seq": 256},
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256-step MaskablePPO run on two tiny scenarios (one env): the policy every test below uses."""
    out = tmp_path_factory.mktemp("run")
    result = train(POOL, algo="maskable-ppo", timesteps=256, seed=0, out=out, n_envs=1, progress_bar=False)
    return result.policy_path


@pytest.fixture(scope="module")
def problem() -> Problem:
    return Problem(TINY, "dgx-a100", phase="decode", batch=8, seq=256, name="tiny-decode-test")


def test_tiny_training_run_writes_policy_metadata_and_logs(trained: Path) -> None:
    out = trained.parent
    assert trained.name == "policy.zip" and trained.is_file()
    meta = json.loads((out / "policy.json").read_text())
    assert meta["obs_schema_version"] == OBS_SCHEMA_VERSION
    assert meta["env_id"] == "paratune/Mapping-v0" and meta["env_version"] == 0
    assert meta["algo"] == "maskable-ppo" and meta["timesteps"] >= 256 and meta["seed"] == 0
    assert meta["scenario_names"] == ["tiny-decode", "tiny-prefill-x2"]
    assert meta["scenarios"][0]["model"] == TINY
    assert {"paratune", "stable-baselines3", "sb3-contrib", "gymnasium", "torch"} <= set(meta["versions"])
    assert meta["train_wall_s"] > 0 and meta["date"]
    assert list((out / "tb").glob("*/events.out.tfevents.*")), "no TensorBoard log"
    assert (out / "eval" / "evaluations.npz").is_file() and (out / "best_model.zip").is_file()
    assert list((out / "checkpoints").glob("policy_*_steps.zip"))


def test_save_load_round_trip_gives_identical_actions(trained: Path, tmp_path: Path) -> None:
    import gymnasium as gym

    first = load_policy(trained)
    copy = first.save(tmp_path / "copy.zip")
    second = load_policy(copy)
    assert second.metadata == first.metadata
    env = gym.make("paratune/Mapping-v0", scenarios=POOL).unwrapped
    obs, _ = env.reset(seed=3)
    for _ in range(12):
        mask = env.action_masks()
        a1, a2 = first.predict(obs, mask), second.predict(obs, mask)
        assert a1 == a2 and mask[a1]
        np.testing.assert_allclose(first.action_probs(obs, mask), second.action_probs(obs, mask))
        obs, _, done, _, _ = env.step(a1)
        if done:
            obs, _ = env.reset()


def _tampered(trained: Path, tmp_path: Path, **changes: object) -> Path:
    target = tmp_path / "old.zip"
    shutil.copy(trained, target)
    meta = read_metadata(trained)
    meta.update(changes)
    target.with_suffix(".json").write_text(json.dumps(meta))
    return target


def test_loading_a_policy_of_another_observation_schema_fails_clearly(trained: Path, tmp_path: Path) -> None:
    old = _tampered(trained, tmp_path, obs_schema_version=OBS_SCHEMA_VERSION + 98)
    with pytest.raises(ValueError) as info:
        load_policy(old)
    text = str(info.value)
    assert f"observation schema version {OBS_SCHEMA_VERSION + 98}" in text
    assert f"observation schema version {OBS_SCHEMA_VERSION};" in text and "old.json" in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"env_id": "paratune/Mapping-v9"}, "env id 'paratune/Mapping-v9'"), ({"n_actions": 3}, "has 3 actions")],
)
def test_loading_refuses_other_env_or_action_count(
    trained: Path, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_policy(_tampered(trained, tmp_path, **changes))


def test_missing_policy_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.zip"):
        load_policy(tmp_path / "nope.zip")


def test_rl_tuner_is_feasible_within_budget_and_deterministic(trained: Path, problem: Problem) -> None:
    runs = [RLTuner(policy=trained).tune(problem, budget=20, seed=s) for s in (5, 5, 6)]
    a, b, _ = runs
    for r in runs:
        assert r.evaluations == 20 and r.best_plan is not None
        assert problem.score(r.best_plan).feasible
    assert a.objective_value == b.objective_value and a.best_plan == b.best_plan
    assert [(h.evaluation, h.best) for h in a.history] == [(h.evaluation, h.best) for h in b.history]
    greedy = RLTuner(policy=trained).tune(problem, budget=1, seed=0)
    assert greedy.evaluations == 1 and "0 sampled" in greedy.notes[1]
    # best of 20 includes the greedy rollout, so it is never worse
    assert a.objective_value is not None and greedy.objective_value is not None
    assert a.objective_value <= greedy.objective_value


def test_setup_sweep_tries_every_allowed_setup_most_probable_first(trained: Path, problem: Problem) -> None:
    """The sweep's order covers each allowed (replicas, micro-batches) once, by the policy's probability."""
    policy = load_policy(trained)
    order = setup_order(policy, problem)
    pairs = [(f["replicas"], f["micro_batches"]) for f in order]
    batch = problem.batch
    assert sorted(pairs) == sorted((r, m) for r in (1, 2, 4, 8) for m in (1, 2, 4, 8) if batch % (r * m) == 0)
    probs = []
    for fixed in order:  # the probability of a setup: product of the masked probabilities of its choices
        prob, env = 1.0, make_env(policy, problem)
        obs, _ = env.reset(seed=0, options={"scenario": problem})
        for name in ("replicas", "micro_batches"):
            action = int(np.log2(fixed[name]))
            prob *= policy.action_probs(obs, env.action_masks())[action]
            obs, *_ = env.step(action)
        probs.append(prob)
    assert probs == sorted(probs, reverse=True)
    # the sweep takes at most half the budget: with 2 x (setups + 1) it covers every setup besides the greedy one
    budget = 2 * (len(order) + 1)
    swept = RLTuner(policy=trained).tune(problem, budget=budget, seed=0)
    plain = RLTuner(policy=trained, sweep=False).tune(problem, budget=budget, seed=0)
    assert f"then {len(order) - 1} greedy rollout(s) over other setups, {len(order) + 2} sampled" in swept.notes[1]
    assert f"then 0 greedy rollout(s) over other setups, {budget - 1} sampled" in plain.notes[1]
    each = [i["value"] for i in rollout(policy, problem, n=len(order), setups=order) if i["feasible"]]
    assert swept.objective_value is not None and swept.objective_value <= min(each)


def test_rl_tuner_rejects_unknown_options(problem: Problem) -> None:
    with pytest.raises(ValueError, match="allowed: policy, granularity, temperature, sweep"):
        RLTuner(polcy="x").tune(problem, budget=1)


def test_shipped_default_policy_loads_and_tunes(problem: Problem) -> None:
    if not default_policy_path().is_file():
        pytest.skip("default policy not trained yet (scripts/train_default_policy.sh)")
    policy = load_policy()
    assert policy.metadata["obs_schema_version"] == OBS_SCHEMA_VERSION
    result = RLTuner().tune(problem, budget=4, seed=0)
    assert result.best_plan is not None and result.evaluations == 4


def test_transfer_reports_zero_shot_finetuned_and_gaps(trained: Path, problem: Problem) -> None:
    report = transfer(problem, policy=trained, finetune_steps=64, rollouts=4, seed=0)
    labels = [r.label for r in report.rows]
    assert labels[:4] == ["zero-shot greedy", "zero-shot best of 4", "fine-tuned greedy", "fine-tuned best of 4"]
    assert report.certified and report.optimum is not None and report.heuristic is not None
    for row in report.rows[:4]:
        assert row.value is not None and row.gap_to_optimum is not None
        assert row.gap_to_optimum >= -1e-9  # nothing beats a certified optimum
    data = report.to_dict()
    assert json.loads(json.dumps(data))["optimum"]["certified"] is True


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:  # keeps "train" a subcommand
        pass

    register(app)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "dqn"], "unknown algo 'dqn'; allowed: maskable-ppo, ppo, a2c"),
        (["--scenarios", "{missing}"], "no such scenario pool file"),
        (["--scenarios", "{bad}"], "bad.yaml[0]"),
    ],
)
def test_train_cli_user_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {model: llama2-7b, platform: dgx-a100, phase: inference}\n")
    fill = {"{missing}": str(tmp_path / "missing.yaml"), "{bad}": str(bad)}
    args = [fill.get(a, a) for a in args]
    if "--scenarios" not in args:
        args += ["--scenarios", str(bad)]
    result = CliRunner().invoke(_app(), ["train", *args, "--out", str(tmp_path / "run"), "--timesteps", "8"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_transfer_cli_user_errors_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["transfer", "--policy", str(tmp_path / "none.zip"), "--model", TINY, "--platform", "dgx-a100"]
    )
    assert result.exit_code == 2 and "none.zip" in result.output


def test_imitation_clones_the_dp_optimum(tmp_path: Path) -> None:
    """Demonstrations replay dp's optimum through the env; cloning makes the greedy policy take its actions."""
    from paratune.agents._imitate import demonstrations
    from paratune.envs import load_pool

    pool = load_pool(POOL)
    demos = demonstrations(pool)
    assert demos.scenarios == ["tiny-decode", "tiny-prefill-x2"] and not demos.skipped
    assert len(demos.actions) == 2 * 2 + 2 * 4  # per scenario: replicas, micro-batches, one action per layer
    assert all(m[a] for m, a in zip(demos.masks, demos.actions, strict=True))
    result = train(POOL, timesteps=64, seed=0, out=tmp_path / "bc", n_envs=1, progress_bar=False, imitate=True)
    fit = result.metadata["imitation"]
    assert fit["samples"] == len(demonstrations(pool, variants=True).actions) and fit["accuracy"] >= 0.9
    assert fit["scenarios"] == 6  # each scenario with its batch halved and doubled
    under = demonstrations(pool, setups=2, seed=0)
    extra = under.scenarios[2:]
    assert under.scenarios[:2] == demos.scenarios and len(extra) == 4 and all(" under " in s for s in extra)
    assert under.scenarios == demonstrations(pool, setups=2, seed=0).scenarios  # drawn from the seed
    assert all(m[a] for m, a in zip(under.masks, under.actions, strict=True))
    with pytest.raises(ValueError, match="imitate applies to paratune/Mapping-v0 only"):
        train(POOL, timesteps=64, out=tmp_path / "x", env_id="paratune/Placement-v0", imitate=True)
