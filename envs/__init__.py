"""Gymnasium environments: ``paratune/Mapping-v0``, ``paratune/Placement-v0`` and ``paratune/Serving-v0``.

Importing this package registers the ids with gymnasium::

    import gymnasium
    import paratune.envs  # registers the ids

    env = gymnasium.make("paratune/Mapping-v0")  # the default small scenario pool
    env = gymnasium.make("paratune/Mapping-v0", scenarios=[problem, ...], granularity="layer")
    obs, info = env.reset(seed=0, options={"scenario": problem})  # or a pool name
    mask = env.unwrapped.action_masks()  # sb3-contrib MaskablePPO convention

* ``Mapping-v0`` (:mod:`._mapping`): layered graphs; setup decisions (replicas,
  micro-batches, recompute), then one keep-or-cut-with-TP decision per block;
  priced by the analytic evaluator.
* ``Placement-v0`` (:mod:`._placement`): any DAG; a TP degree, then one device
  group per forward task; priced by the discrete-event simulator.
* ``Serving-v0`` (:mod:`._serving`): a serving deployment (mode, TP, PP, batch cap,
  token budget per pool) for a traffic and SLO; priced by the steady-state serving
  model; its own reward (tokens/s per GPU against the engine defaults) and scenarios
  (:class:`~paratune.search._serve.ServingProblem`).

Both have a ``Discrete(N_ACTIONS)`` action space and a ``Box(0, FEATURE_MAX)``
float32 observation of fixed size whatever the model or platform (layout
versioned by :data:`OBS_SCHEMA_VERSION`, names from
:func:`mapping_feature_names` / :func:`placement_feature_names`). Rewards: 0 per
step, ``log(reference / cost)`` at the end against the ``megatron`` heuristic,
a bounded penalty for infeasible plans (:mod:`._reward`). Episodes end by
construction (one decision per block or task), so no time limit is registered.
Bump an id's version when its reward or observation meaning changes.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from ._features import (
    FEATURE_MAX,
    N_ACTIONS,
    OBS_SCHEMA_VERSION,
    TP_MENU,
    mapping_feature_names,
    placement_feature_names,
)
from ._mapping import MappingEnv
from ._placement import PlacementEnv
from ._pool import DEFAULT_POOL, load_pool
from ._reward import REWARD_CLIP, Reference, reference, reward

#: Every environment id this package registers.
#: The environments whose episodes are plan problems (a scenario pool of :class:`~paratune.problem.Problem`).
PLAN_ENV_IDS = ("paratune/Mapping-v0", "paratune/Placement-v0")
ENV_IDS = (*PLAN_ENV_IDS, "paratune/Serving-v0")

_ENTRIES = (
    "paratune.envs._mapping:MappingEnv",
    "paratune.envs._placement:PlacementEnv",
    "paratune.envs._serving:ServingEnv",
)
for _id, _entry in zip(ENV_IDS, _ENTRIES, strict=True):
    if _id not in registry:
        register(id=_id, entry_point=_entry, disable_env_checker=False)

__all__ = [
    "DEFAULT_POOL",
    "ENV_IDS",
    "FEATURE_MAX",
    "N_ACTIONS",
    "OBS_SCHEMA_VERSION",
    "PLAN_ENV_IDS",
    "REWARD_CLIP",
    "TP_MENU",
    "MappingEnv",
    "PlacementEnv",
    "Reference",
    "load_pool",
    "mapping_feature_names",
    "placement_feature_names",
    "reference",
    "reward",
]
