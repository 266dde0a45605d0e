"""Defaults of training and transfer, written once: :func:`~._train.train`, :func:`~._transfer.transfer`
and the ``paratune train`` / ``transfer`` commands all read them here.

This module imports nothing heavy (no torch, no cost model), so the command line
can read its defaults at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The environment policies are trained on unless told otherwise.
DEFAULT_ENV_ID = "paratune/Mapping-v0"

Algo = Literal["maskable-ppo", "ppo", "a2c"]
VecEnv = Literal["auto", "subproc", "dummy"]


@dataclass(frozen=True)
class TrainSettings:
    """What a training run is, when the caller does not say (``TRAIN`` holds the defaults)."""

    algo: Algo = "maskable-ppo"  # maskable-ppo (action masks in training and evaluation), ppo or a2c
    timesteps: int = 100_000  # environment steps in all, over every env
    seed: int = 0
    n_envs: int = 1  # parallel environments
    vec_env: VecEnv = "auto"  # auto: subprocesses when n_envs > 1; dummy: one process
    granularity: str | None = None  # None: each scenario's own
    env_id: str = DEFAULT_ENV_ID
    random_setup: float = 0.0  # Mapping-v0: share of episodes whose setup is drawn at random
    imitate: bool = False  # Mapping-v0: first clone the dp optimum of every pool scenario
    imitate_setups: int = 0  # with imitate: other setups cloned per scenario
    n_evals: int = 10  # evaluations per run
    checkpoints: int = 4  # checkpoints per run (0: none)


@dataclass(frozen=True)
class TransferSettings:
    """How a policy is measured on a new scenario (``TRANSFER`` holds the defaults)."""

    finetune_steps: int = 2048  # fine-tuning steps on the new scenario (0: skip)
    rollouts: int = 64  # rollouts of the rl tuner
    temperature: float = 1.0  # temperature of the sampled rollouts
    seed: int = 0


TRAIN = TrainSettings()
TRANSFER = TransferSettings()
