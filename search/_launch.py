"""Turn a plan into what practitioners launch: vLLM and Megatron-LM flags, torchtitan and DeepSpeed configs.

Only what those engines can express is printed; otherwise the reason is given
(e.g. a hybrid plan with different TP degrees per stage has no vLLM or
Megatron-LM equivalent), so nobody launches something other than what was tuned.
The flag and field names were checked against the frameworks' sources:
Megatron-LM ``megatron/training/arguments.py`` (with the ``TransformerConfig`` /
``ModelParallelConfig`` fields it turns into ``--field-name`` flags), torchtitan's
TOML job config (``torchtitan/config/job_config.py`` before its configs became
Python; the same fields live on in ``ParallelismConfig``), and DeepSpeed's JSON
configuration (``zero_optimization``, ``activation_checkpointing``).

Overlap is a choice in the plan but not always a switch in the framework: FSDP2
always prefetches the next all-gather and DeepSpeed's ``overlap_comm`` is written
as the plan says; a plan priced without overlap then runs at least as fast as predicted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..costmodel import Plan, Schedule
from ..graphs import HF_IDS, Phase
from ..problem import Problem

#: The files the torchtitan and DeepSpeed lines write (a here-document) before they launch.
TORCHTITAN_FILE = "paratune_torchtitan.toml"
DEEPSPEED_FILE = "ds_config.json"


class NotExpressible(ValueError):
    """The framework cannot run this plan as tuned (the message says why)."""


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


def _recompute(plan: Plan) -> str:
    """``none``, ``selective`` or ``full`` for the whole plan; :class:`NotExpressible` when stages differ."""
    flags = {s.recompute for s in plan.stages}
    if len(flags) > 1:
        raise NotExpressible("recomputation differs between stages; the frameworks set it for all layers")
    if flags == {True}:
        return "full"
    return "selective" if plan.selective_recompute else "none"


def _launcher(plan: Plan, problem: Problem) -> tuple[int, int]:
    """``(nodes, processes per node)`` for the plan's devices on the problem's platform."""
    per_node = max(1, min(problem.resolved_platform.devices_per_node, plan.num_devices))
    return -(-plan.num_devices // per_node), per_node


def _megatron_flags(plan: Plan, problem: Problem) -> list[str]:
    """Megatron-LM's parallelism flags, or :class:`NotExpressible`."""
    if problem.phase != Phase.TRAIN:
        raise NotExpressible("Megatron-LM trains; use the vLLM line for inference")
    why = _common_problem(plan)
    if why:
        raise NotExpressible(why)
    if plan.schedule == Schedule.GPIPE:
        raise NotExpressible("Megatron-LM runs 1F1B, not GPipe")
    tp, counts = plan.stages[0].tp, _layer_counts(plan)
    flags = [
        f"--tensor-model-parallel-size {tp}",
        f"--pipeline-model-parallel-size {plan.pp}",
        f"--micro-batch-size {problem.batch // (plan.replicas * plan.micro_batches)}",
        f"--global-batch-size {problem.batch}",
        f"--seq-length {problem.seq}",
    ]
    if plan.virtual_stages > 1:
        if len(set(counts)) > 1:
            raise NotExpressible(
                f"interleaved chunks of {sorted(set(counts))} layers: Megatron-LM's "
                "--num-layers-per-virtual-pipeline-stage needs chunks of equal size"
            )
        flags.append(f"--num-layers-per-virtual-pipeline-stage {counts[0]}")
    else:
        middle = counts[1:-1]
        if len(set(middle)) > 1:
            raise NotExpressible(f"stage sizes {counts}: Megatron-LM only sets the first and last stage")
        if plan.pp > 1:
            even = middle[0] if middle else counts[1]
            if counts[0] != even:
                flags.append(f"--decoder-first-pipeline-num-layers {counts[0]}")
            if middle and counts[-1] != even:
                flags.append(f"--decoder-last-pipeline-num-layers {counts[-1]}")
    recompute = _recompute(plan)
    if recompute == "full":
        flags.append("--recompute-granularity full --recompute-method uniform --recompute-num-layers 1")
    elif recompute == "selective":
        flags.append("--recompute-granularity selective")
    if plan.sequence_parallel and tp > 1:  # Megatron turns SP off at TP 1; so does the cost model's convention
        flags.append("--sequence-parallel")
    if plan.tp_overlap:
        if not (plan.sequence_parallel and tp > 1):
            raise NotExpressible("Megatron-LM's --tp-comm-overlap needs --sequence-parallel and TP > 1")
        flags.append("--tp-comm-overlap")
    if plan.cp > 1:
        flags.append(f"--context-parallel-size {plan.cp}")
    if plan.ep > 1:
        flags.append(f"--expert-model-parallel-size {plan.ep}")
    flags += _megatron_sharding(plan)
    if plan.overlap:
        flags.append("--overlap-grad-reduce")
        if plan.zero:
            flags.append("--overlap-param-gather")
    return flags


def _megatron_sharding(plan: Plan) -> list[str]:
    """ZeRO-1 is the distributed optimizer (hybrid: optimizer instances); ZeRO-2/3 are Megatron-FSDP."""
    dp = plan.data_parallel
    if plan.zero == 1:
        flags = ["--use-distributed-optimizer"]
        if plan.shard_group and plan.shard_group < dp:
            flags.append(f"--num-distributed-optimizer-instances {dp // plan.shard_group}")
        return flags
    if plan.zero in (2, 3):
        if plan.shard_group and plan.shard_group < dp:
            raise NotExpressible(
                f"zero {plan.zero} with shard_group {plan.shard_group}: Megatron-FSDP's hybrid mode is not "
                "emitted here; use the torchtitan line (HSDP)"
            )
        strategy = "optim_grads" if plan.zero == 2 else "optim_grads_params"
        return [
            f"--use-megatron-fsdp --use-distributed-optimizer --data-parallel-sharding-strategy {strategy} "
            "--ckpt-format fsdp_dtensor"
        ]
    return []


def megatron_line(plan: Plan, problem: Problem) -> LaunchLine:
    """Megatron-LM's parallelism flags (model flags are the user's)."""
    try:
        flags = _megatron_flags(plan, problem)
    except NotExpressible as exc:
        return LaunchLine("megatron-lm", None, str(exc))
    world = plan.num_devices
    return LaunchLine(
        "megatron-lm", f"torchrun --nproc-per-node ... (world size {world}) pretrain_gpt.py " + " ".join(flags)
    )


def torchtitan_config(plan: Plan, problem: Problem) -> dict[str, dict[str, Any]]:
    """torchtitan's TOML job config (``[training]``, ``[parallelism]``, ``[activation_checkpoint]``) for ``plan``.

    torchtitan's FSDP mesh is ``data_parallel_shard_degree x context_parallel_degree``: the plan's
    ``shard_group`` (counted over ``replicas x cp`` ranks) must hold whole CP groups. ZeRO-3 reshards
    after forward (``fsdp_reshard_after_forward = "always"``), ZeRO-2 keeps the gathered weights
    (``"never"``); ZeRO-0 is DDP, which torchtitan composes with nothing else; ZeRO-1 has no FSDP2 form.
    TP is always sequence-parallel in torchtitan's TP plans; TP overlap is async TP (needs ``torch.compile``).

    Raises:
        NotExpressible: torchtitan cannot run the plan as tuned (the message says why).
    """
    if problem.phase != Phase.TRAIN:
        raise NotExpressible("torchtitan trains; use the vLLM line for inference")
    why = _common_problem(plan)
    if why:
        raise NotExpressible(why)
    tp, pp, cp, counts = plan.stages[0].tp, plan.pp, plan.cp, _layer_counts(plan)
    if plan.zero == 1:
        raise NotExpressible("zero 1 (optimizer state only): FSDP2 has no such mode; use the Megatron-LM line")
    if plan.zero == 0 and (tp, pp, cp, plan.ep) != (1, 1, 1, 1):
        raise NotExpressible("zero 0 is DDP, which torchtitan does not combine with TP, PP, CP or EP; use zero 2 or 3")
    if tp > 1 and not plan.sequence_parallel:
        raise NotExpressible(f"TP {tp} without sequence_parallel: torchtitan's TP plans always shard the norms")
    if plan.zero == 0:
        replicate, shard = plan.replicas, 1
    elif not plan.shard_group or plan.shard_group == plan.data_parallel:
        replicate, shard = 1, plan.replicas
    elif plan.shard_group % cp:
        raise NotExpressible(f"shard_group {plan.shard_group} must hold whole CP groups (cp {cp}) in torchtitan")
    else:
        shard = plan.shard_group // cp
        replicate = plan.replicas // shard
    parallelism: dict[str, Any] = {
        "data_parallel_replicate_degree": replicate,
        "data_parallel_shard_degree": shard,
        "tensor_parallel_degree": tp,
        "pipeline_parallel_degree": pp,
        "context_parallel_degree": cp,
    }
    if plan.zero in (2, 3):
        parallelism["fsdp_reshard_after_forward"] = "never" if plan.zero == 2 else "always"
    if plan.ep > 1:
        if (shard * cp) % plan.ep:
            raise NotExpressible(f"ep {plan.ep} must divide torchtitan's FSDP ranks (shard x cp = {shard * cp})")
        parallelism["expert_parallel_degree"] = plan.ep
        parallelism["expert_tensor_parallel_degree"] = tp
    local = problem.batch // plan.replicas
    training: dict[str, Any] = {"global_batch_size": problem.batch, "seq_len": problem.seq}
    if pp > 1:
        parallelism.update(
            _torchtitan_pipeline(plan, counts), pipeline_parallel_microbatch_size=local // plan.micro_batches
        )
        training["local_batch_size"] = local
    else:  # micro-batches without a pipeline are gradient accumulation: global = local x dp x steps
        training["local_batch_size"] = local // plan.micro_batches
    if plan.tp_overlap:
        if tp == 1:
            raise NotExpressible("tp_overlap needs TP > 1")
        parallelism["enable_async_tensor_parallel"] = True
    recompute = _recompute(plan)
    checkpoint: dict[str, Any] = {"mode": recompute}
    if recompute == "selective":
        checkpoint["selective_ac_option"] = "op"  # torchtitan's op-level SAC: attention and the like recomputed
    out = {"training": training, "parallelism": parallelism, "activation_checkpoint": checkpoint}
    if plan.tp_overlap:
        out["compile"] = {"enable": True}
    return out


def _torchtitan_pipeline(plan: Plan, counts: list[int]) -> dict[str, Any]:
    """torchtitan's pipeline fields; its split must give the plan's chunk sizes.

    With ``pipeline_parallel_first_stage_less_layers`` and ``..._last_stage_less_layers`` at 0 (the
    embedding and the LM head weigh no layer, as in paratune's plans), torchtitan splits the layers
    evenly over the chunks, earlier chunks taking the remainder: the split :meth:`Plan.uniform` makes.
    Interleaving sets the chunk count through ``pipeline_parallel_layers_per_stage`` (chunks =
    ceil(layers / it)).
    """
    n, chunks = sum(counts), len(counts)
    base, extra = divmod(n, chunks)
    if counts != [base + (1 if k < extra else 0) for k in range(chunks)]:
        raise NotExpressible(f"stage sizes {counts}: torchtitan splits the layers evenly, earlier stages first")
    out: dict[str, Any] = {
        "pipeline_parallel_first_stage_less_layers": 0,
        "pipeline_parallel_last_stage_less_layers": 0,
    }
    if plan.virtual_stages > 1:
        per_chunk = -(-n // chunks)
        if -(-n // per_chunk) != chunks:
            raise NotExpressible(f"{n} layers in {chunks} chunks: no pipeline_parallel_layers_per_stage gives them")
        out.update(pipeline_parallel_schedule="Interleaved1F1B", pipeline_parallel_layers_per_stage=per_chunk)
    else:
        out["pipeline_parallel_schedule"] = "GPipe" if plan.schedule == Schedule.GPIPE else "1F1B"
    return out


def _toml(config: dict[str, dict[str, Any]]) -> str:
    """A flat TOML file: one table per section, scalar values."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines)


def _heredoc(path: str, text: str, command: str) -> str:
    """A shell snippet that writes ``text`` to ``path`` and runs ``command``."""
    return f"cat > {path} <<'EOF'\n{text}\nEOF\n{command}"


def _config_line(
    framework: str, plan: Plan, problem: Problem, build: Any, path: str, dump: Any, run: str
) -> LaunchLine:
    """Write ``build(plan, problem)`` to ``path`` with ``dump`` and launch ``run`` (``{nodes}``, ``{per_node}``
    filled in); a plan the framework cannot run gives no command and the reason."""
    try:
        config = build(plan, problem)
    except NotExpressible as exc:
        return LaunchLine(framework, None, str(exc))
    nodes, per_node = _launcher(plan, problem)
    return LaunchLine(framework, _heredoc(path, dump(config), run.format(nodes=nodes, per_node=per_node)))


def torchtitan_line(plan: Plan, problem: Problem) -> LaunchLine:
    """Write the torchtitan job config and launch ``torchtitan.train`` on it (model settings are the user's)."""
    run = (
        "torchrun --nnodes {nodes} --nproc-per-node {per_node} -m torchtitan.train --job.config_file " + TORCHTITAN_FILE
    )
    return _config_line("torchtitan", plan, problem, torchtitan_config, TORCHTITAN_FILE, _toml, run)


def deepspeed_config(plan: Plan, problem: Problem) -> dict[str, Any]:
    """DeepSpeed's JSON config for a data-parallel plan (``zero_optimization``, checkpointing, batch sizes).

    Plain DeepSpeed shards over data-parallel ranks only: TP, PP, CP and EP plans need
    Megatron-DeepSpeed and are refused. Hybrid sharding of ZeRO-3 is MiCS (``mics_shard_size``).
    DeepSpeed's activation checkpointing recomputes whole layers (``deepspeed.checkpointing.checkpoint``
    around each block, or ``gradient_checkpointing_enable()`` in Hugging Face models): selective
    recomputation has no DeepSpeed form.

    Raises:
        NotExpressible: DeepSpeed cannot run the plan as tuned (the message says why).
    """
    if problem.phase != Phase.TRAIN:
        raise NotExpressible("DeepSpeed's training engine; use the vLLM line for inference")
    why = _common_problem(plan)
    if why:
        raise NotExpressible(why)
    tp = plan.stages[0].tp
    if (tp, plan.pp, plan.cp, plan.ep) != (1, 1, 1, 1):
        raise NotExpressible(
            f"TP {tp} x PP {plan.pp} x CP {plan.cp} x EP {plan.ep}: DeepSpeed's engine is data parallel "
            "(model parallelism needs Megatron-DeepSpeed); use the Megatron-LM line"
        )
    recompute = _recompute(plan)
    if recompute == "selective":
        raise NotExpressible("selective recomputation: DeepSpeed checkpoints whole layers (full) only")
    zero: dict[str, Any] = {"stage": plan.zero}
    if plan.zero:
        zero.update(overlap_comm=plan.overlap, contiguous_gradients=plan.zero >= 2, reduce_scatter=True)
    if plan.shard_group and plan.shard_group < plan.data_parallel:
        if plan.zero != 3:
            raise NotExpressible(f"shard_group with zero {plan.zero}: DeepSpeed's hybrid sharding (MiCS) is ZeRO-3")
        zero.update(mics_shard_size=plan.shard_group, mics_hierarchical_params_gather=False)
    out: dict[str, Any] = {
        "train_batch_size": problem.batch,
        "train_micro_batch_size_per_gpu": problem.batch // (plan.replicas * plan.micro_batches),
        "gradient_accumulation_steps": plan.micro_batches,
        "bf16": {"enabled": True},
        "zero_optimization": zero,
    }
    if recompute == "full":
        out["activation_checkpointing"] = {
            "partition_activations": False,
            "contiguous_memory_optimization": False,
            "cpu_checkpointing": False,
        }
    return out


def deepspeed_line(plan: Plan, problem: Problem) -> LaunchLine:
    """Write the DeepSpeed config and launch the user's training script on it."""
    run = (
        "deepspeed --num_nodes {nodes} --num_gpus {per_node} train.py --deepspeed --deepspeed_config " + DEEPSPEED_FILE
    )
    return _config_line(
        "deepspeed", plan, problem, deepspeed_config, DEEPSPEED_FILE, lambda c: json.dumps(c, indent=2), run
    )


def launch_lines(plan: Plan, problem: Problem) -> list[LaunchLine]:
    return [
        vllm_line(plan, problem),
        megatron_line(plan, problem),
        torchtitan_line(plan, problem),
        deepspeed_line(plan, problem),
    ]
