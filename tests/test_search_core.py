"""The tuner interface: problems, objectives, limits, the recorder, launch lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from paratune.costmodel import Plan
from paratune.search import Limits, Problem, Recorder, Tuner, contiguous_plan, get_objective
from paratune.search._launch import megatron_line, vllm_line

SMALL = "llama2-7b:layers=4"


def test_problem_defaults_and_errors() -> None:
    p = Problem(SMALL, "dgx-a100", phase="decode", batch=8)
    assert p.objective == "tbt" and p.context == p.seq
    assert p.tp_degrees() == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="does not apply to phase 'decode'; for decode: tbt, throughput"):
        Problem(SMALL, "dgx-a100", phase="decode", objective="ttft")
    with pytest.raises(ValueError, match="unknown objective 'latency'; allowed: ttft"):
        Problem(SMALL, "dgx-a100", phase="decode", objective="latency")
    with pytest.raises(ValueError, match="phase"):
        Problem(SMALL, "dgx-a100", phase="inference")


def test_problem_yaml_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("model: llama2-7b\nplatform: dgx-a100\nphase: decode\nlimits: {memory_gb: 40}\n")
    with pytest.raises(ValueError, match=r"s.yaml: unknown field\(s\) in 'limits': memory_gb; allowed: .*memory_gib"):
        Problem.load(path)
    path.write_text("model: llama2-7b\nplatform: dgx-a100\nphase: decode\nbatch: 0\n")
    with pytest.raises(ValueError, match=r"s\.yaml: field .batch. must be >= 1"):
        Problem.load(path)
    path.write_text("model: llama2-7b\nplatform: dgx-a100\nphase: train\nobjective: tbt\n")
    with pytest.raises(ValueError, match=r"s\.yaml: objective .tbt. does not apply to phase .train."):
        Problem.load(path)
    p = Problem(SMALL, "dgx-a100", phase="train", batch=8, limits=Limits(memory_gib=20, max_devices=4))
    path.write_text(__import__("yaml").safe_dump(p.to_dict()))
    q = Problem.load(path)
    assert q.to_dict() == p.to_dict()


def test_score_checks_every_limit() -> None:
    plan = Plan.uniform(4, tp=2)
    free = Problem(SMALL, "dgx-a100", phase="decode", batch=8).score(plan)
    assert free.feasible and all(c <= 0 for c in free.constraints) and free.violations == ()
    tight = Problem(
        SMALL, "dgx-a100", phase="decode", batch=8, limits=Limits(memory_gib=0.5, tbt_ms=0.01, max_devices=1)
    )
    ev = tight.score(plan)
    assert not ev.feasible
    assert [c > 0 for c in ev.constraints] == [True, True, False, True, False]
    assert any("peak memory" in v for v in ev.violations) and any("SLO" in v for v in ev.violations)
    bad = tight.score(Plan.uniform(4, tp=3))
    assert not bad.feasible and "does not divide" in bad.violations[0]


def test_objectives_directions_and_gaps() -> None:
    thr = get_objective("throughput", "prefill")
    assert thr.direction == "maximize" and thr.better(2.0, 1.0)
    assert thr.gap(90.0, 100.0) == pytest.approx(100 / 90 - 1)
    tbt = get_objective("tbt", "decode")
    assert tbt.gap(1.1, 1.0) == pytest.approx(0.1) and not tbt.better(2.0, 1.0)
    assert get_objective("tbt+memory", "decode").multi


def test_pipelined_throughput_is_set_by_the_bottleneck() -> None:
    p = Problem(SMALL, "dgx-a100", phase="prefill", batch=8, seq=512)
    m = p.evaluate(Plan.uniform(4, tp=2, pp=2, micro_batches=4))
    assert m.pipelined_tokens_per_s == pytest.approx(8 * 512 / (4 * max(m.stage_times_s)), rel=1e-9)
    assert m.pipelined_tokens_per_s > m.tokens_per_s  # the stream hides the pipeline's fill and drain


class _Fixed(Tuner):
    name, family = "fixed", "test"

    def _search(self, problem: Problem, recorder: Recorder, rng: object, seed: int) -> list[str]:
        for tp in (1, 2, 4, 8, 1, 2):
            if recorder.done:
                break
            recorder.evaluate(Plan.uniform(problem.n_layers, tp=tp))
        return ["done"]


def test_recorder_budget_history_and_callback_stop() -> None:
    p = Problem(SMALL, "dgx-a100", phase="decode", batch=8)
    r = _Fixed().tune(p, budget=4)
    assert r.evaluations == 4 and r.notes == ["done"] and not r.optimal
    values = [h.best for h in r.history]
    assert values == sorted(values, reverse=True) and values[-1] == r.objective_value
    assert r.best_plan is not None and p.score(r.best_plan).value == r.objective_value
    seen: list[int] = []
    stopped = _Fixed().tune(p, callback=lambda prog: seen.append(prog.evaluations) or prog.evaluations < 2)
    assert stopped.stopped_early and stopped.evaluations == 2 and seen == [1, 2]
    with pytest.raises(ValueError, match="budget must be >= 1"):
        _Fixed().tune(p, budget=0)


def test_recorder_keeps_a_pareto_front() -> None:
    p = Problem("gpt2", "dgx-a100", phase="decode", batch=1, objective="tbt+memory")  # TP trades latency for memory
    r = _Fixed().tune(p)
    values = [v for _, v in r.pareto]
    assert len(values) >= 2
    for a in values:
        assert not any(b != a and b[0] <= a[0] and b[1] <= a[1] for b in values)


def test_launch_lines_say_what_engines_can_run() -> None:
    dec = Problem("llama2-70b", "dgx-a100x2", phase="decode", batch=16)
    uneven = contiguous_plan([(0, 40, 8), (41, 79, 8)])
    line = vllm_line(uneven, dec).command
    assert line is not None and "--tensor-parallel-size 8 --pipeline-parallel-size 2" in line
    assert line.startswith("VLLM_PP_LAYER_PARTITION=41,39 vllm serve meta-llama/Llama-2-70b-hf")
    hybrid = contiguous_plan([(0, 39, 8), (40, 79, 4)])
    assert vllm_line(hybrid, dec).command is None and "hybrid" in vllm_line(hybrid, dec).reason
    train = Problem("llama2-70b", "dgx-a100x2", phase="train", batch=64, seq=4096)
    plan = contiguous_plan([(0, 39, 8), (40, 79, 8)], micro_batches=8, recompute=True)
    mline = megatron_line(plan, train).command
    assert mline is not None
    assert "--tensor-model-parallel-size 8 --pipeline-model-parallel-size 2 --micro-batch-size 8" in mline
    assert "--recompute-granularity full" in mline and vllm_line(plan, train).command is None


def test_calibrated_only_rejects_extrapolated_plans() -> None:
    """Tuners can be asked to prefer plans inside the calibrated range."""
    kwargs = dict(phase="prefill", batch=32, seq=2048)
    strict = Problem("llama2-7b", "dgx-a100", limits=Limits(calibrated_only=True), **kwargs)  # type: ignore[arg-type]
    loose = Problem("llama2-7b", "dgx-a100", **kwargs)  # type: ignore[arg-type]
    outside = Plan.uniform(32, tp=1)  # 32 x 2048 tokens on one GPU: GEMMs larger than any fitted row
    inside = Plan.uniform(32, tp=8)
    assert loose.score(outside).feasible and not strict.score(outside).feasible
    assert "outside the calibrated range" in strict.score(outside).violations
    assert strict.score(inside).feasible
