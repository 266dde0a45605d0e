"""Training and fine-tuning policies with stable-baselines3 on the paratune environments.

:func:`train` reuses SB3's machinery rather than re-writing it: vectorised
environments (``SubprocVecEnv`` when ``n_envs > 1``, ``DummyVecEnv`` for one;
``vec_env="dummy"`` keeps several envs in one process, which is faster for an
env as cheap as Mapping-v0 on a two-core machine), ``Monitor`` for episode
statistics, TensorBoard logs, an evaluation callback (sb3-contrib's
``MaskableEvalCallback`` for MaskablePPO, so evaluation respects masks; SB3's
``EvalCallback`` otherwise), a ``CheckpointCallback`` and SB3's progress bar
(tqdm + rich). Every random choice comes from ``seed``: ``set_random_seed``,
the algorithm's seed, the training envs' seeds (``seed + i``) and the
evaluation env's (``seed + 10_000``).

Output directory::

    OUT/policy.zip, OUT/policy.json   the trained policy and its metadata (see ._policy)
    OUT/best_model.zip                the best policy seen by the evaluation callback
    OUT/eval/evaluations.npz          evaluation rewards over training
    OUT/checkpoints/policy_*_steps.zip
    OUT/tb/<ALGO>_1/events.*          TensorBoard (``tensorboard --logdir OUT/tb``)

:func:`finetune` continues training a loaded policy on one scenario (the
transfer experiment's "fine-tuned" result).
"""

from __future__ import annotations

import datetime as _dt
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .._limits import MAX_TIMESTEPS, check_at_most
from ..graphs import parse_granularity
from ..problem import Problem
from ._policy import ALGOS, Policy, algo_class, build_model, env_spec_of, library_versions, save_policy
from ._policy_meta import MAX_N_STEPS
from ._settings import DEFAULT_ENV_ID, TRAIN, VecEnv

#: Algorithm hyperparameters (besides n_steps and batch_size, sized from the run): small MLP, episodic reward.
HYPERPARAMS: dict[str, dict[str, Any]] = {
    "maskable-ppo": {"learning_rate": 3e-4, "gamma": 1.0, "gae_lambda": 0.95, "ent_coef": 0.01, "n_epochs": 10},
    "ppo": {"learning_rate": 3e-4, "gamma": 1.0, "gae_lambda": 0.95, "ent_coef": 0.01, "n_epochs": 10},
    "a2c": {"learning_rate": 7e-4, "gamma": 1.0, "gae_lambda": 0.95, "ent_coef": 0.01},
}
NET_ARCH = [128, 128]

#: Learning rate of :func:`finetune`: a third of training's, so a few thousand steps on one scenario
#: adapt a policy without undoing what it learned on the pool.
FINETUNE_LEARNING_RATE = 1e-4
VEC_ENVS: tuple[str, ...] = typing.get_args(VecEnv)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    policy_path: Path
    metadata: dict[str, Any]
    wall_s: float


def _make_env(env_id: str, scenarios: list[dict[str, Any]], granularity: str | None, kwargs: dict[str, Any]) -> Any:
    """One monitored env (a module-level function so SubprocVecEnv workers can unpickle it)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    from .. import envs  # noqa: F401  (registers the ids in a fresh worker)

    return Monitor(gym.make(env_id, scenarios=scenarios, granularity=granularity, **kwargs))


def make_vec_env(
    env_id: str,
    scenarios: Sequence[Problem],
    *,
    n_envs: int = 1,
    seed: int = 0,
    granularity: str | None = None,
    vec_env: str = "auto",
    env_kwargs: dict[str, Any] | None = None,
) -> Any:
    """``n_envs`` seeded copies of ``env_id`` over ``scenarios`` (see the module docstring for ``vec_env``)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if vec_env not in VEC_ENVS:
        raise ValueError(f"vec_env must be one of {', '.join(VEC_ENVS)}, got {vec_env!r}")
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    dicts = [p.to_dict() for p in scenarios]
    fns: list[Callable[[], Any]] = [
        partial(_make_env, env_id, dicts, granularity, dict(env_kwargs or {})) for _ in range(n_envs)
    ]
    use_subproc = vec_env == "subproc" or (vec_env == "auto" and n_envs > 1)
    vec = SubprocVecEnv(fns) if use_subproc else DummyVecEnv(fns)
    vec.seed(seed)
    vec.action_space.seed(seed)
    return vec


def _sizes(timesteps: int, n_envs: int, n_steps: int | None) -> tuple[int, int]:
    """(n_steps per env, batch size): about 2048 transitions per update, fewer for tiny runs."""
    if n_steps is None:
        n_steps = max(16, min(2048 // n_envs, timesteps // n_envs))
    per_update = n_steps * n_envs
    batch = min(256, per_update)
    while per_update % batch:  # a batch size dividing the update avoids SB3's truncated-batch warning
        batch -= 1
    return n_steps, batch


def train(
    scenarios: str | Path | Sequence[Problem | dict[str, Any] | str | Path],
    *,
    algo: str = TRAIN.algo,
    timesteps: int = TRAIN.timesteps,
    seed: int = TRAIN.seed,
    out: str | Path,
    n_envs: int = TRAIN.n_envs,
    granularity: str | None = TRAIN.granularity,
    env_id: str = TRAIN.env_id,
    vec_env: str = TRAIN.vec_env,
    n_steps: int | None = None,
    eval_freq: int | None = None,
    n_evals: int = TRAIN.n_evals,
    checkpoints: int = TRAIN.checkpoints,
    progress_bar: bool = True,
    verbose: int = 0,
    random_setup: float = TRAIN.random_setup,
    imitate: bool = TRAIN.imitate,
    imitate_setups: int = TRAIN.imitate_setups,
    techniques: bool = False,
) -> TrainResult:
    """Train a policy on a scenario pool and save it as ``OUT/policy.zip`` + ``OUT/policy.json``.

    The defaults are :data:`~._settings.TRAIN`'s (the ``paratune train`` command reads the same).

    Args:
        scenarios: the pool (a YAML list of scenarios, a directory, or problems; see
            :func:`paratune.envs.load_pool`).
        algo: ``maskable-ppo`` (masks in training and evaluation), ``ppo`` or ``a2c``.
        timesteps: environment steps in all (over every env).
        out: output directory (created).
        n_envs: parallel envs; ``vec_env`` ``auto`` runs them in subprocesses when > 1.
        granularity: graph granularity of every episode (None: each scenario's own).
        eval_freq: evaluate every this many steps per env (None: ``n_evals`` times per run).
        checkpoints: checkpoints per run (0: none).
        random_setup: Mapping-v0 only: share of training episodes whose setup decisions
            the env draws at random (see :class:`paratune.envs.MappingEnv`); evaluation
            episodes always let the policy decide.
        imitate: Mapping-v0 only: before PPO, clone the ``dp`` optimum of every pool
            scenario and of its batch variants (:mod:`._imitate`); the metadata records the fit.
        imitate_setups: with ``imitate``, also clone the dp optimum of each pool scenario
            under this many other setups, drawn with ``seed`` (the block decisions the rl
            tuner's setup sweep asks for).
        techniques: Mapping-v0 only: train on the env with the techniques decision
            (observation schema 4; the cloned dp plans carry their best bundle).

    Raises:
        ValueError: unknown algo, bad pool file or field (the message names it), bad sizes.
    """
    import torch
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.utils import set_random_seed

    from ..envs import load_pool
    from ..envs._features import mapping_obs_spec

    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; allowed: {', '.join(ALGOS)}")
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    check_at_most(timesteps, MAX_TIMESTEPS, "timesteps")
    if n_steps is not None and not 2 <= n_steps <= MAX_N_STEPS:  # the loader's bound: a saved policy must load
        raise ValueError(f"n_steps must be in [2, {MAX_N_STEPS}], got {n_steps}")
    # Every option is checked before OUT is made: a mistake leaves no folder behind.
    if vec_env not in VEC_ENVS:
        raise ValueError(f"vec_env must be one of {', '.join(VEC_ENVS)}, got {vec_env!r}")
    if granularity is not None:
        parse_granularity(granularity)
    if random_setup and env_id != DEFAULT_ENV_ID:
        raise ValueError(f"random_setup applies to {DEFAULT_ENV_ID} only, not {env_id}")
    if imitate and env_id != DEFAULT_ENV_ID:
        raise ValueError(f"imitate applies to {DEFAULT_ENV_ID} only, not {env_id}")
    if techniques and env_id != DEFAULT_ENV_ID:
        raise ValueError(f"techniques applies to {DEFAULT_ENV_ID} only, not {env_id}")
    pool = load_pool(scenarios)
    obs_size, n_actions = env_spec_of(env_id, techniques)
    obs_schema = mapping_obs_spec(techniques)[0]  # schema 3 for both plan envs without the techniques decision
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_random_seed(seed)
    torch.set_num_threads(1)  # small MLPs: more threads only contend (STACK.md: up to 3x faster)

    start = time.perf_counter()
    env_kwargs: dict[str, Any] = {"random_setup": random_setup} if random_setup else {}
    if techniques:
        env_kwargs["techniques"] = True
    vec = make_vec_env(
        env_id, pool, n_envs=n_envs, seed=seed, granularity=granularity, vec_env=vec_env, env_kwargs=env_kwargs
    )
    eval_env = make_vec_env(
        env_id,
        pool,
        n_envs=1,
        seed=seed + 10_000,
        granularity=granularity,
        vec_env="dummy",
        env_kwargs={"techniques": True} if techniques else None,
    )
    steps, batch = _sizes(timesteps, n_envs, n_steps)
    cls = algo_class(algo)
    kwargs: dict[str, Any] = dict(HYPERPARAMS[algo], n_steps=steps, policy_kwargs={"net_arch": NET_ARCH})
    if algo != "a2c":
        kwargs["batch_size"] = batch
    model = cls("MlpPolicy", vec, seed=seed, tensorboard_log=str(out / "tb"), verbose=verbose, device="cpu", **kwargs)

    imitation = None
    if imitate:
        from ._imitate import clone, demonstrations

        demos = demonstrations(
            pool, granularity=granularity, variants=True, setups=imitate_setups, seed=seed, techniques=techniques
        )
        imitation = clone(model, demos, seed=seed)
        imitation["setups_per_scenario"] = imitate_setups

    per_env = max(1, timesteps // n_envs)
    freq = eval_freq or max(steps, per_env // max(1, n_evals))
    callbacks: list[Any] = [_eval_callback(algo, eval_env, out, freq, n_episodes=min(len(pool), 24))]
    if checkpoints > 0:
        callbacks.append(
            CheckpointCallback(
                save_freq=max(1, per_env // checkpoints), save_path=str(out / "checkpoints"), name_prefix="policy"
            )
        )
    try:
        model.learn(
            total_timesteps=timesteps,
            callback=CallbackList(callbacks),
            progress_bar=progress_bar,
            tb_log_name=cls.__name__,
        )
    finally:
        vec.close()
        eval_env.close()
    wall = time.perf_counter() - start
    meta = policy_metadata(
        model,
        env_id=env_id,
        obs_schema_version=obs_schema,
        obs_size=obs_size,
        n_actions=n_actions,
        algo=algo,
        timesteps=timesteps,
        seed=seed,
        n_envs=n_envs,
        granularity=granularity,
        env_kwargs=env_kwargs,
        imitation=imitation,
        hyperparameters=kwargs,
        scenarios=scenarios,
        pool=pool,
        wall=wall,
    )
    path = save_policy(model, out / "policy.zip", meta)
    return TrainResult(path, meta, wall)


def policy_metadata(
    model: Any,
    *,
    env_id: str,
    obs_schema_version: int,
    obs_size: int,
    n_actions: int,
    algo: str,
    timesteps: int,
    seed: int,
    n_envs: int,
    granularity: str | None,
    env_kwargs: dict[str, Any],
    imitation: Any,
    hyperparameters: dict[str, Any],
    scenarios: Any,
    pool: Sequence[Any],
    wall: float,
) -> dict[str, Any]:
    """What a trained policy's JSON says of it (any env: ``pool`` items have ``to_dict()`` and ``name``)."""
    return {
        "env_id": env_id,
        "env_version": int(env_id.rsplit("-v", 1)[1]),
        "obs_schema_version": obs_schema_version,
        "obs_size": obs_size,
        "n_actions": n_actions,
        "algo": algo,
        "timesteps": int(model.num_timesteps),
        "requested_timesteps": timesteps,
        "seed": seed,
        "n_envs": n_envs,
        "granularity": granularity,
        "env_kwargs": env_kwargs,
        "imitation": imitation,
        "hyperparameters": {**hyperparameters, "policy_kwargs": {"net_arch": NET_ARCH}},
        "pool": str(scenarios) if isinstance(scenarios, (str, Path)) else "in-memory",
        "scenarios": [p.to_dict() for p in pool],
        "scenario_names": [p.name for p in pool],
        "train_wall_s": round(wall, 2),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }


def _eval_callback(algo: str, eval_env: Any, out: Path, freq: int, *, n_episodes: int) -> Any:
    """MaskableEvalCallback for MaskablePPO (evaluation through masks), SB3's EvalCallback otherwise."""
    opts: dict[str, Any] = dict(
        n_eval_episodes=n_episodes,
        eval_freq=freq,
        best_model_save_path=str(out),
        log_path=str(out / "eval"),
        deterministic=True,
        verbose=0,
    )
    if algo == "maskable-ppo":
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback

        return MaskableEvalCallback(eval_env, **opts)
    from stable_baselines3.common.callbacks import EvalCallback

    return EvalCallback(eval_env, **opts)


def finetune(
    policy: Policy,
    problem: Problem,
    steps: int,
    *,
    seed: int = 0,
    granularity: str | None = None,
    n_steps: int = 256,
) -> Policy:
    """A copy of ``policy`` trained ``steps`` more environment steps on ``problem`` alone (one env).

    The copy is a new model of the same architecture and hyperparameters
    (:func:`~._policy.build_model`) given the weights and optimizer state, with
    the new env, so its rollout buffer fits one env whatever the original was
    trained with (and nothing is unpickled); the env takes
    the options the policy was trained with (``env_kwargs``: random setups)
    and :data:`FINETUNE_LEARNING_RATE`; the original is left untouched. The metadata records the fine-tuning.
    """
    import torch
    from stable_baselines3.common.utils import set_random_seed

    if steps < 1:
        raise ValueError(f"finetune steps must be >= 1, got {steps}")
    check_at_most(steps, MAX_TIMESTEPS, "finetune steps")
    torch.set_num_threads(1)
    set_random_seed(seed)
    vec = make_vec_env(
        policy.env_id,
        [problem],
        n_envs=1,
        seed=seed,
        granularity=granularity,
        vec_env="dummy",
        env_kwargs=policy.metadata.get("env_kwargs"),
    )
    n, batch = _sizes(steps, 1, min(n_steps, steps))
    custom: dict[str, Any] = {"n_steps": n, "learning_rate": FINETUNE_LEARNING_RATE}
    if policy.algo != "a2c":
        custom["batch_size"] = batch
    # a new model of the same architecture and hyperparameters, given the weights and optimizer state
    # (never SB3's load: it unpickles, see ._policy_zip)
    model = build_model(policy.metadata, env=vec, **custom)
    model.policy.load_state_dict(policy.model.policy.state_dict(), strict=True)
    model.policy.optimizer.load_state_dict(policy.model.policy.optimizer.state_dict())
    model.set_random_seed(seed)
    start = time.perf_counter()
    try:
        model.learn(total_timesteps=steps, reset_num_timesteps=True, progress_bar=False)
    finally:
        vec.close()
    meta = dict(policy.metadata)
    meta["finetuned"] = {
        "scenario": problem.to_dict(),
        "steps": int(model.num_timesteps),
        "learning_rate": FINETUNE_LEARNING_RATE,
        "seed": seed,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    return Policy(model, meta, None)
