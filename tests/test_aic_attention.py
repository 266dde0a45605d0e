"""Attention priced per phase from AIConfigurator's measured kernels (``costmodel/calibration/_aic_attention.py``).

The first tests need no package: the work counted for a measured row is the zoo op's,
the profile section round-trips and refuses bad values, and the pricer applies it to
the graph's phase only. The fits need ``aiconfigurator-core`` (``paratune[silicon]``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from paratune.costmodel import KernelPricer, OpTable, get_platform, load_profile
from paratune.costmodel._attention import AttentionResidual
from paratune.costmodel._fields import FieldReader
from paratune.costmodel._profile import AttentionPhase, Profile
from paratune.costmodel.calibration._aic_attention import attention_work
from paratune.graphs import ModelSpec, build_spec_graph

SPEC = ModelSpec(name="gqa", layers=1, hidden=4096, heads=32, kv_heads=8, ffn=1024, vocab=8)
TERMS = {
    "prefill": AttentionPhase(0.55, 0.6, 16e-6, 1.5e-12, 3e-11, 1e-10),
    "decode": AttentionPhase(0.15, 0.8, 9e-6, 1.0e-11, 1.4e-11, join_exponent=3.0),
}

#: A preset without fitted attention terms (dgx-h100 itself is priced by h100-aic, which has them).
BASE = "dgx-h100:profile=h100-vidur"


def _attention_op(phase: str, batch: int, seq: int) -> OpTable:
    graph = build_spec_graph(SPEC, phase=phase, batch=batch, seq=seq, context=seq if phase == "decode" else 0)
    return OpTable.from_ops(graph.task("L0.attention").ops)


@pytest.mark.parametrize(("phase", "tp"), [("prefill", 1), ("prefill", 4), ("decode", 1), ("decode", 8)])
def test_row_work_is_the_graph_ops_work_per_device(phase: str, tp: int) -> None:
    batch, seq = 4, 1024
    flops, nbytes = _attention_op(phase, batch, seq).per_device(tp)
    kv_len = seq + 1 if phase == "decode" else seq  # a decode step attends to its context and itself
    q_len = 1 if phase == "decode" else seq
    f, b, out, seq_kv, seq_q = attention_work(
        phase,
        np.array([batch]),
        np.array([q_len]),
        np.array([kv_len]),
        np.array([SPEC.heads / tp]),
        np.array([SPEC.kv_heads / tp]),
        np.array([SPEC.head_dim]),
    )
    assert f[0] == pytest.approx(flops[0], rel=1e-12)
    assert b[0] == pytest.approx(nbytes[0], rel=1e-12)
    table = _attention_op(phase, batch, seq)
    assert out[0] == pytest.approx(table.output_bytes[0] / tp, rel=1e-12)
    assert seq_kv[0] == pytest.approx(batch * table.kv_bytes_per_token[0] / tp, rel=1e-12)
    assert seq_q[0] == pytest.approx(table.output_bytes[0] / tp / q_len, rel=1e-12)


def _profile_with_terms() -> Profile:
    return dataclasses.replace(get_platform(BASE).profile, attention_phases=TERMS)


def test_attention_phases_round_trip_and_refuse_bad_values() -> None:
    prof = _profile_with_terms()
    data = prof.to_dict()
    back = Profile.from_dict(data, "t")
    assert back.to_dict() == data
    for phase, terms in TERMS.items():
        assert back.attention_phases[phase].output_s_per_byte == pytest.approx(terms.output_s_per_byte, rel=1e-12)
        assert back.attention_phases[phase].overhead_s == pytest.approx(terms.overhead_s, rel=1e-12)
    assert "attention_phases" not in get_platform(BASE).profile.to_dict()  # absent stays absent
    for phase, field, value, message in (
        ("decode", "memory_peak", 1.5, "must be <= 1"),
        ("decode", "overhead_us", float("nan"), "finite"),
        ("decode", "join_exponent", 0.5, "must be >= 1"),
        ("prefill", "typo", 1.0, "unknown field"),
    ):
        bad = prof.to_dict()
        bad["attention_phases"][phase][field] = value
        with pytest.raises(ValueError, match=message):
            Profile.from_dict(bad, "t")
    bad = prof.to_dict()
    bad["attention_phases"]["train"] = bad["attention_phases"]["decode"]
    with pytest.raises(ValueError, match=r"attention_phases\.train"):
        Profile.from_dict(bad, "t")


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_pricer_applies_the_terms_of_the_graphs_phase_only(phase: str) -> None:
    """The pricer's time of the graph's op is the fitted formula on the row's work (what the fit minimised)."""
    base = get_platform(BASE)
    plat = dataclasses.replace(base, profile=_profile_with_terms())
    batch, seq, tp = 8, 2048, 2
    graph = build_spec_graph(SPEC, phase=phase, batch=batch, seq=seq, context=seq if phase == "decode" else 0)
    table = OpTable.from_ops(graph.task("L0.attention").ops)
    q_len, kv_len = (seq, seq) if phase == "prefill" else (1, seq + 1)
    shape = (np.array([v], dtype=float) for v in (batch, q_len, kv_len, SPEC.heads / tp, SPEC.kv_heads / tp, 128))
    f, b, out, seq_kv, seq_q = attention_work(phase, *shape)
    a = TERMS[phase]
    memory, per_sequence = b[0] / (plat.device.memory_bw * a.memory_peak), seq_kv[0] * a.sequence_s_per_kv_byte
    k = a.join_exponent
    stream = memory + per_sequence if k is None else (memory**k + per_sequence**k) ** (1 / k)
    expected = (
        a.overhead_s
        + f[0] / (plat.device.peak("bf16") * a.compute_peak)
        + stream
        + out[0] * a.output_s_per_byte
        + seq_q[0] * a.sequence_s_per_q_byte
    )
    assert KernelPricer.for_graph(plat, graph.meta).op_times(table, tp)[0] == pytest.approx(expected, rel=1e-9)
    # Half the batch per micro-batch: every batch-dependent term halves, the overhead stays.
    half = KernelPricer.for_graph(plat, graph.meta).op_times(table, tp, scale=0.5)[0]
    assert half == pytest.approx(a.overhead_s + (expected - a.overhead_s) / 2, rel=1e-9)
    # No phase (or training) and a profile without the section: the attention curves, as before.
    untouched = KernelPricer(base, "bf16", phase=phase).op_times(table, tp)[0]
    assert KernelPricer(plat, "bf16").op_times(table, tp)[0] == pytest.approx(untouched, rel=1e-12)
    assert KernelPricer(plat, "bf16", phase="train").op_times(table, tp)[0] == pytest.approx(untouched, rel=1e-12)


# -- fits on the measured tables (need aiconfigurator-core) ------------------------------------------


@pytest.fixture(scope="module")
def h200_fit() -> tuple[dict, dict]:
    pytest.importorskip("aiconfigurator_core")
    pytest.importorskip("pyarrow")
    from paratune.costmodel.calibration._aic_attention import fit_attention_tables

    return fit_attention_tables("h200_sxm")


def test_h200_fit_is_a_valid_profile_fragment_within_tolerance(h200_fit: tuple[dict, dict]) -> None:
    from paratune.costmodel._trust import ErrorModel

    fragment, report = h200_fit
    data = load_profile("h100-vidur").to_dict()  # a fitted profile: the fragment merged into it
    data["attention_phases"] = fragment["attention_phases"]
    data["fit"]["attention"] = fragment["fit"]["attention"]
    data["holdout_error"]["per_op"].update(fragment["holdout_error"]["per_op"])
    prof = Profile.from_dict(data, "fragment")
    assert set(prof.attention_phases) == {"prefill", "decode", "prefill_fp8_kv", "decode_fp8_kv"}
    # The held-out errors (fitted on H100 only) weigh attention seconds in the error bars.
    held = fragment["holdout_error"]["per_op"]
    errors = ErrorModel.from_profile(prof)
    assert errors is not None
    expected = (held["attention_prefill"]["mape"] + held["attention_decode"]["mape"]) / 200
    assert errors.of("attention") == pytest.approx(expected, rel=1e-9)
    assert held["attention_prefill"]["mape"] <= 10.0 and held["attention_decode"]["mape"] <= 10.0
    # Stated tolerances on the rows fitted (bf16, full attention, head size 128, gqa <= 16), in-sample
    # MAPE measured 1.6% prefill and 1.8% decode on H200 with the residual (trtllm 1.3.0rc20; the
    # smooth terms alone: 6.3% / 17.8%): a regression past these fails.
    phases = report["phases"]
    assert phases["prefill"]["in_sample"]["fitted_rows"]["mape"] <= 3.0
    assert phases["decode"]["in_sample"]["fitted_rows"]["mape"] <= 3.0
    assert phases["decode"]["in_sample"]["fitted_rows"]["p90_ape"] <= 6.0
    assert report["phases"]["prefill"]["provenance"]["licence"] == "Apache-2.0"


def test_predictions_of_measured_rows_within_tolerance(h200_fit: tuple[dict, dict]) -> None:
    from paratune.costmodel.calibration._aic_attention import fitted, read_rows

    fragment, _ = h200_fit
    rows = read_rows("h200_sxm", "prefill")
    terms = AttentionPhase.from_reader(_reader(fragment["attention_phases"]["prefill"]))
    big = rows.where(fitted(rows) & (rows.flops > 1e12))  # long prompts: compute-bound FMHA
    err = np.abs(big.predict(terms) / big.seconds - 1.0)
    assert len(big) > 500
    assert float(np.median(err)) <= 0.08
    assert float(np.percentile(err, 90)) <= 0.20


def test_fp8_kv_decode_is_cheaper_than_bf16_kv(h200_fit: tuple[dict, dict]) -> None:
    from paratune.costmodel.calibration._aic_attention import fitted, read_rows

    fragment, report = h200_fit
    rows = read_rows("h200_sxm", "decode")
    phases = fragment["attention_phases"]
    bf16_terms, fp8_terms = (AttentionPhase.from_reader(_reader(phases[k])) for k in ("decode", "decode_fp8_kv"))
    # The same shapes (same FLOPs) measured with both caches: long contexts, where the KV bytes dominate.
    long = rows.where(rows.flops > 1e9)
    fp8, bf16 = long.where(fitted(long, fp8_kv=True)), long.where(fitted(long))
    assert len(fp8) > 100 and len(fp8) == len(bf16)
    assert float(np.median(fp8.seconds)) < float(np.median(bf16.seconds))
    assert float(np.median(fp8.predict(fp8_terms))) < float(np.median(bf16.predict(bf16_terms)))
    # Its own terms price the fp8-KV rows better than halving the KV bytes in the bf16 terms
    # (measured 2.1% against 51.7% on H200).
    own = report["phases"]["decode_fp8_kv"]
    assert own["in_sample"]["fitted_rows"]["mape"] <= 4.0
    assert own["in_sample"]["fitted_rows"]["mape"] < own["fp8_kv_on_bf16_terms"]["mape"] - 10.0


def test_graph_with_fp8_kv_cache_is_priced_by_the_fp8_kv_terms() -> None:
    fp8_terms = AttentionPhase(0.8, 0.7, 6e-6, 0.0, 3e-11)
    plat = dataclasses.replace(
        get_platform(BASE),
        profile=dataclasses.replace(_profile_with_terms(), attention_phases={**TERMS, "decode_fp8_kv": fp8_terms}),
    )
    graph = build_spec_graph(dataclasses.replace(SPEC, kv_dtype="fp8"), phase="decode", batch=8, seq=4096)
    pricer = KernelPricer.for_graph(plat, graph.meta)
    assert pricer.attention == fp8_terms and pricer.batch == 8
    bf16_graph = build_spec_graph(SPEC, phase="decode", batch=8, seq=4096)
    assert KernelPricer.for_graph(plat, bf16_graph.meta).attention == TERMS["decode"]
    assert KernelPricer.for_graph(plat, build_spec_graph(SPEC, phase="train", batch=8, seq=64).meta).attention is None


def test_held_out_h200_from_h100(h200_fit: tuple[dict, dict]) -> None:
    _, report = h200_fit
    # Terms and residual fitted on H100's rows only, checked on H200's: the residual carries over (the
    # kernels are the same). Measured 4.4% / 5.8% prefill / fp8 KV, 5.8% / 7.5% decode (smooth terms
    # alone: 8.0% / 8.7%, 17.8% / 19.6%); issue 16's target: 10%.
    for phase, bound in (("prefill", 6.0), ("prefill_fp8_kv", 7.0), ("decode", 7.0), ("decode_fp8_kv", 9.0)):
        entry = report["phases"][phase]
        assert entry["held_out"]["fitted_on"] == ["h100_sxm"]
        assert entry["held_out"]["fitted_rows"]["mape"] <= bound


def _reader(data: dict) -> FieldReader:
    return FieldReader(dict(data), "fragment")


def test_fp8_kv_cache_halves_the_kv_bytes_and_prices_decode_cheaper() -> None:
    fp8 = dataclasses.replace(SPEC, kv_dtype="fp8")
    assert "kv_dtype" not in SPEC.to_dict() and fp8.to_dict()["kv_dtype"] == "fp8"
    ops = {}
    for spec in (SPEC, fp8):
        g = build_spec_graph(spec, phase="decode", batch=16, seq=8192, context=8192)
        ops[spec.kv_dtype or "bf16"] = g.task("L0.attention").ops[0]
    bf, f8 = ops["bf16"], ops["fp8"]
    assert f8.kv_bytes_per_token == pytest.approx(bf.kv_bytes_per_token / 2, rel=1e-12)
    q_and_out = 2 * 16 * SPEC.hidden * 2  # Q read and output written stay bf16
    assert f8.bytes - q_and_out == pytest.approx((bf.bytes - q_and_out) / 2, rel=1e-12)
    assert f8.flops == bf.flops
    plat = dataclasses.replace(get_platform(BASE), profile=_profile_with_terms())
    pricer = KernelPricer(plat, "bf16", phase="decode")
    t_bf, t_f8 = (pricer.op_times(OpTable.from_ops([op]), 1)[0] for op in (bf, f8))
    assert t_f8 < 0.75 * t_bf
    with pytest.raises(ValueError, match="kv_dtype"):
        dataclasses.replace(SPEC, kv_dtype="int4")


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_evaluators_agree_with_fitted_attention(phase: str) -> None:
    from paratune.costmodel import AnalyticEvaluator, Plan, Simulator
    from paratune.graphs import build_graph

    base = get_platform(BASE)
    plat = dataclasses.replace(base, profile=_profile_with_terms())
    seq, context = (1, 1024) if phase == "decode" else (512, 0)
    g = build_graph("llama2-7b:layers=4,kv_heads=8", phase=phase, batch=8, seq=seq, context=context)
    ev, sim = AnalyticEvaluator(g, plat), Simulator(g, plat)
    before = AnalyticEvaluator(g, base)
    for tp, pp, m, r in ((1, 1, 1, 1), (2, 2, 2, 1), (4, 1, 1, 2)):
        plan = Plan.uniform(4, tp=tp, pp=pp, micro_batches=m, replicas=r)
        a = ev.evaluate(plan)
        assert sim.run(plan, timeline=False).metrics.latency_s == pytest.approx(a.latency_s, rel=1e-6)
        assert a.latency_s != pytest.approx(before.evaluate(plan).latency_s, rel=1e-3)  # the terms are used


def _fake_table(phase: str, seconds: np.ndarray | None = None, drop: str = "") -> object:
    """A measured table of the package's layout (no package needed): a grid of shapes, bf16 and fp8 KV."""
    from paratune.costmodel.calibration._aiconfigurator import Table

    grid = np.array(
        [
            (b, s, n, kv, 128, kv_fp8)
            for b in (1, 4, 16, 64, 256)
            for s in ((128, 512, 2048, 8192) if phase == "prefill" else (1, 255, 4095, 32767))
            for n, kv in ((8, 1), (32, 8), (64, 8))
            for kv_fp8 in (0, 1)
        ],
        dtype=float,
    )
    n_rows = len(grid)
    cols = {
        "batch_size": grid[:, 0].astype(int),
        "isl": grid[:, 1].astype(int) if phase == "prefill" else np.ones(n_rows, dtype=int),
        "step": np.zeros(n_rows, dtype=int) if phase == "prefill" else grid[:, 1].astype(int),
        "num_heads": grid[:, 2].astype(int),
        "num_key_value_heads": grid[:, 3].astype(int),
        "head_dim": grid[:, 4].astype(int),
        "window_size": np.zeros(n_rows, dtype=int),
        "attn_dtype": np.array(["bfloat16"] * n_rows),
        "kv_cache_dtype": np.where(grid[:, 5] > 0, "fp8", "bfloat16"),
        "seconds": np.ones(n_rows) if seconds is None else seconds,
    }
    cols.pop(drop, None)
    return Table(cols, "fake", "attention", "trtllm", "1.0", phase, {"table": f"fake/{phase}.parquet"})


@pytest.mark.parametrize(("phase", "join"), [("prefill", None), ("decode", None), ("decode", 3.0)])
def test_fit_recovers_the_terms_that_made_the_times(
    phase: str, join: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("scipy")
    from paratune.costmodel.calibration import _aic_attention as aic

    spec = {"gpu": {"bfloat16_tc_flops": 989e12, "mem_bw": 4.8e12}}
    monkeypatch.setattr(aic, "system_spec", lambda system: spec)
    truth = dataclasses.replace(TERMS[phase], join_exponent=join)
    monkeypatch.setattr(aic, "read_table", lambda *a, **k: _fake_table(phase))
    seconds = aic.read_rows("fake", phase).predict(truth)
    monkeypatch.setattr(aic, "read_table", lambda *a, **k: _fake_table(phase, seconds))
    rows = aic.read_rows("fake", phase)
    fitted_terms = aic.fit_phase([rows])
    assert np.allclose(rows.predict(fitted_terms), rows.seconds, rtol=0.01)
    assert fitted_terms.overhead_s == pytest.approx(truth.overhead_s, rel=0.05)
    # A table without a column the fit needs: a ValueError naming it.
    monkeypatch.setattr(aic, "read_table", lambda *a, **k: _fake_table(phase, seconds, drop="num_heads"))
    with pytest.raises(ValueError, match="num_heads"):
        aic.read_rows("fake", phase)


# -- the residual over (kv_len, kv_elems, gqa) ----------------------------------------------------------


def _residual(seed: int = 0) -> AttentionResidual:
    """A residual with distinct values in every cell (so a wrong cell or weight shows)."""
    grids = (np.arange(0.0, 15.0), np.arange(8.0, 22.0), np.arange(0.0, 5.0))
    values = np.random.default_rng(seed).uniform(-0.4, 0.4, tuple(len(g) for g in grids))
    return AttentionResidual(*grids, np.round(values, 4))


def test_residual_round_trips_and_refuses_bad_values() -> None:
    terms = {k: dataclasses.replace(v, residual=_residual(i)) for i, (k, v) in enumerate(TERMS.items())}
    prof = dataclasses.replace(_profile_with_terms(), attention_phases=terms)
    data = prof.to_dict()
    back = Profile.from_dict(data, "t")
    assert back.to_dict() == data
    assert all(back.attention_phases[k].residual == v.residual for k, v in terms.items())
    assert "residual" not in _profile_with_terms().to_dict()["attention_phases"]["decode"]  # optional
    rows = len(data["attention_phases"]["decode"]["residual"]["values"])
    for field, value, message in (
        ("values", ["0 0 0 0 nan"] * rows, "finite numbers"),
        ("values", ["0 0 0 0 9"] * rows, "within -3..3"),
        ("values", ["0 0 0 0"] * rows, "5 finite numbers"),
        ("values", ["0 0 0 0 0"] * (rows - 1), f"list of {rows} strings"),
        ("log2_gqa", [0, 1, 1, 2, 3], "increase strictly"),
        ("log2_kv_len", [0, float("inf")], "finite numbers"),
        ("log2_kv_elems", np.linspace(0.0, 40.0, 1000).tolist(), "cells"),
        ("typo", 1, "unknown field"),
    ):
        bad = prof.to_dict()
        bad["attention_phases"]["decode"]["residual"][field] = value
        with pytest.raises(ValueError, match=message) as err:
            Profile.from_dict(bad, "t")
        assert "attention_phases.decode.residual" in str(err.value)


@pytest.mark.parametrize(("phase", "kv_dtype", "tp"), [("prefill", None, 2), ("decode", None, 2), ("decode", "fp8", 8)])
def test_pricer_applies_the_residual_at_the_rows_features(phase: str, kv_dtype: str | None, tp: int) -> None:
    """The pricer reads (kv_len, sequences x KV elements, gqa) from the row alone, as the fit counts them."""
    residual = _residual()
    terms = {k: dataclasses.replace(v, residual=residual) for k, v in TERMS.items()}
    plain = dataclasses.replace(get_platform(BASE), profile=_profile_with_terms())
    plat = dataclasses.replace(plain, profile=dataclasses.replace(plain.profile, attention_phases=terms))
    spec = dataclasses.replace(SPEC, kv_dtype=kv_dtype) if kv_dtype else SPEC
    batch, seq = 8, 2048
    graph = build_spec_graph(spec, phase=phase, batch=batch, seq=seq, context=seq if phase == "decode" else 0)
    table = OpTable.from_ops(graph.task("L0.attention").ops)
    kv_len = seq if phase == "prefill" else seq + 1
    kv_heads = SPEC.kv_heads / min(tp, SPEC.kv_heads)
    kv_elems = batch * 2 * kv_heads * SPEC.head_dim
    gqa = SPEC.heads / SPEC.kv_heads
    factor = float(np.exp(residual.correction(np.array([kv_len]), np.array([kv_elems]), np.array([gqa]))[0]))
    assert abs(np.log(factor)) > 1e-3  # the check below can fail
    for scale in (1.0, 0.5):
        with_residual = KernelPricer.for_graph(plat, graph.meta).op_times(table, tp, scale)[0]
        smooth = KernelPricer.for_graph(plain, graph.meta).op_times(table, tp, scale)[0]
        if scale == 0.5:  # half the sequences per micro-batch: half the KV elements
            kv_half = np.array([kv_elems / 2])
            factor = float(np.exp(residual.correction(np.array([kv_len]), kv_half, np.array([gqa]))[0]))
        assert with_residual == pytest.approx(smooth * factor, rel=1e-9)


def test_row_features_of_the_graph_op_are_the_measured_rows() -> None:
    """``row_features`` of a zoo op gives the (kv_len, kv_elems, gqa) that ``read_rows`` records for its shape."""
    from paratune.costmodel._attention import row_features

    for phase, kv_dtype, tp in (("prefill", None, 1), ("decode", None, 4), ("decode", "fp8", 2)):
        spec = dataclasses.replace(SPEC, kv_dtype=kv_dtype) if kv_dtype else SPEC
        batch, seq = 4, 1024
        graph = build_spec_graph(spec, phase=phase, batch=batch, seq=seq, context=seq if phase == "decode" else 0)
        t = OpTable.from_ops(graph.task("L0.attention").ops)
        q_len = seq if phase == "prefill" else 1
        kv_bytes = 1.0 if kv_dtype else 2.0
        kv_len, kv_elems, gqa = row_features(
            t.flops / tp, t.output_bytes / tp, batch * t.kv_bytes_per_token / tp, batch, q_len, 2.0, kv_bytes
        )
        assert kv_len[0] == pytest.approx(seq if phase == "prefill" else seq + 1, rel=1e-12)
        assert kv_elems[0] == pytest.approx(batch * 2 * SPEC.kv_heads / tp * SPEC.head_dim, rel=1e-12)
        assert gqa[0] == pytest.approx(SPEC.heads / SPEC.kv_heads, rel=1e-12)


def test_fit_residual_recovers_the_steps_that_made_the_times(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("scipy")
    from paratune.costmodel.calibration import _aic_attention as aic

    spec = {"gpu": {"bfloat16_tc_flops": 989e12, "mem_bw": 4.8e12}}
    monkeypatch.setattr(aic, "system_spec", lambda system: spec)
    monkeypatch.setattr(aic, "read_table", lambda *a, **k: _fake_table("decode"))
    rows = aic.read_rows("fake", "decode")
    terms = TERMS["decode"]
    kv_len, kv_elems, gqa = rows.features()
    steps = 0.3 * (kv_len > 1000) - 0.2 * (kv_elems > 1e5) + 0.1 * (gqa >= 8)  # +35%, -18%, +11%
    monkeypatch.setattr(aic, "read_table", lambda *a, **k: _fake_table("decode", rows.predict(terms) * np.exp(steps)))
    measured = aic.read_rows("fake", "decode")
    residual = aic.fit_residual([measured.where(aic.fitted(measured))], terms)
    used = measured.where(aic.fitted(measured))
    fitted = residual.correction(*used.features())
    assert np.abs(fitted - steps[aic.fitted(measured)]).max() <= 0.02
    priced = dataclasses.replace(terms, residual=residual)
    assert np.allclose(used.predict(priced), used.seconds, rtol=0.02)
