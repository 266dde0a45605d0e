"""Learned mapping policies: training (stable-baselines3), saved policies, the ``rl`` tuner, transfer.

* :func:`train` / :func:`finetune` (:mod:`._train`): MaskablePPO, PPO or A2C on
  ``paratune/Mapping-v0`` over a scenario pool, with vectorised envs,
  TensorBoard, evaluation and checkpoint callbacks, seeds everywhere.
* :func:`load_policy` / :class:`Policy` (:mod:`._policy`): an SB3 zip plus JSON
  metadata; loading unpickles nothing (:mod:`._policy_zip`) and refuses a policy
  trained on another observation schema.
* :class:`RLTuner` (:mod:`._rl_tuner`): a policy as a tuner (greedy rollout, then
  best of sampled rollouts), registered as ``rl`` (an entry point of ``pyproject.toml``).
* :func:`train_serving` (:mod:`._serve_train`) and :func:`rl_deployments` (:mod:`._serve_rl`): a policy of
  ``paratune/Serving-v0`` (deployments for a traffic and SLO), trained on a pool of serving problems, and its
  rollouts as the serving space's ``rl`` tuner (shipped: ``agents/policies/serving.zip``).
* :func:`transfer` (:mod:`._transfer`): zero-shot and fine-tuned results on a new
  scenario, with gaps to the ``dp`` optimum and to the best heuristic.

Names are loaded lazily: ``import paratune.agents`` imports neither torch nor
stable-baselines3 until a name that needs them is used.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_NAMES = {
    "train": "._train",
    "finetune": "._train",
    "make_vec_env": "._train",
    "TrainResult": "._train",
    "DEFAULT_ENV_ID": "._train",
    "Policy": "._policy",
    "load_policy": "._policy",
    "save_policy": "._policy",
    "default_policy_path": "._policy",
    "POLICY_FORMAT_VERSION": "._policy",
    "ALGOS": "._policy",
    "RLTuner": "._rl_tuner",
    "rollout": "._rl_tuner",
    "transfer": "._transfer",
    "train_serving": "._serve_train",
    "rl_deployments": "._serve_rl",
    "serving_policy_path": "._serve_rl",
    "TransferReport": "._transfer",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
