"""Hand-off of training plans (issue 18): Megatron-LM flags, a torchtitan job config and a DeepSpeed config.

Each line is emitted only when the framework can run the plan as tuned; otherwise it says why.
The configs inside the commands are the ones the ``*_config`` functions return (parsed back here).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace

import pytest

from paratune.costmodel import Plan
from paratune.search import Problem, contiguous_plan
from paratune.search._launch import (
    DEEPSPEED_FILE,
    TORCHTITAN_FILE,
    NotExpressible,
    deepspeed_config,
    deepspeed_line,
    launch_lines,
    megatron_line,
    torchtitan_config,
    torchtitan_line,
)

TRAIN = Problem("llama2-7b:layers=16", "dgx-a100x2", phase="train", batch=64, seq=4096)
MOE = Problem("mixtral-8x7b:layers=4", "dgx-h100x2", phase="train", batch=16, seq=4096)


def _flags(plan: Plan, problem: Problem = TRAIN) -> str:
    line = megatron_line(plan, problem)
    assert line.command is not None, line.reason
    assert plan.problems(problem.graph("layer"), problem.resolved_platform) == []
    return line.command


def _heredoc(command: str, path: str) -> str:
    """The file text a command writes with ``cat > path <<'EOF'``."""
    head = f"cat > {path} <<'EOF'\n"
    assert command.startswith(head)
    return command[len(head) : command.index("\nEOF\n")]


def test_megatron_core_defaults_become_their_flags() -> None:
    plan = Plan.uniform(16, tp=8, pp=2, micro_batches=8, zero=1, sequence_parallel=True, overlap=True,
                        virtual_stages=2, selective_recompute=True)  # fmt: skip
    cmd = _flags(plan)
    for flag in ("--tensor-model-parallel-size 8 --pipeline-model-parallel-size 2", "--sequence-parallel",
                 "--num-layers-per-virtual-pipeline-stage 4", "--recompute-granularity selective",
                 "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather"):  # fmt: skip
        assert flag in cmd, flag
    assert "--recompute-method" not in cmd and "--tp-comm-overlap" not in cmd  # selective takes no method
    plain = _flags(Plan.uniform(16, tp=8, pp=2, micro_batches=8))  # today's plans: today's line
    assert plain.endswith("--seq-length 4096")


def test_megatron_cp_ep_hybrid_distributed_optimizer_and_tp_overlap() -> None:
    plan = Plan.uniform(4, tp=2, replicas=2, cp=2, ep=2, zero=1, shard_group=2, sequence_parallel=True,
                        tp_overlap=True, recompute=True)  # fmt: skip
    cmd = _flags(plan, MOE)
    for flag in ("--context-parallel-size 2", "--expert-model-parallel-size 2", "--tp-comm-overlap",
                 "--num-distributed-optimizer-instances 2",  # 4 data-parallel ranks sharded in groups of 2
                 "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1",
                 "--micro-batch-size 8"):  # fmt: skip
        assert flag in cmd, flag
    assert "(world size 8)" in cmd and "--overlap-grad-reduce" not in cmd


@pytest.mark.parametrize(("zero", "strategy"), [(2, "optim_grads"), (3, "optim_grads_params")])
def test_megatron_zero_2_and_3_are_megatron_fsdp(zero: int, strategy: str) -> None:
    cmd = _flags(Plan.uniform(16, tp=2, replicas=8, zero=zero, sequence_parallel=True))
    assert f"--use-megatron-fsdp --use-distributed-optimizer --data-parallel-sharding-strategy {strategy}" in cmd


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        (Plan.uniform(16, tp=2, tp_overlap=True), "--tp-comm-overlap needs --sequence-parallel"),
        (Plan.uniform(10, pp=2, micro_batches=2, virtual_stages=2), "chunks of [2, 3] layers"),
        (Plan.uniform(16, replicas=16, zero=3, shard_group=8), "hybrid mode"),
        (Plan.uniform(16, pp=2, micro_batches=2, schedule="gpipe"), "GPipe"),
    ],
)
def test_megatron_refuses_what_it_cannot_run(plan: Plan, why: str) -> None:
    line = megatron_line(plan, TRAIN)
    assert line.command is None and why in line.reason


def test_torchtitan_config_maps_hsdp_cp_tp_pp_and_checkpointing() -> None:
    plan = Plan.uniform(16, tp=2, pp=2, micro_batches=4, replicas=4, cp=2, zero=3, shard_group=4,
                        sequence_parallel=True, selective_recompute=True, overlap=True)  # fmt: skip
    cfg = torchtitan_config(plan, TRAIN)
    assert cfg["parallelism"] == {
        "data_parallel_replicate_degree": 2,  # 8 data-parallel ranks (replicas x cp), sharded in groups of 4 ...
        "data_parallel_shard_degree": 2,  # ... that hold whole CP groups: 2 replicas x cp 2
        "tensor_parallel_degree": 2,
        "pipeline_parallel_degree": 2,
        "context_parallel_degree": 2,
        "fsdp_reshard_after_forward": "always",
        "pipeline_parallel_first_stage_less_layers": 0,
        "pipeline_parallel_last_stage_less_layers": 0,
        "pipeline_parallel_schedule": "1F1B",
        "pipeline_parallel_microbatch_size": 4,
    }
    assert cfg["training"] == {"global_batch_size": 64, "seq_len": 4096, "local_batch_size": 16}
    assert cfg["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    p = cfg["parallelism"]
    world = 1
    for key in ("data_parallel_replicate_degree", "data_parallel_shard_degree", "tensor_parallel_degree",
                "pipeline_parallel_degree", "context_parallel_degree"):  # fmt: skip
        world *= p[key]
    assert world == plan.num_devices == 32


def test_torchtitan_line_writes_its_config_and_launches_on_it() -> None:
    plan = Plan.uniform(16, replicas=16, zero=2, recompute=True, overlap=True)
    line = torchtitan_line(plan, TRAIN)
    assert line.command is not None
    assert tomllib.loads(_heredoc(line.command, TORCHTITAN_FILE)) == torchtitan_config(plan, TRAIN)
    assert line.command.endswith(
        f"torchrun --nnodes 2 --nproc-per-node 8 -m torchtitan.train --job.config_file {TORCHTITAN_FILE}"
    )
    cfg = torchtitan_config(plan, TRAIN)
    assert cfg["parallelism"]["fsdp_reshard_after_forward"] == "never"  # ZeRO-2: weights stay gathered
    assert cfg["activation_checkpoint"] == {"mode": "full"} and cfg["training"]["local_batch_size"] == 4


def test_torchtitan_interleaving_and_expert_parallelism() -> None:
    chunks = torchtitan_config(Plan.uniform(10, pp=2, micro_batches=2, replicas=4, zero=3, virtual_stages=2), TRAIN)
    assert chunks["parallelism"]["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert chunks["parallelism"]["pipeline_parallel_layers_per_stage"] == 3  # ceil(10 / 3) = 4 chunks of 3,3,2,2
    moe = torchtitan_config(Plan.uniform(4, tp=2, replicas=2, cp=2, ep=2, zero=3, sequence_parallel=True), MOE)
    assert (moe["parallelism"]["expert_parallel_degree"], moe["parallelism"]["expert_tensor_parallel_degree"]) == (2, 2)


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        (Plan.uniform(16, replicas=16, zero=1), "FSDP2 has no such mode"),
        (Plan.uniform(16, tp=2, replicas=8), "DDP"),
        (Plan.uniform(16, tp=2, replicas=8, zero=3), "always shard the norms"),
        (Plan.uniform(16, replicas=4, cp=2, zero=3, shard_group=3), "shard_group 3"),
        (Plan.uniform(10, pp=2, micro_batches=2, virtual_stages=3, zero=3), "no pipeline_parallel_layers_per_stage"),
        (replace(contiguous_plan([(0, 4, 1), (5, 15, 1)], micro_batches=2), zero=3), "splits the layers evenly"),
    ],
)
def test_torchtitan_refuses_what_it_cannot_run(plan: Plan, why: str) -> None:
    with pytest.raises(NotExpressible, match=why.replace("[", r"\[")):
        torchtitan_config(plan, TRAIN)
    line = torchtitan_line(plan, TRAIN)
    assert line.command is None and why in line.reason


def test_deepspeed_config_zero_stages_mics_and_checkpointing() -> None:
    plan = Plan.uniform(16, micro_batches=2, replicas=16, zero=3, shard_group=8, overlap=True, recompute=True)
    line = deepspeed_line(plan, TRAIN)
    assert line.command is not None
    cfg = json.loads(_heredoc(line.command, DEEPSPEED_FILE))
    assert cfg == deepspeed_config(plan, TRAIN)
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (
        64, 2, 2)  # fmt: skip
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                                        "reduce_scatter": True, "mics_shard_size": 8,
                                        "mics_hierarchical_params_gather": False}  # fmt: skip
    assert "activation_checkpointing" in cfg
    assert line.command.endswith(
        f"deepspeed --num_nodes 2 --num_gpus 8 train.py --deepspeed --deepspeed_config {DEEPSPEED_FILE}"
    )
    one = deepspeed_config(Plan.uniform(16, replicas=16, zero=1), TRAIN)
    assert one["zero_optimization"]["stage"] == 1 and "activation_checkpointing" not in one


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        (Plan.uniform(16, tp=2, replicas=8, zero=3, sequence_parallel=True), "Megatron-DeepSpeed"),
        (Plan.uniform(16, replicas=16, zero=3, selective_recompute=True), "whole layers"),
        (Plan.uniform(16, replicas=16, zero=1, shard_group=8), "MiCS"),
    ],
)
def test_deepspeed_refuses_what_it_cannot_run(plan: Plan, why: str) -> None:
    line = deepspeed_line(plan, TRAIN)
    assert line.command is None and why in line.reason


def test_every_engine_answers_for_every_plan() -> None:
    decode = Problem("llama2-7b:layers=16", "dgx-a100x2", phase="decode", batch=8, context=512)
    lines = launch_lines(Plan.uniform(16, tp=8), decode)
    assert [x.engine for x in lines] == ["vllm", "megatron-lm", "torchtitan", "deepspeed"]
    assert lines[0].command is not None and all(x.command is None and x.reason for x in lines[1:])
