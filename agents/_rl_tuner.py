"""The ``rl`` tuner: a trained policy used as a tuner, so it enters the same comparisons as every other.

A rollout is one episode of the policy's environment on the problem; its final
plan is one evaluation (the environment already priced it; the recorder scores
it against the problem's limits). The tuner spends its budget as:

1. the **greedy rollout**: at each step the most probable action the masks
   allow (what ``model.predict(deterministic=True, action_masks=...)`` picks);
2. the **setup sweep**: the greedy block decisions under every other allowed
   setup (replicas, micro-batches, recompute: the few decisions that open an
   episode and fix the batch split), the setups the policy finds most
   probable first (:func:`setup_order`), within half the budget. The policy
   still makes every cut and TP choice; the sweep only stops one wrong early
   guess from deciding the whole plan, as Alpa enumerates its outer choices
   around an inner solver;
3. **sampled rollouts** while budget remains: actions drawn from the policy's
   masked distribution with the tuner's seeded generator (under the best
   setup found, after a sweep), several episodes stepped together so the
   network runs on a batch. The best feasible plan of all rollouts is the
   result.

So ``budget=1`` is the pure zero-shot policy and larger budgets trade a few
milliseconds per rollout for quality. Results depend only on the seed (the
policy is fixed, the sampling uses the tuner's generator). Options:
``policy`` (a path to a policy zip or a loaded :class:`~._policy.Policy`;
default: the shipped default policy), ``granularity`` (default: the
problem's), ``sweep`` (default true; false skips step 2) and ``temperature``
of the sampled rollouts (default 1: the policy's own distribution; above 1
explores more, which helps where the trained policy is confident and wrong),
and ``techniques`` (``off``, the default, or ``search``, training only): every
distinct plan a rollout ends with (greedy, swept or sampled) is also priced
with each combination of plan-wide training techniques put on it
(:func:`~paratune.search._techniques.with_techniques`: ZeRO, sequence
parallelism, selective recomputation, overlap, interleaving), so the rl tuner
finds the technique plans the other tuners find on its layouts. The budget
counts rollouts: the technique variants are priced on top of it (each layout
once, at most 47 more analytic evaluations), recorded with a count of 0 and
reported in the notes.

The policy's actions pick TP degrees from a fixed menu (``envs.TP_MENU``, up to 16):
on a wide NVLink domain (72 GPUs on ``gb200-nvl72``) the degrees a problem allows
beyond it (32, 64) are out of the rl tuner's reach, and its notes say so; the other
tuners search them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..problem import Evaluation, Problem
from ..search import Family, Recorder, Tuner, TunerOptions, about
from ..search._techniques import technique_choices, with_techniques
from ._policy import Policy, default_policy_path, load_policy

#: Episodes stepped together in the sampled phase (one network call per step for all of them).
ROLLOUT_BATCH = 16

_CACHE: dict[tuple[str, float], Policy] = {}


def resolve_policy(policy: str | Path | Policy | None) -> Policy:
    """A loaded policy from a path (cached by path and modification time), a Policy, or None (the default)."""
    if isinstance(policy, Policy):
        return policy
    path = Path(policy) if policy is not None else default_policy_path()
    if path.suffix != ".zip" and path.with_suffix(".zip").is_file():
        path = path.with_suffix(".zip")
    key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else 0.0)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _CACHE[key] = load_policy(path)
    return cached


def make_env(policy: Policy, problem: Problem) -> Any:
    """A raw (unwrapped) instance of the policy's environment whose pool is ``problem`` alone."""
    import gymnasium as gym

    from .. import envs  # noqa: F401  (registers the ids)

    return gym.make(policy.env_id, scenarios=[problem], **env_options(policy)).unwrapped


def env_options(policy: Policy) -> dict[str, Any]:
    """The options of the policy's environment that change its decisions (Mapping-v0's ``techniques``)."""
    kwargs = policy.metadata.get("env_kwargs") or {}
    return {"techniques": True} if policy.env_id == "paratune/Mapping-v0" and kwargs.get("techniques") else {}


def rollout(
    policy: Policy,
    problem: Problem,
    *,
    n: int = 1,
    rng: np.random.Generator | None = None,
    granularity: str | None = None,
    envs: list[Any] | None = None,
    temperature: float = 1.0,
    setups: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run ``n`` episodes of ``policy`` on ``problem`` together; the final ``info`` of each.

    ``setups``: per episode, setup decisions fixed through ``reset`` options
    (``replicas``, ``micro_batches``, ``recompute``; see :func:`setup_order`).

    ``rng`` None: greedy (the most probable allowed action; ``n`` identical
    episodes, so use ``n=1``); else actions are sampled from the masked policy
    with ``rng``, sharpened or flattened by ``temperature`` (probabilities to
    the power ``1 / temperature``, renormalised). Each info carries ``plan``, ``metrics``, ``feasible``,
    ``value`` and the episode's ``reward``.
    """
    gran = granularity or problem.granularity
    pool = envs if envs is not None else []
    while len(pool) < n:
        pool.append(make_env(policy, problem))
    active = pool[:n]
    fixed = setups if setups is not None else [{}] * n
    if len(fixed) != n:
        raise ValueError(f"rollout: {len(fixed)} setups for {n} episodes")
    obs = np.stack(
        [
            e.reset(seed=0, options={"scenario": problem, "granularity": gran, **f})[0]
            for e, f in zip(active, fixed, strict=True)
        ]
    )
    results: list[dict[str, Any] | None] = [None] * n
    live = list(range(n))
    while live:
        masks = np.stack([active[i].action_masks() for i in live])
        probs = policy.action_probs(obs[live], masks)
        if rng is None:
            actions = probs.argmax(axis=1)
        else:
            if temperature != 1.0:
                probs = probs ** (1.0 / temperature)
                probs /= probs.sum(axis=1, keepdims=True)
            # inverse CDF with one uniform per live episode: the draw order is fixed, so seeded
            u = rng.random(len(live))[:, None]
            actions = np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)
            actions = np.where(masks[np.arange(len(live)), actions], actions, probs.argmax(axis=1))
        still = []
        for i, a in zip(live, actions, strict=True):
            o, r, terminated, truncated, info = active[i].step(int(a))
            if terminated or truncated:
                results[i] = {**info, "reward": float(r)}
            else:
                obs[i] = o
                still.append(i)
        live = still
    return [r for r in results if r is not None]


def allowed_setups(
    problem: Problem, env: Any, *, granularity: str | None = None, weigh: Any = None
) -> list[tuple[float, dict[str, Any]]]:
    """Every setup (replicas, micro-batches, recompute, techniques) the Mapping-v0 masks allow on ``problem``, with
    a weight.

    ``env`` is a raw Mapping-v0 instance; ``weigh(obs, mask)`` gives the
    probability of each action at a setup decision (None: 1 each), and a
    setup's weight is the product along its decisions. Menu order.
    """
    from ..envs._mapping import COUNT_MENU, SETUP

    gran = granularity or problem.granularity
    names = SETUP
    leaves: list[tuple[float, dict[str, Any]]] = []

    def walk(fixed: dict[str, Any], prob: float) -> None:
        obs, _ = env.reset(seed=0, options={"scenario": problem, "granularity": gran, **fixed})
        decision = env._decision
        if decision >= len(names):
            leaves.append((prob, fixed))
            return
        mask = env.action_masks()
        probs = weigh(obs, mask) if weigh is not None else np.ones(len(mask))
        for a in np.flatnonzero(mask):
            name = names[decision]
            value: Any = bool(a) if name == "recompute" else int(a) if name == "techniques" else COUNT_MENU[a]
            walk({**fixed, names[decision]: value}, prob * float(probs[a]))

    walk({}, 1.0)
    return leaves


def setup_order(policy: Policy, problem: Problem, *, granularity: str | None = None) -> list[dict[str, Any]]:
    """Every allowed setup (replicas, micro-batches, recompute), most probable under the policy first.

    The setup decisions open a Mapping-v0 episode; their probability is the
    product of the policy's masked probabilities along the way (the
    observation after fixing a value through ``reset`` options is the one
    after choosing it). Empty for environments without setup decisions.
    """
    if policy.env_id != "paratune/Mapping-v0":
        return []
    leaves = allowed_setups(problem, make_env(policy, problem), granularity=granularity, weigh=policy.action_probs)
    leaves.sort(key=lambda leaf: -leaf[0])  # stable: ties keep the menu order
    return [fixed for _, fixed in leaves]


@dataclass(frozen=True)
class RLOptions(TunerOptions):
    """The ``rl`` tuner's options."""

    policy: Any = field(
        default=None, metadata=about("policy file (.zip) or a loaded Policy (default: the shipped policy)")
    )
    granularity: str | None = field(
        default=None, metadata=about("granularity the policy maps (default: the problem's)")
    )
    temperature: float = field(default=1.0, metadata=about("temperature of the sampled rollouts (> 0)"))
    sweep: bool = field(default=True, metadata=about("greedy rollouts over the other setups before sampling"))
    techniques: Literal["off", "search"] = field(
        default="off",
        metadata=about(
            "training: 'search' also prices every rollout's plan under each combination of ZeRO stage, sequence "
            "parallelism, selective recomputation, overlap and interleaving (not counted in the budget); "
            "'off' (default) plans without them"
        ),
    )

    def __post_init__(self) -> None:
        technique_choices(self.techniques)  # names the option and the allowed values
        if not self.temperature > 0:
            raise ValueError(f"option 'temperature' must be > 0, got {self.temperature}")
        if isinstance(self.policy, (str, Path)):  # a campaign spec names a missing file when it loads, not at run time
            path = Path(self.policy)
            if path.is_dir():
                raise ValueError(f"option 'policy': {path}: is a directory, not a policy zip")
            if not (path.exists() or (path.suffix != ".zip" and path.with_suffix(".zip").exists())):
                raise ValueError(f"option 'policy': {path}: no such policy file")
        elif self.policy is not None and not isinstance(self.policy, Policy):
            raise ValueError(f"option 'policy' must be a path to a policy zip, got {self.policy!r}")


class RLTuner(Tuner):
    """A trained policy as a tuner: greedy rollout, then the best of sampled rollouts (see the module)."""

    name: ClassVar[str] = "rl"
    family: ClassVar[Family] = Family.RL
    stochastic: ClassVar[bool] = True
    exact: ClassVar[bool] = False
    default_budget: ClassVar[int | None] = 64
    description: ClassVar[str] = (
        "a trained RL policy (option policy, default: the shipped one): greedy rollout, then best of sampled rollouts"
    )
    Options: ClassVar[type[TunerOptions]] = RLOptions
    config: RLOptions

    @staticmethod
    def serving_search(problem: Any, *, budget: int | None, seed: int) -> Any:
        """The serving space's ``rl`` tuner (``search._serve_tuners`` reaches it through this class's entry point):
        the shipped Serving-v0 policy's greedy and sampled rollouts (:func:`._serve_rl.rl_deployments`)."""
        from ._serve_rl import serving_search

        return serving_search(problem, budget=budget, seed=seed)

    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str] | None:
        temperature = self.config.temperature
        policy = resolve_policy(self.config.policy)
        if policy.env_id == "paratune/Serving-v0":
            raise ValueError(
                f"rl tuner: policy {policy.path or '(in memory)'} chooses serving deployments (paratune/Serving-v0), "
                "not plans; use it with `paratune serve-tune --tuner rl` (paratune.agents.rl_deployments)"
            )
        gran = self.config.granularity or problem.granularity
        if policy.env_id == "paratune/Mapping-v0" and not problem.graph(gran).is_layered:
            raise ValueError(
                f"rl tuner: policy {policy.path or '(in memory)'} maps layered graphs (paratune/Mapping-v0), but "
                f"{problem.name!r} at granularity {gran!r} is not layered; use granularity layer or layers:k"
            )
        self._choices = technique_choices(self.config.techniques) if problem.phase == "train" else [{}]
        self._expanded: set[Any] = set()
        self._variants = 0
        self._best_rollout: Evaluation | None = None  # the best rollout plan itself, technique variants aside
        envs: list[Any] = []
        greedy = rollout(policy, problem, granularity=gran, envs=envs)[0]
        first = self._record(problem, recorder, greedy)
        swept = 0
        if self.config.sweep:
            plan = greedy["plan"]
            done = setup_of(plan)
            order = [f for f in setup_order(policy, problem, granularity=gran) if not same_setup(f, done)]
            if recorder.budget is not None:  # half the budget at most: the sampled rollouts need the rest
                order = order[: max(0, recorder.budget // 2 - 1)]
            while order and not recorder.done:
                remaining = recorder.remaining
                k = min(ROLLOUT_BATCH, len(order)) if remaining is None else min(ROLLOUT_BATCH, len(order), remaining)
                batch, order = order[:k], order[k:]
                for info in rollout(policy, problem, n=k, granularity=gran, envs=envs, setups=batch):
                    self._record(problem, recorder, info)
                    swept += 1
        sampled = 0
        while not recorder.done:
            remaining = recorder.remaining
            k = ROLLOUT_BATCH if remaining is None else min(ROLLOUT_BATCH, remaining)
            # under the setup of the best rollout (not of a technique variant), so that techniques=search runs the
            # same rollouts as off and can only add plans
            best = self._best_rollout
            fixed = [self._setup(policy, best.plan)] * k if swept and best is not None else None
            for info in rollout(
                policy, problem, n=k, rng=rng, granularity=gran, envs=envs, temperature=temperature, setups=fixed
            ):
                self._record(problem, recorder, info)
                sampled += 1
                if recorder.done:
                    break
        meta = policy.metadata
        source = str(policy.path) if policy.path is not None else "in-memory policy"
        greedy_text = f"{first.value:.6g}" if first.feasible else "infeasible (" + "; ".join(first.violations) + ")"
        cloned = meta.get("imitation") or {}
        return [
            f"policy {source}: {meta.get('algo')} on {meta.get('env_id')}, "
            + (f"cloned from {cloned['scenarios']} dp optima, then " if "scenarios" in cloned else "")
            + f"{meta.get('timesteps')} timesteps over {len(meta.get('scenarios', []))} scenarios"
            + (" + fine-tuning" if "finetuned" in meta else ""),
            f"greedy rollout: {greedy_text}; then {swept} greedy rollout(s) over other setups, "
            f"{sampled} sampled rollout(s)",
            *self._techniques_note(),
            *_menu_note(problem),
        ]

    def _record(self, problem: Problem, recorder: Recorder, info: dict[str, Any]) -> Evaluation:
        """Record a rollout's plan (one evaluation of the budget), then its technique variants (option
        ``techniques``) with a count of 0, each layout expanded once (sampled rollouts repeat plans)."""
        plan = info["plan"]
        ev = recorder.record(problem.score(plan, info["metrics"]))
        top = self._best_rollout
        if ev.feasible and (top is None or problem.resolved_objective.better(ev.value, top.value)):
            self._best_rollout = ev
        if len(self._choices) > 1 and plan not in self._expanded:
            self._expanded.add(plan)
            for variant in dict.fromkeys(with_techniques(plan, c) for c in self._choices):
                if variant != plan:
                    recorder.record(problem.score(variant), count=0)
                    self._variants += 1
        return ev

    @staticmethod
    def _setup(policy: Policy, plan: Any) -> dict[str, Any]:
        """The setup of ``plan`` as reset options of the policy's env (a bundle only where it decides one)."""
        setup = setup_of(plan)
        if not env_options(policy).get("techniques"):
            setup.pop("techniques", None)
        return setup

    def _techniques_note(self) -> list[str]:
        if len(self._choices) <= 1:
            return []
        return [
            f"techniques: {len(self._expanded)} distinct rollout plan(s), each priced under the "
            f"{len(self._choices)} technique combinations: {self._variants} more plan(s), not counted in the budget"
        ]


def _menu_note(problem: Problem) -> list[str]:
    """A note naming the TP degrees the problem allows but the policy's action menu lacks above its largest entry."""
    from ..envs import TP_MENU

    beyond = [t for t in problem.tp_degrees() if t > max(TP_MENU)]
    if not beyond:
        return []
    return [
        f"TP degrees {beyond} are allowed here but lie beyond the policy's TP menu (at most {max(TP_MENU)}): "
        "the rl tuner cannot propose them (dp, enumerate, the heuristics and the Optuna spaces do)"
    ]


def same_setup(fixed: dict[str, Any], done: dict[str, Any]) -> bool:
    """True when every decision ``fixed`` names has the same value in ``done``."""
    return all(done.get(k) == v for k, v in fixed.items())


def setup_of(plan: Any) -> dict[str, Any]:
    """The setup decisions of a Mapping-v0 plan, as ``reset`` options (``techniques``: its bundle, left out
    when the plan's techniques are no bundle of Mapping-v0's menu)."""
    from ..envs._mapping import bundle_of

    out = {
        "replicas": plan.replicas,
        "micro_batches": plan.micro_batches,
        "recompute": any(st.recompute for st in plan.stages),
    }
    bundle = bundle_of(plan)
    if bundle is not None:
        out["techniques"] = bundle
    return out
