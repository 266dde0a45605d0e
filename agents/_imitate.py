"""Behaviour cloning from the ``dp`` optimum: a warm start for reinforcement learning on Mapping-v0.

PPO from scratch has to discover, from one reward per episode, what the exact
solver already knows on every small problem of the pool: where to cut, which TP
degree, how many micro-batches. :func:`demonstrations` replays the ``dp``
optimum of each pool scenario through the environment (the same masks and
observations the agent sees; an action the masks forbid would be a bug, so it
raises) and :func:`clone` fits the policy's action distribution to those
actions by masked cross-entropy, and its value head to the episode's reward
(so that PPO's first advantages, in training or fine-tuning, are not noise
from an untrained critic), before PPO improves on it with the reward. It is
the supervised-then-reinforced recipe of AlphaGo's policy network, here with
a certified optimum as the expert.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graphs import Phase
from ..problem import Problem
from ..search import make_tuner


@dataclass(frozen=True)
class Demonstrations:
    """Observations, masks and expert actions of the replayed optima, and what was left out and why."""

    obs: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    returns: np.ndarray  # the episode's reward (gamma 1, one reward at the end), at every step
    scenarios: list[str]
    skipped: list[str]


def plan_actions(env: Any, plan: Any, train: bool) -> list[int]:
    """The Mapping-v0 actions that build ``plan`` (setup decisions, then one action per block), from reset.

    ``env`` is the raw environment, already reset on the plan's scenario (its
    blocks tell which layers may start a stage).
    """
    from ..envs import TP_MENU
    from ._rl_tuner import setup_of

    fixed = setup_of(plan)
    setup = [int(math.log2(fixed["replicas"])), int(math.log2(fixed["micro_batches"]))]
    if train:
        setup.append(int(fixed["recompute"]))
        if env.techniques:
            if "techniques" not in fixed:
                raise ValueError(f"plan techniques {plan.techniques()} are no bundle of Mapping-v0's techniques menu")
            setup.append(int(fixed["techniques"]))
    starts = {st.layers[0]: st.tp for st in plan.stages}
    return setup + [1 + TP_MENU.index(starts[s]) if s in starts else 0 for s in env._sc.starts]


def best_bundle(problem: Problem, plan: Any) -> Any:
    """``plan`` under the technique bundle of Mapping-v0 that scores best on ``problem`` (``plan`` if none helps).

    dp searches plans without techniques, so its optimum's layout is kept and only the bundle chosen:
    the expert of the techniques decision.
    """
    from ..envs._features import TECHNIQUE_BUNDLES
    from ..envs._mapping import bundle_plan

    best, best_ev = plan, problem.score(plan)
    obj = problem.resolved_objective
    for k in range(1, len(TECHNIQUE_BUNDLES)):
        candidate = bundle_plan(plan, k)
        ev = problem.score(candidate)
        if ev.feasible and (not best_ev.feasible or obj.better(ev.value, best_ev.value)):
            best, best_ev = candidate, ev
    return best


def batch_variants(problem: Problem) -> list[Problem]:
    """``problem`` with its batch halved and doubled: more optima of the same models and platforms to clone."""
    out = []
    for batch in (problem.batch // 2, problem.batch * 2):
        if batch >= 1 and batch != problem.batch:
            spec = dict(problem.to_dict(), batch=batch, name=f"{problem.name}-b{batch}")
            out.append(Problem.from_dict(spec, where=f"batch variant of {problem.name}"))
    return out


def other_setups(problem: Problem, plan: Any, k: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``k`` setups drawn (``rng``) among those the Mapping-v0 masks allow on ``problem``, other than ``plan``'s.

    Only setups dp searches are drawn (micro-batches up to its default 64).
    """
    from ..envs import MappingEnv
    from ._rl_tuner import allowed_setups, same_setup, setup_of

    done = setup_of(plan)
    env = MappingEnv(scenarios=[problem])
    menu = [f for _, f in allowed_setups(problem, env) if f["micro_batches"] <= 64 and not same_setup(f, done)]
    picks = rng.permutation(len(menu))[:k]
    return [menu[i] for i in sorted(picks)]


def _dp_under(problem: Problem, setup: dict[str, Any] | None) -> Any:
    """The dp plan of ``problem`` (None: every setup searched; else under that setup), or None."""
    if setup is None:
        return make_tuner("dp").tune(problem).best_plan
    options: dict[str, Any] = {"replicas": setup["replicas"], "micro_batches": setup["micro_batches"]}
    if problem.phase == Phase.TRAIN:
        options["recompute"] = "on" if setup.get("recompute") else "off"
    return make_tuner("dp", **options).tune(problem).best_plan


def demonstrations(
    pool: Sequence[Problem],
    *,
    granularity: str | None = None,
    variants: bool = False,
    setups: int = 0,
    seed: int = 0,
    techniques: bool = False,
) -> Demonstrations:
    """Replay each scenario's ``dp`` plan through Mapping-v0 and record (observation, mask, action).

    ``variants``: also each scenario's :func:`batch_variants` (three times the
    demonstrations, the same models and platforms). ``setups``: also the dp
    optimum of each pool scenario under that many other setups (drawn with
    ``seed`` by :func:`other_setups`): the best block decisions when the
    replicas, micro-batches or recompute are not the optimum's, which the rl
    tuner's setup sweep asks the policy for. Scenarios without a
    feasible dp plan, multi-objective ones (no single optimum) and plans the
    action menu cannot express (a TP degree outside ``TP_MENU``, counts that
    are not powers of two) are skipped and named. ``techniques``: replay through
    Mapping-v0 with the techniques decision, each dp plan (dp plans without
    techniques) under the bundle that scores best on it (:func:`best_bundle`).
    """
    from ..envs import TP_MENU, MappingEnv

    rng = np.random.default_rng(seed)
    jobs: list[tuple[Problem, dict[str, Any] | None, bool]] = []  # (problem, setup or None, from the pool)
    for p in pool:
        jobs += [(q, None, q is p) for q in ([p, *batch_variants(p)] if variants else [p])]
    obs, masks, actions, returns, used, skipped = [], [], [], [], [], []
    while jobs:
        problem, setup, pooled = jobs.pop(0)
        label = problem.name if setup is None else f"{problem.name} under {setup}"
        if problem.resolved_objective.multi:
            skipped.append(f"{label}: multi-objective, no single optimum")
            continue
        plan = _dp_under(problem, setup)
        if plan is None:
            skipped.append(f"{label}: dp found no feasible plan")
            continue
        if pooled and setups > 0:
            jobs += [(problem, f, False) for f in other_setups(problem, plan, setups, rng)]
        counts = (plan.replicas, plan.micro_batches)
        if any(st.tp not in TP_MENU for st in plan.stages) or any(c & (c - 1) for c in counts):
            skipped.append(f"{label}: the dp plan is outside the action menu")
            continue
        if techniques and problem.phase == Phase.TRAIN:
            plan = best_bundle(problem, plan)
        env = MappingEnv(scenarios=[problem], granularity=granularity, techniques=techniques)
        o, _ = env.reset(seed=0)
        steps = plan_actions(env, plan, problem.phase == Phase.TRAIN)
        for a in steps:
            mask = env.action_masks()
            if not mask[a]:
                raise RuntimeError(f"{label}: the masks forbid action {a} of the dp plan (a masking bug)")
            obs.append(o)
            masks.append(mask)
            actions.append(a)
            o, reward, _, _, info = env.step(a)
        returns += [float(reward)] * len(steps)
        if not info["feasible"]:
            raise RuntimeError(f"{label}: the replayed dp plan is infeasible in the env: {info['violations']}")
        used.append(label)
    if not actions:
        raise ValueError("no demonstrations: dp found no usable plan on any scenario of the pool")
    return Demonstrations(np.array(obs), np.array(masks), np.array(actions), np.array(returns), used, skipped)


def clone(model: Any, demos: Demonstrations, *, epochs: int = 200, batch_size: int = 256, seed: int = 0) -> dict:
    """Fit ``model``'s policy and value head to the demonstrations (masked cross-entropy + squared error, Adam).

    Returns the final loss, the share of expert actions the greedy policy
    takes, the value head's mean absolute error, the sample and scenario counts and the wall time (recorded in the
    policy's metadata).
    """
    import torch

    policy = model.policy
    policy.set_training_mode(True)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    obs = torch.as_tensor(demos.obs, dtype=torch.float32)
    actions = torch.as_tensor(demos.actions, dtype=torch.long)
    returns = torch.as_tensor(demos.returns, dtype=torch.float32)
    masks = demos.masks
    n = len(actions)
    gen = np.random.default_rng(seed)
    start = time.perf_counter()
    loss_value = math.nan
    for _ in range(epochs):
        order = gen.permutation(n)
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            values, log_prob, _ = _evaluate(policy, obs[idx], actions[idx], masks[idx])
            loss = -log_prob.mean() + 0.5 * ((values.flatten() - returns[idx]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
    policy.set_training_mode(False)
    with torch.no_grad():
        dist = policy.get_distribution(obs)
        probs = dist.distribution.probs.numpy()
        value_error = float((policy.predict_values(obs).flatten() - returns).abs().mean())
    greedy = np.where(masks, probs, -1.0).argmax(axis=1)
    return {
        "scenarios": len(demos.scenarios),
        "skipped": demos.skipped,
        "samples": n,
        "epochs": epochs,
        "loss": round(loss_value, 4),
        "accuracy": round(float((greedy == demos.actions).mean()), 4),
        "value_mae": round(value_error, 4),
        "wall_s": round(time.perf_counter() - start, 2),
    }


def _evaluate(policy: Any, obs: Any, actions: Any, masks: np.ndarray) -> tuple[Any, Any, Any]:
    """SB3's evaluate_actions, with the masks for MaskablePPO's policy (others take none)."""
    try:
        return policy.evaluate_actions(obs, actions, action_masks=masks)
    except TypeError:
        return policy.evaluate_actions(obs, actions)
