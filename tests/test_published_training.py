"""Published training runs (configs/published/training.yaml): the data, its cross-checks, the plans it builds.

The entries are checked against themselves where a source publishes two figures of one
run (an iteration time and an MFU, TFLOP/s and MFU, tokens/s and MFU) and against the
model sizes the sources name, so that a typo in a shape, a batch or a FLOP convention
fails here rather than skewing the benchmark. The comparison with the evaluator is the
benchmark's figure (``benchmarks/training_published.py``); only the runs that use no
technique of issue 18 are held to a bound here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from paratune.costmodel.calibration._published_training import (
    MEASURED_KEYS,
    SPLITS,
    TrainingComparison,
    TrainingPoint,
    assumption_variants,
    compare_point,
    load_training_points,
    summarize,
)
from paratune.graphs import build_spec_graph, coarsen


@pytest.fixture(scope="module")
def points() -> list[TrainingPoint]:
    return load_training_points()


def test_every_point_names_its_source_and_is_kept_apart_from_the_tuned_on_rows(points: list[TrainingPoint]) -> None:
    assert len(points) >= 20
    assert len({p.id for p in points}) == len(points)
    assert {p.source.key for p in points} >= {"korthikanti2022", "megatron-lm-h100", "torchtitan-a100"}
    for p in points:
        assert p.source.url.startswith("https://") and p.source.tables and p.source.hardware, p.id
        assert p.split in SPLITS
        assert set(p.measured) <= set(MEASURED_KEYS) and p.measured
    # nothing is fitted on these runs today: every point is only checked
    assert {p.split for p in points} == {"check"}
    # the SC'21 rows the A100 profile was checked on are not among them
    assert not any(p.model.hidden == 25600 and p.gpus == 3072 for p in points)


#: Model sizes as the sources name them (billions of parameters).
NAMED_SIZES = {
    "gpt-22b": 22, "gpt-175b": 175, "gpt-530b": 530, "gpt-1t": 1000,
    "mlm-gpt-1.7b": 1.7, "mlm-gpt-7.1b": 7.1, "mlm-gpt-16b": 16, "mlm-gpt-32b": 32, "mlm-gpt-70b": 70,
    "mlm-gpt-119b": 119, "mlm-gpt-177b": 177, "mlm-gpt-314b": 314, "mlm-gpt-462b": 462,
    "llama3-8b": 8.0, "llama3-70b": 70.6, "llama2-13b": 13.0, "llama2-70b": 69.0, "mixtral-8x7b": 46.7,
    "llama3-405b": 405,
}  # fmt: skip


def test_model_shapes_give_the_sizes_the_sources_name(points: list[TrainingPoint]) -> None:
    """Untied embeddings and a 4h GeLU MLP are what make Megatron-LM's 1.7B..462B add up."""
    for p in points:
        named = NAMED_SIZES[p.model.name]
        assert p.model.params() / 1e9 == pytest.approx(named, rel=0.03), (p.id, p.model.params())


def test_two_published_figures_of_one_run_agree(points: list[TrainingPoint]) -> None:
    """An iteration time and an MFU (or TFLOP/s and MFU) give the same step within the sources' rounding.

    This checks the FLOP conventions too: Korthikanti et al.'s MFU and the Megatron-LM README's
    TFLOP/s use Megatron's count, torchtitan's MFU its ``6 N + 12 l h s`` per token.
    """
    checked = 0
    for p in points:
        steps = [p.measured_step_s(k) for k in p.measured]
        if len(steps) < 2:
            continue
        checked += 1
        assert max(steps) / min(steps) - 1 <= 0.025, (p.id, dict(zip(p.measured, steps, strict=True)))
    assert checked >= 19


def test_megatron_flops_of_gpt3_match_the_papers_formula(points: list[TrainingPoint]) -> None:
    """Korthikanti et al.'s MFU counts ``72 B s l h^2 (1 + s/(6h) + V/(12 l h))`` for a GPT."""
    p = next(p for p in points if p.id == "korthikanti-175b-sp-selective")
    b, s, n, h, v = p.global_batch, p.seq, p.model.layers, p.model.hidden, p.model.vocab
    assert p.model_flops() == pytest.approx(72 * b * s * n * h * h * (1 + s / (6 * h) + v / (12 * n * h)), rel=1e-9)
    assert p.tflops_per_gpu(13.75) / 312 == pytest.approx(0.514, abs=0.001)  # Table 5's MFU


def test_each_point_builds_the_published_configuration(points: list[TrainingPoint]) -> None:
    for p in points:
        plan = p.plan()
        assert plan.num_devices == p.gpus, p.id
        assert plan.pp == p.pp and len(plan.stages) == p.pp * p.virtual_stages, p.id
        assert plan.replicas * plan.micro_batches * p.micro_batch == p.global_batch, p.id
        assert plan.cp == p.cp and plan.ep == p.ep and plan.zero == p.zero, p.id
        assert all(s.tp == p.tp for s in plan.stages), p.id
        assert plan.selective_recompute == (p.recompute == "selective"), p.id
        assert all(s.recompute == (p.recompute == "full") for s in plan.stages), p.id
        assert p.platform_preset().num_devices >= p.gpus, p.id


@pytest.mark.parametrize("pid", ["korthikanti-175b-sp-selective", "mlm-h100-177b", "mcore-moe-mixtral-8x7b"])
def test_plans_are_valid_for_their_problem(points: list[TrainingPoint], pid: str) -> None:
    p = next(p for p in points if p.id == pid)
    graph = coarsen(build_spec_graph(p.model, phase="train", batch=p.global_batch, seq=p.seq), "layer")
    assert p.plan().problems(graph, p.platform_preset()) == []


def test_runs_without_the_new_techniques_are_priced_within_30_percent(points: list[TrainingPoint]) -> None:
    """Korthikanti et al.'s full-recomputation baseline (TP + PP, nothing of issue 18): feasible, near."""
    for p in points:
        if not p.id.endswith("-full") or p.source.key != "korthikanti2022":
            continue
        row = compare_point(p)
        assert row.feasible, (p.id, row.reason)  # these runs completed in 80 GB
        assert math.isfinite(row.error_pct) and abs(row.error_pct) <= 30.0, (p.id, row.error_pct)


def _write(tmp_path: Path, point: str, extra_sources: str = "") -> Path:
    path = tmp_path / "training.yaml"
    path.write_text(
        "sources:\n"
        "  s: {title: t, url: 'https://example.org', tables: T1, hardware: h, flops: megatron, peak_tflops: 312}\n"
        f"{extra_sources}"
        f"points:\n  - {point}\n"
    )
    return path


GOOD = (
    "{id: a, source: s, split: check, platform: dgx-a100, gpus: 16, model: llama2-7b, seq: 4096, "
    "global_batch: 32, micro_batch: 1, tp: 2, pp: 2, measured: {step_s: 1.0}}"
)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("gpus: 16", "gpus: 10"), "'gpus'"),
        (("global_batch: 32", "global_batch: 6"), "'global_batch'"),
        (("split: check", "split: maybe"), "'split'"),
        (("pp: 2,", "pp: 2, recompute: some,"), "'recompute'"),
        (("{step_s: 1.0}", "{seconds: 1.0}"), "'measured'"),
        (("source: s", "source: nowhere"), "'source'"),
        (("tp: 2,", "tp: 2, zeros: 1,"), "zeros"),
    ],
)
def test_a_bad_point_is_refused_naming_the_field(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    assert len(load_training_points(_write(tmp_path, GOOD))) == 1
    with pytest.raises(ValueError, match=field):
        load_training_points(_write(tmp_path, GOOD.replace(*change)))


def test_a_source_with_an_unknown_flop_convention_is_refused(tmp_path: Path) -> None:
    bad = "  u: {title: t, url: 'https://x', tables: T, hardware: h, flops: guess, peak_tflops: 1}\n"
    with pytest.raises(ValueError, match="'flops'"):
        load_training_points(_write(tmp_path, GOOD, extra_sources=bad))


def test_summary_takes_the_median_over_check_points_and_lists_runs_called_oom(
    points: list[TrainingPoint],
) -> None:
    def row(p: TrainingPoint, predicted: float, reason: str = "") -> TrainingComparison:
        return TrainingComparison(p, 1.0, predicted, not reason, reason, 10.0, 79.0, {})

    a, b, c = points[:3]
    rows = [row(a, 1.1), row(b, 0.7), row(c, 1.05, "device 0 (stage 0) needs 90.0 GiB > 79.0 GiB usable")]
    s = summarize(rows)
    assert s["check"]["points"] == 3
    assert s["check"]["median_abs_error_pct"] == pytest.approx(10.0)
    assert s["check"]["max_abs_error_pct"] == pytest.approx(30.0)
    assert s["called_oom"] == [c.id] and set(s["infeasible"]) == {c.id}
    assert s["tune"]["median_abs_error_pct"] is None


def test_assumption_variants_change_only_what_the_source_leaves_unstated(points: list[TrainingPoint]) -> None:
    by_id = {p.id: p for p in points}
    alts = assumption_variants(by_id["korthikanti-175b-full"])
    assert set(alts) == {"micro_batch=2", "virtual_stages=2"}
    assert alts["micro_batch=2"].micro_batches == 32 and alts["micro_batch=2"].plan().replicas == 1
    assert alts["virtual_stages=2"].plan().pp == 8 and len(alts["virtual_stages=2"].plan().stages) == 16
    assert set(assumption_variants(by_id["korthikanti-22b-full"])) == {"micro_batch=2"}  # no pipeline: no VP
    assert assumption_variants(by_id["torchtitan-a100-llama2-70b-full"]) == {}  # everything stated
