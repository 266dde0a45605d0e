"""Platforms, plans and the cost model (analytic evaluator and discrete-event simulator).

Light on purpose: importing it never imports torch, so workers stay fast.
"""

from __future__ import annotations

from ._analytic import AnalyticEvaluator
from ._batch import BatchResult, PlanBatch, random_plans
from ._metrics import Metrics
from ._plan import SCHEDULES, TECHNIQUE_DEFAULTS, ZERO_STAGES, Plan, Schedule, Stage
from ._platform import Device, Link, Platform, get_platform, platform_from_dict, platforms_dir, preset_names
from ._pricing import KernelPricer, OpTable, allgather_time, allreduce_time, group_link, p2p_time, pair_link
from ._profile import Efficiency, LinkCalibration, Profile, load_profile
from ._simulator import SimulationResult, Simulator, TimelineEvent
from ._toy import toy_platform

__all__ = [
    "SCHEDULES",
    "TECHNIQUE_DEFAULTS",
    "ZERO_STAGES",
    "AnalyticEvaluator",
    "BatchResult",
    "Device",
    "Efficiency",
    "KernelPricer",
    "Link",
    "LinkCalibration",
    "Metrics",
    "OpTable",
    "Plan",
    "PlanBatch",
    "Platform",
    "Profile",
    "Schedule",
    "SimulationResult",
    "Simulator",
    "Stage",
    "TimelineEvent",
    "allgather_time",
    "allreduce_time",
    "get_platform",
    "group_link",
    "load_profile",
    "p2p_time",
    "pair_link",
    "platform_from_dict",
    "platforms_dir",
    "preset_names",
    "random_plans",
    "toy_platform",
]
