"""The serving ``rl`` tuner: a trained Serving-v0 policy proposes deployments, the best feasible one is kept.

:func:`rl_deployments` runs, on one :class:`~paratune.envs._serving.ServingEnv` whose pool is the problem alone,

1. the **greedy rollout**: at each decision the most probable action the masks allow (the zero-shot policy);
2. ``rollouts`` **sampled rollouts**: actions drawn from the policy's masked distribution (sharpened or flattened
   by ``temperature``) with a generator seeded by ``seed``.

Every rollout ends in one deployment the env prices exactly as the exhaustive search does (the same
:class:`~paratune.search._serve.Evaluator`: capacity by bisection, the prefill:decode ratio solved from the two
sides' capacities); the env memoises them, so a deployment sampled twice costs one evaluation. The result is
:func:`~paratune.search._serve.finish`'s over every deployment seen: the best feasible one and the fronts, so it
compares with every other serving tuner field for field. ``evaluations`` counts every model evaluation of the run,
the env's engine-default reference included (its reward needs it).

Loading the policy goes through :func:`~._policy.load_policy` (nothing unpickled; a policy of another env,
observation schema or action count is refused with a message that names the field).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..search._serve import Candidate, ServingProblem, ServingSearchResult, finish
from ._policy import SERVING_ENV_ID, Policy, load_policy

#: Sampled rollouts after the greedy one when the caller gives no budget.
DEFAULT_ROLLOUTS = 32
#: Most sampled rollouts one call may ask for.
MAX_ROLLOUTS = 100_000

_CACHE: dict[tuple[str, float], Policy] = {}


def serving_policy_path() -> Path:
    """The serving policy shipped inside the package (``agents/policies/serving.zip``)."""
    return Path(__file__).resolve().parent / "policies" / "serving.zip"


def resolve_serving_policy(policy: str | Path | Policy | None) -> Policy:
    """A loaded Serving-v0 policy from a path (cached by path and mtime), a Policy, or None (the shipped one)."""
    if isinstance(policy, Policy):
        loaded = policy
    else:
        path = Path(policy) if policy is not None else serving_policy_path()
        if path.suffix != ".zip" and path.with_suffix(".zip").is_file():
            path = path.with_suffix(".zip")
        key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else 0.0)
        loaded = _CACHE.get(key) or load_policy(path)
        _CACHE[key] = loaded
    if loaded.env_id != SERVING_ENV_ID:
        where = loaded.path or "(in memory)"
        raise ValueError(
            f"policy {where} was trained on {loaded.env_id}, not {SERVING_ENV_ID}: it maps plans, not "
            "deployments; give a serving policy (the shipped one: agents/policies/serving.zip)"
        )
    return loaded


def serving_rollout(
    policy: Policy, env: Any, problem: ServingProblem, *, rng: np.random.Generator | None, temperature: float = 1.0
) -> tuple[Candidate | None, dict[str, Any]]:
    """One episode of ``policy`` on ``problem`` in ``env`` (a raw ServingEnv): its candidate and final info.

    ``rng`` None: greedy; else each action is drawn from the masked policy (probabilities to the power
    ``1 / temperature``, renormalised) by inverse CDF with one uniform, so the draws depend only on ``rng``.
    """
    obs, _ = env.reset(seed=0, options={"scenario": problem})
    while True:
        mask = env.action_masks()
        probs = policy.action_probs(obs[None, :], mask[None, :])[0]
        if rng is None:
            action = int(probs.argmax())
        else:
            if temperature != 1.0:
                probs = probs ** (1.0 / temperature)
                probs /= probs.sum()
            action = int(min((probs.cumsum() < rng.random()).sum(), len(probs) - 1))
            if not mask[action]:
                action = int(probs.argmax())
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return env.last_candidate, {**info, "reward": float(reward)}


def rl_deployments(
    problem: ServingProblem,
    policy: str | Path | Policy | None = None,
    rollouts: int = DEFAULT_ROLLOUTS,
    seed: int = 0,
    *,
    temperature: float = 1.0,
) -> ServingSearchResult:
    """The best deployment of the greedy rollout and ``rollouts`` sampled rollouts of a serving policy.

    ``policy``: a policy zip, a loaded :class:`~._policy.Policy`, or None (the shipped serving policy).
    ``rollouts`` 0 is the pure zero-shot policy. See the module docstring.

    Raises:
        ValueError: ``rollouts`` or ``temperature`` out of range; a policy that is not a Serving-v0 policy.
    """
    if not isinstance(rollouts, int) or isinstance(rollouts, bool) or not 0 <= rollouts <= MAX_ROLLOUTS:
        raise ValueError(f"rollouts must be an integer in [0, {MAX_ROLLOUTS}], got {rollouts!r}")
    if not (isinstance(temperature, int | float) and 0.05 <= temperature <= 20.0):
        raise ValueError(f"temperature must be a number in [0.05, 20], got {temperature!r}")
    from ..envs._serving import ServingEnv

    started = time.perf_counter()
    pol = resolve_serving_policy(policy)
    env = ServingEnv([problem])
    rng = np.random.default_rng(seed)
    seen: dict[int, Candidate] = {}
    for k in range(rollouts + 1):
        cand, _info = serving_rollout(pol, env, problem, rng=None if k == 0 else rng, temperature=temperature)
        if cand is not None:
            seen.setdefault(id(cand), cand)  # the env memoises: the same deployment is the same object
    result = finish(env.evaluator, list(seen.values()), env.space, started)
    if result.best is None:
        result.reason = f"no rollout of the policy met the SLO ({rollouts + 1} rollouts); " + result.reason
    return result


def serving_search(problem: ServingProblem, *, budget: int | None, seed: int) -> ServingSearchResult:
    """The serving tuners' signature (``search._serve_tuners``): ``budget`` rollouts in all, greedy included."""
    rollouts = DEFAULT_ROLLOUTS if budget is None else max(0, int(budget) - 1)
    return rl_deployments(problem, rollouts=rollouts, seed=seed)
