"""Optuna tuners: every sampler and space on small problems, constraints, seeds, storage, quality."""

from __future__ import annotations

from pathlib import Path

import pytest

from paratune.costmodel import Plan
from paratune.graphs._toy import toy_graph
from paratune.search import Limits, Problem, make_tuner, tune
from paratune.search._optuna import SAMPLERS

SCENARIOS = Path(__file__).resolve().parent.parent / "benchmarks" / "scenarios"
SMALL = dict(model="llama2-7b:layers=8", platform="dgx-a100", phase="decode", batch=8, context=512)


def small(**changes: object) -> Problem:
    return Problem(**{**SMALL, **changes})  # type: ignore[arg-type]


def _budget(sampler: str) -> int:
    return 12 if sampler == "gp" else 40  # the GP sampler costs seconds per trial after its 10 random ones


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_finds_a_feasible_plan_within_budget(sampler: str) -> None:
    p = small()
    budget = _budget(sampler)
    space = "uniform" if sampler == "gp" else None  # GP on the 5-parameter space keeps the test short
    r = tune(p, f"optuna-{sampler}", budget=budget, seed=3, space=space)
    assert r.tuner == f"optuna-{sampler}"
    assert r.evaluations == budget and not r.stopped_early
    assert r.best_plan is not None
    ev = p.score(r.best_plan)
    assert ev.feasible and ev.value == pytest.approx(r.objective_value)
    assert r.history and r.history[-1].best == r.objective_value


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "random", "qmc", "nsga2"])
def test_same_seed_same_result(sampler: str) -> None:
    p = small()
    a = tune(p, f"optuna-{sampler}", budget=30, seed=7)
    b = tune(small(), f"optuna-{sampler}", budget=30, seed=7)
    assert a.objective_value == b.objective_value
    assert a.best_plan == b.best_plan
    assert [h.evaluation for h in a.history] == [h.evaluation for h in b.history]


def test_different_seeds_draw_different_trials() -> None:
    p = small()
    studies = []
    for seed in (1, 2):
        t = make_tuner("optuna-random")
        t.tune(p, budget=10, seed=seed)
        assert t.study is not None
        studies.append([tr.params for tr in t.study.trials])
    assert studies[0] != studies[1]


def test_callback_stops_the_study() -> None:
    r = tune(small(), "optuna-tpe", budget=50, seed=0, callback=lambda pr: pr.evaluations < 7)
    assert r.evaluations == 7 and r.stopped_early


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "cmaes"])
def test_tight_memory_limit_reports_constraints(sampler: str) -> None:
    import optuna

    # 8 layers of llama2-7b need about 3.7 GB of weights: under 0.9 GiB per GPU most plans do not fit.
    p = small(limits=Limits(memory_gib=0.9))
    t = make_tuner(f"optuna-{sampler}", polish=0)  # the sampler's own trials (polish moves stay near feasible)
    r = t.tune(p, budget=40, seed=0)
    assert r.best_plan is not None and p.score(r.best_plan).feasible
    assert t.study is not None
    trials = t.study.trials
    infeasible = [tr for tr in trials if any(v > 0 for v in tr.constraints.values())]
    if sampler == "cmaes":  # CMA-ES ignores constraints: infeasible trials are pruned with their violations
        pruned = [tr for tr in trials if tr.state == optuna.trial.TrialState.PRUNED]
        assert pruned and all("peak memory" in tr.user_attrs["violations"][0] for tr in pruned)
        assert not infeasible and all(not tr.constraints for tr in trials)
    else:
        assert len(infeasible) >= 5
        assert all(tr.state == optuna.trial.TrialState.COMPLETE for tr in infeasible)
        assert set(infeasible[0].constraints) == {"memory"}
        assert t.study.best_trial.constraints["memory"] <= 0  # Optuna's best is feasible too
    assert any("infeasible" in n for n in r.notes)


def test_nsga2_returns_a_pareto_front() -> None:
    p = small(objective="tbt+memory")
    r = tune(p, "optuna-nsga2", budget=60, seed=0)
    assert len(r.pareto) >= 2
    values = [v for _, v in r.pareto]
    for a in values:
        for b in values:
            assert not (a != b and all(x <= y for x, y in zip(a, b, strict=True)))
    assert all(p.score(plan).feasible for plan, _ in r.pareto)


def test_multi_objective_tpe_uses_two_directions() -> None:
    t = make_tuner("optuna-tpe")
    t.tune(small(objective="tbt+memory"), budget=15, seed=0)
    assert t.study is not None and len(t.study.directions) == 2


def test_sqlite_storage_can_be_reloaded(tmp_path: object) -> None:
    import optuna

    url = f"sqlite:///{tmp_path}/study.db"
    r = tune(small(), "optuna-tpe", budget=12, seed=0, storage=url, study_name="s1", warm_start=False)
    study = optuna.load_study(study_name="s1", storage=url)
    assert len(study.trials) == 12
    assert study.best_value == pytest.approx(r.objective_value)
    # A second tune with the same name resumes the study.
    tune(small(), "optuna-tpe", budget=5, seed=1, storage=url, study_name="s1")  # no warm start: it has trials
    assert len(optuna.load_study(study_name="s1", storage=url).trials) == 17


def test_uniform_space_visits_granularities() -> None:
    t = make_tuner("optuna-random", space="uniform")
    r = t.tune(small(), budget=30, seed=0)
    assert t.study is not None
    assert {tr.params["granularity"] for tr in t.study.trials} == {0, 1, 2}  # layer, layers:2, layers:4
    assert r.best_plan is not None and r.best_plan.granularity in ("layer", "layers:2", "layers:4")


def test_uniform_space_train_recompute() -> None:
    p = Problem("llama2-7b:layers=4", "dgx-a100", phase="train", batch=8, seq=512)
    t = make_tuner("optuna-tpe", space="uniform", granularities=["layer", "layers:2"])
    r = t.tune(p, budget=20, seed=0)
    assert r.best_plan is not None and p.score(r.best_plan).feasible
    assert t.study is not None and {tr.params["recompute"] for tr in t.study.trials} == {0, 1}


def test_hybrid_space_builds_hybrid_plans() -> None:
    t = make_tuner("optuna-random")
    t.tune(small(), budget=40, seed=0)
    assert t.study is not None
    assert "w_0" in t.study.trials[0].params and "tp_0" in t.study.trials[0].params


def test_placement_space_on_a_dag(tmp_path: object) -> None:
    path = f"{tmp_path}/diamond.json"
    toy_graph("diamond").save(path)
    p = Problem(path, "cpu-local", phase="prefill", batch=2, seq=1, granularity="op")
    assert not p.graph("op").is_layered
    t = make_tuner("optuna-tpe")
    r = t.tune(p, budget=25, seed=0)
    assert r.best_plan is not None and not r.best_plan.is_layered
    assert p.score(r.best_plan).feasible
    assert t.study is not None and "group_0" in t.study.trials[0].params
    assert r.notes[0].startswith("placement space")


def test_placement_space_on_an_op_graph() -> None:
    p = Problem("llama2-7b:layers=2", "dgx-a100", phase="decode", batch=4, context=256, granularity="op")
    r = tune(p, "optuna-cmaes", budget=20, seed=0, space="placement")
    assert r.best_plan is not None and all(s.tasks for s in r.best_plan.stages)
    assert p.score(r.best_plan).feasible


def test_bad_options_are_value_errors() -> None:
    with pytest.raises(ValueError, match="allowed: tpe"):
        make_tuner("optuna-tpe", sampler="anneal")
    with pytest.raises(ValueError, match="allowed: uniform"):
        make_tuner("optuna-tpe", space="grid")
    with pytest.raises(ValueError, match="unknown option"):
        make_tuner("optuna-tpe", n_jobs=4)
    with pytest.raises(ValueError, match="layers:k"):
        tune(small(), "optuna-tpe", budget=3, space="uniform", granularities=["layers:8"])


def test_layer_spaces_refuse_unlayered_graphs(tmp_path: object) -> None:
    path = f"{tmp_path}/chain.json"
    toy_graph("chain").save(path)
    p = Problem(path, "cpu-local", phase="prefill", batch=2, seq=1, granularity="op")
    with pytest.raises(ValueError, match="placement"):
        tune(p, "optuna-tpe", budget=3, space="hybrid")


def _reference(p: Problem) -> float:
    """The optimum (dp) when available, else the best of 3000 random plans."""
    try:
        best = tune(p, "dp").objective_value
    except (ImportError, NotImplementedError):
        import numpy as np

        ev = p.evaluator()
        res = ev.evaluate_batch(ev.random_plans(3000, np.random.default_rng(0)))
        ok = res.feasible & (res.max_memory_bytes <= p.memory_limit_bytes)
        best = float(res.latency_s[ok].min())
    assert best is not None
    return best


@pytest.mark.slow
def test_tpe_quality_smoke() -> None:
    p = Problem("llama2-7b:layers=8", "dgx-a100:nodes=2", phase="prefill", batch=4, seq=1024)
    target = _reference(p)
    r = tune(p, "optuna-tpe", budget=200, seed=0)
    assert r.objective_value is not None
    assert r.objective_value <= target * 1.05


def test_plan_of_best_trial_is_rebuilt_from_its_params() -> None:
    """The study's best trial and the recorder's best agree (the space is deterministic)."""
    t = make_tuner("optuna-tpe")
    r = t.tune(small(), budget=20, seed=0)
    assert t.study is not None and isinstance(r.best_plan, Plan)
    assert t.study.best_value == pytest.approx(r.objective_value)


@pytest.mark.parametrize("space", ["uniform", "hybrid"])
def test_warm_start_enqueues_uniform_plans_first(space: str) -> None:
    """The first trials are the practitioners' grid (largest TP first, even stages); off: the sampler's own."""
    problem = Problem(**SMALL)  # type: ignore[arg-type]
    warm = make_tuner("optuna-random", space=space)
    warm.tune(problem, budget=12, seed=0)
    first = warm.study.trials[0]  # type: ignore[union-attr]
    assert first.params.get("tp", first.params.get("tp_0")) == len(problem.tp_degrees()) - 1
    cold = make_tuner("optuna-random", space=space, warm_start=False)
    cold.tune(problem, budget=12, seed=0)
    assert cold.study.trials[0].params != first.params  # type: ignore[union-attr]


def test_polish_moves_change_one_parameter_within_bounds() -> None:
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from paratune.search._polish import MAX_CHOICES, neighbours

    params = {"tp": 0, "w": 3.9, "group": "a", "stages": 2}
    dists = {
        "tp": IntDistribution(0, 3),
        "w": FloatDistribution(0.25, 4.0, log=True),
        "group": CategoricalDistribution(list("abcdefg")),
        "stages": IntDistribution(1, 2),
    }
    moves = neighbours(params, dists, np.random.default_rng(0))
    for m in moves:
        assert sum(m[k] != params[k] for k in params) == 1
        assert 0 <= m["tp"] <= 3 and 0.25 <= m["w"] <= 4.0 and 1 <= m["stages"] <= 2
    assert sorted(m["tp"] for m in moves if m["tp"] != 0) == [1]  # 0 - 1 is out of range
    assert sum(m["group"] != "a" for m in moves) == MAX_CHOICES
    assert {m["w"] for m in moves if m["w"] != 3.9} == {4.0, 3.9 / 1.25}
    assert [m["stages"] for m in moves if m["stages"] != 2] == [1]


def test_polish_spends_its_share_inside_the_budget() -> None:
    problem = Problem("llama2-7b:layers=8", "dgx-a100x2", phase="train", batch=16, seq=1024)
    polished = make_tuner("optuna-tpe", polish=0.5)
    result = polished.tune(problem, budget=40, seed=3)
    assert result.evaluations == 40 and len(polished.study.trials) == 40  # no heuristic seeds below 200
    assert any("polished the best trial" in n for n in result.notes), result.notes
    plain = tune(problem, "optuna-tpe", budget=40, seed=3, polish=0)
    assert not any("polished" in n for n in plain.notes)
    with pytest.raises(ValueError, match="polish"):
        make_tuner("optuna-tpe", polish=1.5)


@pytest.mark.slow
def test_heuristics_seed_the_search_inside_the_budget() -> None:
    problem = Problem.load(SCENARIOS / "llama3-8b-mesh-train-step.yaml")
    best_rule = min(tune(problem, h).objective_value for h in ("balanced-pp", "min-tp-replicas"))
    t = make_tuner("optuna-tpe")
    r = t.tune(problem, budget=200, seed=0)  # a quarter of it holds every rule's evaluations (42 here)
    assert r.evaluations == 200 and len(t.study.trials) < 200  # the rules' evaluations count
    assert r.objective_value <= best_rule  # never behind the rules of thumb it started from
    cold = tune(problem, "optuna-tpe", budget=200, seed=0, warm_start=False)
    assert cold.objective_value > best_rule  # this scenario is one where a cold search stays far behind


def test_structural_moves_change_the_shape_two_at_a_time_and_rebalance() -> None:
    from optuna.distributions import FloatDistribution, IntDistribution

    from paratune.search._optuna_spaces import HybridSpace
    from paratune.search._polish import structural

    space = HybridSpace(small())
    params = {"stages": 1, "replicas": 0, "micro_batches": 1, "tp_0": 3, "w_0": 2.0}
    dists = {
        "stages": IntDistribution(1, 8),
        "replicas": IntDistribution(0, 3),
        "micro_batches": IntDistribution(0, 3),
        "tp_0": IntDistribution(0, 3),
        "w_0": FloatDistribution(0.25, 4.0, log=True),
    }
    moves = structural(params, dists, space)
    assert {"stages": 2, "replicas": 0, "micro_batches": 2, "tp_0": 3, "w_0": 2.0} in moves  # one more stage and m
    assert {"stages": 2, "replicas": 0, "micro_batches": 2, "tp_0": 3, "w_0": 1.0} in moves  # ... rebalanced
    assert {**params, "w_0": 1.0} in moves and params not in moves
    assert all(m["stages"] >= 1 and m["replicas"] >= 0 for m in moves)  # never out of range
    assert all(m["tp_0"] == 3 for m in moves)  # per-stage parameters are the single moves' job
