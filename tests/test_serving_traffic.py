"""Traffic specs, CSV traces and the requests drawn from them: parsing, errors, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from paratune.configs import __file__ as configs_init
from paratune.serving import (
    PRESETS,
    Lengths,
    Trace,
    Traffic,
    _traffic,
    lengths_from_spec,
    read_trace,
    sample_requests,
    traffic_from_spec,
)

EXAMPLE = Path(configs_init).parent / "workloads" / "serving-chat.csv"


def test_length_specs() -> None:
    assert lengths_from_spec("fixed:128") == Lengths("fixed", mean=128.0)
    u = lengths_from_spec("uniform:10-30")
    assert (u.kind, u.low, u.high, u.mean) == ("uniform", 10, 30, 20.0)
    ln = lengths_from_spec(" lognormal:1024,0.8 ")
    assert (ln.kind, ln.mean, ln.sigma) == ("lognormal", 1024.0, 0.8)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("fixed", "not a length spec"),
        ("fixed:abc", "not an integer"),
        ("fixed:0", "'mean'"),
        ("uniform:5", "LO-HI"),
        ("uniform:30-10", "'low' .30. is above 'high'"),
        ("lognormal:100,nan", "not a finite number"),
        ("lognormal:100,9", "'sigma'"),
        ("gamma:3", "unknown kind 'gamma'"),
        (f"fixed:{(1 << 24) + 1}", "'mean'"),
    ],
)
def test_bad_length_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lengths_from_spec(spec, "prompt lengths")


def test_lengths_validation() -> None:
    with pytest.raises(ValueError, match="kind 'zipf'"):
        Lengths("zipf")
    with pytest.raises(ValueError, match=r"\(low \+ high\) / 2"):
        Lengths("uniform", mean=5.0, low=1, high=3)
    with pytest.raises(ValueError, match="mean of 'values'"):
        Lengths("empirical", mean=3.0, values=(1, 2))
    with pytest.raises(ValueError, match="'values' is empty"):
        Lengths("empirical", mean=3.0)
    with pytest.raises(ValueError, match="'mean' must be a finite number > 0"):
        Lengths("fixed", mean=0.0)
    assert Lengths("fixed", mean=10.4).mean == 10.4  # the analytic model takes fractional means; draws round


def test_traffic_validation() -> None:
    p = Lengths("fixed", mean=10.0)
    with pytest.raises(ValueError, match="exactly one"):
        Traffic(p, p)
    with pytest.raises(ValueError, match="'rate'"):
        Traffic(p, p, rate=float("inf"))
    with pytest.raises(ValueError, match="'concurrency'"):
        Traffic(p, p, concurrency=0)
    with pytest.raises(ValueError, match="arrival_s must be finite"):
        Trace((1, 2), (1, 1), (0.0, float("nan")))


def test_presets_and_specs() -> None:
    t = traffic_from_spec("chat", rate=3.0)
    assert (t.prompt, t.output, t.rate, t.concurrency) == (*PRESETS["chat"], 3.0, None)
    t = traffic_from_spec("fixed:100/uniform:1-9", concurrency=4)
    assert (t.prompt.mean, t.output.mean, t.concurrency) == (100.0, 5.0, 4)
    with pytest.raises(ValueError, match="give a rate"):
        traffic_from_spec("chat")
    with pytest.raises(ValueError, match="allowed: a preset"):
        traffic_from_spec("chatty", rate=1.0)
    with pytest.raises(ValueError, match="output lengths: 'fixed:x'"):
        traffic_from_spec("fixed:1/fixed:x", rate=1.0)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_trace_with_arrivals_is_replayed(tmp_path: Path) -> None:
    path = _csv(tmp_path, "# a comment\narrival_s,prompt_tokens,output_tokens\n1.0,10,2\n\n1.5,20,3\n3.0,30,4\n")
    t = traffic_from_spec(str(path))
    assert t.rate == pytest.approx(2 / 2.0, rel=1e-12)
    assert t.prompt.kind == "empirical" and t.prompt.mean == pytest.approx(20.0)
    r = sample_requests(t, 7, seed=5)
    np.testing.assert_array_equal(r.prompt, [10, 20, 30, 10, 20, 30, 10])
    np.testing.assert_array_equal(r.output, [2, 3, 4, 2, 3, 4, 2])
    period = 2.0 * 3 / 2  # span plus one mean gap
    np.testing.assert_allclose(r.arrival_s, [0, 0.5, 2, period, period + 0.5, period + 2, 2 * period], atol=1e-12)
    # a rate given replaces the recorded arrivals (the trace gives the lengths only)
    t2 = traffic_from_spec(str(path), rate=10.0)
    assert t2.trace is not None and t2.trace.arrival_s == ()
    assert not np.allclose(sample_requests(t2, 3, 0).arrival_s, [0, 0.5, 2])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prompt_tokens,output_tokens\n10,x\n", r"row 2, column 'output_tokens': 'x'"),
        ("prompt_tokens,output_tokens\n10,0\n", r"row 2, column 'output_tokens': '0'"),
        ("arrival_s,prompt_tokens,output_tokens\n0,1,1\ninf,1,1\n", r"row 3, column 'arrival_s': 'inf'"),
        ("arrival_s,prompt_tokens,output_tokens\n2,1,1\n1,1,1\n", r"row 3, column 'arrival_s'.*row above"),
        ("prompt_tokens\n10\n", "column 'output_tokens' is missing"),
        ("prompt_tokens,output_tokens,batch\n1,1,1\n", "column 'batch' is unknown"),
        ("prompt_tokens,output_tokens\n1,1,1\n", "row 2 has 3 value"),
        ("prompt_tokens,output_tokens\n", "no rows"),
        ("# nothing\n", "empty trace"),
        ("prompt_tokens,output_tokens\n99999999,1\n", "row 2, column 'prompt_tokens'"),
    ],
)
def test_bad_traces(tmp_path: Path, text: str, match: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        traffic_from_spec(str(path), rate=1.0)
    assert str(path) in str(info.value)


def test_trace_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_traffic, "MAX_REQUESTS", 3)
    path = _csv(tmp_path, "prompt_tokens,output_tokens\n" + "1,1\n" * 4)
    with pytest.raises(ValueError, match="rows is 4; at most 3"):
        read_trace(path)
    path.write_text("prompt_tokens,output_tokens\n" + "1,1\n" * 2000)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        _traffic.read_text(path, "a trace CSV", limit=100)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_trace(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="span no time"):
        traffic_from_spec(str(_csv(tmp_path, "arrival_s,prompt_tokens,output_tokens\n1,1,1\n1,2,2\n")))


def test_example_trace_reads() -> None:
    t = traffic_from_spec(str(EXAMPLE))
    assert t.trace is not None and len(t.trace) >= 100 and t.trace.arrival_s
    assert 0.5 < (t.rate or 0) < 20


def test_sampling_is_seeded_and_has_the_stated_moments() -> None:
    t = traffic_from_spec("lognormal:1024,0.8/uniform:1-99", rate=4.0)
    a, b = sample_requests(t, 100_000, seed=3), sample_requests(t, 100_000, seed=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.prompt, sample_requests(t, 100_000, seed=4).prompt)
    assert a.prompt.mean() == pytest.approx(1024, rel=0.02)  # the mean, not the median
    assert np.median(a.prompt) == pytest.approx(1024 * np.exp(-0.32), rel=0.02)
    assert a.output.min() == 1 and a.output.max() == 99 and a.output.mean() == pytest.approx(50, rel=0.02)
    gaps = np.diff(a.arrival_s, prepend=0.0)
    assert gaps.min() > 0 and gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert gaps.std() == pytest.approx(0.25, rel=0.03)  # exponential: std = mean


def test_fixed_draws_round_to_whole_tokens() -> None:
    t = Traffic(Lengths("fixed", mean=10.6), Lengths("fixed", mean=0.3), concurrency=1)
    r = sample_requests(t, 3, seed=0)
    assert r.prompt.tolist() == [11, 11, 11] and r.output.tolist() == [1, 1, 1]


def test_common_random_numbers_across_rates() -> None:
    slow = sample_requests(traffic_from_spec("chat", rate=2.0), 500, seed=9)
    fast = sample_requests(traffic_from_spec("chat", rate=8.0), 500, seed=9)
    np.testing.assert_array_equal(slow.prompt, fast.prompt)
    np.testing.assert_allclose(fast.arrival_s * 4, slow.arrival_s, rtol=1e-12)
    closed = sample_requests(traffic_from_spec("chat", concurrency=8), 500, seed=9)
    assert not closed.arrival_s.any()
    np.testing.assert_array_equal(closed.output, slow.output)


def test_sample_requests_bounds() -> None:
    t = traffic_from_spec("chat", rate=1.0)
    with pytest.raises(ValueError, match="requests is 1,000,001"):
        sample_requests(t, 1_000_001, 0)
    with pytest.raises(ValueError, match="requests must be an integer >= 1"):
        sample_requests(t, 0, 0)
