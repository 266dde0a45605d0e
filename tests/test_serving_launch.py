"""Launch lines of a serving deployment: every tuned decision appears as the engine's flag."""

from __future__ import annotations

from paratune.serving import Deployment, Pool, serving_launch_lines


def _by_engine(dep: Deployment, model: str = "llama3-70b") -> dict[str, dict]:
    return {line.engine: line.to_dict() for line in serving_launch_lines(dep, model)}


def test_aggregated_lines_carry_tp_pp_batch_cap_and_chunk() -> None:
    dep = Deployment((Pool("mixed", tp=4, pp=2, replicas=3, max_num_seqs=96, max_batched_tokens=2048),), kv_dtype="fp8")
    lines = _by_engine(dep)
    assert list(lines) == ["vllm", "sglang", "trtllm"]
    vllm = lines["vllm"]["pools"][0]["command"]
    for flag in (
        "--tensor-parallel-size 4",
        "--pipeline-parallel-size 2",
        "--max-num-seqs 96",
        "--max-num-batched-tokens 2048",
        "--enable-chunked-prefill",
        "--kv-cache-dtype fp8",
        "--data-parallel-size 3",
        "meta-llama/Meta-Llama-3-70B",
    ):
        assert flag in vllm, flag
    assert "--quantization" not in vllm
    sglang = lines["sglang"]["pools"][0]["command"]
    for flag in (
        "--tp-size 4",
        "--pp-size 2",
        "--max-running-requests 96",
        "--chunked-prefill-size 2048",
        "--dp-size 3",
    ):
        assert flag in sglang, flag
    trt = lines["trtllm"]["pools"][0]["command"]
    for flag in ("--tp_size 4", "--pp_size 2", "--max_batch_size 96", "--max_num_tokens 2048"):
        assert flag in trt, flag
    assert any("dtype: fp8" in n for n in lines["trtllm"]["notes"])
    assert all(line["router"] is None for line in lines.values())


def test_disaggregated_lines_name_every_replica_of_both_pools() -> None:
    dep = Deployment(
        (Pool("prefill", tp=2, replicas=2, max_num_seqs=8, max_batched_tokens=16384), Pool("decode", tp=8, replicas=1)),
        engine="sglang",
        dtype="fp8",
    )
    lines = _by_engine(dep)
    assert next(iter(lines)) == "sglang"
    sg = lines["sglang"]
    assert [p["role"] for p in sg["pools"]] == ["prefill", "decode"]
    assert "--disaggregation-mode prefill" in sg["pools"][0]["command"]
    assert "--disaggregation-mode decode" in sg["pools"][1]["command"]
    assert "--quantization fp8" in sg["pools"][0]["command"]
    assert sg["router"].count("--prefill ") == 2 and sg["router"].count("--decode ") == 1
    vllm = lines["vllm"]
    assert all("NixlConnector" in p["command"] for p in vllm["pools"])
    assert "--data-parallel-size" not in vllm["pools"][0]["command"]
    trt = lines["trtllm"]
    assert trt["router"] == "trtllm-serve disaggregated -c disagg.yaml"
    assert "context_servers:\n  num_instances: 2" in trt["config"]
    assert "generation_servers:\n  num_instances: 1" in trt["config"]


def test_unknown_model_gets_a_placeholder_not_a_wrong_id() -> None:
    dep = Deployment((Pool(),))
    assert "vllm serve <model>" in _by_engine(dep, "my/model.yaml")["vllm"]["pools"][0]["command"]
