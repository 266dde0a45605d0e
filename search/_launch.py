"""Turn a plan into the command-line flags of the engines practitioners run: vLLM and Megatron-LM.

Only what those engines can express is printed; otherwise the reason is given
(e.g. a hybrid plan with different TP degrees per stage has no vLLM or
Megatron-LM equivalent), so nobody launches something other than what was tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..costmodel import Plan, Schedule
from ..graphs import HF_IDS, Phase
from ..problem import Problem


@dataclass(frozen=True)
class LaunchLine:
    """A command for one engine, or ``None`` with the reason it cannot express the plan."""

    engine: str
    command: str | None
    reason: str = ""


def _layer_counts(plan: Plan) -> list[int]:
    return [s.layers[1] - s.layers[0] + 1 for s in plan.stages if s.layers is not None]


def _common_problem(plan: Plan) -> str:
    if not plan.is_layered:
        return "the plan places individual tasks (not layer ranges)"
    tps = {s.tp for s in plan.stages}
    if len(tps) > 1:
        return f"it is a hybrid plan (TP {[s.tp for s in plan.stages]} per stage); both engines use one TP degree"
    return ""


def vllm_line(plan: Plan, problem: Problem) -> LaunchLine:
    """``vllm serve`` flags; uneven stage sizes go through ``VLLM_PP_LAYER_PARTITION``."""
    if problem.phase == Phase.TRAIN:
        return LaunchLine("vllm", None, "vLLM serves inference; this is a training plan")
    why = _common_problem(plan)
    if why:
        return LaunchLine("vllm", None, why)
    model = HF_IDS.get(problem.model.split(":")[0], "<model>")
    counts = _layer_counts(plan)
    env = ""
    if len(set(counts)) > 1:
        env = f"VLLM_PP_LAYER_PARTITION={','.join(map(str, counts))} "
    cmd = (
        f"{env}vllm serve {model} --tensor-parallel-size {plan.stages[0].tp} "
        f"--pipeline-parallel-size {plan.pp} --max-num-seqs {problem.batch // plan.replicas}"
    )
    if plan.replicas > 1:
        cmd += f" --data-parallel-size {plan.replicas}"
    return LaunchLine("vllm", cmd)


def megatron_line(plan: Plan, problem: Problem) -> LaunchLine:
    """Megatron-LM's parallelism flags (model flags are the user's)."""
    if problem.phase != Phase.TRAIN:
        return LaunchLine("megatron-lm", None, "Megatron-LM trains; use the vLLM line for inference")
    why = _common_problem(plan)
    if why:
        return LaunchLine("megatron-lm", None, why)
    counts = _layer_counts(plan)
    flags = [
        f"--tensor-model-parallel-size {plan.stages[0].tp}",
        f"--pipeline-model-parallel-size {plan.pp}",
        f"--micro-batch-size {problem.batch // (plan.replicas * plan.micro_batches)}",
        f"--global-batch-size {problem.batch}",
        f"--seq-length {problem.seq}",
    ]
    middle = counts[1:-1]
    if len(set(middle)) > 1:
        return LaunchLine("megatron-lm", None, f"stage sizes {counts}: Megatron-LM only sets the first and last stage")
    if plan.pp > 1:
        even = middle[0] if middle else counts[1]
        if counts[0] != even:
            flags.append(f"--decoder-first-pipeline-num-layers {counts[0]}")
        if middle and counts[-1] != even:
            flags.append(f"--decoder-last-pipeline-num-layers {counts[-1]}")
    recompute = {s.recompute for s in plan.stages}
    if len(recompute) > 1:
        return LaunchLine("megatron-lm", None, "recomputation differs between stages; Megatron-LM sets it for all")
    if recompute == {True}:
        flags.append("--recompute-granularity full --recompute-method uniform --recompute-num-layers 1")
    if plan.schedule == Schedule.GPIPE:
        return LaunchLine("megatron-lm", None, "Megatron-LM runs 1F1B, not GPipe")
    world = plan.num_devices
    return LaunchLine(
        "megatron-lm", f"torchrun --nproc-per-node ... (world size {world}) pretrain_gpt.py " + " ".join(flags)
    )


def launch_lines(plan: Plan, problem: Problem) -> list[LaunchLine]:
    return [vllm_line(plan, problem), megatron_line(plan, problem)]
