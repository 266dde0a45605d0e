"""The static-vs-runtime study: which plan decisions can be fixed at compile time, and which must wait?

A workload (:mod:`._workload`) is bucketed into request shapes. Each bucket is one
tuning problem:

* prefill: ``batch = b``, ``seq = prompt``; train: ``batch = b``, ``seq = prompt``;
* decode: ``batch = b``, ``context = prompt + output / 2`` (the KV length halfway
  through generation: the average decode step of the batch).

Its **weight** is how many times the objective is paid: the number of batches for
prefill and train, batches x mean output tokens for decode (each generated token is
one decode step). Batches are counted as the trace has them (a batch of 3 padded to
the bucket's 4 is still one batch), which is requests / batch when the trace's
batches are powers of two. A plan's **cost** on the workload is the weighted sum of its
latency over the buckets (seconds to serve the trace one batch after another);
only latency objectives (``ttft``, ``tbt``, ``step``) add up that way.

Three strategies are compared:

* (b) the **oracle**: each bucket run with its own optimum (the ``dp``, certified
  where it certifies), what a run time re-planning every batch would reach;
* (a) one **static** plan for every bucket: the best of the bucket optima and of
  an Optuna TPE search (``budget`` trials over the hybrid space of the bucket with
  the largest batch, warm-started with the optima) whose objective is the weighted
  total and whose constraint is fitting every bucket. It is the best *found*, not
  certified;
* (c) **K precompiled plans** switched by a rule on the shape: the K of the
  candidates (bucket optima + static) that minimise the total when each bucket runs
  its best plan among them (exact by enumeration up to :data:`MAX_SUBSETS` subsets,
  else greedy), for each K of ``ks``.

A plan runs on another bucket as :func:`~._switching.fit_plan` says (same layout,
micro-batches clipped, batch padded to the replicas); a plan that does not fit a
bucket's memory (a longer context's KV cache) cannot serve it. Regret is
``total / oracle_total - 1``. The study also breaks the static plan's regret down by
decision (which decisions differ from each bucket's optimum, and how much of the
regret re-deciding each one alone removes) and prices switching between plans as
weight resharding (:func:`~._switching.reshard_cost`) against the gain per batch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..costmodel import Plan
from ..graphs import Phase
from ..problem import DEFAULT_OBJECTIVE, Limits, Problem, get_objective
from ..search import tune
from ._common import Checkpoints, StudyTable, fmt_pct, fmt_seconds, provenance, write_study
from ._switching import DECISIONS, ReshardCost, changed_decisions, fit_plan, reshard_cost, transplant
from ._workload import MAX_BUCKETS, Bucket, Workload

Say = Callable[[str], None]

#: Objectives whose values add up over batches (latencies); throughput does not.
LATENCY_OBJECTIVES = ("ttft", "tbt", "step")
#: Subsets of candidates enumerated exactly for each K; above it, greedy selection.
MAX_SUBSETS = 200_000
#: Relative difference below which two costs are the same (plans priced by sums in different orders).
TIE_RTOL = 1e-9
#: Share of the static regret that "most" means in the summary.
MOST = 0.9
VERSION = 1
KIND = "static-vs-runtime"
_INF = float("inf")


@dataclass
class _BucketProblem:
    bucket: Bucket
    problem: Problem
    context: int
    steps: float  # objective payments per batch (decode: output tokens)

    @property
    def weight(self) -> float:
        return self.bucket.batches * self.steps


class _Pricer:
    """Prices plans on buckets (fitted and padded per :func:`fit_plan`), caching each (plan, bucket)."""

    def __init__(self, items: list[_BucketProblem]) -> None:
        self.items = items
        self.padded: dict[tuple[int, int], Problem] = {}
        self.cache: dict[tuple[Plan, int], tuple[float, bool, tuple[float, ...]]] = {}

    def price(self, plan: Plan, i: int) -> tuple[float, bool, tuple[float, ...]]:
        """(latency, feasible, constraints) of ``plan`` on bucket ``i``; NaN latency for an invalid plan."""
        key = (plan, i)
        if key not in self.cache:
            item = self.items[i]
            fitted, batch = fit_plan(plan, item.bucket.batch)
            problem = item.problem
            if batch != item.bucket.batch:
                problem = self.padded.setdefault((i, batch), item.problem.with_(batch=batch))
            ev = problem.score(fitted)
            self.cache[key] = (ev.value, ev.feasible, ev.constraints)
        return self.cache[key]

    def cost(self, plan: Plan, i: int) -> float:
        value, feasible, _ = self.price(plan, i)
        return value if feasible else _INF


def _check(phase: str, objective: str | None, ks: Sequence[int], budget: int, max_buckets: int) -> str:
    objective = objective or DEFAULT_OBJECTIVE.get(phase, "")
    get_objective(objective, phase)
    if objective not in LATENCY_OBJECTIVES:
        raise ValueError(
            f"objective {objective!r}: the static-vs-runtime study adds an objective up over the batches of a "
            f"workload, which only latencies allow; allowed: {', '.join(LATENCY_OBJECTIVES)} "
            f"(for {phase}: {DEFAULT_OBJECTIVE[phase]})"
        )
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be integers >= 1, got {list(ks)!r}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 (Optuna trials of the static search), got {budget}")
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    return objective


def _bucket_problems(
    model: str,
    platform: str,
    workload: Workload,
    phase: str,
    objective: str,
    limits: Limits,
    granularity: str,
    max_buckets: int,
) -> list[_BucketProblem]:
    out = []
    for b in workload.buckets(max_buckets):
        context = b.prompt + round(b.output / 2) if phase == Phase.DECODE else 0
        seq = context if phase == Phase.DECODE else b.prompt
        problem = Problem(
            model, platform, phase=phase, objective=objective, batch=b.batch, seq=seq, context=context,
            granularity=granularity, limits=limits,
        )  # fmt: skip
        out.append(_BucketProblem(b, problem, context, b.output if phase == Phase.DECODE else 1.0))
    if phase == Phase.DECODE and not any(item.weight for item in out):
        raise ValueError(f"workload {workload.name!r} generates no output tokens: there is nothing to decode")
    return out


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _spec(problem: Problem) -> dict[str, Any]:
    return {k: v for k, v in problem.to_dict().items() if k not in ("name", "batch", "seq", "context")}


def _bucket_optimum(item: _BucketProblem, cells: Checkpoints, say: Say) -> dict[str, Any]:
    """The bucket's optimum by the ``dp`` (checkpointed)."""
    p = item.problem
    inputs = {**_spec(p), "batch": p.batch, "seq": p.seq, "context": p.context, "tuner": "dp"}
    key = f"optimum-{item.bucket.id}-{_digest(inputs)}|{json.dumps(inputs, sort_keys=True)}"
    cached = cells.get(key)
    if cached is not None:
        say(f"bucket {item.bucket.id}: optimum reused from the checkpoint")
        return cached
    result = tune(p, "dp")
    cell = {
        "plan": None if result.best_plan is None else result.best_plan.to_dict(),
        "value": result.objective_value,
        "certified": bool(result.optimal),
        "evaluations": result.evaluations,
        "wall_s": result.wall_s,
    }
    cells.put(key, cell)
    what = "no feasible plan" if result.best_plan is None else f"{fmt_seconds(result.objective_value)}"
    say(f"bucket {item.bucket.id}: dp in {result.wall_s:.2f} s, {what}{' (certified)' if result.optimal else ''}")
    return cell


def _static_search(
    items: list[_BucketProblem], pricer: _Pricer, optima: list[Plan], budget: int, seed: int
) -> dict[str, Any]:
    """Optuna TPE over the hybrid space for the weighted total, constrained to fit every bucket."""
    import optuna

    from ..search._optuna import CONSTRAINT_NAMES, _active_constraints
    from ..search._optuna_spaces import HybridSpace

    largest = max(range(len(items)), key=lambda i: (items[i].bucket.batch, items[i].bucket.prompt))
    space = HybridSpace(items[largest].problem)
    active = [0, *(i for i in _active_constraints(items[largest].problem) if i != 0)]
    start = time.perf_counter()
    tally = {"trials": 0, "infeasible": 0, "invalid": 0}
    best: dict[str, Any] = {"plan": None, "total": None}

    def objective(trial: optuna.Trial) -> float:
        plan = space.suggest(trial)
        tally["trials"] += 1
        total, worst = 0.0, [-_INF] * len(active)
        for i, item in enumerate(items):
            value, _feasible, constraints = pricer.price(plan, i)
            if math.isnan(value) or math.isinf(value):
                tally["invalid"] += 1
                raise optuna.TrialPruned("invalid plan")
            total += item.weight * value
            worst = [max(w, constraints[c]) for w, c in zip(worst, active, strict=True)]
        if any(w > 0 for w in worst):
            tally["infeasible"] += 1
        elif best["total"] is None or total < best["total"]:
            best.update(plan=plan.to_dict(), total=total)
        for w, c in zip(worst, active, strict=True):
            trial.set_constraint(CONSTRAINT_NAMES[c], w)
        return total

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
            queued = [p for p in (space.params_of(plan) for plan in optima) if p is not None]
            queued += space.warm_start()[: max(0, budget // 4 - len(queued))]
            for params in queued[:budget]:
                study.enqueue_trial(params, skip_if_exists=True)
            study.optimize(objective, n_trials=budget, catch=())
    finally:
        optuna.logging.set_verbosity(previous)
    return {
        "plan": best["plan"],
        "total": best["total"],
        "trials": tally["trials"],
        "infeasible": tally["infeasible"],
        "invalid": tally["invalid"],
        "warm_start": len(queued[:budget]),
        "space": space.describe(),
        "wall_s": time.perf_counter() - start,
    }


def _choose(costs: list[list[float]], weights: list[float], k: int) -> tuple[list[int], str]:
    """The ``k`` candidates minimising the weighted total of each bucket's best among them."""
    n = len(costs)
    k = min(k, n)

    def total(subset: Sequence[int]) -> float:
        return sum(w * min(costs[j][i] for j in subset) for i, w in enumerate(weights))

    if math.comb(n, k) <= MAX_SUBSETS:
        best: tuple[float, tuple[int, ...]] = (_INF, tuple(range(k)))
        for subset in itertools.combinations(range(n), k):
            t = total(subset)
            if t < best[0]:
                best = (t, subset)
        return list(best[1]), "exact"
    chosen: list[int] = []
    for _ in range(k):
        j = min((j for j in range(n) if j not in chosen), key=lambda j: (total([*chosen, j]), j))
        chosen.append(j)
    return sorted(chosen), f"greedy (C({n}, {k}) > {MAX_SUBSETS} subsets)"


def _argmin(values: Sequence[float]) -> int:
    """Index of the smallest value, the first on ties (candidates come in a deliberate order)."""
    return min(range(len(values)), key=lambda j: (values[j], j))


def _rule(buckets: list[Bucket], assignment: dict[str, int]) -> list[str]:
    """The bucket -> plan table as shape thresholds.

    A shape goes to the bucket it rounds up to; prompts above the largest bucket of
    their batch, and batches above the largest bucket, take the last rule (extrapolated).
    """
    Cut = tuple[tuple[int | None, int], ...]  # (largest prompt, or None: any longer one; plan)
    batches = sorted({b.batch for b in buckets})
    per_batch: dict[int, Cut] = {}
    for bb in batches:
        segs: list[tuple[int | None, int]] = []
        for b in sorted((b for b in buckets if b.batch == bb), key=lambda b: b.prompt):
            j = assignment[b.id]
            if segs and segs[-1][1] == j:
                segs[-1] = (b.prompt, j)
            else:
                segs.append((b.prompt, j))
        segs[-1] = (None, segs[-1][1])
        per_batch[bb] = tuple(segs)
    groups: list[tuple[int, int, Cut]] = []  # (batch above, batch up to, cut)
    previous = 0
    for bb in batches:
        if groups and groups[-1][2] == per_batch[bb]:
            groups[-1] = (groups[-1][0], bb, per_batch[bb])
        else:
            groups.append((previous, bb, per_batch[bb]))
        previous = bb
    lines = []
    for gi, (lo, hi, cut) in enumerate(groups):
        if len(groups) == 1:
            batch_cond = ""
        elif gi == len(groups) - 1:
            batch_cond = f"batch > {lo}"
        elif lo == 0:
            batch_cond = f"batch <= {hi}"
        else:
            batch_cond = f"{lo} < batch <= {hi}"
        low: int | None = None
        for p, j in cut:
            if p is None:
                prompt_cond = "" if low is None else f"prompt > {low}"
            else:
                prompt_cond = f"prompt <= {p}" if low is None else f"{low} < prompt <= {p}"
            low = p
            cond = " and ".join(c for c in (batch_cond, prompt_cond) if c)
            lines.append(f"{cond or 'every shape'} -> plan {j}")
    return lines


def plan_label(plan: dict[str, Any] | Plan | None) -> str:
    """A short description of a plan: ``TP4 PP2 x2 replicas m4``."""
    if plan is None:
        return "-"
    p = Plan.from_dict(plan) if isinstance(plan, dict) else plan
    tps = [s.tp for s in p.stages]
    text = f"TP{tps[0]}" if len(set(tps)) == 1 else "TP" + "/".join(map(str, tps))
    if p.pp > 1:
        text += f" PP{p.pp}"
    if p.replicas > 1:
        text += f" x{p.replicas}"
    if p.micro_batches > 1:
        text += f" m{p.micro_batches}"
    if any(s.recompute for s in p.stages):
        text += " rc"
    return text


def run_runtime_study(
    model: str,
    platform: str,
    workload: Workload,
    *,
    phase: str = "decode",
    objective: str | None = None,
    limits: Limits | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    budget: int = 300,
    seed: int = 0,
    max_buckets: int = MAX_BUCKETS,
    granularity: str = "layer",
    out_dir: Path | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Compare one static plan, per-bucket optima and K precompiled plans on ``workload`` (module docstring).

    Returns the ``study.json`` data (written with the tables, plots and summary when
    ``out_dir`` is given; bucket optima and the static search are checkpointed there).

    Raises:
        ValueError: a non-latency objective, bad ``ks``/``budget``, or no bucket any plan can serve.
    """
    say = say or (lambda _line: None)
    objective = _check(phase, objective, ks, budget, max_buckets)
    limits = limits or Limits()
    start = time.perf_counter()
    cells = Checkpoints(out_dir)
    items = _bucket_problems(model, platform, workload, phase, objective, limits, granularity, max_buckets)
    say(f"{workload.name}: {workload.rows} rows, {workload.requests} requests -> {len(items)} buckets")
    notes: list[str] = []

    cells_opt = [_bucket_optimum(item, cells, say) for item in items]
    unservable = [item.bucket.id for item, c in zip(items, cells_opt, strict=True) if c["plan"] is None]
    if unservable:
        notes.append(f"no plan fits bucket(s) {', '.join(unservable)} on {platform}: left out of every total")
    keep = [i for i, c in enumerate(cells_opt) if c["plan"] is not None]
    if not keep:
        raise ValueError(f"no bucket of workload {workload.name!r} has a feasible plan for {model} on {platform}")
    items = [items[i] for i in keep]
    cells_opt = [cells_opt[i] for i in keep]
    pricer = _Pricer(items)
    optima = [Plan.from_dict(c["plan"]) for c in cells_opt]
    weights = [item.weight for item in items]

    # -- (a) the static plan: best of the optima and of an Optuna search -----------
    candidates: list[Plan] = list(dict.fromkeys(optima))
    inputs = {
        **_spec(items[0].problem),
        "buckets": [[it.bucket.id, it.context, it.weight] for it in items],
        "optima": [c["plan"] for c in cells_opt],
        "budget": budget,
        "seed": seed,
    }
    search: dict[str, Any] | None = None
    if budget > 0:
        key = f"static-tpe-{_digest(inputs)}|{json.dumps(inputs, sort_keys=True)}"
        search = cells.get(key)
        if search is None:
            search = _static_search(items, pricer, list(dict.fromkeys(optima)), budget, seed)
            cells.put(key, search)
            say(f"static search: {search['trials']} trials in {search['wall_s']:.1f} s")
        else:
            say("static search reused from the checkpoint")
        if search["plan"] is not None:
            candidates.append(Plan.from_dict(search["plan"]))
    candidates = list(dict.fromkeys(candidates))
    costs = [[pricer.cost(c, i) for i in range(len(items))] for c in candidates]
    totals = [sum(w * v for w, v in zip(weights, row, strict=True)) for row in costs]
    static_j = min(range(len(candidates)), key=lambda j: (totals[j], j))
    static_ok = math.isfinite(totals[static_j])
    if not static_ok:
        notes.append("no candidate plan fits every bucket: there is no static plan (K = 1 is infeasible)")
    # Candidates in the study's order: the static plan first, then the optima as they come.
    order = [static_j] + [j for j in range(len(candidates)) if j != static_j]
    candidates = [candidates[j] for j in order]
    costs = [costs[j] for j in order]
    totals = [totals[j] for j in order]

    # -- (b) the oracle: each bucket's best known plan -------------------------------
    oracle = [min(row[i] for row in costs) for i in range(len(items))]
    for i, item in enumerate(items):
        if oracle[i] < pricer.cost(optima[i], i) * (1 - 1e-9):
            notes.append(f"bucket {item.bucket.id}: another candidate beats the dp's plan (not certified there)")
    oracle_total = sum(w * v for w, v in zip(weights, oracle, strict=True))

    def regret(total: float) -> float | None:
        return None if not math.isfinite(total) else (total / oracle_total - 1.0 if oracle_total > 0 else 0.0)

    # -- (c) K precompiled plans -------------------------------------------------------
    reshard_problem = items[0].problem
    switch_cache: dict[tuple[Plan, Plan], ReshardCost] = {}

    def switch(a: Plan, b: Plan) -> ReshardCost:
        if (a, b) not in switch_cache:
            switch_cache[(a, b)] = reshard_cost(a, b, reshard_problem)
        return switch_cache[(a, b)]

    ids = [item.bucket.id for item in items]
    k_plans = []
    for k in sorted(set(ks)):
        chosen, how = _choose(costs, weights, k)
        picks = [chosen[_argmin([costs[j][i] for j in chosen])] for i in range(len(ids))]
        chosen = [j for j in chosen if j in picks]  # a plan no bucket prefers is not worth precompiling
        plans = [candidates[j] for j in chosen]
        assignment = {bid: chosen.index(j) for bid, j in zip(ids, picks, strict=True)}
        per_bucket = [costs[chosen[assignment[bid]]][i] for i, bid in enumerate(ids)]
        total = sum(w * v for w, v in zip(weights, per_bucket, strict=True))
        worst = max((v / o - 1.0 for v, o in zip(per_bucket, oracle, strict=True) if o > 0), default=0.0)
        k_plans.append(
            {
                "k": k,
                "plans": [p.to_dict() for p in plans],
                "labels": [plan_label(p) for p in plans],
                "assignment": assignment,
                "rule": _rule([it.bucket for it in items], assignment),
                "total": total if math.isfinite(total) else None,
                "regret": regret(total),
                "max_bucket_regret": worst if math.isfinite(worst) else None,
                "selection": how,
                "switches": [
                    {
                        "from": a,
                        "to": b,
                        "bytes": switch(plans[a], plans[b]).bytes,
                        "time_s": switch(plans[a], plans[b]).time_s,
                    }
                    for a in range(len(plans))
                    for b in range(len(plans))
                    if a != b
                ],
            }
        )
        say(f"K={k}: regret {fmt_pct(regret(total))}")

    # -- the static plan against each bucket, and the decisions behind its regret ------
    static = candidates[0]
    max_devices = items[0].problem.max_devices
    bucket_rows, break_even = [], []
    groups: list[tuple[str, ...]] = [(d,) for d in DECISIONS] + list(itertools.combinations(DECISIONS, 2))
    ablated = dict.fromkeys(groups, 0.0)
    changed_count = dict.fromkeys(groups, 0)
    for i, (item, c) in enumerate(zip(items, cells_opt, strict=True)):
        own_best = pricer.cost(optima[i], i) <= oracle[i]
        best_plan = optima[i] if own_best else candidates[_argmin([row[i] for row in costs])]
        s_cost = costs[0][i]
        fitted = fit_plan(static, item.bucket.batch)[0]
        worse = s_cost > oracle[i] * (1 + TIE_RTOL)  # a float-rounding tie is no reason to switch
        changed = changed_decisions(fitted, best_plan) if worse else []
        for group in groups:
            value = s_cost
            if all(d in changed for d in group):
                changed_count[group] += 1
            if any(d in changed for d in group):
                hybrid = transplant(static, best_plan, group, max_devices)
                if hybrid is not None:
                    value = min(value, pricer.cost(hybrid, i))
            ablated[group] += item.weight * value
        row = {
            **item.bucket.to_dict(),
            "context": item.context if item.problem.phase == Phase.DECODE else None,
            "weight": item.weight,
            "optimum": oracle[i],
            "optimum_plan": best_plan.to_dict(),
            "optimum_label": plan_label(best_plan),
            "certified": bool(c["certified"]) and own_best,
            "dp_wall_s": c["wall_s"],
            "static": s_cost if math.isfinite(s_cost) else None,
            "static_regret": s_cost / oracle[i] - 1.0 if math.isfinite(s_cost) and oracle[i] > 0 else None,
            "changed": changed,
        }
        bucket_rows.append(row)
        if static_ok and best_plan != static and worse:
            gain = (s_cost - oracle[i]) * item.steps
            there, back = switch(static, best_plan), switch(best_plan, static)
            break_even.append(
                {
                    "bucket": item.bucket.id,
                    "gain_s": gain,
                    "switch_s": there.time_s,
                    "round_trip_s": there.time_s + back.time_s,
                    "bytes": there.bytes,
                    "batches": there.time_s / gain if gain > 0 else None,
                    "round_trip_batches": (there.time_s + back.time_s) / gain if gain > 0 else None,
                }
            )
    static_total = totals[0]
    static_gap = static_total - oracle_total

    def removed(group: tuple[str, ...]) -> float | None:
        return (static_total - ablated[group]) / static_gap if static_ok and static_gap > 0 else None

    decisions = [
        {"decision": g[0], "buckets_changed": changed_count[g], "regret_removed": removed(g)}
        for g in groups
        if len(g) == 1
    ]
    decision_pairs = [
        {"decisions": list(g), "buckets_changed": changed_count[g], "regret_removed": removed(g)}
        for g in groups
        if len(g) == 2 and changed_count[g]
    ]
    static_note = (
        f"the best of {len(candidates)} candidate plans (the bucket optima"
        + (f" and an Optuna TPE search of {budget} trials over the hybrid space" if search else "")
        + "): the best found, not certified"
    )
    first = items[0].problem
    data: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "model": model,
        "platform": platform,
        "phase": phase,
        "objective": objective,
        "direction": "minimize",
        "unit": "s",
        "granularity": granularity,
        "limits": limits.to_dict(),
        "workload": {**workload.to_dict(max_buckets), "buckets": len(items) + len(unservable)},
        "buckets": bucket_rows,
        "unservable": unservable,
        "static": {
            "plan": static.to_dict() if static_ok else None,
            "label": plan_label(static) if static_ok else None,
            "total": static_total if static_ok else None,
            "regret": regret(static_total),
            "note": static_note,
            "search": search,
        },
        "oracle": {"total": oracle_total},
        "k_plans": k_plans,
        "decisions": decisions,
        "decision_pairs": decision_pairs,
        "break_even": break_even,
        "notes": notes,
        "wall_s": time.perf_counter() - start,
        "provenance": provenance(
            seed,
            first.resolved_platform.profile.name,
            study=KIND,
            workload=workload.to_dict(max_buckets),
            oracle_tuner="dp",
            static_search="optuna-tpe",
            budget=budget,
        ),
    }
    data["summary"] = runtime_summary(data)
    if out_dir is not None:
        write_study(Path(out_dir), data, runtime_tables(data), runtime_figures(data), _title(data))
    return data


def _title(data: dict[str, Any]) -> str:
    return f"Static vs run time: {data['model']} on {data['platform']}, {data['phase']}, {data['workload']['name']}"


# -- reporting ------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def runtime_summary(data: dict[str, Any]) -> list[str]:
    """The findings in numbers: static regret, regret at each K, the K that removes most of it, decisions, switching."""
    out: list[str] = []
    static = data["static"]
    buckets = data["buckets"]
    n = len(buckets)
    by_k = {e["k"]: e for e in data["k_plans"]}
    if static["regret"] is None:
        out.append(f"No single plan serves all {n} buckets: a run time must switch plans.")
    else:
        worst = max((b["static_regret"] or 0.0 for b in buckets), default=0.0)
        out.append(
            f"One static plan ({static['label']}) costs {fmt_pct(static['regret'])} more than re-planning every "
            f"bucket ({n} buckets; worst bucket {fmt_pct(worst)}); it is the best found, not certified."
        )
    ks = [k for k in sorted(by_k) if k > 1]
    if ks:
        out.append("With K precompiled plans: " + ", ".join(f"K={k}: {fmt_pct(by_k[k]['regret'])}" for k in ks) + ".")
    if static["regret"]:
        enough = [k for k in sorted(by_k) if (by_k[k]["regret"] or 0.0) <= (1 - MOST) * static["regret"]]
        out.append(
            f"K={enough[0]} plans remove {100 * MOST:.0f}% of the static regret."
            if enough
            else f"None of K={', '.join(map(str, sorted(by_k)))} removes {100 * MOST:.0f}% of the static regret."
        )
    elif static["regret"] == 0:
        out.append("The static plan is optimal for every bucket: nothing is left to decide at run time.")
    moved = sorted((d for d in data["decisions"] if d["buckets_changed"]), key=lambda d: -d["buckets_changed"])
    if moved:
        parts = []
        for d in moved[:3]:
            share = "" if d["regret_removed"] is None else f", alone removes {fmt_pct(d['regret_removed'])} of it"
            parts.append(f"{d['decision']} ({d['buckets_changed']}/{n} buckets{share})")
        out.append("Decisions that differ from the bucket optima: " + "; ".join(parts) + ".")
        pairs = [q for q in data.get("decision_pairs", []) if q["regret_removed"] is not None]
        singles = max((d["regret_removed"] or 0.0 for d in data["decisions"]), default=0.0)
        top = max(pairs, key=lambda q: q["regret_removed"], default=None)
        if top is not None and top["regret_removed"] > singles + 0.05:
            out.append(
                f"Decisions move together: one decision alone removes at most {fmt_pct(singles)} of the static "
                f"regret, {' with '.join(top['decisions'])} together {fmt_pct(top['regret_removed'])}."
            )
    be = [b for b in data["break_even"] if b["batches"] is not None]
    if be:
        one_way = fmt_seconds(_median([b["switch_s"] for b in be]))
        out.append(
            f"Switching from the static plan to a bucket's optimum and back reshards weights in "
            f"{fmt_seconds(_median([b['round_trip_s'] for b in be]))} (median; one way {one_way}) against a gain of "
            f"{fmt_seconds(_median([b['gain_s'] for b in be]))} per batch: the round trip pays after "
            f"{_median([b['round_trip_batches'] for b in be]):.3g} batches of that bucket (median; the switch time "
            "is a lower bound, with no overlap with compute)."
        )
    out += [f"Note: {n}" for n in data.get("notes", [])]
    return out


def runtime_tables(data: dict[str, Any]) -> list[StudyTable]:
    """Buckets, K plans, decisions, break-even and switches, as tables (raw numbers; SI units)."""
    secs = {"optimum": fmt_seconds, "static": fmt_seconds}
    keys = ("id", "prompt", "batch", "context", "output", "requests", "weight", "optimum", "optimum_label")
    keys2 = ("certified", "static", "static_regret")
    buckets = StudyTable(
        "runtime_buckets",
        "Buckets: per-bucket optimum vs the static plan",
        ["bucket", *keys[1:-1], "optimum_plan", *keys2, "changed"],
        [[*(b[k] for k in keys), *(b[k] for k in keys2), " ".join(b["changed"])] for b in data["buckets"]],
        note=f"Static plan: {data['static']['label'] or 'none fits every bucket'} ({data['static']['note']}). "
        "Weight: how many times a bucket pays the objective.",
        formats={**secs, "static_regret": fmt_pct},
    )
    k_plans = StudyTable(
        "runtime_k_plans",
        "K precompiled plans switched by shape",
        ["k", "plans", "total", "regret", "max_bucket_regret", "max_switch_s", "rule", "selection"],
        [
            [
                e["k"],
                "; ".join(f"{i}: {lab}" for i, lab in enumerate(e["labels"])),
                e["total"],
                e["regret"],
                e["max_bucket_regret"],
                max((s["time_s"] for s in e["switches"]), default=0.0),
                " | ".join(e["rule"]),
                e["selection"],
            ]
            for e in data["k_plans"]
        ],
        note=f"Oracle total: {fmt_seconds(data['oracle']['total'])}.",
        formats={"total": fmt_seconds, "regret": fmt_pct, "max_bucket_regret": fmt_pct, "max_switch_s": fmt_seconds},
    )
    decisions = StudyTable(
        "runtime_decisions",
        "Decisions that differ between the static plan and the bucket optima",
        ["decision", "buckets_changed", "regret_removed"],
        [[d["decision"], d["buckets_changed"], d["regret_removed"]] for d in data["decisions"]]
        + [
            [" + ".join(q["decisions"]), q["buckets_changed"], q["regret_removed"]]
            for q in data.get("decision_pairs", [])
        ],
        note="regret_removed: share of the static regret gone when only this decision (or pair) is re-decided per "
        "bucket (when TP or stages then need more devices than there are, replicas shrink to fit); buckets_changed: "
        "buckets whose optimum differs from the static plan in it (in both, for a pair).",
        formats={"regret_removed": fmt_pct},
    )
    cols = ["bucket", "gain_s", "switch_s", "round_trip_s", "bytes", "batches", "round_trip_batches"]
    break_even = StudyTable(
        "runtime_break_even",
        "Switching to a bucket's optimum: cost vs gain",
        cols,
        [[b[c] for c in ["bucket", *cols[1:]]] for b in data["break_even"]],
        note="gain_s per batch of the bucket; batches = switch_s / gain_s, round_trip_batches counts the switch back "
        "too (weights resharded; a lower bound on the switch).",
        formats={"gain_s": fmt_seconds, "switch_s": fmt_seconds, "round_trip_s": fmt_seconds},
    )
    switches = StudyTable(
        "runtime_switches",
        "Switch cost between the K plans",
        ["k", "from", "to", "bytes", "time_s"],
        [[e["k"], s["from"], s["to"], s["bytes"], s["time_s"]] for e in data["k_plans"] for s in e["switches"]],
        formats={"time_s": fmt_seconds},
    )
    return [buckets, k_plans, decisions, break_even, switches]


def runtime_figures(data: dict[str, Any]) -> list[Any]:
    """Regret vs K, the static plan's regret per bucket, the decision breakdown, switch time vs gain."""
    import plotly.graph_objects as go

    ks = [e["k"] for e in data["k_plans"]]
    pct = [None if e["regret"] is None else 100 * e["regret"] for e in data["k_plans"]]
    worst = [None if e["max_bucket_regret"] is None else 100 * e["max_bucket_regret"] for e in data["k_plans"]]
    by_k = go.Figure(
        [
            go.Scatter(x=ks, y=pct, mode="lines+markers", name="total regret"),
            go.Scatter(x=ks, y=worst, mode="lines+markers", name="worst bucket", line={"dash": "dot"}),
        ]
    )
    if data["static"]["regret"] is not None:
        by_k.add_hline(y=100 * data["static"]["regret"], line_dash="dash", annotation_text="static plan")
    by_k.add_hline(y=0, line_color="green", annotation_text="oracle (per-bucket optimum)")
    by_k.update_layout(title="Regret of K precompiled plans", xaxis_title="K (plans)", yaxis_title="regret (%)")
    by_k.update_xaxes(type="log", tickvals=ks)

    b = data["buckets"]
    per_bucket = go.Figure(
        go.Bar(
            x=[r["id"] for r in b],
            y=[None if r["static_regret"] is None else 100 * r["static_regret"] for r in b],
            text=[" ".join(r["changed"]) for r in b],
        )
    )
    per_bucket.update_layout(
        title="Regret of the static plan per bucket", xaxis_title="bucket", yaxis_title="regret (%)"
    )

    d = data["decisions"]
    decisions = go.Figure(
        [
            go.Bar(x=[r["decision"] for r in d], y=[r["buckets_changed"] for r in d], name="buckets where it changes"),
            go.Bar(
                x=[r["decision"] for r in d],
                y=[None if r["regret_removed"] is None else 100 * r["regret_removed"] for r in d],
                name="static regret it removes alone (%)",
                yaxis="y2",
            ),
        ]
    )
    decisions.update_layout(
        title="Which decisions change between buckets",
        barmode="group",
        yaxis={"title": "buckets"},
        yaxis2={"title": "regret removed (%)", "overlaying": "y", "side": "right"},
    )

    be = [r for r in data["break_even"] if r["gain_s"] > 0]
    switch = go.Figure(
        go.Scatter(
            x=[r["gain_s"] for r in be],
            y=[r["switch_s"] for r in be],
            text=[r["bucket"] for r in be],
            mode="markers+text",
            textposition="top center",
            name="buckets",
        )
    )
    if be:
        lo = min(min(r["gain_s"] for r in be), min(r["switch_s"] for r in be) or 1e-9)
        hi = max(max(r["gain_s"] for r in be), max(r["switch_s"] for r in be))
        switch.add_trace(
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="pays after 1 batch", line={"dash": "dash"})
        )
    switch.update_layout(
        title="Switch time vs gain per batch (above the line: needs several batches)",
        xaxis={"title": "gain per batch (s)", "type": "log"},
        yaxis={"title": "reshard time (s)", "type": "log"},
    )
    return [by_k, per_bucket, decisions, switch]
