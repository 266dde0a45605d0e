"""Behaviour cloning of the exhaustive optimum: the serving policy's warm start before PPO.

From one reward per episode PPO has to discover what the exhaustive search (:func:`~paratune.search._serve.
search_deployments`, the certified optimum of its grid) knows of every pool problem. :func:`serving_demonstrations`
replays that optimum through ``paratune/Serving-v0`` (the agent's own masks and observations; an optimum the
masks forbid is skipped and named) for each pool problem and for variants of it (:data:`VARIANTS`: prompt and
output lengths halved or doubled, SLO targets tightened or relaxed), so the policy sees how the optimum moves
with the traffic rather than one point per problem. The plan policies' :func:`~._imitate.clone` then fits the
policy (masked cross-entropy) and its value head (the episode's reward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..search._serve import ServingProblem, search_deployments
from ..serving import Slo
from ._imitate import Demonstrations

#: Variants of a pool problem replayed too, in order (``imitate_variants`` takes the first k): (what, factor).
VARIANTS: tuple[tuple[str, float], ...] = (
    ("prompt", 2.0),
    ("output", 0.5),
    ("slo", 0.6),
    ("prompt", 0.5),
    ("output", 2.0),
    ("slo", 1.6),
)


def variant(problem: ServingProblem, what: str, factor: float) -> ServingProblem | None:
    """``problem`` with its prompt or output mean length, or its SLO targets, scaled by ``factor`` (None: no SLO)."""
    t = problem.traffic
    name = f"{problem.name}~{what}x{factor:g}"
    if what in ("prompt", "output"):
        lengths = getattr(t, what)
        mean = max(16.0, min(float(lengths.high), round(lengths.mean * factor)))
        return replace(problem, traffic=replace(t, **{what: replace(lengths, mean=mean)}), name=name)
    if what == "slo":
        if problem.slo is None:
            return None
        s = problem.slo
        slo = Slo(
            ttft_ms=None if s.ttft_ms is None else s.ttft_ms * factor,
            tpot_ms=None if s.tpot_ms is None else s.tpot_ms * factor,
            percentile=s.percentile,
        )
        return replace(problem, slo=slo, name=name)
    raise ValueError(f"variant {what!r}; allowed: prompt, output, slo")


def optimum_actions(env: Any, deployment: Any) -> list[int] | None:
    """The Serving-v0 actions that build ``deployment`` (the env reset on its problem), None when off the menus."""
    space = env.space
    modes = env._sc["modes"]

    def idx(menu: Sequence[Any], value: Any) -> int:
        return list(menu).index(value) if value in menu else -1

    pools = {p.role: p for p in deployment.pools}
    if "mixed" in pools:
        p = pools["mixed"]
        acts = [modes.index("agg"), idx(space.tp, p.tp), idx(space.pp, p.pp)]
        acts += [idx(space.max_num_seqs, p.max_num_seqs), idx(space.max_batched_tokens, p.max_batched_tokens)]
    else:
        if "disagg" not in modes:
            return None
        pf, dc = pools["prefill"], pools["decode"]
        acts = [modes.index("disagg"), idx(space.tp, pf.tp), idx(space.pp, pf.pp)]
        acts += [idx(space.max_batched_tokens, pf.max_batched_tokens), idx(space.tp, dc.tp), idx(space.pp, dc.pp)]
        acts.append(idx(space.max_num_seqs, dc.max_num_seqs))
    return None if min(acts) < 0 else acts


def serving_demonstrations(
    pool: Sequence[ServingProblem], *, variants: int = 0, progress: Any = None
) -> tuple[Demonstrations, list[dict[str, Any]]]:
    """Replays of the exhaustive optimum of every pool problem and of its first ``variants`` variants.

    Returns the demonstrations and, per replayed problem, its optimum and the replay's value (what the metadata
    records).
    """
    from ..envs._serving import ServingEnv

    obs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    actions: list[int] = []
    returns: list[float] = []
    names: list[str] = []
    skipped: list[str] = []
    record: list[dict[str, Any]] = []
    problems: list[ServingProblem] = []
    for p in pool:
        problems.append(p)
        problems.extend(v for what, f in VARIANTS[:variants] if (v := variant(p, what, f)) is not None)
    for p in problems:
        if progress is not None:
            progress(p.name)
        result = search_deployments(
            p.model, p.resolved_platform(), p.traffic, p.slo, gpus=p.gpus,
            engine=p.engine, dtype=p.dtype, kv_dtype=p.kv_dtype, carry=p.carry,
        )  # fmt: skip
        if result.best is None:
            skipped.append(f"{p.name}: {result.reason}")
            continue
        env = ServingEnv([p])
        o, _ = env.reset(seed=0, options={"scenario": p})
        acts = optimum_actions(env, result.best.deployment)
        if acts is None:
            skipped.append(f"{p.name}: the optimum is outside the env's menus")
            continue
        steps: list[tuple[np.ndarray, np.ndarray, int]] = []
        reward, ok = 0.0, True
        info: dict[str, Any] = {}
        for a in acts:
            mask = env.action_masks()
            if not mask[a]:
                ok = False
                break
            steps.append((o, mask, a))
            o, reward, _done, _trunc, info = env.step(a)
        if not ok or not info.get("feasible"):
            skipped.append(f"{p.name}: the env's masks or pricing refuse the optimum")
            continue
        for o_, m_, a_ in steps:
            obs.append(o_)
            masks.append(m_)
            actions.append(a_)
            returns.append(float(reward))
        names.append(p.name)
        best = result.best.metrics.tokens_per_s_per_gpu
        record.append({"problem": p.name, "optimum": best, "replayed": info["tokens_per_s_per_gpu"], "reward": reward})
        if not math.isclose(info["tokens_per_s_per_gpu"], best, rel_tol=0.05):
            skipped.append(f"{p.name}: replay {info['tokens_per_s_per_gpu']:.4g} vs optimum {best:.4g} (kept)")
    demos = Demonstrations(
        obs=np.array(obs, dtype=np.float32),
        masks=np.array(masks, dtype=bool),
        actions=np.array(actions, dtype=np.int64),
        returns=np.array(returns, dtype=np.float32),
        scenarios=names,
        skipped=skipped,
    )
    return demos, record
