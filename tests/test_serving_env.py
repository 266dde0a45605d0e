"""paratune/Serving-v0: a valid gymnasium env whose reward is the deployment's tokens/s per GPU against a reference."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import paratune.envs  # noqa: F401 (registers the ids)
from paratune.envs._reward import REWARD_CLIP
from paratune.envs._serving import DEFAULT_SERVING_POOL, N_ACTIONS, ServingEnv
from paratune.search._serve import default_deployment

POOL = DEFAULT_SERVING_POOL[:1]  # llama3-8b on dgx-h100, chat, with an SLO


def test_passes_gymnasiums_checker() -> None:
    check_env(ServingEnv(POOL), skip_render_check=True)


def test_random_masked_episodes_end_with_a_bounded_reward() -> None:
    env = gymnasium.make("paratune/Serving-v0", scenarios=POOL)
    rng = np.random.default_rng(0)
    for ep in range(6):
        env.reset(seed=ep)
        done, steps = False, 0
        while not done:
            mask = env.unwrapped.action_masks()
            assert mask.shape == (N_ACTIONS,) and mask.any()
            _obs, reward, done, _trunc, info = env.step(int(rng.choice(np.flatnonzero(mask))))
            steps += 1
        assert steps in (5, 7)
        assert -(REWARD_CLIP + 1) <= reward <= REWARD_CLIP
        assert info["feasible"] == (reward > -(REWARD_CLIP + 1))


def test_choosing_the_engine_default_scores_zero() -> None:
    env = ServingEnv(POOL)
    problem = POOL[0]
    dep = default_deployment(problem.model, problem.resolved_platform(), gpus=problem.gpus)
    assert dep is not None
    pool = dep.pools[0]
    env.reset(seed=0)
    space = env._sc["space"]
    actions = [0, space.tp.index(pool.tp), space.pp.index(1), space.max_num_seqs.index(pool.max_num_seqs),
               space.max_batched_tokens.index(pool.max_batched_tokens)]  # fmt: skip
    for a in actions:
        _obs, reward, done, _trunc, info = env.step(a)
    assert done and info["feasible"]
    assert reward == pytest.approx(0.0, abs=1e-9)


def test_unknown_reset_options_and_scenarios_are_refused() -> None:
    env = ServingEnv(POOL)
    with pytest.raises(ValueError, match="allowed: scenario"):
        env.reset(options={"senario": "x"})
    with pytest.raises(ValueError, match="not in the pool"):
        env.reset(options={"scenario": "nope"})
