"""The campaign spec: a YAML file naming scenarios x tuners x seeds, validated field by field.

Example (``configs/campaigns/demo.yaml`` is a complete one)::

    name: my-campaign                 # also the run folder: runs/my-campaign/
    scenarios:
      - ../../benchmarks/scenarios/llama2-7b-*.yaml      # files or globs (relative to this file)
      - name: tiny-decode                                 # or a scenario written inline;
        model: [llama2-7b:layers=4, llama3-8b:layers=4]   # a list expands to one scenario per value
        platform: dgx-a100
        phase: decode
        batch: [8, 32]                                    # 2 models x 2 batches = 4 scenarios
        limits: {memory_gib: 40}
    tuners:
      - megatron                                          # a name, or a mapping:
      - {name: optuna-tpe, budget: 200, options: {space: hybrid}}
      - {name: rl, optional: true}                        # skipped when not registered
      - {name: rl, label: rl-mine, options: {policy: ../policies/mine.zip}}  # relative to this file
    seeds: 2                                              # a count (0, 1) or a list [0, 7, 42]
    output: runs/my-campaign                              # default runs/<name>/ (relative to the current folder)
    storage: sqlite:///runs/my-campaign/campaign.db       # default: that SQLite file; any SQLAlchemy URL
    optimum: true                                         # run dp once per scenario for the gap to the optimum
    studies:                                              # optional: studies on some scenarios
      - {kind: granularity, scenarios: [tiny-decode], budget: 100, tuners: [dp, optuna-tpe]}
      - {kind: static-vs-runtime, scenarios: [tiny-decode], workload: chat, ks: [1, 2, 4]}

Deterministic tuners (families ``heuristic`` and ``exact``) ignore the seed, so
they run once per scenario, with the first seed. With ``optimum`` on, every
single-objective scenario gets one ``dp`` job (the listed ``dp`` tuner when there
is one) whose result the other jobs of that scenario link to.

A study is one job per (study, scenario) with role ``study``: the granularity study
sweeps the scenario's granularity, the static-vs-runtime study replaces its batch
and sequence lengths by the workload's shapes. Its files go to
``<output>/studies/<label>-<scenario>/`` and its ``study.json`` into the store.
With ``studies`` given, ``tuners`` may be left out.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._limits import DOC, MAX_BUDGET, MAX_JOBS, MAX_SCENARIOS, MAX_SEEDS
from ..costmodel._fields import FieldReader, load_yaml
from ..problem import SUFFIXES, Problem, check_problem, load_scenario
from ..search import Family, make_tuner, tuner_entries
from ._states import Role

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
OPTIMUM_TUNER = "dp"
#: The largest seed: numpy's legacy generator and Optuna's samplers take 32-bit seeds.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class TunerSpec:
    """One tuner of the campaign: registry ``name``, its ``budget`` (None: the tuner's default) and ``options``.

    ``label`` tells two entries of the same tuner apart (e.g. two option sets); it
    defaults to the name and is what results and reports show.
    """

    name: str
    label: str
    budget: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = True


@dataclass(frozen=True)
class JobSpec:
    """One tuner run: ``tuner`` (a label) on ``scenario`` from ``seed``; ``role`` is ``tune`` or ``optimum``."""

    scenario: str
    tuner: str
    tuner_name: str
    budget: int | None
    options: dict[str, Any]
    seed: int
    role: str = Role.TUNE.value


STUDY_KINDS = ("granularity", "static-vs-runtime")
#: Options each study kind accepts in a campaign (besides kind, label, scenarios, budget, seed).
STUDY_OPTIONS = {
    "granularity": ("tuners", "granularities"),
    "static-vs-runtime": ("workload", "ks", "max_buckets"),
}


@dataclass(frozen=True)
class StudySpec:
    """One study of the campaign: ``kind`` on the scenarios named in ``scenarios`` (None: all of them)."""

    kind: str
    label: str
    scenarios: tuple[str, ...] | None
    budget: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CampaignSpec:
    """A validated campaign: build with :meth:`load` (a YAML file) or :meth:`from_dict`."""

    name: str
    scenarios: list[Problem]
    tuners: list[TunerSpec]
    seeds: list[int]
    output: Path
    storage: str
    optimum: bool = True
    description: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    where: str = "campaign"
    studies: list[StudySpec] = field(default_factory=list)

    # -- reading --------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, storage: str | None = None, check: bool = True) -> CampaignSpec:
        """Read and validate a spec file; ``storage`` (a URL) overrides the file's ``storage`` field.

        Raises:
            ValueError: naming the file and the field (``tuners[2].budget``, ``scenarios[0].model``...).
        """
        path = Path(path)
        return cls.from_dict(load_yaml(path), where=str(path), base=path.parent, storage=storage, check=check)

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        where: str = "campaign",
        base: Path | None = None,
        storage: str | None = None,
        check: bool = True,
    ) -> CampaignSpec:
        """Validate a spec mapping; relative scenario paths are looked up in ``base``, then the current folder.

        With ``check`` each scenario's platform and model are resolved now, so a typo
        fails before any job runs (an infeasible scenario still runs and is recorded).
        """
        r = FieldReader(data, where)
        given_in_file = storage is None  # else --storage: the message names no field of the file
        name = r.text("name")
        if not NAME_RE.match(name):
            raise r.error("name", f"is {name!r}; use letters, digits, '.', '_' or '-' (it names the run folder)")
        description = r.text("description", "")
        scenarios, sources = _scenarios(r, base or Path("."), check=check)
        studies_given = r.raw("studies", None) is not None
        tuners, skipped = _tuners(r, base, required=not studies_given)
        seeds = _seeds(r)
        studies = _studies(r, [p.name for p in scenarios], seeds[0]) if studies_given else []
        n_jobs = len(scenarios) * (len(tuners) * len(seeds) + 1 + len(studies))  # an upper bound of len(jobs())
        if n_jobs > MAX_JOBS:
            raise ValueError(
                f"{where}: {len(scenarios):,} scenarios x {len(tuners)} tuners x {len(seeds):,} seeds make up to "
                f"{n_jobs:,} jobs; at most {MAX_JOBS:,} are accepted (see {DOC}): split the campaign"
            )
        output = Path(r.text("output", f"runs/{name}"))
        if storage is None:
            storage = r.raw("storage", None)
            if storage is not None and not isinstance(storage, str):
                raise r.error("storage", f"must be a database URL string, got {storage!r}")
        else:
            r.raw("storage", None)
        optimum = r.raw("optimum", True)
        if not isinstance(optimum, bool):
            raise r.error("optimum", f"must be true or false, got {optimum!r}")
        r.finish()
        if storage is None:
            storage = default_storage(output)
        _check_storage(storage, where if given_in_file else None)
        return cls(
            name, scenarios, tuners, seeds, output, storage, optimum, description, sources, skipped, where, studies
        )

    # -- what to run ------------------------------------------------------------
    def jobs(self) -> list[JobSpec]:
        """Every job, optimum (dp) jobs first so gaps are known early; then by seed, scenario, tuner."""
        out: list[JobSpec] = []
        optimum_of: dict[str, JobSpec] = {}
        listed_dp = next((t for t in self.tuners if t.name == OPTIMUM_TUNER), None)
        if self.optimum:
            for p in self.scenarios:
                if p.resolved_objective.multi:
                    continue  # a Pareto front has no single optimum value
                t = listed_dp or TunerSpec(OPTIMUM_TUNER, OPTIMUM_TUNER, stochastic=False)
                job = JobSpec(p.name, t.label, t.name, t.budget, t.options, self.seeds[0], Role.OPTIMUM.value)
                optimum_of[p.name] = job
                out.append(job)
        for seed in self.seeds:
            for p in self.scenarios:
                for t in self.tuners:
                    if not t.stochastic and seed != self.seeds[0]:
                        continue
                    if t is listed_dp and p.name in optimum_of:
                        continue  # the optimum job is this tuner's run
                    out.append(JobSpec(p.name, t.label, t.name, t.budget, t.options, seed))
        for st in self.studies:
            for p in self.scenarios:
                if st.scenarios is None or p.name in st.scenarios:
                    kind = f"study:{st.kind}"
                    out.append(JobSpec(p.name, st.label, kind, st.budget, st.options, st.seed, Role.STUDY.value))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The expanded spec (scenarios as full problem mappings), as stored with the campaign."""
        return {
            "name": self.name,
            "description": self.description,
            "scenarios": [p.to_dict() for p in self.scenarios],
            "tuners": [
                {"name": t.name, "label": t.label, "budget": t.budget, "options": t.options} for t in self.tuners
            ],
            "seeds": self.seeds,
            "optimum": self.optimum,
            **({"studies": [dataclasses.asdict(st) for st in self.studies]} if self.studies else {}),
        }

    def fingerprint(self) -> str:
        """A hash of what the campaign runs (not where it writes): the same spec gives the same campaign."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_storage(url: str, where: str | None) -> None:
    """Refuse an unknown kind of database now, before a run folder is made (the file's field named)."""
    from ._store import check_storage_url

    check_storage_url(url, f"{where}: field 'storage'" if where else None)


def default_storage(output: Path) -> str:
    """The embedded default: ``campaign.db`` (SQLite) inside the run folder."""
    return f"sqlite:///{(output / 'campaign.db').resolve()}"


# -- fields ------------------------------------------------------------------------


def _scenarios(r: FieldReader, base: Path, *, check: bool) -> tuple[list[Problem], dict[str, str]]:
    items = r.raw("scenarios")
    if not isinstance(items, list) or not items:
        raise r.error("scenarios", "must be a non-empty list of scenario files, globs or scenario mappings")
    problems: list[Problem] = []
    sources: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"{r.where}: scenarios[{i}]"
        if isinstance(item, str):
            found = [(load_scenario(f, check=check), str(f)) for f in _expand_files(item, base, where)]
        elif isinstance(item, dict):
            found = [(p, f"{r.where} (inline)") for p in _inline(item, where, check=check)]
        else:
            raise r.error(f"scenarios[{i}]", f"must be a file, a glob or a scenario mapping, got {item!r}")
        if len(problems) + len(found) > MAX_SCENARIOS:
            raise ValueError(f"{where}: the campaign has more than {MAX_SCENARIOS:,} scenarios (see {DOC})")
        for problem, source in found:
            if problem.name in sources:
                raise ValueError(
                    f"{where}: scenario name {problem.name!r} is already used by {sources[problem.name]}; "
                    "give the scenarios distinct 'name' fields"
                )
            sources[problem.name] = source
            problems.append(problem)
    return problems, sources


def _expand_files(pattern: str, base: Path, where: str) -> list[Path]:
    """Files matching ``pattern`` relative to ``base`` (the spec's folder), else to the current folder."""
    for root in (base, Path(".")):
        full = Path(pattern) if Path(pattern).is_absolute() else root / pattern
        matches = sorted(Path(m) for m in glob.glob(str(full)) if Path(m).suffix in SUFFIXES and Path(m).is_file())
        if matches:
            return matches
    raise ValueError(f"{where}: no scenario file matches {pattern!r} (looked in {base} and the current folder)")


def _inline(item: dict[str, Any], where: str, *, check: bool) -> list[Problem]:
    """One inline scenario mapping; list-valued fields (``limits`` fields too) expand to their product."""
    axes: list[tuple[tuple[str, ...], list[Any]]] = []
    for key, value in item.items():
        if key == "limits" and isinstance(value, dict):
            axes += [(("limits", k), v) for k, v in value.items() if isinstance(v, list)]
        elif isinstance(value, list):
            axes.append(((key,), value))
    count = 1
    for keys, values in axes:
        if not values:
            raise ValueError(f"{where}: field '{'.'.join(keys)}' is an empty list; give at least one value")
        count *= len(values)
    if count > MAX_SCENARIOS:  # counted before expanding: a product of lists grows fast
        sizes = " x ".join(f"{len(v)} {'.'.join(k)}" for k, v in axes)
        raise ValueError(
            f"{where}: the lists expand to {sizes} = {count:,} scenarios; at most {MAX_SCENARIOS:,} are accepted "
            f"(see {DOC})"
        )
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        data: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in item.items()}
        suffix = []
        for (keys, values), value in zip(axes, combo, strict=True):
            node = data
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = value
            if len(values) > 1:
                suffix.append(f"{'.'.join(keys)}={value}")
        problem = Problem.from_dict(data, where=where)
        if suffix:
            problem.name = f"{problem.name}[{','.join(suffix)}]"
        if check:
            check_problem(problem, where)
        out.append(problem)
    return out


def _tuners(r: FieldReader, base: Path | None, *, required: bool = True) -> tuple[list[TunerSpec], list[str]]:
    items = r.raw("tuners", None if required else [])
    if not required and items == []:
        return [], []
    if not isinstance(items, list) or not items:
        raise r.error("tuners", "must be a non-empty list of tuner names or {name, budget, options} mappings")

    families = {e.name: e.family for e in tuner_entries()}
    out: list[TunerSpec] = []
    skipped: list[str] = []
    labels: dict[str, int] = {}
    for i, item in enumerate(items):
        tr = FieldReader({"name": item} if isinstance(item, str) else item, r.where, f"tuners[{i}]")
        name = tr.text("name")
        label = tr.text("label", name)
        budget = None if tr.raw("budget", None) is None else tr.integer("budget", minimum=1, maximum=MAX_BUDGET)
        options = tr.raw("options", {})
        if not isinstance(options, dict):
            raise tr.error("options", f"must be a mapping of option: value, got {options!r}")
        options = _resolve_policy(options, base)
        optional = tr.raw("optional", False)
        if not isinstance(optional, bool):
            raise tr.error("optional", f"must be true or false, got {optional!r}")
        tr.finish()
        if name not in families:
            if optional:
                skipped.append(f"tuner {name!r} (tuners[{i}]) is not registered here: skipped (optional)")
                continue
            raise tr.error("name", f"is {name!r}; allowed: {', '.join(families)} (see `paratune tuners list`)")
        if label in labels:
            raise tr.error(
                "label", f"{label!r} is already used by tuners[{labels[label]}]; set 'label' to tell them apart"
            )
        labels[label] = i
        try:
            make_tuner(name, **options)  # checks the options' names, types and bounds; builds nothing heavy
        except ValueError as exc:
            raise tr.error("options", f"of tuner {exc}") from None
        _check_policy_option(tr, options)
        out.append(TunerSpec(name, label, budget, dict(options), not Family(families[name]).deterministic))
    if not out:
        raise r.error("tuners", "has no tuner registered here (every listed tuner is optional and missing)")
    return out, skipped


def _resolve_policy(options: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """``options`` with a relative ``policy`` path made absolute against ``base``, the spec file's folder.

    Like the scenario files it lists, a spec names its policy relative to itself, so the campaign
    runs the same from any folder; the absolute path is what the store keeps and the jobs read.
    An absolute path, or a spec read without a file (``base`` None), is kept as it is.
    """
    policy = options.get("policy")
    if base is None or not isinstance(policy, str) or not policy or Path(policy).is_absolute():
        return options
    return {**options, "policy": os.path.abspath(base / policy)}


def _check_policy_option(tr: FieldReader, options: dict[str, Any]) -> None:
    """A ``policy`` option must name a file that exists now (resolved by :func:`_resolve_policy`).

    Otherwise every job of the tuner would fail at run time while the campaign itself looks fine.
    """
    policy = options.get("policy")
    if policy is None:
        return
    if not isinstance(policy, str) or not policy:
        raise tr.error("options.policy", f"must be the path of a policy file, got {policy!r}")
    if not Path(policy).is_file():
        raise tr.error("options.policy", f"names {policy!r}, not a file (relative paths start at the spec's folder)")


def _seeds(r: FieldReader) -> list[int]:
    value = r.raw("seeds", 1)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise r.error("seeds", f"must be a count >= 1 or a list of integers, got {value}")
        if value > MAX_SEEDS:
            raise r.error("seeds", f"is {value:,}; at most {MAX_SEEDS:,} seeds are accepted (see {DOC})")
        return list(range(value))
    if isinstance(value, list) and len(value) > MAX_SEEDS:
        raise r.error("seeds", f"lists {len(value):,} seeds; at most {MAX_SEEDS:,} are accepted (see {DOC})")
    if isinstance(value, list) and any(isinstance(s, int) and s > MAX_SEED for s in value):
        raise r.error("seeds", f"has a seed above {MAX_SEED:,} (seeds are 32-bit: numpy and Optuna need it)")
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        if len(set(value)) != len(value):
            raise r.error("seeds", f"lists a seed twice: {value}")
        return list(value)
    raise r.error("seeds", f"must be a count >= 1 or a non-empty list of integers >= 0, got {value!r}")


def _studies(r: FieldReader, scenario_names: list[str], seed: int) -> list[StudySpec]:
    """The ``studies`` list: each entry's kind, scenarios (names of this campaign's), budget and options."""
    from ..study import check_study_options

    items = r.raw("studies")
    if not isinstance(items, list) or not items:
        raise r.error("studies", "must be a non-empty list of {kind, scenarios, budget, ...} mappings")
    out: list[StudySpec] = []
    labels: set[str] = set()
    for i, item in enumerate(items):
        sr = FieldReader(item, r.where, f"studies[{i}]")
        kind = sr.text("kind", choices=STUDY_KINDS)
        label = sr.text("label", f"study-{kind}")
        if not NAME_RE.match(label) or label in labels:
            raise sr.error("label", f"{label!r} must be unique and use letters, digits, '.', '_' or '-'")
        labels.add(label)
        names = sr.raw("scenarios", None)
        if names is not None:
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, list) or not names:
                raise sr.error("scenarios", "must be a list of scenario names of this campaign")
            unknown = [n for n in names if n not in scenario_names]
            if unknown:
                raise sr.error("scenarios", f"names {unknown} not in this campaign; scenarios: {scenario_names}")
        budget = sr.integer("budget", 300, minimum=1, maximum=MAX_BUDGET)
        study_seed = sr.integer("seed", seed, minimum=0, maximum=MAX_SEED)
        options = {k: sr.raw(k) for k in STUDY_OPTIONS[kind] if sr.raw(k, None) is not None}
        sr.finish()
        try:
            check_study_options(kind, options)
        except ValueError as exc:
            raise ValueError(f"{r.where}: studies[{i}]: {exc}") from None
        out.append(StudySpec(kind, label, None if names is None else tuple(names), budget, study_seed, options))
    return out
