"""A deployment as the engines launch it: vLLM, SGLang and TensorRT-LLM command lines per pool, and the router.

Every decision the search takes has a flag here, so what is launched is what was tuned:

decision: vLLM / SGLang / TensorRT-LLM (``trtllm-serve``)

- TP: ``--tensor-parallel-size`` / ``--tp-size`` / ``--tp_size``; PP: ``--pipeline-parallel-size`` /
  ``--pp-size`` / ``--pp_size``;
- batch cap: ``--max-num-seqs`` / ``--max-running-requests`` / ``--max_batch_size``;
- token budget (the prefill chunk): ``--max-num-batched-tokens`` with ``--enable-chunked-prefill`` /
  ``--chunked-prefill-size`` / ``--max_num_tokens`` with ``enable_chunked_prefill``;
- fp8 KV cache: ``--kv-cache-dtype fp8`` / ``--kv-cache-dtype fp8_e4m3`` / ``kv_cache_config.dtype: fp8``;
  fp8 weights: ``--quantization fp8`` (vLLM, SGLang) / an fp8 (ModelOpt) checkpoint;
- replicas: ``--data-parallel-size`` / ``--dp-size`` / one server per replica behind a balancer;
- disaggregation: ``--kv-transfer-config`` (NIXL) and a proxy / ``--disaggregation-mode`` and
  ``sglang_router --pd-disaggregation`` / ``trtllm-serve disaggregated -c`` with context and generation servers.

The memory fraction (0.9) is the one the KV capacity was computed with. Hosts and ports
are placeholders (``<prefill-0>:8100``): the operator's cluster decides them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..graphs import HF_IDS
from ._types import Deployment, Pool

#: Fraction of GPU memory the engine may use (weights, activations, KV cache), as the KV capacity assumes.
MEMORY_FRACTION = 0.9


@dataclass(frozen=True)
class EngineLaunch:
    """How one engine runs a deployment: a command per pool, the router in front, and what it cannot express."""

    engine: str
    pools: tuple[dict[str, object], ...]  # role, replicas, gpus_per_instance, command
    router: str | None = None
    config: str | None = None  # a config file the commands read (TensorRT-LLM's disaggregated YAML)
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "pools": list(self.pools),
            "router": self.router,
            "config": self.config,
            "notes": list(self.notes),
        }


def _model_id(model: str) -> str:
    return HF_IDS.get(model.split(":")[0], "<model>")


def _ports(role: str, replicas: int, base: int) -> list[str]:
    return [f"http://<{role}-{i}>:{base}" for i in range(replicas)]


def _hosts(role: str, replicas: int, base: int) -> str:
    return ", ".join(u.removeprefix("http://") for u in _ports(role, replicas, base))


def vllm_launch(deployment: Deployment, model: str) -> EngineLaunch:
    """``vllm serve`` per pool; disaggregated pools exchange the KV cache through NIXL (vLLM's NixlConnector)."""
    hf = _model_id(model)
    lines: list[dict[str, object]] = []
    for pool in deployment.pools:
        flags = [
            f"vllm serve {hf}",
            f"--tensor-parallel-size {pool.tp}",
            f"--pipeline-parallel-size {pool.pp}",
            f"--max-num-seqs {pool.max_num_seqs}",
            f"--max-num-batched-tokens {pool.max_batched_tokens}",
            "--enable-chunked-prefill",
            f"--gpu-memory-utilization {MEMORY_FRACTION}",
        ]
        if deployment.kv_dtype == "fp8":
            flags.append("--kv-cache-dtype fp8")
        if deployment.dtype == "fp8":
            flags.append("--quantization fp8")
        if deployment.disaggregated:
            flags.append(
                "--kv-transfer-config '" + json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"}) + "'"
            )
            flags.append(f"--port {8100 if pool.role == 'prefill' else 8200}")
        elif pool.replicas > 1:
            flags.append(f"--data-parallel-size {pool.replicas}")
        lines.append(_pool_line(pool, " ".join(flags)))
    router, notes = None, []
    if deployment.disaggregated:
        prefill, decode = deployment.pools
        router = (
            "python disagg_proxy_server.py --prefill "
            + " ".join(_ports("prefill", prefill.replicas, 8100))
            + " --decode "
            + " ".join(_ports("decode", decode.replicas, 8200))
        )
        notes.append(
            "vLLM ships the prefill/decode proxy as an example (examples/online_serving/disaggregated_serving); "
            "production stacks use llm-d or NVIDIA Dynamo in front of the same workers"
        )
        notes.append("each pool replica is one `vllm serve` process on its own GPUs (CUDA_VISIBLE_DEVICES)")
    return EngineLaunch("vllm", tuple(lines), router, None, tuple(notes))


def sglang_launch(deployment: Deployment, model: str) -> EngineLaunch:
    """``sglang.launch_server`` per pool; disaggregated pools behind ``sglang_router --pd-disaggregation``."""
    hf = _model_id(model)
    lines: list[dict[str, object]] = []
    for pool in deployment.pools:
        flags = [
            f"python -m sglang.launch_server --model-path {hf}",
            f"--tp-size {pool.tp}",
            f"--pp-size {pool.pp}",
            f"--max-running-requests {pool.max_num_seqs}",
            f"--chunked-prefill-size {pool.max_batched_tokens}",
            f"--mem-fraction-static {MEMORY_FRACTION}",
        ]
        if deployment.kv_dtype == "fp8":
            flags.append("--kv-cache-dtype fp8_e4m3")
        if deployment.dtype == "fp8":
            flags.append("--quantization fp8")
        if deployment.disaggregated:
            flags.append(f"--disaggregation-mode {pool.role} --disaggregation-transfer-backend nixl")
            flags.append(f"--port {30000 if pool.role == 'prefill' else 30001}")
        elif pool.replicas > 1:
            flags.append(f"--dp-size {pool.replicas}")
        lines.append(_pool_line(pool, " ".join(flags)))
    router = None
    if deployment.disaggregated:
        prefill, decode = deployment.pools
        router = "python -m sglang_router.launch_router --pd-disaggregation " + " ".join(
            [f"--prefill {u}" for u in _ports("prefill", prefill.replicas, 30000)]
            + [f"--decode {u}" for u in _ports("decode", decode.replicas, 30001)]
        )
    return EngineLaunch("sglang", tuple(lines), router)


def trtllm_launch(deployment: Deployment, model: str) -> EngineLaunch:
    """``trtllm-serve`` per pool; a disaggregated deployment adds ``trtllm-serve disaggregated -c disagg.yaml``."""
    hf = _model_id(model)
    options = ["enable_chunked_prefill: true", f"kv_cache_config: {{free_gpu_memory_fraction: {MEMORY_FRACTION}"]
    options[-1] += ", dtype: fp8}" if deployment.kv_dtype == "fp8" else "}"
    if deployment.disaggregated:
        options.append("cache_transceiver_config: {backend: DEFAULT}")
    extra = "extra-llm-api-options.yaml"
    lines: list[dict[str, object]] = []
    for pool in deployment.pools:
        cmd = (
            f"trtllm-serve {hf} --tp_size {pool.tp} --pp_size {pool.pp} --max_batch_size {pool.max_num_seqs} "
            f"--max_num_tokens {pool.max_batched_tokens} --extra_llm_api_options {extra}"
        )
        if deployment.disaggregated:
            cmd += f" --port {8001 if pool.role == 'prefill' else 8002}"
        lines.append(_pool_line(pool, cmd))
    notes = [f"{extra}: " + "; ".join(options)]
    if deployment.dtype == "fp8":
        notes.append("fp8 weights: point trtllm-serve at an fp8 checkpoint (NVIDIA ModelOpt quantized)")
    config, router = None, None
    if deployment.disaggregated:
        prefill, decode = deployment.pools
        config = "\n".join(
            [
                "hostname: localhost",
                "port: 8000",
                "backend: pytorch",
                "context_servers:",
                f"  num_instances: {prefill.replicas}",
                "  urls: ["
                + ", ".join(u.removeprefix("http://") for u in _ports("prefill", prefill.replicas, 8001))
                + "]",
                "generation_servers:",
                f"  num_instances: {decode.replicas}",
                "  urls: ["
                + ", ".join(u.removeprefix("http://") for u in _ports("decode", decode.replicas, 8002))
                + "]",
            ]
        )
        router = "trtllm-serve disaggregated -c disagg.yaml"
    elif deployment.pools[0].replicas > 1:
        notes.append("replicas: one trtllm-serve per replica on its own GPUs behind any HTTP load balancer")
    return EngineLaunch("trtllm", tuple(lines), router, config, tuple(notes))


def _pool_line(pool: Pool, command: str) -> dict[str, object]:
    return {
        "role": pool.role,
        "replicas": pool.replicas,
        "gpus_per_instance": pool.gpus_per_instance,
        "command": command,
    }


def serving_launch_lines(deployment: Deployment, model: str) -> list[EngineLaunch]:
    """The deployment for every engine, the deployment's own engine first."""
    makers = {"vllm": vllm_launch, "sglang": sglang_launch, "trtllm": trtllm_launch}
    order = [deployment.engine] + [e for e in makers if e != deployment.engine]
    return [makers[e](deployment, model) for e in order]
