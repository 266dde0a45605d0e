"""Observation features shared by the environments: fixed size, normalised, finite.

One policy must run on any model and platform, so no feature grows with the
model: a block (or task) is described by its share of the model's totals and by
its cost relative to the device (memory capacity, mean block time), the
platform by ratios and logarithms, the partial plan by fractions. Every value is
clipped into ``[0, FEATURE_MAX]`` and ``nan``/``inf`` are replaced before a
vector leaves this module, so a ``Box(0, FEATURE_MAX)`` holds every observation.

The layout is versioned by :data:`OBS_SCHEMA_VERSION`: a saved policy records it
and refuses to run on another layout. Bump it whenever a feature is added,
removed, reordered or changes meaning (and bump the env id's version too).
The names of every position are listed by :func:`mapping_feature_names` and
:func:`placement_feature_names` (the same order as the vectors).
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import Problem

#: Version of both observation layouts (Mapping-v0 and Placement-v0) without the techniques decision.
OBS_SCHEMA_VERSION = 3

#: Version of Mapping-v0's layout with the techniques decision (``techniques=True``): schema 3's
#: vector followed by :data:`TECHNIQUE_FEATURES`.
TECHNIQUES_OBS_SCHEMA_VERSION = 4

#: Upper bound of every feature (lower bound 0): ratios are clipped here.
FEATURE_MAX = 5.0

#: Blocks (or tasks) after the current one that the observation shows.
LOOKAHEAD = 4

#: TP degrees a stage or device group may take: the action menu (fixed across models).
#: Degrees a model allows but the menu lacks (5 for GPT-2 XL's 25 heads) are not reachable.
TP_MENU: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)

#: Size of both environments' Discrete action space.
N_ACTIONS = 1 + len(TP_MENU)

PHASE_ORDER = ("prefill", "decode", "train")

BLOCK_FEATURES = (
    "present",
    "time_frac",
    "weight_frac",
    "need_tp1_vs_capacity",
    "need_maxtp_vs_capacity",
    "boundary_time_vs_mean_block",
    "layers_frac",
    "has_embedding_or_head",
)

CONTEXT_FEATURES = (
    "platform_log2_devices_per_node",
    "platform_log2_nodes",
    "platform_log2_max_devices",
    "platform_inter_vs_intra_bandwidth",
    "platform_memory_limit_per_256gib",
    "platform_peak_per_2pflops",
    "platform_memory_bw_per_10tbs",
    "platform_is_mesh",
    "phase_prefill",
    "phase_decode",
    "phase_train",
    "objective_latency",
    "objective_throughput",
    "objective_latency_and_memory",
    "workload_log2_batch",
    "workload_log2_kv_len",
    "model_log10_weight_bytes",
    "model_need_vs_all_devices_capacity",
    "model_log2_heads",
)


#: Mapping-v0's decision kinds, in episode order (one-hot in its state features).
MAPPING_DECISIONS = ("replicas", "micro_batches", "recompute", "block")
#: Mapping-v0's partial-plan state.
MAPPING_STATE_FEATURES = (
    "progress",
    "remaining_time_frac",
    "remaining_weight_frac",
    "remaining_need_vs_capacity_left",
    "devices_used_frac",
    "devices_left_frac",
    "node_offset",
    "stage_tp_per_16",
    "stage_need_vs_capacity",
    "stage_time_frac",
    "stage_time_vs_balanced",
    "max_closed_stage_time_frac",
    "stage_work_vs_fair_share",
    "stage_blocks_left_in_reach_frac",
    "min_devices_left_vs_devices_left",
    "stages_per_32",
    "doomed",
    "log2_replicas_per_8",
    "log2_micro_batches_per_8",
    "recompute",
    *(f"decision_{d}" for d in MAPPING_DECISIONS),
)

#: Per TP degree of the menu, what a cut to it at the current block would give (0 where it is not allowed):
#: the share of the blocks left the new stage can hold within memory, the devices that stage and the fewest
#: for the blocks after it need against the devices left, its own devices against the devices left, and the
#: time of the blocks left mapped uniformly with that degree (see ``MappingEnv._cut_features``) against the
#: best degree's, which tells the policy what TP costs in all-reduces against what pipelining costs in fill
#: and drain at this split.
CUT_FEATURES = ("reach_frac", "devices_needed_vs_left", "devices_vs_left", "uniform_time_vs_best")

#: Length of a Mapping-v0 observation.
MAPPING_OBS_SIZE = (
    (LOOKAHEAD + 1) * len(BLOCK_FEATURES)
    + len(MAPPING_STATE_FEATURES)
    + len(CONTEXT_FEATURES)
    + len(TP_MENU) * len(CUT_FEATURES)
    + N_ACTIONS
)

#: Mapping-v0's technique bundles (``techniques=True``): action ``k`` of the techniques decision puts
#: bundle ``k``'s plan-wide training techniques on the plan. Few on purpose (each is one more setup to
#: learn and to sweep), chosen from what ``benchmarks/training_techniques.py`` shows the best plans use
#: (December 2026, 10 training scenarios: sequence parallelism in 8, overlap in 6, ZeRO-1 + SP + overlap
#: in 4, SP + overlap without ZeRO in 3, ZeRO-3 + overlap in 1, selective recomputation in none):
#: ZeRO-1 + SP + overlap (Megatron-Core's usual setting), ZeRO-3 with prefetch (FSDP), SP + overlap.
#: Interleaving (3 of 10), CP and EP are left to the other tuners (the rl tuner's option
#: ``techniques=search`` puts every combination on its plans).
TECHNIQUE_BUNDLES: tuple[tuple[str, dict[str, object]], ...] = (
    ("none", {}),
    ("zero1_sp_overlap", {"zero": 1, "sequence_parallel": True, "overlap": True}),
    ("zero3_overlap", {"zero": 3, "overlap": True}),
    ("sp_overlap", {"sequence_parallel": True, "overlap": True}),
)

#: Appended to the Mapping-v0 observation when the env has the techniques decision: deciding it now,
#: and the chosen bundle (one-hot, all 0 while undecided).
TECHNIQUE_FEATURES = ("decision_techniques", *(f"bundle_{name}" for name, _ in TECHNIQUE_BUNDLES))

#: Placement-v0's per-task features (the current task and the lookahead).
TASK_FEATURES = (
    "present",
    "time_frac",
    "param_frac",
    "memory_tp1_vs_capacity",
    "output_transfer_vs_mean_task",
    "layer_position",
    "inputs_per_4",
)
#: Placement-v0's per-device-group features.
GROUP_FEATURES = ("used", "memory_vs_capacity", "load_frac")
#: Placement-v0's partial-plan state.
PLACEMENT_STATE_FEATURES = (
    "progress",
    "devices_used_frac",
    "tp_per_16",
    "groups_used_frac",
    "doomed",
    "log2_replicas_per_8",
    "log2_micro_batches_per_8",
    "decision_tp",
    "decision_task",
)
#: Length of a Placement-v0 observation.
PLACEMENT_OBS_SIZE = (
    (LOOKAHEAD + 1) * len(TASK_FEATURES)
    + N_ACTIONS
    + N_ACTIONS * len(GROUP_FEATURES)
    + len(PLACEMENT_STATE_FEATURES)
    + len(CONTEXT_FEATURES)
    + N_ACTIONS
)


def clip(x: float) -> float:
    """``x`` clipped into [0, FEATURE_MAX], 0 for nan (a plain-float helper for the step path)."""
    if x != x:  # nan
        return 0.0
    return 0.0 if x < 0.0 else (FEATURE_MAX if x > FEATURE_MAX else x)


def clip_array(values: np.ndarray) -> np.ndarray:
    """Finite float32 values in [0, FEATURE_MAX]."""
    out = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=FEATURE_MAX, neginf=0.0)
    return np.clip(out, 0.0, FEATURE_MAX).astype(np.float32)


def _log2(x: float, scale: float) -> float:
    return math.log2(max(1.0, x)) / scale


def context_features(problem: Problem, *, total_need: float, kv_len: int) -> list[float]:
    """Platform, workload and model features (:data:`CONTEXT_FEATURES`), constant over an episode.

    ``total_need`` is the model's memory need summed over devices at TP 1 (bytes)
    so the policy sees how tight memory is for the devices it may use.
    """
    plat = problem.resolved_platform
    dev = plat.device
    limit = problem.memory_limit_bytes
    if plat.topology == "mesh" or "inter" not in plat.links:
        bw_ratio = 1.0
    else:
        bw_ratio = plat.links["inter"].bandwidth / max(plat.links["intra"].bandwidth, 1.0)
    kind = problem.resolved_objective
    dtype = problem.graph().meta.dtype
    return [
        _log2(plat.devices_per_node, 5.0),
        _log2(plat.nodes, 6.0),
        _log2(problem.max_devices, 8.0),
        bw_ratio,
        limit / (256 * 1024**3),
        dev.peak(dtype) / 2e15,
        dev.memory_bw / 1e13,
        1.0 if plat.topology == "mesh" else 0.0,
        *(1.0 if problem.phase == p else 0.0 for p in PHASE_ORDER),
        1.0 if not kind.multi and kind.direction == "minimize" else 0.0,
        1.0 if kind.direction == "maximize" else 0.0,
        1.0 if kind.multi else 0.0,
        _log2(problem.batch, 10.0),
        _log2(kv_len, 17.0),
        math.log10(max(1.0, problem.graph().param_bytes)) / 13.0,
        total_need / max(1.0, limit * problem.max_devices),
        _log2(problem.heads, 8.0),
    ]


def one_hot(index: int, size: int) -> list[float]:
    out = [0.0] * size
    out[index] = 1.0
    return out


def mapping_feature_names(techniques: bool = False) -> list[str]:
    """Names of the Mapping-v0 observation, position by position (``techniques``: the env's option)."""
    names = [f"block{k}_{f}" for k in range(LOOKAHEAD + 1) for f in BLOCK_FEATURES]
    names += list(MAPPING_STATE_FEATURES) + list(CONTEXT_FEATURES)
    names += [f"cut_tp{t}_{f}" for t in TP_MENU for f in CUT_FEATURES]
    names += [f"mask_{a}" for a in range(N_ACTIONS)]
    if techniques:
        names += list(TECHNIQUE_FEATURES)
    return names


def mapping_obs_spec(techniques: bool = False) -> tuple[int, int]:
    """(observation schema version, observation size) of Mapping-v0 with or without the techniques decision."""
    if techniques:
        return TECHNIQUES_OBS_SCHEMA_VERSION, MAPPING_OBS_SIZE + len(TECHNIQUE_FEATURES)
    return OBS_SCHEMA_VERSION, MAPPING_OBS_SIZE


def placement_feature_names() -> list[str]:
    """Names of the Placement-v0 observation, position by position."""
    names = [f"task{k}_{f}" for k in range(LOOKAHEAD + 1) for f in TASK_FEATURES]
    names += [f"inputs_from_group{g}" for g in range(N_ACTIONS)]
    names += [f"group{g}_{f}" for g in range(N_ACTIONS) for f in GROUP_FEATURES]
    names += list(PLACEMENT_STATE_FEATURES) + list(CONTEXT_FEATURES)
    names += [f"mask_{a}" for a in range(N_ACTIONS)]
    return names
