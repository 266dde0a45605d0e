"""``paratune/Mapping-v0``: map a layered model onto a platform one block at a time.

An episode builds one contiguous plan (:func:`~paratune.search.contiguous_plan`):

1. **Setup decisions** (each skipped when fixed by the constructor or by
   ``reset(options=...)``): ``replicas``, then ``micro_batches``, then
   ``recompute`` (training only), then ``techniques`` (training only, and only
   when the env is made with ``techniques=True``). Action ``k`` means the value
   ``2**k`` (``recompute``: 0 off, 1 on; ``techniques``: bundle ``k`` of
   :data:`._features.TECHNIQUE_BUNDLES`, 0 none); masks keep ``replicas x
   micro_batches`` a divisor of the batch and leave room for one device per replica.
2. **Block decisions**, one per block of the coarsened graph (a block is a
   layer, or a merged task of ``k`` layers at granularity ``layers:k``, so cuts
   fall only where a task starts): action 0 keeps the block in the current
   stage; action ``1 + i`` closes the current stage and opens a new one of TP
   degree ``TP_MENU[i]`` on the next contiguous devices. The first block must
   open a stage.

The granularity is chosen through ``reset(options={"granularity": ...})``
(default: the constructor's ``granularity``, else the scenario's own). It is not
an action, so an episode's length is known from its first step.

With ``techniques=True`` the episode's plan carries the chosen bundle's
plan-wide techniques (ZeRO over the replicas, sequence parallelism, selective
recomputation, overlap; sequence parallelism is dropped when no stage has TP > 1,
selective recomputation when every stage recomputes, as the tuners' technique
search does), the stage-memory tables price memory under it, and the masks let a
setup through when some bundle fits it: a plan feasible only with ZeRO is
reachable. The observation then has :data:`._features.TECHNIQUE_FEATURES` appended
(schema :data:`._features.TECHNIQUES_OBS_SCHEMA_VERSION`); without it, the
environment and its observation are those of schema 3, unchanged.

Masks forbid: a TP degree that does not divide the heads or exceeds a node or
the devices left for a replica, keeping block 0, and every action after which
no completion fits memory on the devices left: a setup value (replicas,
micro-batches, recompute) none of whose completions fits, a cut whose stage
cannot hold its block or leaves too few devices or stages for the blocks after
its reach, a keep past the open stage's reach (``reach``, ``min_devices`` and
``min_stages`` of :class:`._tables.SplitTables`, a dynamic programme over the
stage memory of :mod:`._tables`). For training, a 1F1B stage ``i`` of ``p``
keeps ``min(m, p - i)`` micro-batches in flight, so each closed stage caps the
pipeline's depth and a cut past the cap is forbidden. The memory is exact for
inference, so a masked inference episode never ends over memory; for training
the masks are necessary conditions only (a mask never excludes a feasible
plan, but an episode can still end over memory). When nothing is allowed (a
scenario no plan fits, or a training dead end), the least-bad action is
allowed (the largest TP cut the devices permit, else
keep), ``info["stuck"]`` and ``info["doomed"]`` say so, and the plan ends
infeasible with the penalty. An action a mask forbids (from an
agent that ignores masks) is replaced by the allowed action of the nearest
index and ``info["invalid_action"]`` is set.

Reward and reference: see :mod:`._reward` (0 per step, ``log(reference / cost)`` at
the end, the ``megatron`` heuristic as reference, a bounded penalty below every
feasible plan for infeasible ones). ``info`` at the end carries ``plan``,
``metrics``, ``feasible``, ``value``, ``violations``, ``reference`` and
``reference_source``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..costmodel import Plan, Schedule
from ..costmodel._plan import TECHNIQUE_DEFAULTS
from ..problem import Objective, contiguous_plan
from ._features import (
    BLOCK_FEATURES,
    CONTEXT_FEATURES,
    CUT_FEATURES,
    FEATURE_MAX,
    LOOKAHEAD,
    MAPPING_OBS_SIZE,
    MAPPING_STATE_FEATURES,
    N_ACTIONS,
    TECHNIQUE_BUNDLES,
    TP_MENU,
    clip,
    mapping_obs_spec,
)
from ._pool import Scenarios, load_pool, pick_scenario, problem_key, reset_options
from ._reward import episode_end
from ._tables import UNREACHABLE, ScenarioTables, SplitTables

#: Values of the setup decisions: action k means 2**k.
COUNT_MENU: tuple[int, ...] = tuple(2**k for k in range(N_ACTIONS))

KEEP = 0

#: The setup decisions in episode order; ``_decision`` is their index, then :data:`BLOCK`.
SETUP = ("replicas", "micro_batches", "recompute", "techniques")
#: ``_decision`` while the blocks are decided.
BLOCK = len(SETUP)

_ROWS = LOOKAHEAD + 1
_NB = _ROWS * len(BLOCK_FEATURES)  # end of the block features
_NS = _NB + len(MAPPING_STATE_FEATURES)  # end of the state
_NC = _NS + len(CONTEXT_FEATURES)  # end of the context
_NX = _NC + len(TP_MENU) * len(CUT_FEATURES)  # end of the cut features; the mask follows


class MappingEnv(gym.Env[np.ndarray, np.int64]):
    """Sequential pipeline/tensor-parallel mapping of a layered model (see the module docstring).

    Args:
        scenarios: the pool (see :func:`~paratune.envs._pool.load_pool`); None: the default small pool.
        granularity: graph granularity of every episode (None: each scenario's own).
        replicas, micro_batches, recompute: fix these setup decisions (None: the agent decides).
        schedule: training schedule of the plans (``1f1b`` or ``gpipe``).
        random_setup: probability that an episode's open setup decisions are drawn
            uniformly among the allowed values (with the env's RNG) instead of
            asked from the agent, so the agent learns the block decisions under
            every setup, not only the ones it favours (a training aid; the rl
            tuner's setup sweep relies on it). Default 0: the agent decides.
        techniques: add the techniques setup decision (training): a bundle of
            :data:`._features.TECHNIQUE_BUNDLES` (see the module). Default False:
            plans without techniques and the schema-3 observation.

    Example:
        >>> import gymnasium, paratune.envs
        >>> env = gymnasium.make("paratune/Mapping-v0")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape == env.observation_space.shape
        True
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium types it as an attribute)

    def __init__(
        self,
        scenarios: Scenarios = None,
        *,
        granularity: str | None = None,
        replicas: int | None = None,
        micro_batches: int | None = None,
        recompute: bool | None = None,
        schedule: str = "1f1b",
        random_setup: float = 0.0,
        techniques: bool = False,
    ) -> None:
        if not 0.0 <= random_setup <= 1.0:
            raise ValueError(f"random_setup must be a probability in [0, 1], got {random_setup!r}")
        self.random_setup = float(random_setup)
        self.pool = load_pool(scenarios)
        self.granularity = granularity
        if not isinstance(techniques, bool):
            raise ValueError(f"techniques must be true or false, got {techniques!r}")
        self.techniques = techniques
        self.fixed: dict[str, Any] = {
            "replicas": replicas, "micro_batches": micro_batches, "recompute": recompute, "techniques": None
        }  # fmt: skip
        self.schedule = schedule
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.obs_schema_version, self._obs_size = mapping_obs_spec(techniques)
        self.observation_space = spaces.Box(0.0, FEATURE_MAX, shape=(self._obs_size,), dtype=np.float32)
        self._tables: dict[tuple[str, str], ScenarioTables] = {}
        self._mask = np.zeros(N_ACTIONS, dtype=bool)
        self._sc: ScenarioTables | None = None

    # -- gymnasium API -------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        opts = reset_options(options, ("scenario", "granularity", *SETUP))
        problem = pick_scenario(opts.get("scenario"), self.pool, self.np_random)
        gran = opts.get("granularity") or self.granularity or problem.granularity
        key = (problem_key(problem), gran)
        sc = self._tables.get(key)
        if sc is None:
            sc = self._tables[key] = ScenarioTables(problem, gran)
        self._sc = sc
        self._problem = problem
        self._obj: Objective = problem.resolved_objective
        fixed = {k: opts.get(k, v) for k, v in self.fixed.items()}
        self._check_fixed(sc, fixed)
        self.replicas = fixed["replicas"]
        self.micro_batches = fixed["micro_batches"]
        self.recompute = bool(fixed["recompute"]) if sc.train and fixed["recompute"] is not None else None
        self.bundle: int | None = fixed["techniques"]
        if not sc.train:
            self.recompute = False
        if not sc.train or not self.techniques:
            self.bundle = 0
        # partial plan
        self._stages: list[tuple[int, int, int]] = []
        self._block = 0
        self._cur_t = 0
        self._cur_lo = 0
        self._cur_first = 0
        self._cur_j0 = 0
        self._used = 0
        self._max_closed = 0.0
        self._depth_cap = UNREACHABLE  # the most stages the closed ones allow (1F1B in-flight memory)
        self._doomed = False
        self._split: SplitTables = sc.split(1, 1, False)
        self._budget = sc.max_devices
        self._log_r = math.log2(self.replicas or 1) / 8.0
        self._log_m = math.log2(self.micro_batches or 1) / 8.0
        self._advance_setup()
        if self.random_setup and self.np_random.random() < self.random_setup:
            while self._decision < BLOCK:  # draw the open setup decisions uniformly among the allowed values
                self._setup_step(int(self.np_random.choice(np.flatnonzero(self._mask))))
        return self._observe(), {"scenario": problem.name, "granularity": gran}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._sc is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        info: dict[str, Any] = {}
        mask = self._mask
        if not (0 <= a < N_ACTIONS and mask[a]):
            a = _nearest(mask, a)
            info["invalid_action"] = True
        if self._decision == BLOCK:
            done = self._block_step(a)
        else:
            self._setup_step(a)
            done = False
        if done:
            return self._finish(info)
        obs = self._observe()
        info["doomed"] = self._doomed
        if self._stuck:
            info["stuck"] = True
        return obs, 0.0, False, False, info

    def action_masks(self) -> np.ndarray:
        """Valid actions now (sb3-contrib ``MaskablePPO`` reads this); never all False."""
        return self._mask.copy()

    # -- setup checks -----------------------------------------------------------------
    def _check_fixed(self, sc: ScenarioTables, fixed: dict[str, Any]) -> None:
        b = fixed["techniques"]
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < len(TECHNIQUE_BUNDLES)):
            raise ValueError(f"techniques must be a bundle index in [0, {len(TECHNIQUE_BUNDLES) - 1}], got {b!r}")
        if b and not self.techniques:
            raise ValueError("techniques: this env has no techniques decision; make it with techniques=True")
        r, m = fixed["replicas"], fixed["micro_batches"]
        for name, v in (("replicas", r), ("micro_batches", m)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if sc.batch % ((r or 1) * (m or 1)):
            raise ValueError(f"replicas x micro_batches = {r or 1} x {m or 1} must divide the batch ({sc.batch})")
        if r is not None and r > sc.max_devices:
            raise ValueError(f"replicas = {r} exceeds the {sc.max_devices} devices of scenario {sc.problem.name!r}")

    # -- setup decisions ---------------------------------------------------------------
    def _setup_step(self, a: int) -> None:
        if self._decision == 0:
            self.replicas = COUNT_MENU[a]
            self._log_r = a / 8.0
        elif self._decision == 1:
            self.micro_batches = COUNT_MENU[a]
            self._log_m = a / 8.0
        elif self._decision == 2:
            self.recompute = a == 1
        else:
            self.bundle = a
        self._advance_setup()

    def _advance_setup(self) -> None:
        """Move to the next undecided setup decision, or to the blocks once all are known."""
        sc = self._sc
        assert sc is not None
        self._stuck = False
        if self.replicas is None:
            self._decision = 0
            budget = sc.max_devices
            self._set_mask([sc.batch % v == 0 and v * sc.tps[0] <= budget for v in COUNT_MENU], replicas=COUNT_MENU)
            return
        if self.micro_batches is None:
            self._decision = 1
            per = sc.batch // self.replicas
            self._set_mask([per % v == 0 for v in COUNT_MENU], micro_batches=COUNT_MENU)
            return
        if self.recompute is None:
            self._decision = 2
            self._set_mask([k < 2 for k in range(N_ACTIONS)], recompute=(False, True))
            return
        if self.bundle is None:
            self._decision = 3
            n = len(TECHNIQUE_BUNDLES)
            self._set_mask([k < n for k in range(N_ACTIONS)], techniques=tuple(range(n)))
            return
        self._decision = BLOCK
        self._split = sc.split(self.replicas, self.micro_batches, bool(self.recompute), self.bundle)
        self._budget = sc.max_devices // self.replicas
        self._block_mask()

    def _set_mask(self, valid: list[bool], **choice: Sequence[Any]) -> None:
        """Mask of a setup decision: ``valid`` values whose memory can fit (unless none can).

        ``choice`` names the decision and its value per action. A value is kept
        when some completion of the setup (the other undecided values) passes
        :meth:`_split_fits`; when none does, every valid value stays allowed and
        the episode is doomed from here.
        """
        ((name, values),) = choice.items()
        mask = np.array(valid, dtype=bool)
        fits = mask.copy()
        for a in np.flatnonzero(mask):
            fits[a] = self._setup_fits(**{name: values[int(a)]})
        if fits.any():
            mask = fits
        else:
            self._doomed = True
        if not mask.any():  # cannot happen for setup (value 1 always divides); kept as a guard
            mask[0] = True
            self._stuck = True
        self._mask = mask

    def _setup_fits(self, **value: Any) -> bool:
        """Whether some completion of the setup with ``value`` passes :meth:`_split_fits`.

        Undecided values are tried from the most memory-friendly (most
        micro-batches, recompute on) so the first try usually answers.
        """
        sc = self._sc
        assert sc is not None
        r = value.get("replicas", self.replicas)
        m = value.get("micro_batches", self.micro_batches)
        rc = value.get("recompute", self.recompute)
        b = value.get("techniques", self.bundle)
        per = sc.batch // r
        ms = [m] if m is not None else [v for v in reversed(COUNT_MENU) if per % v == 0]
        rcs = [rc] if rc is not None else ([True, False] if sc.train else [False])
        bs = [b] if b is not None else list(range(len(TECHNIQUE_BUNDLES)))
        return any(self._split_fits(sc.split(r, mb, c, k), sc.max_devices // r) for mb in ms for c in rcs for k in bs)

    @staticmethod
    def _split_fits(sp: SplitTables, budget: int) -> bool:
        """Whether some plan of at most ``budget`` devices holds every block within memory."""
        return sp.min_devices[0] <= budget

    # -- block decisions ------------------------------------------------------------------
    def _block_mask(self) -> None:
        """Allowed block actions: those after which some completion still fits memory on the devices left.

        Keeping block ``j`` needs the open stage to reach it; then the stage may
        grow up to its reach ``k`` and the blocks after ``k`` need
        ``min_devices[k + 1]`` of the devices left. A cut closes the open stage
        before block ``j``, which must fit as a stage with stages after it, and
        its new stage of TP ``t`` needs ``t + min_devices[reach + 1]`` of the
        devices (see :class:`._tables.SplitTables`).
        """
        sc, sp, j = self._sc, self._split, self._block
        assert sc is not None
        mask = np.zeros(N_ACTIONS, dtype=bool)
        room = self._budget - self._used
        md = sp.min_devices
        ms, c = sp.min_stages, len(self._stages)  # c: the open stage's index
        closable, cap = True, self._depth_cap  # the open stage may end before block j (then stages follow it)
        if self._cur_t:
            k = sp.reach[self._cur_t][self._cur_j0]
            mask[KEEP] = k >= j and md[k + 1] <= room and c + 1 + ms[k + 1] <= cap
            # a cut makes c + 2 stages at least, and every stage before keeps more micro-batches in flight
            cap = min(cap, c + self._most_kept(j - 1))
            closable = sp.reach_mid[self._cur_t][self._cur_j0] >= j - 1 and c + 2 <= cap
        opened = c + 1 if self._cur_t else 0  # the index of the stage a cut opens
        for t in sc.tps if closable else ():
            k = sp.reach[t][j]
            if k >= j and t + md[k + 1] <= room and opened + 1 + ms[k + 1] <= cap:
                mask[1 + TP_MENU.index(t)] = True
        self._stuck = not mask.any()
        if self._stuck:
            self._doomed = True
            fits = [t for t in sc.tps if t <= room]
            if fits:  # the widest stage the devices allow relieves memory most
                mask[1 + TP_MENU.index(fits[-1])] = True
            elif self._cur_t:
                mask[KEEP] = True
            else:  # no stage yet and no devices: cannot happen (replicas leave one group); guard anyway
                mask[1 + TP_MENU.index(sc.tps[0])] = True
        self._mask = mask

    def _block_step(self, a: int) -> bool:
        sc = self._sc
        assert sc is not None
        j = self._block
        if a != KEEP:
            self._close(j - 1)
            t = TP_MENU[a - 1]
            self._cur_t, self._cur_lo, self._cur_first, self._cur_j0 = t, sc.lo[j], sc.starts[j], j
            self._used += t
        self._block = j + 1
        if self._block == sc.n_blocks:
            self._close(j)
            return True
        self._block_mask()
        return False

    def _most_kept(self, last_block: int) -> int:
        """How many micro-batches the open stage, ending at ``last_block``, can keep in flight within memory.

        A 1F1B stage ``i`` of ``p`` keeps ``min(m, p - i)``: so stage ``i`` caps
        the pipeline at ``i + most_kept`` stages when that is below ``m``
        (:data:`UNREACHABLE` when it holds all ``m``, or for inference and GPipe,
        whose in-flight count does not grow with the depth).
        """
        sc, m = self._sc, int(self.micro_batches or 1)
        assert sc is not None
        st = self._split.stages[self._cur_t]
        if st.flight is None or m == 1 or self.schedule != Schedule.ONE_F_ONE_B:
            return UNREACHABLE
        lo, hi = self._cur_lo, sc.hi[last_block]
        per = st.flight[hi] - st.flight[lo]
        spare = sc.limit - st.need(lo, hi)
        if per <= 0 or spare >= (m - 1) * per:
            return UNREACHABLE
        return 1 + max(0, int(spare // per))

    def _close(self, last_block: int) -> None:
        if not self._cur_t or last_block < 0:
            return
        sc = self._sc
        assert sc is not None
        self._depth_cap = min(self._depth_cap, len(self._stages) + self._most_kept(last_block))
        self._stages.append((self._cur_first, sc.ends[last_block], self._cur_t))
        time = self._split.stages[self._cur_t].time
        stage_time = time[sc.hi[last_block]] - time[self._cur_lo]
        self._max_closed = max(self._max_closed, stage_time)

    # -- end of episode -----------------------------------------------------------------
    def _finish(self, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict]:
        sc = self._sc
        assert sc is not None
        plan = contiguous_plan(
            self._stages,
            micro_batches=int(self.micro_batches or 1),
            replicas=int(self.replicas or 1),
            granularity=sc.granularity,
            schedule=self.schedule,
            recompute=bool(self.recompute),
        )
        if self.bundle:
            plan = bundle_plan(plan, self.bundle)
        # the evaluator directly: Problem.evaluate would re-walk the graph to check it is layered
        evaluation = self._problem.score(plan, sc.ev.evaluate(plan))
        r = episode_end(self._problem, evaluation, sc.reference, self._doomed, info)
        self._mask = np.ones(N_ACTIONS, dtype=bool)
        self._stuck = False
        return self._observe(), r, True, False, info

    # -- observation ------------------------------------------------------------------------
    def _observe(self) -> np.ndarray:
        """The observation (layout: :func:`~paratune.envs.mapping_feature_names`).

        The hot path of the env: block features and context are precomputed and
        clipped per scenario, the state entries are clipped here as plain floats
        (``clip`` maps nan to 0), so no numpy pass over the vector is needed.
        """
        sc, sp = self._sc, self._split
        assert sc is not None
        j = self._block
        d = self._decision
        budget = self._budget if d == BLOCK else sc.max_devices
        used = self._used
        total = sp.total_time
        limit = sc.limit
        cur_t = self._cur_t
        left = budget - used
        if cur_t and j > 0:
            hi = sc.hi[j - 1]
            st = sp.stages[cur_t]
            need = st.need(self._cur_lo, hi)
            stage_time = st.time[hi] - st.time[self._cur_lo]
            balanced = total * cur_t / budget
            # the open stage's share of the work left when it opened, against its devices' share (balanced-pp's rule)
            j0 = self._cur_j0
            fair = sp.rem_time[j0] * cur_t / max(1, left + cur_t)
            share = clip((sp.rem_time[j0] - sp.rem_time[j]) / fair) if fair > 0 else 0.0
            reach = clip((sp.reach[cur_t][j0] - j + 1) / max(1, sc.n_blocks - j)) if j < sc.n_blocks else 0.0
        else:
            need = stage_time = share = reach = 0.0
            balanced = 1.0
        md = sp.min_devices[min(j, sc.n_blocks)] if d == BLOCK else 0
        tight = clip(md / left) if left > 0 else (FEATURE_MAX if md > 0 else 0.0)
        cap = left * limit + (limit - need) * cur_t
        rem = sp.rem_need1[j]
        state = (
            j / sc.n_blocks,
            sp.rem_time[j],
            sp.rem_weight[j],
            clip(rem / cap) if cap > 0 else (FEATURE_MAX if rem > 0 else 0.0),
            used / budget,
            left / budget if left > 0 else 0.0,
            (used % sc.per_node) / sc.per_node,
            cur_t / 16.0,
            clip(need / limit),
            clip(stage_time / total),
            clip(stage_time / balanced),
            clip(self._max_closed / total),
            share,
            reach,
            tight,
            min(len(self._stages), 32) / 32.0,
            1.0 if self._doomed else 0.0,
            self._log_r,
            self._log_m,
            1.0 if self.recompute else 0.0,
            1.0 if d == 0 else 0.0,
            1.0 if d == 1 else 0.0,
            1.0 if d == 2 else 0.0,
            1.0 if d == BLOCK else 0.0,
        )
        out = np.empty(self._obs_size, dtype=np.float32)
        out[:_NB] = sp.block_features[j : j + _ROWS].ravel()
        out[_NB:_NS] = state
        out[_NS:_NC] = sc.context
        out[_NC:_NX] = self._cut_features(left) if d == BLOCK and j < sc.n_blocks else 0.0
        out[_NX:MAPPING_OBS_SIZE] = self._mask
        if self.techniques:
            out[MAPPING_OBS_SIZE:] = 0.0
            out[MAPPING_OBS_SIZE] = 1.0 if d == 3 else 0.0
            if self.bundle is not None:
                out[MAPPING_OBS_SIZE + 1 + self.bundle] = 1.0
        return out

    def _cut_features(self, left: int) -> list[float]:
        """:data:`CUT_FEATURES` of each TP degree at the current block (see there).

        The uniform time of degree ``t``: the blocks left run on ``n = left // t``
        stages of TP ``t`` (at most one per block), each taking ``1 / n`` of their
        time at TP ``t``, so a 1F1B or inference pipeline of ``m`` micro-batches
        takes ``(m + n - 1) / n`` times that time. A rough model (no balance,
        memory or p2p), given relative to the best degree's so that it reads the
        same on any model: 1 for the best, more for the others.
        """
        sc, sp, j = self._sc, self._split, self._block
        assert sc is not None
        md, rest = sp.min_devices, sc.n_blocks - j
        width = len(CUT_FEATURES)
        out = [0.0] * (len(TP_MENU) * width)
        if left <= 0:
            return out
        m = int(self.micro_batches or 1)
        lo, hi = sc.lo[j], sc.hi[-1]
        uniform: dict[int, float] = {}
        for i, t in enumerate(TP_MENU):
            reach = sp.reach.get(t)
            if reach is None or t > left or reach[j] < j:
                continue
            k = reach[j]
            out[width * i : width * i + 3] = [(k - j + 1) / rest, clip((t + md[k + 1]) / left), t / left]
            n = min(left // t, rest)
            st = sp.stages[t]
            uniform[i] = (st.time[hi] - st.time[lo]) * (m + n - 1) / (n * m)
        if uniform:
            fastest = min(uniform.values())
            for i, u in uniform.items():
                out[width * i + 3] = clip(u / fastest) if fastest > 0 else 1.0
        return out


def bundle_plan(plan: Plan, bundle: int) -> Plan:
    """``plan`` with the techniques of bundle ``bundle``, leaving out what does not apply to its layout.

    Sequence parallelism needs a stage with TP > 1, selective recomputation a
    stage that does not recompute fully (the tuners' ``with_techniques`` repairs
    the same way; the env does not import the tuners).
    """
    fields = dict(TECHNIQUE_BUNDLES[bundle][1])
    if fields.get("sequence_parallel") and all(st.tp == 1 for st in plan.stages):
        fields["sequence_parallel"] = False
    if fields.get("selective_recompute") and all(st.recompute for st in plan.stages):
        fields["selective_recompute"] = False
    return dataclasses.replace(plan, **fields)  # type: ignore[arg-type]


def bundle_of(plan: Plan) -> int | None:
    """The bundle index whose techniques ``plan`` carries (as :func:`bundle_plan` puts them), else None."""
    used = plan.techniques()
    if set(used) - _BUNDLED:
        return None
    plain = dataclasses.replace(plan, **{k: TECHNIQUE_DEFAULTS[k] for k in used})
    for k in range(len(TECHNIQUE_BUNDLES)):
        if bundle_plan(plain, k).techniques() == used:
            return k
    return None


#: The plan fields the bundles set.
_BUNDLED = frozenset(k for _, fields in TECHNIQUE_BUNDLES for k in fields)


def _nearest(mask: np.ndarray, a: int) -> int:
    """The valid action whose index is nearest to ``a`` (ties: the lower index)."""
    valid = np.flatnonzero(mask)
    return int(valid[np.argmin(np.abs(valid - a))])
