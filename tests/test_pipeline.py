"""The training pipeline's slot order and makespan (costmodel/_pipeline.py), interleaved 1F1B included."""

from __future__ import annotations

import numpy as np
import pytest

from paratune.costmodel._pipeline import in_flight, peak_stash, slot_order, stage_order, training_makespan

GRID = [(p, m, v) for p in (2, 3, 4, 8) for m in (p, 2 * p, 4 * p) for v in (2, 3, 4)]


def _uniform(p: int, m: int, v: int, f: float, b: float, c: float = 0.0) -> float:
    n = p * v
    return training_makespan([f / v] * n, [b / v] * n, [c] * (n - 1), [0.0] * p, m, False, virtual=v)


@pytest.mark.parametrize(("p", "m", "v"), GRID)
def test_interleaved_bubble_is_the_closed_form(p: int, m: int, v: int) -> None:
    """Uniform chunks, free hops: step = m (f + b) (1 + (p - 1) / (v m)), Narayanan et al. (2021)'s bubble."""
    f, b = 1.0, 2.0
    step = _uniform(p, m, v, f, b)
    assert step == pytest.approx(m * (f + b) * (1 + (p - 1) / (v * m)), rel=1e-12)


def test_one_virtual_stage_is_the_textbook_1f1b() -> None:
    """v = 1 is plain 1F1B: (m + p - 1)(f + b) with free hops; a hop adds at least 2 (p - 1) c."""
    for p, m in ((1, 1), (4, 8), (3, 7), (8, 2)):
        step = training_makespan([1.0] * p, [2.0] * p, [0.0] * (p - 1), [0.0] * p, m, False, virtual=1)
        assert step == pytest.approx((m + p - 1) * 3.0, rel=1e-12)
        slow = training_makespan([1.0] * p, [2.0] * p, [0.1] * (p - 1), [0.0] * p, m, False)
        assert slow >= step + 2 * (p - 1) * 0.1 - 1e-12


@pytest.mark.parametrize(("p", "m", "v"), [*GRID, (4, 8, 1), (3, 5, 1)])
def test_slot_order_runs_every_slot_once_after_what_it_needs(p: int, m: int, v: int) -> None:
    order = slot_order(p, m, False, v)
    assert len(order) == len(set(order)) == 2 * p * v * m
    seen: set[tuple[int, bool, int]] = set()
    for k, back, q in order:
        need = ((k, False, q) if k == p * v - 1 else (k + 1, True, q)) if back else (k - 1, False, q)
        assert (k == 0 and not back) or need in seen, (k, back, q)
        seen.add((k, back, q))
    for s in range(p):  # each stage keeps its own order, and runs only its own chunks
        mine = [x for x in order if x[0] % p == s]
        assert tuple(mine) == stage_order(p, m, False, s, v)


@pytest.mark.parametrize(("p", "m", "v"), [(4, 8, 2), (2, 6, 3), (8, 16, 4)])
def test_interleaved_order_is_megatron_cores(p: int, m: int, v: int) -> None:
    """Warm-up 2 (p - s - 1) + (v - 1) p forwards; virtual micro-batch j on local chunk (j // p) mod v."""
    for s in range(p):
        order = stage_order(p, m, False, s, v)
        warm = min(m * v, 2 * (p - s - 1) + (v - 1) * p)
        first_back = next(i for i, x in enumerate(order) if x[1])
        assert first_back == min(warm + 1, m * v)  # the warm-up, then one forward before the first backward
        fwd = [x for x in order if not x[1]]
        bwd = [x for x in order if x[1]]
        for j, ((kf, _, qf), (kb, _, qb)) in enumerate(zip(fwd, bwd, strict=True)):
            assert kf == ((j // p) % v) * p + s and kb == (v - 1 - (j // p) % v) * p + s
            assert qf == qb == (j // (p * v)) * p + j % p


def test_in_flight_matches_korthikanti_interleaved_factor() -> None:
    """Stage 0 holds p + (p - 1)/v stage-sized stashes: (1 + (p - 1)/(p v)) x p; 1F1B min(m, p - s); GPipe m."""
    for p, v in ((4, 2), (8, 4), (2, 3)):
        m = 4 * p
        assert in_flight(p, m, 0, virtual=v) / v == pytest.approx(p + (p - 1) / v, rel=1e-12)
        assert [in_flight(p, m, s, virtual=v) for s in range(p)] == [
            min(m * v, 2 * (p - s - 1) + (v - 1) * p + 1) for s in range(p)
        ]
    assert [in_flight(4, 3, s) for s in range(4)] == [3, 3, 2, 1]
    assert in_flight(4, 6, 2, gpipe=True) == 6
    # p=2, stage 0: warm-up F(c0,q0) F(c0,q1) F(c1,q0) F(c1,q1), then F(c0,q2) before the first backward
    assert peak_stash(2, 4, 0, (1.0, 3.0)) == pytest.approx(3 * 1.0 + 2 * 3.0)


def test_interleaved_hops_cost_more_than_plain_ones() -> None:
    """v times more hops: slow links make interleaving lose, and a micro-batch's chain crosses p v - 1 hops."""
    p, m = 4, 8
    assert _uniform(p, m, 2, 1.0, 2.0, c=0.05) < _uniform(p, m, 1, 1.0, 2.0, c=0.05)
    assert _uniform(p, m, 4, 1.0, 2.0, c=0.5) > _uniform(p, m, 1, 1.0, 2.0, c=0.5)
    assert _uniform(p, m, 2, 1.0, 2.0, c=2.0) > _uniform(p, m, 1, 1.0, 2.0, c=2.0)
    assert _uniform(p, p, 3, 1e-9, 1e-9, c=1.0) >= 2 * (p * 3 - 1) * 1.0


def test_batched_form_equals_one_plan_at_a_time() -> None:
    rng = np.random.default_rng(5)
    p, m, v, n = 3, 6, 2, 7
    f = rng.uniform(0.1, 1.0, (p * v, n))
    b = f * rng.uniform(1.0, 3.0, (p * v, n))
    hops = rng.uniform(0.0, 0.3, (p * v - 1, n))
    tails = rng.uniform(0.0, 0.5, (p, n))
    batched = training_makespan(list(f), list(b), list(hops), list(tails), m, False, np.maximum, np.zeros(n), v)
    for j in range(n):
        one = training_makespan(
            f[:, j].tolist(), b[:, j].tolist(), hops[:, j].tolist(), tails[:, j].tolist(), m, False, virtual=v
        )
        assert batched[j] == pytest.approx(one, rel=1e-12)


def test_uneven_chunks_are_bounded_by_the_slowest_stage() -> None:
    """Every stage runs all its slots: the step is at least each stage's work; a slow chunk slows the step."""
    p, m, v = 4, 8, 2
    f = [1.0] * (p * v)
    f[5] = 3.0
    b = [2 * x for x in f]
    step = training_makespan(f, b, [0.0] * (p * v - 1), [0.0] * p, m, False, virtual=v)
    work = [m * sum(f[k] + b[k] for k in range(s, p * v, p)) for s in range(p)]
    assert step >= max(work) * (1 - 1e-12)
    assert step > _uniform(p, m, v, 2.0, 4.0)


def test_schedules_that_do_not_exist_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of the 4 pipeline stages"):
        slot_order(4, 6, False, 2)
    with pytest.raises(ValueError, match="gpipe"):
        slot_order(4, 8, True, 2)
    with pytest.raises(ValueError, match="at least 2 pipeline stages"):
        slot_order(1, 4, False, 2)
    with pytest.raises(ValueError, match="8 forward and backward times and 7 hops"):
        training_makespan([1.0] * 4, [1.0] * 4, [0.0] * 3, [0.0] * 4, 8, False, virtual=2)
