"""``paratune/Placement-v0``: place any DAG's tasks on device groups, priced by the discrete-event simulator.

For graphs the analytic evaluator cannot price (op-granularity graphs whose
edges skip around, ``hf:`` imports) and for layered graphs alike. An episode:

1. **TP decision** (skipped when ``tp`` is fixed by the constructor or
   ``reset(options={"tp": ...})``): action ``1 + i`` makes every device group
   ``TP_MENU[i]`` devices wide (action 0 is never valid here). Masked to degrees
   dividing the heads, within a node, with room for the replicas.
2. **Task decisions**, one per forward task in the graph's deterministic
   topological order: action ``g`` puts the task on group ``g`` = devices
   ``[g x tp, (g + 1) x tp)``. Groups are interchangeable up to topology, so a
   task may open only the next unused group (``g <= groups used``): this removes
   the symmetric duplicates and keeps the plan's devices contiguous. Masks also
   drop groups past the devices a replica has and groups whose memory (weights,
   training state and KV cache of their tasks, divided by the TP degree: a lower
   bound) would exceed the limit. Backward tasks follow their forward task
   (``id + ".bwd"``), other non-forward tasks (optimizer) the last forward task of
   their layer.

Replicas and micro-batches are options (constructor or reset; default 1 and 1),
not decisions. The episode ends after the last task: the task plan
(``Stage(tp, devices, tasks=...)`` per used group, in group order) is simulated
(``problem.simulator(granularity)``) and scored; reward, reference and the
infeasibility penalty are those of :mod:`._reward`. When no group is allowed the
least-loaded structurally allowed group is, ``info["stuck"]`` and
``info["doomed"]`` say so, and an invalid action is replaced by the nearest
allowed one (``info["invalid_action"]``).

The granularity is chosen through ``reset(options={"granularity": ...})``
(default: the constructor's ``granularity``, else the scenario's own).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..costmodel import Plan, Stage
from ..costmodel._memory import OPTIMIZER_STATE_BYTES_PER_PARAM
from ..costmodel._pricing import p2p_time
from ..graphs import DTYPE_BYTES, Phase
from ..problem import Problem
from ._features import (
    FEATURE_MAX,
    GROUP_FEATURES,
    LOOKAHEAD,
    N_ACTIONS,
    PLACEMENT_OBS_SIZE,
    TASK_FEATURES,
    TP_MENU,
    clip_array,
    context_features,
)
from ._mapping import _nearest
from ._pool import Scenarios, load_pool, pick_scenario, problem_key, reset_options
from ._reward import Reference, episode_end, reference


class PlacementTables:
    """Per scenario, granularity and batch split: the decision tasks, their costs and inputs."""

    def __init__(self, problem: Problem, granularity: str, replicas: int, micro_batches: int) -> None:
        graph = problem.graph(granularity)
        self.problem, self.granularity = problem, granularity
        self.sim = sim = problem.simulator(granularity)
        tasks = graph.tasks
        self.ids = [t.id for t in tasks]
        fwd = [i for i, t in enumerate(tasks) if t.step == "forward"]
        if not fwd:
            raise ValueError(f"scenario {problem.name!r}: the graph has no forward task to place")
        self.fwd = fwd
        self.n = len(fwd)
        pos = {i: k for k, i in enumerate(fwd)}
        index = {tid: i for i, tid in enumerate(self.ids)}
        last_of_layer: dict[int, int] = {}
        for k, i in enumerate(fwd):
            last_of_layer[tasks[i].layer] = k
        #: For every task: the decision (forward task position) whose group it joins.
        self.follow = []
        for i, t in enumerate(tasks):
            if i in pos:
                self.follow.append(pos[i])
            elif t.id.endswith(".bwd") and index.get(t.id[:-4]) in pos:
                self.follow.append(pos[index[t.id[:-4]]])
            else:
                self.follow.append(last_of_layer.get(t.layer, 0))
        self.max_devices = problem.max_devices
        self.limit = problem.memory_limit_bytes
        self.train = problem.phase == Phase.TRAIN
        meta = graph.meta
        self.batch = meta.batch
        allowed = set(problem.tp_degrees())
        self.tps = [t for t in TP_MENU if t in allowed and t * replicas <= self.max_devices] or [1]
        self.replicas, self.micro_batches = replicas, micro_batches
        scale = 1.0 / (replicas * micro_batches)
        times = np.array(sim.kernels(1, scale)[1])
        ftime = times[fwd]
        if self.train:  # backward work joins its forward task's group
            for i, k in enumerate(self.follow):
                if i not in pos:
                    ftime[k] += times[i]
        self.time1 = ftime
        self.loads = {t: self._loads(t, scale, pos) for t in self.tps}
        params = np.array([tasks[i].param_bytes for i in fwd])
        if self.train:
            mem = params * (1.0 + OPTIMIZER_STATE_BYTES_PER_PARAM / DTYPE_BYTES[meta.dtype])
        else:
            kv_len = meta.seq if meta.phase == Phase.PREFILL else meta.context + 1
            kv = np.array([tasks[i].kv_bytes_per_token for i in fwd])
            mem = params + kv * (meta.batch / replicas) * kv_len
        self.mem1 = mem.tolist()  # per-device bytes at TP 1; at TP t a lower bound is mem / t
        #: Forward inputs of each decision task: (decision position of the producer, bytes).
        self.inputs: list[list[tuple[int, float]]] = [[] for _ in fwd]
        for u, v, nbytes in graph.edges():
            iu, iv = index[u], index[v]
            if iu in pos and iv in pos and pos[iu] < pos[iv]:
                self.inputs[pos[iv]].append((pos[iu], nbytes))
        total_time = max(float(ftime.sum()), 1e-30)
        mean_time = total_time / self.n
        total_params = max(float(params.sum()), 1.0)
        alpha, bw = sim.platform.p2p_terms("mesh" if sim.platform.topology == "mesh" else "intra")
        out_time = np.array([p2p_time(tasks[i].output_bytes * scale, alpha, bw) for i in fwd])
        n_layers = max(meta.n_layers, 1)
        feats = np.zeros((self.n + LOOKAHEAD + 1, len(TASK_FEATURES)))  # zero rows past the end
        feats[: self.n] = np.stack(
            [
                np.ones(self.n),
                ftime / total_time,
                params / total_params,
                mem / self.limit,
                out_time / mean_time,
                np.array([(tasks[i].layer + 1) / (n_layers + 1) for i in fwd]),
                np.array([len(x) / 4.0 for x in self.inputs]),
            ],
            axis=1,
        )
        self.task_features = clip_array(feats)
        self.rem_mem1 = np.concatenate([np.cumsum(mem[::-1])[::-1], [0.0]]).tolist()
        self.reference: Reference = reference(problem)
        self.context = clip_array(np.array(context_features(problem, total_need=float(mem.sum()), kv_len=sim.kv_len)))

    def _loads(self, t: int, scale: float, pos: dict[int, int]) -> list[float]:
        """Kernel seconds of each decision task (its backward included) on a group of ``t``, as fractions."""
        times = self.sim.kernels(t, scale)[1]
        out = [0.0] * self.n
        for i, k in enumerate(self.follow):
            if i in pos or self.train:
                out[k] += times[i]
        total = max(sum(out), 1e-30)
        return [x / total for x in out]


class PlacementEnv(gym.Env[np.ndarray, np.int64]):
    """Task-by-task placement of any DAG on device groups (see the module docstring).

    Args:
        scenarios: the pool (see :func:`~paratune.envs._pool.load_pool`); None: the default small pool.
        granularity: graph granularity of every episode (None: each scenario's own).
        tp: fix the groups' TP degree (None: the first action decides).
        replicas, micro_batches: the batch split of every plan.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium types it as an attribute)

    def __init__(
        self,
        scenarios: Scenarios = None,
        *,
        granularity: str | None = None,
        tp: int | None = None,
        replicas: int = 1,
        micro_batches: int = 1,
    ) -> None:
        self.pool = load_pool(scenarios)
        self.granularity = granularity
        self.fixed: dict[str, Any] = {"tp": tp, "replicas": replicas, "micro_batches": micro_batches}
        self.action_space = spaces.Discrete(N_ACTIONS)
        self.observation_space = spaces.Box(0.0, FEATURE_MAX, shape=(PLACEMENT_OBS_SIZE,), dtype=np.float32)
        self._tables: dict[tuple[str, str, int, int], PlacementTables] = {}
        self._mask = np.zeros(N_ACTIONS, dtype=bool)
        self._pt: PlacementTables | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        opts = reset_options(options, ("scenario", "granularity", "tp", "replicas", "micro_batches"))
        problem = pick_scenario(opts.get("scenario"), self.pool, self.np_random)
        gran = opts.get("granularity") or self.granularity or problem.granularity
        r = int(opts.get("replicas", self.fixed["replicas"]))
        m = int(opts.get("micro_batches", self.fixed["micro_batches"]))
        if r < 1 or m < 1 or problem.batch % (r * m) or r > problem.max_devices:
            raise ValueError(
                f"replicas x micro_batches = {r} x {m} must be positive, divide the batch ({problem.batch}) "
                f"and leave one device per replica ({problem.max_devices} devices)"
            )
        key = (problem_key(problem), gran, r, m)
        pt = self._tables.get(key)
        if pt is None:
            pt = self._tables[key] = PlacementTables(problem, gran, r, m)
        self._pt, self._problem = pt, problem
        tp = opts.get("tp", self.fixed["tp"])
        if tp is not None and tp not in pt.tps:
            raise ValueError(f"tp = {tp!r} is not allowed for scenario {problem.name!r}; allowed: {pt.tps}")
        self._tp = 0
        self._task = 0
        self._used = 0
        self._group_of: list[int] = []
        self._doomed = False
        self._stuck = False
        if tp is not None:
            self._start_tasks(int(tp))
        else:
            mask = np.zeros(N_ACTIONS, dtype=bool)
            for t in pt.tps:
                mask[1 + TP_MENU.index(t)] = True
            self._mask = mask
        return self._observe(), {"scenario": problem.name, "granularity": gran}

    def _start_tasks(self, tp: int) -> None:
        pt = self._pt
        assert pt is not None
        self._tp = tp
        self._n_groups = max(1, min(N_ACTIONS, (pt.max_devices // pt.replicas) // tp))
        self._mem = [0.0] * N_ACTIONS
        self._load = [0.0] * N_ACTIONS
        self._used = 0  # groups opened so far (groups 0 .. used-1)
        self._task_mask()

    def _task_mask(self) -> None:
        pt = self._pt
        assert pt is not None
        k, t = self._task, self._tp
        need = pt.mem1[k] / t
        top = min(self._n_groups, self._used + 1)
        mask = np.zeros(N_ACTIONS, dtype=bool)
        for g in range(top):
            mask[g] = self._mem[g] + need <= pt.limit
        self._stuck = not mask.any()
        if self._stuck:
            self._doomed = True
            mask[int(np.argmin(self._mem[:top]))] = True
        self._mask = mask

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        pt = self._pt
        if pt is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        info: dict[str, Any] = {}
        if not (0 <= a < N_ACTIONS and self._mask[a]):
            a = _nearest(self._mask, a)
            info["invalid_action"] = True
        if not self._tp:
            self._start_tasks(TP_MENU[a - 1])
            return self._observe(), 0.0, False, False, info
        k = self._task
        self._group_of.append(a)
        self._mem[a] += pt.mem1[k] / self._tp
        self._load[a] += pt.loads[self._tp][k]
        self._used = max(self._used, a + 1)
        self._task = k + 1
        if self._task == pt.n:
            return self._finish(info)
        self._task_mask()
        if not self._doomed:
            cap = sum(pt.limit - x for x in self._mem[: self._n_groups])
            self._doomed = pt.rem_mem1[self._task] / self._tp > cap
        info["doomed"] = self._doomed
        if self._stuck:
            info["stuck"] = True
        return self._observe(), 0.0, False, False, info

    def action_masks(self) -> np.ndarray:
        """Valid actions now (sb3-contrib ``MaskablePPO`` reads this); never all False."""
        return self._mask.copy()

    def _finish(self, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict]:
        pt = self._pt
        assert pt is not None
        t = self._tp
        members: list[list[str]] = [[] for _ in range(self._used)]
        for i, k in enumerate(pt.follow):
            members[self._group_of[k]].append(pt.ids[i])
        stages = tuple(
            Stage(t, tuple(range(g * t, (g + 1) * t)), tasks=tuple(ids)) for g, ids in enumerate(members) if ids
        )
        plan = Plan(stages, granularity=pt.granularity, micro_batches=pt.micro_batches, replicas=pt.replicas)
        metrics = pt.sim.evaluate(plan)
        evaluation = self._problem.score(plan, metrics)
        r = episode_end(self._problem, evaluation, pt.reference, self._doomed, info)
        self._mask = np.ones(N_ACTIONS, dtype=bool)
        self._stuck = False
        return self._observe(), r, True, False, info

    def _observe(self) -> np.ndarray:
        pt = self._pt
        assert pt is not None
        k = min(self._task, pt.n)
        tasks = pt.task_features[k : k + LOOKAHEAD + 1].ravel()
        inputs = [0.0] * N_ACTIONS
        groups = [0.0] * (N_ACTIONS * len(GROUP_FEATURES))
        if self._tp:
            if k < pt.n:
                total = sum(b for _, b in pt.inputs[k]) or 1.0
                for src, b in pt.inputs[k]:
                    inputs[self._group_of[src]] += b / total
            for g in range(self._used):
                groups[3 * g : 3 * g + 3] = [1.0, self._mem[g] / pt.limit, self._load[g]]
        t = self._tp or 1
        state = [
            k / pt.n,
            self._used * t * pt.replicas / pt.max_devices,
            self._tp / 16.0,
            self._used / N_ACTIONS,
            1.0 if self._doomed else 0.0,
            math.log2(pt.replicas) / 8.0,
            math.log2(pt.micro_batches) / 8.0,
            0.0 if self._tp else 1.0,
            1.0 if self._tp else 0.0,
        ]
        out = np.concatenate(
            [tasks, np.array(inputs + groups + state, dtype=np.float32), pt.context, self._mask.astype(np.float32)]
        )
        np.nan_to_num(out, copy=False, nan=0.0, posinf=FEATURE_MAX, neginf=0.0)
        return np.clip(out, 0.0, FEATURE_MAX, out=out)
