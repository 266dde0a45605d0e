"""Training a serving policy: MaskablePPO on ``paratune/Serving-v0`` over a pool of serving problems.

The plan policies' trainer (:mod:`._train`) builds its envs from plan problems and a granularity; a serving pool
is :class:`~paratune.search.ServingProblem` values, so this module builds its own (in one process:
``DummyVecEnv``, envs sharing each problem's evaluator, reference and memoised deployments, so the pool's
capacity searches run once, not once per env) and reuses the rest: the hyperparameters, the rollout sizing,
:func:`~._policy.save_policy` and the metadata layout :func:`~._policy.load_policy` checks. Seeded everywhere
(``set_random_seed``, the algorithm, the envs ``seed + i``, the evaluation env ``seed + 10_000``).

Output directory: ``OUT/policy.zip`` + ``OUT/policy.json``, ``OUT/eval/evaluations.npz``, ``OUT/best_model.zip``.
The shipped policy (``agents/policies/serving.zip``) is ``scripts/train_serving_policy.sh``'s run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._limits import MAX_TIMESTEPS, check_at_most
from ..search._serve import ServingProblem
from ..search._serve_pool import load_serving_pool
from ._imitate import Demonstrations
from ._policy import SERVING_ENV_ID, algo_class, save_policy
from ._train import HYPERPARAMS, NET_ARCH, TrainResult, _eval_callback, _sizes, policy_metadata


@dataclass(frozen=True)
class ServingTrainSettings:
    """The shipped serving policy's recipe (``scripts/train_serving_policy.sh``)."""

    timesteps: int = 4_096  # PPO after cloning: ~700 episodes of 5-7 decisions (longer runs fit the pool, not
    # the validation split: benchmarks/serving_tuners.py --split validation, docs/serving.md)
    seed: int = 0
    n_envs: int = 4
    n_evals: int = 6
    imitate: bool = True  # first clone the exhaustive optimum of every pool problem and of its variants
    imitate_variants: int = 6  # variants per pool problem (lengths, SLO) cloned too: all of _serve_imitate.VARIANTS


SERVING_TRAIN = ServingTrainSettings()


def _make_envs(pool: list[ServingProblem], n: int) -> list[Any]:
    """``n`` monitored Serving-v0 envs over ``pool`` sharing one per-problem cache (evaluator, reference, memo)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    from .. import envs  # noqa: F401  (registers the ids)

    made = [gym.make(SERVING_ENV_ID, scenarios=pool) for _ in range(n)]
    first: Any = made[0].unwrapped
    for env in made[1:]:
        raw: Any = env.unwrapped
        raw.share_evaluations(first)
    return [Monitor(env) for env in made]


def _returning(env: Any) -> Callable[[], Any]:
    """A DummyVecEnv factory handing back an env already made."""
    return lambda: env


def train_serving(
    scenarios: str | Path | Sequence[ServingProblem | dict[str, Any]] = "train",
    *,
    timesteps: int = SERVING_TRAIN.timesteps,
    seed: int = SERVING_TRAIN.seed,
    out: str | Path,
    n_envs: int = SERVING_TRAIN.n_envs,
    n_steps: int | None = None,
    n_evals: int = SERVING_TRAIN.n_evals,
    imitate: bool = SERVING_TRAIN.imitate,
    imitate_variants: int = SERVING_TRAIN.imitate_variants,
    demos: tuple[Demonstrations, list[dict[str, Any]]] | None = None,
    progress_bar: bool = False,
    verbose: int = 0,
) -> TrainResult:
    """Train a MaskablePPO serving policy on ``scenarios`` and save ``OUT/policy.zip`` + ``OUT/policy.json``.

    Args:
        scenarios: a shipped pool name (``train``), a pool YAML file, or problems / mappings
            (:func:`~paratune.search.load_serving_pool`).
        timesteps: environment steps in all (over every env).
        n_envs: envs stepped together (one process; they share each problem's evaluations).
        imitate: before PPO, clone the exhaustive optimum of each pool problem and of its first
            ``imitate_variants`` variants (:mod:`._serve_imitate`); the metadata records the fit.
        demos: :func:`~._serve_imitate.serving_demonstrations`'s result, computed once when several recipes are
            compared (None: computed here when ``imitate``).

    Raises:
        ValueError: a bad pool (the message names the file and field), bad sizes.
    """
    import torch
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ..envs._serving import N_ACTIONS, SERVING_FEATURES, SERVING_OBS_SCHEMA_VERSION

    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    check_at_most(timesteps, MAX_TIMESTEPS, "timesteps")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    from ._serve_imitate import VARIANTS

    if not 0 <= imitate_variants <= len(VARIANTS):
        raise ValueError(f"imitate_variants must be in [0, {len(VARIANTS)}], got {imitate_variants}")
    pool = load_serving_pool(scenarios)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_random_seed(seed)
    torch.set_num_threads(1)

    start = time.perf_counter()
    train_envs = _make_envs(pool, n_envs)
    vec = DummyVecEnv([_returning(e) for e in train_envs])
    vec.seed(seed)
    vec.action_space.seed(seed)
    evaluation = _make_envs(pool, 1)[0]
    raw: Any = evaluation.unwrapped
    raw.share_evaluations(train_envs[0].unwrapped)
    eval_env = DummyVecEnv([_returning(evaluation)])
    eval_env.seed(seed + 10_000)
    steps, batch = _sizes(timesteps, n_envs, n_steps)
    algo = "maskable-ppo"
    kwargs: dict[str, Any] = dict(
        HYPERPARAMS[algo], n_steps=steps, batch_size=batch, policy_kwargs={"net_arch": NET_ARCH}
    )
    model = algo_class(algo)("MlpPolicy", vec, seed=seed, verbose=verbose, device="cpu", **kwargs)
    imitation = None
    if imitate:
        from ._imitate import clone
        from ._serve_imitate import serving_demonstrations

        replays, record = demos or serving_demonstrations(pool, variants=imitate_variants)
        imitation = clone(model, replays, seed=seed)
        imitation.update(variants_per_problem=imitate_variants, replays=record)
    per_env = max(1, timesteps // n_envs)
    freq = max(steps, per_env // max(1, n_evals))
    callback = _eval_callback(algo, eval_env, out, freq, n_episodes=len(pool))
    try:
        model.learn(total_timesteps=timesteps, callback=CallbackList([callback]), progress_bar=progress_bar)
    finally:
        vec.close()
        eval_env.close()
    wall = time.perf_counter() - start
    meta = policy_metadata(
        model,
        env_id=SERVING_ENV_ID,
        obs_schema_version=SERVING_OBS_SCHEMA_VERSION,
        obs_size=len(SERVING_FEATURES),
        n_actions=N_ACTIONS,
        algo=algo,
        timesteps=timesteps,
        seed=seed,
        n_envs=n_envs,
        granularity=None,
        env_kwargs={},
        imitation=imitation,
        hyperparameters=kwargs,
        scenarios=scenarios,
        pool=pool,
        wall=wall,
    )
    path = save_policy(model, out / "policy.zip", meta)
    return TrainResult(path, meta, wall)
