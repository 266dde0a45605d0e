"""``paratune/Serving-v0``: choose a serving deployment decision by decision.

An episode is one serving question (:class:`~paratune.search._serve.ServingProblem`: model, platform, traffic,
SLO, GPU budget). The agent decides, one ``Discrete(N_ACTIONS)`` step each, with an action mask:

* aggregated: mode, TP, PP, batch cap, token budget;
* disaggregated: mode, prefill TP, PP and token budget, decode TP, PP and batch cap; the prefill:decode ratio is
  then solved exactly from the two sides' capacities (as every tuner of this space does).

Masks hide TP / PP menus beyond the budget and instance shapes whose weights do not fit one instance. The reward,
given at the last step: ``log(tokens/s per GPU / reference)``, clipped to ``[-REWARD_CLIP, REWARD_CLIP]``, the
reference being the engine-default deployment (:func:`~paratune.search._serve.default_deployment`, smallest TP
that fits, the engine's batch cap and token budget) at its capacity within the SLO; a deployment that misses the
SLO or carries nothing gets ``-(REWARD_CLIP + 1)``. When the reference itself misses the SLO, the reference is the
best aggregated deployment of TP 8 (or the widest) found by a short sweep: the reward stays a ratio to something
that works.

Observation (``Box(0, FEATURE_MAX)``, fixed size, :data:`SERVING_FEATURES`): the model (parameters, layers, KV
heads per head, experts), the platform (memory, bandwidth, peak, NVLink domain), the budget, the traffic (mean
prompt and output lengths), the SLO (present, log targets), the decision being taken (one-hot) and the choices so
far (log-scaled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..search._serve import (
    Candidate,
    Evaluator,
    ServingProblem,
    ServingSpace,
    ample_shapes,
    best_ratio,
    default_deployment,
)
from ..serving import Lengths, Pool, Slo, Traffic
from ._features import FEATURE_MAX, clip_array
from ._reward import REWARD_CLIP

#: Largest menu of one decision (batch caps: 8 values).
N_ACTIONS = 8

#: Version of the observation layout below (:data:`SERVING_FEATURES`); a saved Serving-v0 policy records it and
#: the loader refuses one of another version. Bump it when a feature is added, dropped or rescaled.
SERVING_OBS_SCHEMA_VERSION = 1

#: Decisions of each mode, in order.
AGG_DECISIONS = ("mode", "tp", "pp", "max_num_seqs", "max_batched_tokens")
DISAGG_DECISIONS = ("mode", "prefill_tp", "prefill_pp", "prefill_tokens", "decode_tp", "decode_pp", "decode_seqs")
DECISIONS = (
    "mode",
    "tp",
    "pp",
    "max_num_seqs",
    "max_batched_tokens",
    "prefill_tp",
    "prefill_pp",
    "prefill_tokens",
    "decode_tp",
    "decode_pp",
    "decode_seqs",
)

SERVING_FEATURES = (
    "log_params",
    "log_layers",
    "kv_heads_per_head",
    "moe",
    "memory_vs_weights",
    "memory_bw",
    "peak",
    "log_domain",
    "log_gpus",
    "log_prompt",
    "log_output",
    "has_ttft",
    "log_ttft",
    "has_tpot",
    "log_tpot",
    *(f"deciding_{d}" for d in DECISIONS),
    *(f"chose_{d}" for d in DECISIONS),
)

#: A small default pool: dense and MoE models, Hopper and Blackwell, chat and long-context, with and without SLOs.
_CHAT = Traffic(Lengths("fixed", mean=1024.0), Lengths("fixed", mean=256.0), rate=1.0)
_LONG = Traffic(Lengths("fixed", mean=8192.0), Lengths("fixed", mean=512.0), rate=1.0)
DEFAULT_SERVING_POOL: tuple[ServingProblem, ...] = (
    ServingProblem("llama3-8b", "dgx-h100", _CHAT, Slo(ttft_ms=500.0, tpot_ms=20.0), 8, name="8b-h100-chat"),
    ServingProblem("llama3-70b", "hgx-h200", _CHAT, Slo(ttft_ms=1000.0, tpot_ms=30.0), 8, name="70b-h200-chat"),
    ServingProblem("llama3-70b", "dgx-h100", _LONG, Slo(ttft_ms=3000.0, tpot_ms=40.0), 8, name="70b-h100-long"),
    ServingProblem("mixtral-8x7b", "dgx-b200", _CHAT, Slo(ttft_ms=800.0, tpot_ms=25.0), 8, name="mixtral-b200-chat"),
    ServingProblem("llama3-8b", "hgx-h200", _LONG, None, 4, name="8b-h200-long-noslo"),
)


class ServingEnv(gym.Env[np.ndarray, np.int64]):
    """Sequential choice of a serving deployment (see the module docstring).

    Example:
        >>> import gymnasium, paratune.envs
        >>> env = gymnasium.make("paratune/Serving-v0")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape == env.observation_space.shape
        True
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium types it as an attribute)

    def __init__(self, scenarios: Sequence[ServingProblem] | None = None) -> None:
        self.pool = tuple(scenarios) if scenarios else DEFAULT_SERVING_POOL
        if not all(isinstance(s, ServingProblem) for s in self.pool):
            raise ValueError("scenarios must be ServingProblem values")
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.observation_space = spaces.Box(0.0, FEATURE_MAX, shape=(len(SERVING_FEATURES),), dtype=np.float32)
        self._cache: dict[int, Any] = {}  # per scenario: evaluator, space, context features, reference
        self._mask = np.zeros(N_ACTIONS, dtype=bool)
        self._problem: ServingProblem | None = None
        #: The candidate the last finished episode evaluated (None when it fit nothing): what a tuner keeps.
        self.last_candidate: Candidate | None = None

    # -- gymnasium API ------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        choice = (options or {}).get("scenario")
        unknown = set(options or {}) - {"scenario"}
        if unknown:
            raise ValueError(f"reset options {sorted(unknown)} are unknown; allowed: scenario")
        if choice is None:
            index = int(self.np_random.integers(len(self.pool)))
        elif isinstance(choice, ServingProblem):
            self.pool = (*self.pool, choice) if choice not in self.pool else self.pool
            index = self.pool.index(choice)
        else:
            names = [s.name for s in self.pool]
            if choice not in names:
                raise ValueError(f"scenario {choice!r} is not in the pool; pool: {', '.join(names)}")
            index = names.index(choice)
        self._problem = self.pool[index]
        self._sc = self._scenario(index)
        self._choices: dict[str, int] = {}
        self._decision = "mode"
        self._set_mask()
        return self._observe(), {"scenario": self._problem.name or self._problem.model}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._problem is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        info: dict[str, Any] = {}
        if not (0 <= a < N_ACTIONS and self._mask[a]):
            a = int(np.flatnonzero(self._mask)[0])
            info["invalid_action"] = True
        self._choices[self._decision] = a
        order = AGG_DECISIONS if self._mode() == "agg" else DISAGG_DECISIONS
        position = order.index(self._decision)
        if position + 1 == len(order):
            return self._finish(info)
        self._decision = order[position + 1]
        self._set_mask()
        return self._observe(), 0.0, False, False, info

    def action_masks(self) -> np.ndarray:
        """Valid actions now (sb3-contrib ``MaskablePPO`` reads this); never all False."""
        return self._mask.copy()

    @property
    def evaluator(self) -> Evaluator:
        """The evaluator of the current episode's problem (its calls, cached costs): a tuner's ``finish`` reads it."""
        if self._problem is None:
            raise RuntimeError("call reset() before reading the evaluator")
        return self._sc["ev"]

    @property
    def space(self) -> ServingSpace:
        """The grid the current episode's menus come from."""
        if self._problem is None:
            raise RuntimeError("call reset() before reading the space")
        return self._sc["space"]

    def share_evaluations(self, other: ServingEnv) -> None:
        """Use ``other``'s per-problem state (evaluator, reference, memoised deployments): envs stepped together
        over one pool then price each deployment once. The pools must be equal."""
        if other.pool != self.pool:
            raise ValueError("share_evaluations: the two envs' pools differ")
        self._cache = other._cache

    # -- episode state ------------------------------------------------------------------------------------------
    def _scenario(self, index: int) -> dict[str, Any]:
        sc = self._cache.get(index)
        if sc is None:
            problem = self.pool[index]
            space = problem.space()
            modes = ["agg"] + (["disagg"] if problem.gpus >= 2 and ample_shapes(space, problem.gpus) else [])
            sc = {"ev": problem.evaluator(), "space": space, "modes": modes, "context": _context(problem)}
            sc["reference"] = _reference(problem, sc["ev"])
            self._cache[index] = sc
        return sc

    def _mode(self) -> str:
        return str(self._sc["modes"][self._choices.get("mode", 0)])

    def _menu(self, decision: str) -> list[Any]:
        space = self._sc["space"]
        if decision == "mode":
            return list(self._sc["modes"])
        if decision.endswith("tp"):
            return list(space.tp)
        if decision.endswith("pp"):
            return list(space.pp)
        if decision in ("max_num_seqs", "decode_seqs"):
            return list(space.max_num_seqs)
        return list(space.max_batched_tokens)

    def _value(self, decision: str) -> Any:
        return self._menu(decision)[self._choices[decision]]

    def _set_mask(self) -> None:
        assert self._problem is not None
        menu = self._menu(self._decision)
        valid = [False] * N_ACTIONS
        gpus = self._problem.gpus
        for i, value in enumerate(menu[:N_ACTIONS]):
            valid[i] = self._allowed(self._decision, value, gpus)
        if not any(valid):
            valid[0] = True  # never all False: the episode then ends infeasible
        self._mask = np.array(valid, dtype=bool)

    def _allowed(self, decision: str, value: Any, gpus: int) -> bool:
        if decision in ("tp", "prefill_tp"):
            role = "mixed" if decision == "tp" else "prefill"
            budget = gpus if role == "mixed" else gpus - min(self._sc["space"].tp)
            return bool(value <= budget and self._fits(role, value, 1))
        if decision == "decode_tp":
            left = gpus - self._value("prefill_tp") * self._value("prefill_pp")
            return bool(value <= left and self._fits("decode", value, 1))
        if decision == "pp":
            return bool(self._value("tp") * value <= gpus)
        if decision == "prefill_pp":
            return bool(self._value("prefill_tp") * value <= gpus - min(self._sc["space"].tp))
        if decision == "decode_pp":
            left = gpus - self._value("prefill_tp") * self._value("prefill_pp")
            return bool(self._value("decode_tp") * value <= left)
        return True

    def _fits(self, role: str, tp: int, pp: int) -> bool:
        """Whether an instance of this TP (and some PP within the budget) holds the weights, smallest budgets."""
        assert self._problem is not None
        space = self._sc["space"]
        seqs, tokens = min(space.max_num_seqs), min(space.max_batched_tokens)
        return any(
            self._sc["ev"].cost(Pool(role, tp=tp, pp=p, max_num_seqs=seqs, max_batched_tokens=tokens)) is not None
            for p in space.pp
            if tp * p <= self._problem.gpus and p >= pp
        )

    def deployment_candidate(self) -> Candidate | None:
        """The candidate the choices so far describe (after the last step), evaluated.

        Memoised per scenario by the choices: the evaluation is deterministic, and training or a tuner's sampled
        rollouts revisit the same few deployments many times.
        """
        key = (self._mode(), tuple(sorted(self._choices.items())))
        done = self._sc.setdefault("done", {})
        if key not in done:
            done[key] = self._evaluate_choices()
        return done[key]

    def _evaluate_choices(self) -> Candidate | None:
        assert self._problem is not None
        ev = self._sc["ev"]
        if self._mode() == "agg":
            pool = Pool(
                "mixed",
                tp=self._value("tp"),
                pp=self._value("pp"),
                max_num_seqs=self._value("max_num_seqs"),
                max_batched_tokens=self._value("max_batched_tokens"),
            )
            if pool.gpus_per_instance > self._problem.gpus:
                return None
            return ev.aggregated(pool)
        space = self._sc["space"]
        prefill = Pool(
            "prefill",
            tp=self._value("prefill_tp"),
            pp=self._value("prefill_pp"),
            max_num_seqs=max(space.max_num_seqs),
            max_batched_tokens=self._value("prefill_tokens"),
        )
        decode = Pool(
            "decode",
            tp=self._value("decode_tp"),
            pp=self._value("decode_pp"),
            max_num_seqs=self._value("decode_seqs"),
            max_batched_tokens=max(space.max_batched_tokens),
        )

        if prefill.gpus_per_instance + decode.gpus_per_instance > self._problem.gpus:
            return None
        ample = ample_shapes(space, self._problem.gpus)
        assert ample is not None
        cp, cd = ev.side_capacity(prefill, ample[1]), ev.side_capacity(decode, ample[0])
        if cp is None or cd is None:
            return None
        ratio = best_ratio(prefill.gpus_per_instance, cp, decode.gpus_per_instance, cd, self._problem.gpus, ev.target)
        return None if ratio is None else ev.disaggregated(prefill, decode, ratio[1], ratio[2])

    def _finish(self, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict]:
        cand = self.last_candidate = self.deployment_candidate()
        ok = cand is not None and not cand.metrics.saturated and cand.metrics.meets_slo is not False
        if ok and cand is not None:
            value = cand.metrics.tokens_per_s_per_gpu
            reward = max(-REWARD_CLIP, min(REWARD_CLIP, math.log(max(value, 1e-9) / self._sc["reference"])))
        else:
            value, reward = 0.0, -(REWARD_CLIP + 1.0)
        info.update(
            feasible=ok,
            tokens_per_s_per_gpu=value,
            reference=self._sc["reference"],
            deployment=None if cand is None else cand.deployment.to_dict(),
        )
        return self._observe(), float(reward), True, False, info

    def _observe(self) -> np.ndarray:
        deciding = [1.0 if d == self._decision else 0.0 for d in DECISIONS]
        chosen = []
        for d in DECISIONS:
            if d not in self._choices:
                chosen.append(0.0)
            elif d == "mode":
                chosen.append(1.0 + self._choices[d])
            else:
                chosen.append(math.log2(max(1, self._value(d))) / 4.0)
        return clip_array(np.array([*self._sc["context"], *deciding, *chosen]))


def _context(problem: ServingProblem) -> list[float]:
    spec, plat = problem.spec(), problem.resolved_platform()
    dev = plat.device
    weights = spec.params() * (1 if problem.dtype == "fp8" else 2)
    slo = problem.slo or Slo()
    return [
        math.log10(max(1.0, spec.params())) / 12.0,
        math.log2(spec.layers) / 8.0,
        spec.kv_heads / spec.heads,
        1.0 if spec.experts else 0.0,
        dev.usable_memory * problem.gpus / max(weights, 1.0) / 16.0,
        dev.memory_bw / 1e13,
        dev.peak(problem.dtype) / 5e15,
        math.log2(plat.devices_per_node) / 7.0,
        math.log2(problem.gpus) / 7.0,
        math.log2(max(1.0, problem.traffic.prompt.mean)) / 17.0,
        math.log2(max(1.0, problem.traffic.output.mean)) / 17.0,
        1.0 if slo.ttft_ms else 0.0,
        math.log10(slo.ttft_ms) / 5.0 if slo.ttft_ms else 0.0,
        1.0 if slo.tpot_ms else 0.0,
        math.log10(slo.tpot_ms) / 3.0 if slo.tpot_ms else 0.0,
    ]


def _reference(problem: ServingProblem, ev: Any) -> float:
    """Tokens/s per GPU of the engine-default deployment at its capacity, or of a short TP sweep when it fails."""
    plat = problem.resolved_platform()
    candidates = []
    for rule in ("smallest", "node"):
        dep = default_deployment(
            problem.model,
            plat,
            gpus=problem.gpus,
            engine=problem.engine,
            dtype=problem.dtype,
            kv_dtype=problem.kv_dtype,
            tp_rule=rule,
        )
        if dep is not None:
            cand = ev.aggregated(dep.pools[0])
            if cand is not None and not cand.metrics.saturated and cand.metrics.meets_slo is not False:
                candidates.append(cand.metrics.tokens_per_s_per_gpu)
        if candidates:
            break
    if not candidates:
        space = problem.space()
        for tp in space.tp:
            for seqs in (16, 64, 256):
                cand = ev.aggregated(Pool("mixed", tp=tp, max_num_seqs=seqs, max_batched_tokens=2048))
                if cand is not None and not cand.metrics.saturated and cand.metrics.meets_slo is not False:
                    candidates.append(cand.metrics.tokens_per_s_per_gpu)
    return max(candidates) if candidates else 1.0
