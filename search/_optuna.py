"""Optuna black-box searches: ``optuna-tpe``, ``-cmaes``, ``-gp``, ``-random``, ``-qmc``, ``-nsga2``.

One trial = one plan from a define-by-run space (:mod:`._optuna_spaces`) = one evaluation
counted by the recorder, so the budget is the number of trials.

Infeasible plans (over the memory limit, an SLO or the device cap) are handled the
Optuna way, never with a made-up large value that would distort the sampler:

* TPE, NSGA-II and GP model constraints: every trial completes with its real
  objective value(s) and its constraints set with ``Trial.set_constraint`` (one
  named value per constraint, <= 0 when met: Optuna 5's API; ``constraints_func``
  is deprecated there). Their split / domination / acquisition rank infeasible
  trials behind feasible ones, and ``study.best_trial(s)`` only returns feasible ones.
* Random and QMC do not learn from values: trials complete with their constraints
  set, which keeps ``study.best_trial`` feasible and shows them in optuna-dashboard.
* CMA-ES ignores constraints (it warns when they are set): infeasible trials are
  *pruned* (their violations kept in the user attribute ``violations``), and
  CMA-ES updates its distribution from the feasible ones only.

A plan the cost model calls invalid (the spaces repair dependent choices, so this
should not happen) is pruned with its reason in the user attribute ``invalid``.

The study lives in memory unless ``storage`` (any Optuna storage URL) is given:
a database write per trial costs about 0.1 s here, against microseconds for the
cost model. With a storage URL the study is created or resumed (``study_name``,
``load_if_exists``), for optuna-dashboard or for several workers sharing it.
The last study is kept as ``tuner.study``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from .._limits import MAX_DEVICES, shown
from ..costmodel import Metrics, Plan
from ..problem import Evaluation, Problem
from ._options import TunerOptions, about
from ._optuna_spaces import make_space
from ._polish import polish
from ._tuner import Family, Recorder, Tuner

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "cmaes", "gp", "random", "qmc", "nsga2")
#: Samplers that read ``trial.constraints`` when they sample.
CONSTRAINED = frozenset({"tpe", "gp", "nsga2"})
#: Samplers that model integers better than categoricals (or hand categoricals to a random fall-back).
ORDINAL_ONLY = frozenset({"cmaes", "qmc"})
#: Names of :attr:`Evaluation.constraints`, in order (see ``Problem.score``).
CONSTRAINT_NAMES = ("memory", "tbt_slo", "ttft_slo", "devices", "calibrated")
#: Default trials: the GP sampler costs 1-4 s per trial on 2 cores (torch), the others milliseconds.
DEFAULT_BUDGET = {"gp": 50}
#: Smallest budget whose first quarter seeds the study with the heuristics' plans.
SEED_MIN_BUDGET = 200
#: Share of the budget spent polishing the incumbent (:mod:`._polish`) by default, per sampler. Random and
#: QMC stay pure baselines; NSGA-II and multi-objective problems have a front, not one incumbent.
POLISH_SHARE = {"tpe": 0.2, "cmaes": 0.2, "gp": 0.2}


@dataclass(frozen=True)
class OptunaOptions(TunerOptions):
    """Options of the ``optuna-*`` tuners (the sampler is in the tuner's name)."""

    space: Literal["uniform", "hybrid", "placement"] | None = field(
        default=None,
        metadata=about(
            "plan space: uniform, hybrid or placement (default: hybrid for layered graphs, placement otherwise)"
        ),
    )
    storage: str | None = field(
        default=None,
        metadata=about(
            "Optuna storage URL (sqlite:///study.db, postgresql://...) or journal:PATH (default: in memory)"
        ),
    )
    study_name: str | None = field(
        default=None, metadata=about("the study's name in that storage (default: the tuner and problem names)")
    )
    granularities: tuple[str, ...] | None = field(
        default=None,
        metadata=about("granularities the uniform space visits (default layer, layers:2, layers:4 where they divide)"),
    )
    max_stages: int | None = field(
        default=None,
        metadata=about("cap on the stages of the hybrid space (default 16)", minimum=1, maximum=MAX_DEVICES),
    )
    population_size: int | None = field(
        default=None, metadata=about("NSGA-II's population (default: budget / 8, in 8..50)", minimum=2)
    )
    warm_start: bool = field(
        default=True,
        metadata=about("enqueue the heuristics' and uniform plans first (at most a quarter of the budget)"),
    )
    polish: float | None = field(
        default=None,
        metadata=about(
            "share of the budget spent last on single-parameter moves around the best trial "
            "(default 0.2 for tpe, cmaes, gp; 0 otherwise)",
            minimum=0.0,
            maximum=1.0,
        ),
    )

    techniques: Literal["off", "search"] = field(
        default="off",
        metadata=about(
            "training: 'search' adds ZeRO stage, sequence parallelism, selective recomputation, overlap and "
            "interleaving to the layered spaces; 'off' (default) keeps plans without them"
        ),
    )

    def __post_init__(self) -> None:
        if self.storage is not None:  # when the options are read (a campaign spec loads), not when a study starts
            check_storage(self.storage)


class OptunaTuner(Tuner):
    """An Optuna study over a plan space; ``optuna-<sampler>`` are its registered subclasses.

    Options (:class:`OptunaOptions`):
        space: uniform, hybrid or placement (default: hybrid for layered graphs, placement otherwise).
        granularities: granularities the ``uniform`` space visits (default layer, layers:2, layers:4
            where they divide the layers).
        max_stages: cap on the stages of the ``hybrid`` space (default 16).
        storage: an Optuna storage URL (``sqlite:///study.db``, ``postgresql://...``) or ``journal:PATH`` (an
            append-only journal file: cheap per trial, opened by ``optuna-dashboard PATH``); default in memory.
        study_name: the study's name in that storage (default: the tuner and problem names).
        population_size: NSGA-II's population (default: budget / 8, between 8 and 50).
        warm_start: enqueue the practitioners' plans first: the heuristics' plans (their evaluations count
            against the budget; budgets of 200 or more, layer granularity, hybrid space) and the uniform plans
            (one TP degree, even stages, PP in powers of two), at most a quarter of the budget (default true;
            false for a pure black-box search).
        polish: share of the budget (0 to 1) spent last on single-parameter moves around the best feasible
            trial, enqueued as trials of the same study (:mod:`._polish`); default 0.2 for tpe, cmaes and gp,
            0 for random, qmc and nsga2 and for two-objective problems.

    ``OptunaTuner(sampler="tpe", ...)`` builds any sampler's tuner directly.

    Example:
        >>> from paratune.search import Problem, tune
        >>> p = Problem("llama2-7b:layers=4", "dgx-a100", phase="decode", batch=8, context=512)
        >>> tune(p, "optuna-tpe", budget=20, seed=1).best_plan is not None
        True
    """

    name: ClassVar[str] = "optuna"
    family: ClassVar[Family] = Family.OPTUNA
    stochastic: ClassVar[bool] = True
    default_budget: ClassVar[int | None] = 200
    description: ClassVar[str] = "Optuna sampler over a define-by-run plan space"
    Options: ClassVar[type[TunerOptions]] = OptunaOptions
    #: The sampler of a registered subclass (None: the constructor's ``sampler`` argument).
    sampler: ClassVar[str | None] = None
    config: OptunaOptions

    def __init__(self, *, sampler: str | None = None, **options: Any) -> None:
        fixed = type(self).sampler
        if fixed is not None and sampler is not None and sampler != fixed:
            raise ValueError(
                f"{self.name}: option 'sampler' is fixed by the tuner's name: use the tuner optuna-SAMPLER, "
                f"samplers allowed: {', '.join(SAMPLERS)}"
            )
        sampler = sampler or fixed or "tpe"
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown Optuna sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        # One base class serves every sampler: the name and default budget are per instance.
        setattr(self, "name", f"optuna-{sampler}")  # noqa: B010 (a ClassVar of the base, set per sampler)
        setattr(self, "default_budget", DEFAULT_BUDGET.get(sampler, 200))  # noqa: B010
        super().__init__(**options)
        cfg = self.config
        # recorded in results as before: the sampler and the space / storage keys, then what was given
        self.options = {"sampler": sampler, "space": cfg.space, "storage": cfg.storage,
                        "study_name": cfg.study_name, **options}  # fmt: skip
        self.sampler_name, self.space_name = sampler, cfg.space
        self.storage, self.study_name = cfg.storage, cfg.study_name
        self.polish_share = POLISH_SHARE.get(sampler, 0.0) if cfg.polish is None else cfg.polish
        self.study: optuna.Study | None = None

    # -- the search -------------------------------------------------------
    def _search(self, problem: Problem, recorder: Recorder, rng: np.random.Generator, seed: int) -> list[str] | None:
        import optuna

        if self.sampler_name == "cmaes" and problem.resolved_objective.multi:
            raise ValueError(
                f"optuna-cmaes optimises one objective; {problem.objective!r} has two: use optuna-nsga2 or optuna-tpe"
            )

        space = make_space(
            self.space_name,
            problem,
            ordinal_only=self.sampler_name in ORDINAL_ONLY,
            granularities=self.config.granularities,
            max_stages=self.config.max_stages,
            techniques=self.config.techniques,
        )
        directions = [
            optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in problem.resolved_objective.directions
        ]
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            with warnings.catch_warnings():
                # Experimental-feature notices (multivariate TPE, with_margin, QMC, GP) say nothing to a user here.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                sampler = self._sampler(optuna, seed, recorder.remaining or 200)
                study = _create_study(
                    optuna,
                    self.storage,
                    sampler=sampler,
                    study_name=self.study_name or (f"{self.name}:{problem.name}" if self.storage else None),
                    directions=directions,
                    load_if_exists=self.storage is not None,
                )
                self.study = study
                warm = self.config.warm_start and not study.trials  # a resumed study is warm already
                seeds = self._heuristic_seeds(problem, recorder, space, rng, seed) if warm else []
                n_trials = recorder.remaining
                if warm:
                    limit = max(1, (n_trials or 200) // 4)
                    for params in (seeds + space.warm_start())[:limit]:
                        study.enqueue_trial(params, skip_if_exists=True)
                tally: Counter[str] = Counter()
                objective = self._objective(problem, recorder, space, tally)

                def stop(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
                    if recorder.done:
                        study.stop()

                polishing = (
                    0 if n_trials is None or problem.resolved_objective.multi else round(self.polish_share * n_trials)
                )
                if not recorder.done:  # the heuristics' seeds may have spent it (or the callback stopped)
                    study.optimize(
                        objective,
                        n_trials=None if n_trials is None else n_trials - polishing,
                        callbacks=[stop],
                        catch=(),
                    )
                if polishing and not recorder.done:
                    ran = polish(study, objective, polishing, rng, lambda: _incumbent(study), [stop], space)
                    tally["polish"] += ran
                    if not recorder.done and ran < polishing:  # a local optimum: the sampler takes the rest
                        study.optimize(objective, n_trials=polishing - ran, callbacks=[stop], catch=())
        finally:
            optuna.logging.set_verbosity(previous)
        return self._notes(space.describe(), tally, recorder)

    def _heuristic_seeds(
        self, problem: Problem, recorder: Recorder, space: Any, rng: np.random.Generator, seed: int
    ) -> list[dict[str, int | float]]:
        """The practitioners' heuristics' plans as the first trials' parameters (where the space can hold them).

        Each heuristic searches on this tuner's recorder (every evaluation counted against the budget and seen
        by the callback), within a quarter of the budget in all; their plans count as found, so a search never
        ends behind the rules of thumb it started from. Only for budgets of :data:`SEED_MIN_BUDGET` or more and
        problems at layer granularity whose space can hold the rules' plans (the hybrid space).
        """
        from ._registry import make_tuner, tuner_entries

        if problem.resolved_objective.multi or recorder.budget is None or recorder.budget < SEED_MIN_BUDGET:
            return []  # a quarter of a small budget would cut the rules short and starve the sampler
        if problem.granularity != "layer" or space.params_of(Plan.uniform(problem.n_layers)) is None:
            return []  # the rules plan whole layers: another granularity's space cannot start from them
        end = recorder.evaluations + recorder.budget // 4
        out: list[dict[str, int | float]] = []
        for entry in tuner_entries():
            if entry.family != Family.HEURISTIC or recorder.done or recorder.evaluations >= end:
                continue
            tuner = make_tuner(entry.name)
            if problem.phase == "train" and getattr(tuner, "uses_techniques", False) and not space.techniques:
                continue  # its plans lie outside a space without techniques (option techniques='off')
            with recorder.scope(end - recorder.evaluations) as scope:
                try:
                    tuner._search(problem, recorder, rng, seed)
                except ValueError:
                    continue
            params = None if scope.best is None else space.params_of(scope.best.plan)
            if params is not None and params not in out:
                out.append(params)
        return out

    def _objective(self, problem: Problem, recorder: Recorder, space: Any, tally: Counter[str]) -> Any:
        import optuna

        cache: dict[Plan, Metrics] = {}
        constrained = self.sampler_name != "cmaes"
        active = _active_constraints(problem)
        prune_infeasible = self.sampler_name == "cmaes"

        def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
            plan = space.suggest(trial)
            metrics = cache.get(plan)
            if metrics is None:
                metrics = cache[plan] = problem.evaluate(plan)
            ev: Evaluation = recorder.record_metrics(plan, metrics)
            tally["trials"] += 1
            trial.set_user_attr("feasible", ev.feasible)
            if any(math.isnan(v) for v in ev.values):
                tally["invalid"] += 1
                trial.set_user_attr("invalid", "; ".join(ev.violations))
                raise optuna.TrialPruned(ev.violations[0] if ev.violations else "invalid plan")
            if not ev.feasible:
                tally["infeasible"] += 1
                if prune_infeasible:
                    tally["pruned"] += 1
                    trial.set_user_attr("violations", list(ev.violations))
                    raise optuna.TrialPruned("; ".join(ev.violations))
            if constrained:
                for i in active:
                    trial.set_constraint(CONSTRAINT_NAMES[i], ev.constraints[i])
            return ev.values if len(ev.values) > 1 else ev.value

        return objective

    def _sampler(self, optuna: Any, seed: int, budget: int) -> optuna.samplers.BaseSampler:
        s = self.sampler_name
        if s == "tpe":
            # Multivariate TPE models the joint distribution of the plan's numbers (TP and layer
            # shares interact); constraints are read from the trials (set_constraint).
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if s == "cmaes":
            # with_margin keeps integer parameters from collapsing onto one value (CMA-ES with margin).
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, with_margin=True)
        if s == "gp":
            return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True, warn_independent_sampling=False)
        if s == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s == "qmc":
            return optuna.samplers.QMCSampler(
                qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False,
                warn_asynchronous_seeding=False,
            )  # fmt: skip
        population = self.config.population_size or max(8, min(50, budget // 8))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(population))

    def _notes(self, space: str, tally: Counter[str], recorder: Recorder) -> list[str]:
        how = {
            "cmaes": "pruned (CMA-ES ignores constraints)",
            "random": "completed with their constraints set",
            "qmc": "completed with their constraints set",
        }.get(self.sampler_name, "reported to the sampler as constraint violations (Trial.set_constraint)")
        notes = [
            space,
            f"{tally['trials']} trials: {tally['infeasible']} infeasible, {how}; {tally['invalid']} invalid, pruned",
        ]
        if tally["polish"]:
            notes.append(f"{tally['polish']} of them polished the best trial (single-parameter moves)")
        if self.storage:
            notes.append(f"study {self.study.study_name if self.study else '?'} in {self.storage}")
        if recorder.best is None:
            notes.append("no feasible plan found within the budget")
        return notes


def _incumbent(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial whose plan is feasible (the objective marks it), or None."""
    import optuna

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("feasible") and t.value is not None
    ]
    if not done:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: (sign * (math.inf if t.value is None else t.value), t.number))


def _active_constraints(problem: Problem) -> list[int]:
    """Indices of the constraints that can be violated on ``problem`` (memory, and the limits it sets).

    Constant constraints carry no information and cost a Gaussian process each in the GP sampler;
    the device count never exceeds the cap since every space sizes plans to ``problem.max_devices``.
    """
    lim = problem.limits
    flags = (True, lim.tbt_ms is not None, lim.ttft_ms is not None, False, lim.calibrated_only)
    return [i for i, on in enumerate(flags) if on]


def _storage(optuna: Any, storage: str | None) -> Any:
    """``journal:PATH`` as Optuna's journal file storage; anything else as given (both checked by the options)."""
    if storage is None or not storage.startswith("journal:"):
        return storage
    path = Path(storage.removeprefix("journal:"))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _create_study(optuna: Any, storage: str | None, **kwargs: Any) -> Any:
    """``optuna.create_study`` on ``storage``; a storage that cannot be opened is one ValueError naming it.

    An unreachable server, a wrong password or a file that is not a database ended in the driver's
    traceback; the URL is shown without its password.
    """
    try:
        return optuna.create_study(storage=_storage(optuna, storage), **kwargs)
    except Exception as exc:
        if storage is None:
            raise
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError | OSError):
            raise
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split("(Background on")[0].split())
        raise ValueError(f"option 'storage': {_without_password(storage)}: cannot open it ({reason})") from None


def _without_password(storage: str) -> str:
    if storage.startswith("journal:"):
        return storage
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


#: Databases an Optuna storage URL may name (Optuna's RDB storage, through SQLAlchemy).
STORAGE_BACKENDS = ("sqlite", "postgresql", "mysql")
STORAGE_FORMS = "sqlite:///FILE, postgresql://USER@HOST/DB, mysql://USER@HOST/DB or journal:FILE"


def check_storage(storage: str, what: str = "option 'storage'") -> None:
    """Refuse, before a study starts, a storage Optuna could not open or that would need folders made.

    An unknown kind of URL ended in SQLAlchemy's NoSuchModuleError, a SQLite file in a missing folder in
    its OperationalError, both as tracebacks; a journal in a missing folder made the folders. The file
    itself (SQLite or journal) is created, as asked; its folder must exist. ``what`` names the option
    (``--storage`` on the command line).

    Raises:
        ValueError: naming ``what`` and what is wrong.
    """
    if storage.startswith("journal:"):
        _check_storage_file(Path(storage.removeprefix("journal:")), storage, what)
        return
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:  # pragma: no cover - Optuna brings SQLAlchemy; without it the tuner cannot run anyway
        return
    try:
        url = make_url(storage)
    except ArgumentError:
        raise ValueError(f"{what}: {shown(storage)} is not a storage URL; give {STORAGE_FORMS}") from None
    backend = url.drivername.partition("+")[0]
    if backend not in STORAGE_BACKENDS:
        raise ValueError(
            f"{what}: {url.render_as_string(hide_password=True)} names the database kind {backend!r}, "
            f"which Optuna does not store in; give {STORAGE_FORMS}"
        )
    if backend == "sqlite" and url.database not in (None, "", ":memory:"):
        _check_storage_file(Path(url.database), storage, what)


def _check_storage_file(path: Path, storage: str, what: str) -> None:
    if not str(path) or str(path) == ".":
        raise ValueError(f"{what}: {shown(storage)} names no file; give {STORAGE_FORMS}")
    if path.is_dir():
        raise ValueError(f"{what}: {path} is a folder; give the file the study is kept in")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{what}: folder {parent} does not exist (paratune creates no folders)")


class OptunaTPE(OptunaTuner):
    name: ClassVar[str] = "optuna-tpe"
    sampler: ClassVar[str | None] = "tpe"
    description: ClassVar[str] = "Optuna TPE"


class OptunaCmaEs(OptunaTuner):
    name: ClassVar[str] = "optuna-cmaes"
    sampler: ClassVar[str | None] = "cmaes"
    description: ClassVar[str] = "Optuna CMA-ES"


class OptunaGP(OptunaTuner):
    name: ClassVar[str] = "optuna-gp"
    sampler: ClassVar[str | None] = "gp"
    description: ClassVar[str] = "Optuna Gaussian-process Bayesian optimisation"
    default_budget: ClassVar[int | None] = DEFAULT_BUDGET["gp"]


class OptunaRandom(OptunaTuner):
    name: ClassVar[str] = "optuna-random"
    sampler: ClassVar[str | None] = "random"
    description: ClassVar[str] = "Optuna random sampling"


class OptunaQMC(OptunaTuner):
    name: ClassVar[str] = "optuna-qmc"
    sampler: ClassVar[str | None] = "qmc"
    description: ClassVar[str] = "Optuna quasi-Monte Carlo (Sobol)"


class OptunaNSGA2(OptunaTuner):
    name: ClassVar[str] = "optuna-nsga2"
    sampler: ClassVar[str | None] = "nsga2"
    description: ClassVar[str] = "Optuna NSGA-II (multi-objective: Pareto front of latency vs memory)"
