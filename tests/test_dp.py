"""The exact solvers: ``dp`` equals ``enumerate`` (brute force over the same space) on random tiny problems."""

from __future__ import annotations

import re

import numpy as np
import pytest

from paratune.search import Limits, Problem, TuneResult, contiguous_plan, even_cuts, tune
from paratune.search._layered_space import LayeredSpace

OBJECTIVES = [
    ("prefill", "ttft"),
    ("prefill", "throughput"),
    ("prefill", "ttft+memory"),
    ("decode", "tbt"),
    ("decode", "throughput"),
    ("decode", "tbt+memory"),
    ("train", "step"),
    ("train", "throughput"),
    ("train", "step+memory"),
]
GIB = 1024**3


def _random_problem(rng: np.random.Generator, phase: str, objective: str) -> Problem:
    """A tiny random problem whose space enumerate can walk in well under a second."""
    while True:
        heads = int(rng.choice([4, 8, 12]))
        layers = int(rng.integers(2, 7))
        model = (
            f"llama2-7b:layers={layers},hidden={heads * 64},heads={heads},kv_heads={heads},ffn={heads * 256},vocab=1000"
        )
        if rng.random() < 0.25:
            platform = "mesh:rows=2,cols=2"
        else:
            platform = f"dgx-a100:devices_per_node={int(rng.choice([2, 4]))},nodes={int(rng.integers(1, 3))}"
        batch = int(rng.choice([1, 2, 4]))
        p = Problem(model, platform, phase=phase, objective=objective, batch=batch, seq=int(rng.choice([64, 256])))
        if rng.random() < 0.4:  # tight memory: a fraction of the weights (+ state when training) per device
            total = p.evaluator().tp_tables(1).weights[-1] * (8 if phase == "train" else 1)
            p = p.with_(limits=Limits(memory_gib=float(total * rng.uniform(0.25, 0.8) / GIB)))
        if LayeredSpace.build(p, max_micro_batches=4).count_plans() <= 3000:
            return p


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def _covers(front: list[tuple[float, ...]], other: list[tuple[float, ...]]) -> bool:
    """Every point of ``other`` is matched (to 1e-9) or dominated by a point of ``front``."""
    return all(any(all(x <= y * (1 + 1e-9) for x, y in zip(f, o, strict=True)) for f in front) for o in other)


def _check(p: Problem) -> tuple[TuneResult, TuneResult]:
    a = tune(p, "enumerate", max_micro_batches=4)
    b = tune(p, "dp", max_micro_batches=4)
    assert _same(a.objective_value, b.objective_value), (p, a.objective_value, b.objective_value)
    assert (a.best_plan is None) == (b.best_plan is None)
    if b.best_plan is not None:
        e = p.score(b.best_plan)
        assert e.feasible and _same(e.value, b.objective_value)
        assert b.optimal
    if p.resolved_objective.multi:
        fa, fb = [v for _, v in a.pareto], [v for _, v in b.pareto]
        assert _covers(fa, fb) and _covers(fb, fa), (p, fa, fb)
    return a, b


@pytest.mark.parametrize(("phase", "objective"), OBJECTIVES)
def test_dp_equals_enumerate(phase: str, objective: str) -> None:
    rng = np.random.default_rng(sum(map(ord, phase + objective)))
    for _ in range(6):  # 9 objectives x 6 = 54 random problems
        _check(_random_problem(rng, phase, objective))


@pytest.mark.parametrize("objective", ["step", "throughput", "step+memory"])
def test_dp_with_trip_floors_on_every_problem_equals_enumerate(objective: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trip-floor prefix tables (used only after large first passes) forced on tiny problems: still exact."""
    from paratune.search import _dp_train

    monkeypatch.setattr(_dp_train, "TRIP_MIN_LABELS", 0)
    rng = np.random.default_rng(77 + len(objective))
    for _ in range(5):
        _check(_random_problem(rng, "train", objective))


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "objective"), OBJECTIVES)
def test_dp_equals_enumerate_more(phase: str, objective: str) -> None:
    rng = np.random.default_rng(1000 + sum(map(ord, phase + objective)))
    for _ in range(25):
        _check(_random_problem(rng, phase, objective))


def test_hybrid_optimum() -> None:
    """Tight memory makes the best plan mix TP degrees across stages; dp finds it like enumerate."""
    # a large vocabulary makes the embedding and LM-head stages heavy: they need TP 2, the middle fits TP 1
    model = "llama2-7b:layers=3,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=128000"
    p = Problem(model, "dgx-a100", phase="decode", batch=1, seq=64, limits=Limits(memory_gib=0.08, max_devices=5))
    _, b = _check(p)
    assert b.best_plan is not None
    assert len({st.tp for st in b.best_plan.stages}) > 1, b.best_plan


def test_infeasible_problem_gives_no_plan() -> None:
    p = Problem("llama2-7b:layers=2", "dgx-a100:devices_per_node=2", phase="train", batch=2, seq=128,
                limits=Limits(memory_gib=0.01))  # fmt: skip
    for name in ("dp", "enumerate"):
        res = tune(p, name)
        assert res.best_plan is None and not res.optimal and res.notes


def test_dp_under_a_fixed_setup_is_the_optimum_of_that_setup() -> None:
    """Options replicas / micro_batches / recompute restrict dp to one batch split: its optimum, no better."""
    p = Problem("llama2-7b:layers=4", "dgx-a100:devices_per_node=4", phase="train", batch=8, seq=256)
    free = tune(p, "dp", max_micro_batches=4)
    assert free.best_plan is not None
    for r, m, rc in ((1, 4, "off"), (2, 2, "on"), (4, 1, "off")):
        fixed = tune(p, "dp", max_micro_batches=4, replicas=r, micro_batches=m, recompute=rc)
        brute = tune(p, "enumerate", max_micro_batches=4, replicas=r, micro_batches=m, recompute=rc)
        plan = fixed.best_plan
        assert plan is not None and (plan.replicas, plan.micro_batches) == (r, m) and fixed.optimal
        assert all(st.recompute == (rc == "on") for st in plan.stages)
        assert fixed.objective_value >= free.objective_value * (1 - 1e-9)
        assert _same(fixed.objective_value, brute.objective_value)
    with pytest.raises(ValueError, match=r"replicas=3, micro_batches=None must divide the batch \(8\)"):
        tune(p, "dp", replicas=3)
    with pytest.raises(ValueError, match="option 'micro_batches' must be a positive integer"):
        tune(p, "dp", micro_batches=0)


def test_enumerate_refuses_large_spaces_and_options_are_checked() -> None:
    p = Problem("llama2-7b", "dgx-a100x2", phase="decode", batch=8)
    with pytest.raises(ValueError, match=r"plans, more than the cap of 1000; raise option 'max_plans'"):
        tune(p, "enumerate", max_plans=1000)
    with pytest.raises(ValueError, match="option 'recompute' is 'maybe'; allowed: search, off, on"):
        tune(p, "dp", recompute="maybe")
    with pytest.raises(ValueError, match="unknown option"):
        tune(p, "dp", colour="red")


HEURISTICS = ("megatron", "serving-default", "min-tp-replicas", "balanced-pp")
#: Small weights, large activations: at 0.25 GiB per device only 8 micro-batches of one sequence fit.
ACTIVATION_HEAVY = "llama2-7b:layers=4,hidden=512,heads=8,kv_heads=8,ffn=2048,vocab=1000"


def _bound_in(notes: list[str]) -> float:
    """The proven lower bound a capped dp states in its notes."""
    found = [re.search(r"proven lower bound ([0-9.e+-]+) s", n) for n in notes]
    values = [float(m.group(1)) for m in found if m]
    assert values, notes
    return values[0]


def test_capped_dp_returns_the_fallbacks_best_plan_with_a_valid_bound() -> None:
    """A label cap of 1 stops dp at once: it still answers with the best plan the fallback found, not certified."""
    p = Problem(ACTIVATION_HEAVY, "dgx-a100:devices_per_node=2", phase="train", batch=8, seq=2048,
                limits=Limits(memory_gib=0.25))  # fmt: skip
    res = tune(p, "dp", max_labels=1)
    assert res.best_plan is not None and not res.optimal
    heuristic = [tune(p, h).objective_value for h in HEURISTICS]
    assert min(v for v in heuristic if v is not None) >= res.objective_value * (1 - 1e-9)
    assert p.score(res.best_plan).feasible
    bound = _bound_in(res.notes)
    assert 0 < bound <= res.objective_value * (1 + 1e-9)
    full = tune(p, "dp", max_micro_batches=8)  # the exact optimum sits between the bound and the plan
    assert full.optimal and bound <= full.objective_value * (1 + 1e-9) <= res.objective_value * (1 + 1e-9) ** 2


def test_capped_dp_bounds_and_gap_passes_hold_on_random_training_problems() -> None:
    """Caps between 1 and the full search: a stated bound never exceeds the optimum, a certified value is it.

    Caps of a few labels stop the exact pass while the gap passes (pruning at best / 1.01,
    then best / 1.05) may finish: they either prove their threshold or find the optimum.
    """
    rng = np.random.default_rng(2024)
    stated = 0
    for _ in range(12):
        p = _random_problem(rng, "train", "step")
        exact = tune(p, "enumerate", max_micro_batches=4).objective_value
        if exact is None:
            continue
        for cap in (2, 4, 8, 16, 32, 64):
            res = tune(p, "dp", max_micro_batches=4, max_labels=cap)
            assert res.objective_value is not None, (p, cap, res.notes)
            if res.optimal:
                assert _same(res.objective_value, exact), (p, cap, res.objective_value, exact)
                continue
            if any("proven lower bound" in n for n in res.notes):
                stated += 1
                assert _bound_in(res.notes) <= exact * (1 + 1e-5), (p, cap, res.notes, exact)  # 6 digits
    assert stated > 0  # some caps did stop dp


def test_dp_answers_with_a_plan_outside_its_space_rather_than_claim_infeasibility() -> None:
    """Micro-batches <= 2 cannot fit (enumerate proves it); 8 can: dp returns that plan, not certified."""
    p = Problem(ACTIVATION_HEAVY, "dgx-a100:devices_per_node=2", phase="train", batch=8, seq=2048,
                limits=Limits(memory_gib=0.25))  # fmt: skip
    assert tune(p, "enumerate", max_micro_batches=2).best_plan is None
    res = tune(p, "dp", max_micro_batches=2)
    assert res.best_plan is not None and res.best_plan.micro_batches > 2 and not res.optimal
    assert p.score(res.best_plan).feasible
    assert any("no plan of dp's space beats this one, proven" in n for n in res.notes), res.notes


@pytest.mark.parametrize("phase", ["train", "decode", "prefill"])
def test_dp_never_reports_infeasible_where_a_heuristic_finds_a_plan(phase: str) -> None:
    """Random tiny problems, dp at its default and with a space of one micro-batch and a label cap of 1."""
    rng = np.random.default_rng(7 + len(phase))
    objective = {"train": "step", "decode": "tbt", "prefill": "ttft"}[phase]
    for _ in range(6):
        p = _random_problem(rng, phase, objective)
        found = [tune(p, h).objective_value for h in HEURISTICS]
        best = min((v for v in found if v is not None), default=None)
        for options in ({"max_micro_batches": 4}, {"max_micro_batches": 1, "max_labels": 1}):
            res = tune(p, "dp", **options)
            if best is not None:
                assert res.best_plan is not None, (p, options, res.notes)
                if not res.optimal:  # the fallback ran: no heuristic beats its answer
                    assert res.objective_value <= best * (1 + 1e-9), (p, options)
            if res.best_plan is None:
                assert res.notes and not res.optimal


@pytest.mark.slow
def test_gpt3_training_on_64_a100_gets_a_feasible_plan() -> None:
    """A reported case: dp hit its label cap and said "does not fit" although TP 8 x PP 8 x 512 fits."""
    p = Problem("gpt3-175b", "dgx-a100x8", phase="train", batch=512, seq=2048)
    res = tune(p, "dp")
    assert res.best_plan is not None and p.score(res.best_plan).feasible
    reference = p.score(
        contiguous_plan(even_cuts(p.n_layers, 8, 8), micro_batches=512, granularity="layer", recompute=True)
    )
    assert reference.feasible and res.objective_value <= reference.value * (1 + 1e-9)
    if not res.optimal:
        assert not any(n.startswith("no feasible plan") for n in res.notes), res.notes


def test_capped_step_memory_front_says_why_it_has_no_gap() -> None:
    """A Pareto objective has no single value to prune with: the capped note says so, and its step bound holds."""
    p = Problem("llama2-7b:layers=6", "dgx-a100:devices_per_node=4", phase="train", objective="step+memory",
                batch=8, seq=256)  # fmt: skip
    res = tune(p, "dp", max_labels=3)
    assert not res.optimal and any("no gap is proven" in n for n in res.notes), res.notes
    full = tune(p, "dp")
    assert full.optimal and full.pareto
    fastest = min(v[0] for _, v in full.pareto)
    assert _bound_in(res.notes) <= fastest * (1 + 1e-5)


def test_training_bound_never_exceeds_the_makespan() -> None:
    """dp's per-plan bound (1F1B terms with fill and drain waits) against the slot-level makespan, random stages."""
    from paratune.costmodel._pipeline import training_makespan
    from paratune.search._dp_train import _prepend

    rng = np.random.default_rng(11)
    tight = 0
    for _ in range(400):
        p, m = int(rng.integers(1, 9)), int(rng.integers(1, 13))
        f = rng.uniform(0.1, 1.0, p) * rng.choice([1.0, 5.0], p)
        b = f * rng.uniform(1.0, 3.0, p)
        hops = rng.uniform(0.0, 0.3, p - 1) * rng.choice([0.0, 1.0])
        tails = rng.uniform(0.0, 0.5, p)
        P = Q = trip = 0.0
        for k, s in enumerate(range(p - 1, -1, -1)):
            hop = hops[s] if s < p - 1 else 0.0
            c_next = f[s + 1] + b[s + 1] if s < p - 1 else None
            P, Q, trip = (float(x) for x in _prepend(P, Q, trip, f[s], b[s], hop, tails[s], k, m, c_next))
        bound = max(P + tails[0], Q)
        step = training_makespan(list(f), list(b), list(hops), list(tails), m, False)
        assert bound <= step * (1 + 1e-12), (p, m, bound, step)
        tight += bound >= step * (1 - 1e-9)
    assert tight > 40  # exact on many (uniform-like) cases, so the test can see a bound that is too high


def test_training_bound_sees_two_bottleneck_stages_across_a_slow_link() -> None:
    """Equal stages, one slow hop: 1F1B alternates over that link, which the pair term prices (1-4 % missed before)."""
    from paratune.costmodel._pipeline import training_makespan
    from paratune.search._dp_train import _prepend

    def bound(f: list[float], b: list[float], hops: list[float], tails: list[float], m: int, pair: bool) -> float:
        P = Q = trip = 0.0
        for k, s in enumerate(range(len(f) - 1, -1, -1)):
            hop = hops[s] if s < len(f) - 1 else 0.0
            c_next = f[s + 1] + b[s + 1] if pair and s < len(f) - 1 else None
            P, Q, trip = (float(x) for x in _prepend(P, Q, trip, f[s], b[s], hop, tails[s], k, m, c_next))
        return max(P + tails[0], Q)

    for p, m, slow in ((3, 8, 0.1), (4, 16, 0.05), (8, 64, 0.01)):
        f, b, tails = [0.25] * p, [0.75] * p, [0.05] * p
        hops = [0.001] * (p - 1)
        hops[p // 2 - 1] = slow
        step = training_makespan(f, b, hops, tails, m, False)
        assert bound(f, b, hops, tails, m, True) == pytest.approx(step, rel=1e-9)
        assert bound(f, b, hops, tails, m, False) < step * (1 - 0.005)


def test_gap_ladder_runs_coarse_passes_first_and_keeps_the_finest_proven(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gap passes after the cap: coarsest first, stop at the first one the cap cuts short, certify on a find.

    A stub search whose labels grow as the threshold nears the optimum (as on large
    problems) stands in for the suffix search, so the ladder's bookkeeping is checked alone.
    """
    from types import SimpleNamespace

    from paratune.search import _dp_train

    class Stub(_dp_train.TrainDP):
        def __init__(self, optimum: float, open_bound: float, max_labels: int) -> None:
            self.optimum, self.max_labels, self.thresholds = optimum, max_labels, []
            self.labels, self.gap_labels, self.best, self.best_item = 7, 0, 100.0, ("incumbent",)
            self.open_bound, self.stopped, self._caps = open_bound, True, {}
            self.space = SimpleNamespace(_cache={})

        def _solve(self, r: int, m: int, dev: int) -> None:
            self.thresholds.append(self.best)
            if self.best > self.optimum:  # a plan below the threshold: found with few labels
                self.labels += 100
                self.best, self.best_item = self.optimum, ("optimum",)
            else:
                self.labels += int(10 / (1 - self.best / self.optimum))

    combos = [(50.0, 1, 4, 8)]
    assert tuple(sorted(_dp_train.GAPS, reverse=True)) == _dp_train.GAPS
    monkeypatch.setattr(_dp_train, "GAPS", (0.05, 0.02, 0.01, 0.005))
    # the incumbent is the optimum: 5 %, 2 %, 1 % finish (210 + 510 + 1010 labels of the 2500 they share),
    # 0.5 % (2010) is cut short
    dp = Stub(optimum=100.0, open_bound=90.0, max_labels=2500)
    dp._gap_passes(combos)
    assert [round(t, 3) for t in dp.thresholds] == [95.238, 98.039, 99.01, 99.502]
    assert dp.open_bound == pytest.approx(100 / 1.01, rel=1e-12) and dp.stopped
    assert (dp.best, dp.best_item, dp.labels) == (100.0, ("incumbent",), 7)  # the incumbent and the exact count back
    # an optimum 0.6 % below the incumbent: 5 %, 2 %, 1 % finish (3515 labels), the 0.5 % pass finds it and certifies
    dp = Stub(optimum=99.4, open_bound=90.0, max_labels=4000)
    dp._gap_passes(combos)
    assert [round(t, 3) for t in dp.thresholds] == [95.238, 98.039, 99.01, 99.502]
    assert not dp.stopped and (dp.best, dp.best_item) == (99.4, ("optimum",))
    assert dp.open_bound == pytest.approx(100 / 1.01, rel=1e-12)
    # the exact pass already proved more than 5 %: that pass is skipped; a tight cap stops at 2 %
    dp = Stub(optimum=100.0, open_bound=97.0, max_labels=300)
    dp._gap_passes(combos)
    assert [round(t, 3) for t in dp.thresholds] == [98.039] and dp.open_bound == 97.0 and dp.stopped
    # the budget is shared: with 1500 the 1 % pass gets only the 780 labels 5 % and 2 % left
    dp = Stub(optimum=100.0, open_bound=90.0, max_labels=1500)
    dp._gap_passes(combos)
    assert [round(t, 3) for t in dp.thresholds] == [95.238, 98.039, 99.01]
    assert dp.open_bound == pytest.approx(100 / 1.02, rel=1e-12) and dp.max_labels == 1500


def test_prefix_tables_with_trip_floors_never_exceed_the_makespan() -> None:
    """Every split of random feasible training plans: the prefix tables at the suffix's trip floor bound the step.

    The exact pass completes a suffix with the tables of the highest floor below its round
    trip (``TrainDP._trip_tables``); the completed bound must stay below the slot-level 1F1B
    makespan of every plan, and the floors must raise the prefix's own terms on some splits (else the
    test sees nothing).
    """
    from paratune.costmodel._pipeline import training_makespan
    from paratune.search._dp_train import TRIP_FLOORS, TrainDP, _prepend
    from paratune.search._tuner import Recorder

    rng = np.random.default_rng(5)
    checked = raised = 0
    while checked < 150:
        p = _random_problem(rng, "train", "step")
        space = LayeredSpace.build(p, max_micro_batches=4)
        dp = TrainDP(space, Recorder(p, "dp", None), 10**6)
        for k in rng.choice(len(space.pairs), min(2, len(space.pairs)), replace=False):
            r, m = space.pairs[int(k)]
            share, budget = r * m, space.max_devices // r
            grid, tabs = dp._trip_tables(r, m, TRIP_FLOORS)
            assert grid[0] == 0.0 and np.all(np.diff(grid) > 0)
            K = dp._followers(m)
            for _ in range(40):
                n_st = int(rng.integers(1, min(space.n_cuts, budget) + 1))
                cuts = sorted(rng.choice(np.arange(1, space.n_cuts), n_st - 1, replace=False).tolist())
                bounds = list(zip([0, *cuts], [c - 1 for c in cuts] + [space.n_cuts - 1], strict=True))
                tps = [int(rng.choice([t for t in space.tps if t <= budget])) for _ in bounds]
                if sum(tps) > budget:
                    continue
                dev, stages, d0 = sum(tps), [], 0
                for s, ((i, j), t) in enumerate(zip(bounds, tps, strict=True)):
                    kept = min(m, n_st - s)
                    rc = bool(rng.integers(2)) and True in space.recompute
                    fits = space.train_need(t, share, m, kept, rc)[i, j] <= space.limit
                    f, b = space.train_times(t, share, space.group_link(t, d0), rc)
                    tail = space.train_tail(t, share, d0, dev, r)[i, j]
                    hop = space.hop(j + 1, d0 + t, share) if s < n_st - 1 else 0.0
                    stages.append((i, d0, fits and space.allowed(t, share)[i, j], f[i, j], b[i, j], tail, hop))
                    d0 += t
                if not all(st[2] for st in stages):
                    continue
                fwd, back = [st[3] for st in stages], [st[4] for st in stages]
                step = training_makespan(fwd, back, [st[6] for st in stages[:-1]], [st[5] for st in stages], m, False)
                P = Q = trip = 0.0
                for k, s in enumerate(range(n_st - 1, 0, -1)):  # suffixes stages[s:], prefixes stages[:s]
                    i, d0, _ok, f, b, tail, hop = stages[s]
                    c_next = fwd[s + 1] + back[s + 1] if s < n_st - 1 else None
                    P, Q, trip = (float(x) for x in _prepend(P, Q, trip, f, b, hop, tail, k, m, c_next))
                    ta, tb, taq, tf = tabs[min(k + 1, K)]
                    g = int(np.searchsorted(grid, trip, side="right")) - 1
                    bound = max(ta[g, i, d0], tb[g, i, d0] + P, taq[g, i, d0], tf[g, i, d0] + Q)
                    assert bound <= step * (1 + 1e-9), (p, r, m, stages, s, bound, step)
                    raised += max(ta[g, i, d0], taq[g, i, d0]) > max(ta[0, i, d0], taq[0, i, d0])
                    checked += 1
    assert raised > 0
