"""Serving search against a peer: paratune's deployment next to NVIDIA AIConfigurator's, each priced by both tools.

Issue 17's validation run (``python benchmarks/peer_aiconfigurator.py --serving``, which dispatches here): for
every scenario of ``_aic_serving.SCENARIOS`` (Llama-3.1 8B / 70B, Mixtral-8x7B; H100, H200, B200; chat and
long-context traffic; aggregated, disaggregated or both), in one process:

1. paratune's search (:func:`paratune.search._serve.search_deployments`, the analytic model), timed;
2. AIConfigurator's search (``_aic_serving.aic_search``: the tasks of ``aiconfigurator cli default``), timed;
3. cross-evaluation: paratune's choice priced by AIConfigurator (``aic_estimate``) and AIConfigurator's choice
   priced by paratune (the :class:`~paratune.search._serve.Evaluator` of the same problem: at the request rate
   AIConfigurator says it sustains, and at paratune's own capacity within the SLO);
4. a table, the issue's verdict (``_aic_serving.verdict``: paratune's choice at least 0.97 of the peer's by the
   peer's own ``tokens/s/gpu_cluster`` on 80% of the scenarios, in no more wall time) and JSON.

How the question is posed to paratune (:func:`pose`), so that both tools answer the same one:

* **Load**: an open loop (Poisson arrivals), each candidate at the largest rate it sustains within the SLO, the
  budget filled with replicas. AIConfigurator has no arrivals: it reports the rate a full batch sustains, with a
  queueing factor on TTFT; the open loop's M/D/1 wait is paratune's stand-in for that factor. (A closed loop asks
  the same question but costs ~10x more per evaluation: each one solves the loop's rate by bisection.)
* **Objective**: output tokens/s per GPU of the *budget* (``fill_budget``: idle GPUs counted), the peer's
  ``tokens/s/gpu_cluster``; paratune's default ranks per GPU used, and would leave 2-4 GPUs of a budget idle for
  a better figure per GPU used, which the peer's figure counts as a loss.
* **SLO percentile**: the median (the peer's TTFT and TPOT are steady-state means of identical requests).
* **Planning headroom** (``--slo-margin``, default ``0`` as ``serve-tune``'s): with ``auto`` or a percent,
  paratune's search keeps that headroom (:mod:`paratune.serving._margin`); the peer's choice is still priced by
  paratune against the SLO itself, and paratune's choice by the peer likewise. The peer plans at its edge.
* **Hand-off** (:func:`handoff`): AIConfigurator prices a batch that is *always full* (its ``bs``), paratune a
  batch *cap* (``--max-num-seqs``) with the batch the load gives. paratune's choice goes to the peer with each
  decoding pool's cap set to its operating batch (requests per instance x the time each holds a slot, Little's
  law; per PP stage, as the peer's batch is per batch in flight): what the peer's ``bs`` means. A prefill pool
  (the peer prices a static batch of ``(p)bs`` prompts, always full) gets the prompts one of its iterations runs
  at that rate (:func:`prefill_batch`), not the most its token budget admits. The hand-off is the peer's reading
  of paratune's operating point, not what paratune would launch (its searched caps): in paratune's model a cap
  at the *mean* batch binds, prompts queue for a slot and TTFT grows (``handoff_paratune`` reports it; the
  throughput holds, except under PP, where paratune's cap counts every stage's batch).

Timing: each tool's search is timed around its own call, in the same process, neither warmed: paratune's first
scenario pays its calibration tables and instance-cost grids (built lazily per model and platform), the peer's
its system tables (its in-process caches serve later scenarios, as paratune's do). Imports are not counted for
either tool. Machine: whatever ``provenance`` says; with other jobs on the CPUs a wall time varies up to 3x.

Run: ``python benchmarks/peer_serving.py [--only SUBSTR] [--json] [--out FILE]`` (or ``peer_aiconfigurator.py
--serving ...``). Exits with 2 and one line when AIConfigurator is not installed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Modes of paratune's space for a scenario's ``mode``.
_MODES = {"agg": ("agg",), "disagg": ("disagg",), "both": ("agg", "disagg")}


def pose(scenario: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario as paratune's search question: open-loop traffic, median SLO, the scenario's modes."""
    from _aic_serving import paratune_inputs

    inputs = paratune_inputs(scenario)
    inputs["traffic"] = replace(inputs["traffic"], concurrency=None, rate=1.0)  # the rate is searched per candidate
    inputs["modes"] = _MODES[str(scenario["mode"])]
    return inputs


def operating_batch(rate_per_instance: float, slots_s: float, pp: int, cap: int) -> int:
    """Sequences one batch in flight holds at a rate (Little's law), rounded up, within 1..``cap``."""
    if not rate_per_instance > 0 or not slots_s > 0 or not math.isfinite(rate_per_instance * slots_s):
        return cap
    return max(1, min(cap, math.ceil(rate_per_instance * slots_s / max(pp, 1) - 1e-9)))


def prefill_batch(cost: Any, rate_per_instance: float, isl: int, pp: int, most: int) -> int:
    """Prompts one prefill iteration runs at a rate: the least b with b >= (rate / pp) x period(b prompts).

    The steady state of a prefill engine that takes every waiting prompt (up to its budget) each iteration; the
    peer's static prefill batch ``(p)bs`` is that b, always full.
    """
    from paratune.serving import Mix

    per_batch = rate_per_instance / max(pp, 1)
    for b in range(1, max(most, 1) + 1):
        mix = Mix(prefill_tokens=b * isl, prefill_attention=b * isl * (isl + 1) / 2.0, sampled=b)
        period = max(cost.latency_s(mix), pp * cost.interval_s(mix)) if pp > 1 else cost.latency_s(mix)
        if per_batch * period <= b:
            return b
    return max(most, 1)


def handoff(deployment: Any, metrics: Any, isl: int, osl: int, cost_of: Callable[[Any], Any] | None = None) -> Any:
    """``deployment`` with each pool's batch at the batch it runs at ``metrics`` (see the module docstring).

    A request holds a decode slot for its OSL - 1 decode iterations of TPOT each (aggregated: the iteration that
    samples its first token too, so OSL). The mean TPOT is the period of an iteration. A prefill pool (when
    ``cost_of`` prices its instance) gets :func:`prefill_batch` prompts and a token budget of that many prompts.
    """
    tpot_s = float(metrics.tpot_ms["mean"]) / 1e3
    rate = float(metrics.requests_per_s)
    pools = []
    for pool in deployment.pools:
        if pool.role == "prefill":
            cost = None if cost_of is None or pool.max_batched_tokens < isl else cost_of(pool)
            if cost is None:  # chunked prompts (one at a time), or no price: as chosen
                pools.append(pool)
                continue
            most = min(pool.max_num_seqs, pool.max_batched_tokens // isl)
            b = prefill_batch(cost, rate / pool.replicas, isl, pool.pp, most)
            pools.append(replace(pool, max_num_seqs=b, max_batched_tokens=b * isl))
            continue
        steps = osl if pool.role == "mixed" else osl - 1
        b = operating_batch(rate / pool.replicas, steps * tpot_s, pool.pp, pool.max_num_seqs)
        pools.append(replace(pool, max_num_seqs=b))
    return replace(deployment, pools=tuple(pools))


def figures(metrics: Any, gpus_used: int, budget: int) -> dict[str, Any]:
    """paratune's metrics in the peer's terms: per GPU of the budget (idle GPUs counted), medians, the SLO flag."""
    if metrics is None:
        return {
            "tokens_per_s_per_gpu_cluster": 0.0,
            "tokens_per_s_per_user": 0.0,
            "ttft_ms": None,
            "tpot_ms": None,
            "requests_per_s": 0.0,
            "meets_slo": False,
        }

    def finite(v: float) -> float | None:
        return float(v) if math.isfinite(v) else None

    return {
        "tokens_per_s_per_gpu_cluster": metrics.tokens_per_s_per_gpu * gpus_used / budget,
        "tokens_per_s_per_user": metrics.tokens_per_s_per_user,
        "ttft_ms": finite(metrics.ttft_ms["p50"]),
        "tpot_ms": finite(metrics.tpot_ms["p50"]),
        "requests_per_s": metrics.requests_per_s,
        "meets_slo": bool(metrics.meets_slo) and not metrics.saturated,
    }


def paratune_search(scenario: Mapping[str, Any], slo_margin: float | str = 0.0) -> tuple[Any, Any, float]:
    """paratune's search on ``scenario``: (the search result, the problem's evaluator, wall seconds of the search).

    ``slo_margin``: paratune's planning headroom (``serve-tune --slo-margin``), for its search only; the evaluator
    returned (which prices the peer's choice) checks the scenario's SLO itself.
    """
    from paratune.costmodel import get_platform
    from paratune.graphs import get_model
    from paratune.search._serve import Evaluator, ServingSpace, search_deployments
    from paratune.serving import Deployment, Pool

    q = pose(scenario)
    platform = get_platform(q["platform"])
    space = replace(ServingSpace.default(get_model(q["model"]), platform, q["gpus"]), modes=q["modes"])
    start = time.perf_counter()
    result = search_deployments(
        q["model"], platform, q["traffic"], q["slo"], gpus=q["gpus"], engine=q["engine"], dtype=q["dtype"],
        kv_dtype=q["kv_dtype"], space=space, fill_budget=True, slo_margin=slo_margin,
    )  # fmt: skip
    wall = time.perf_counter() - start
    proto = Deployment((Pool(),), engine=q["engine"], dtype=q["dtype"], kv_dtype=q["kv_dtype"])
    ev = Evaluator(q["model"], platform, q["traffic"], q["slo"], gpus=q["gpus"], target=None, proto=proto)
    return result, ev, wall


def paratune_prices(ev: Any, deployment: Mapping[str, Any], rate: float, budget: int) -> dict[str, Any]:
    """paratune's figures for a given deployment: at ``rate`` requests/s, and at its capacity within the SLO."""
    from paratune.serving import Deployment

    dep = replace(Deployment.from_dict(dict(deployment)), engine=ev.proto.engine)
    at = ev.at(dep, rate) if rate > 0 else None
    cap = ev.capacity(dep)
    return {
        "at_peer_rate": figures(at, dep.gpus, budget),
        "at_capacity": figures(None if cap is None else cap.metrics, dep.gpus, budget),
        "fits": ev.costs(dep) is not None,
    }


#: AIConfigurator's aggregated batch grid (its decode batches follow a similar schedule): the re-fit's candidates.
PEER_BATCHES: tuple[int, ...] = (
    *range(1, 16),
    *range(16, 32, 4),
    *range(32, 64, 8),
    *range(64, 256, 16),
    *range(256, 512, 32),
    512,
    768,
    1024,
)


def refit_candidates(batch: int) -> list[int]:
    """Batches the re-fit tries around paratune's ``batch``: the peer's grid within [batch / 2, 2 batch], and it."""
    return sorted({b for b in PEER_BATCHES if batch / 2 <= b <= 2 * batch} | {batch})


def refit(
    scenario: Mapping[str, Any], deployment: Mapping[str, Any], estimate: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """paratune's layout at the batch the PEER's model allows (a labelled posing, not paratune's answer).

    The decoding pool's batch is re-fit in the peer's model: the largest of :func:`refit_candidates` that meets
    the SLO by the peer's estimate (binary search, the SLO taken as monotone in the batch), then the two below it
    (the peer's tables are not monotone in throughput); the best score wins. When no decode batch meets the SLO,
    a prefill pool's static batch is halved (down to one prompt) and the decode batch re-fit again. Everything
    else (mode, TP / PP per pool, replicas, the prefill:decode ratio) is paratune's. It separates paratune's
    layout decisions from the few percent by which the two models' step times differ, which decide whether a
    deployment run at the edge of the SLO in one model meets it in the other.
    """
    from _aic_serving import _score

    dep = json.loads(json.dumps(dict(deployment)))
    index = len(dep["pools"]) - 1  # the mixed pool, or the decode pool
    budget = int(scenario["gpus"])
    isl = int(scenario["isl"])
    seen: dict[tuple[int, int], dict[str, Any]] = {}

    def at(p_bs: int, b: int) -> dict[str, Any]:
        if (p_bs, b) not in seen:
            dep["pools"][index]["max_num_seqs"] = b
            if dep["pools"][index]["role"] == "decode":
                dep["pools"][index]["max_batched_tokens"] = b
                if p_bs != first:  # a halved static prefill batch (the peer's (p)bs)
                    dep["pools"][0]["max_num_seqs"], dep["pools"][0]["max_batched_tokens"] = p_bs, p_bs * isl
            seen[p_bs, b] = estimate(json.loads(json.dumps(dep)))
        return seen[p_bs, b]

    def fit(p_bs: int) -> None:
        grid = refit_candidates(int(deployment["pools"][index]["max_num_seqs"]))
        lo, hi = -1, len(grid)  # grid[lo] meets the SLO (or lo = -1), grid[hi] does not (or hi = len)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _score(at(p_bs, grid[mid]), budget) > 0:
                lo = mid
            else:
                hi = mid
        for i in (lo - 1, lo - 2):
            if i >= 0:
                at(p_bs, grid[i])

    pre = dep["pools"][0]
    first = max(1, min(int(pre["max_num_seqs"]), int(pre["max_batched_tokens"]) // isl)) if index == 1 else 0
    p_bs = first
    fit(p_bs)
    while index == 1 and p_bs > 1 and max(_score(v, budget) for v in seen.values()) == 0.0:
        p_bs //= 2
        fit(p_bs)
    best = max(seen, key=lambda k: (_score(seen[k], budget), -k[1], k[0]))
    return {
        "batch": best[1],
        "prefill_batch": best[0] or None,
        "estimate": seen[best],
        "score": _score(seen[best], budget),
        "calls": len(seen),
    }


def run_scenario(
    scenario: Mapping[str, Any], models: Any, *, refit_batch: bool = True, slo_margin: float | str = 0.0
) -> dict[str, Any]:
    """Both searches and both cross-evaluations of one scenario (a row; ``status`` ok / none / error).

    ``refit_batch``: also :func:`refit` paratune's layout in the peer's model (``layout_ratio``).
    """
    from _aic_serving import TARGET_RATIO, _score, aic_estimate, aic_search, compare

    budget = int(scenario["gpus"])
    row: dict[str, Any] = {"scenario": scenario["name"], "spec": dict(scenario)}
    result, ev, wall = paratune_search(scenario, slo_margin)
    row["paratune_wall_s"] = wall
    row["slo_margin"] = result.to_dict()["slo_margin"]
    row["paratune_evaluations"] = result.evaluations
    found = aic_search(scenario, models=models)
    row["peer_wall_s"] = float(found["wall_s"])
    if found["status"] != "ok" or result.best is None:
        row["status"] = "none"
        row["reason"] = result.reason if result.best is None else "the peer found no configuration"
        return row
    best = result.best
    hand = handoff(best.deployment, best.metrics, int(scenario["isl"]), int(scenario["osl"]), ev.cost)
    cmp = compare(scenario, found, hand.to_dict(), wall_s=wall, models=models)
    hand_at = ev.at(hand, best.metrics.requests_per_s)
    row.update(
        status="ok",
        paratune={
            "deployment": best.deployment.to_dict(),
            "handoff": hand.to_dict(),
            "paratune": figures(best.metrics, best.deployment.gpus, budget),
            "handoff_paratune": figures(hand_at, hand.gpus, budget),
            "peer": cmp["estimate"],
        },
        peer={
            "mode": found["mode"],
            "deployment": found["deployment"],
            "peer": found["aic"],
            "paratune": paratune_prices(ev, found["deployment"], float(found["aic"]["requests_per_s"]), budget),
            "notes": found["notes"],
        },
        ratio=cmp["ratio"],
        as_good=cmp["as_good"],
        faster=cmp["faster"],
        wall_s=wall,
    )
    if refit_batch:
        start = time.perf_counter()
        fit = refit(scenario, hand.to_dict(), lambda d: aic_estimate(scenario, d, models=models))
        theirs = _score(found["aic"], budget)
        layout = fit["score"] / theirs if theirs > 0 else (math.inf if fit["score"] > 0 else math.nan)
        row["refit"] = {**fit, "wall_s": time.perf_counter() - start}
        row["layout_ratio"] = layout
        row["layout_as_good"] = bool(layout >= TARGET_RATIO) or (fit["score"] == theirs == 0.0)
    return row


def run(
    scenarios: list[dict[str, Any]],
    say: Callable[[str], None] = print,
    *,
    refit_batch: bool = True,
    slo_margin: float | str = 0.0,
) -> list[dict[str, Any]]:
    """Every scenario in turn, errors kept as rows (a peer's or paratune's exception is a figure, not a crash)."""
    from peer_aiconfigurator import _PeerModels

    rows = []
    models = _PeerModels()
    try:
        for scenario in scenarios:
            try:
                row = run_scenario(scenario, models, refit_batch=refit_batch, slo_margin=slo_margin)
            except Exception as exc:
                row = {"scenario": scenario["name"], "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            ratio = row.get("ratio")
            say(
                f"{scenario['name']}: {row['status']}"
                + (f" ratio {ratio:.3f}" if ratio is not None else "")
                + (f" (layout {row['layout_ratio']:.3f})" if "layout_ratio" in row else "")
                + f" paratune {row.get('paratune_wall_s', 0.0):.1f} s, peer {row.get('peer_wall_s', 0.0):.1f} s"
                + _margin_text(row.get("slo_margin"))
            )
            rows.append(row)
    finally:
        models.close()
    return rows


def _margin_text(margin: Mapping[str, Any] | None) -> str:
    """``, margin TTFT 8.1% TPOT 7.3%`` for a row searched with a margin, else nothing."""
    if not margin or not (margin.get("ttft_pct") or margin.get("tpot_pct")):
        return ""
    return f", margin TTFT {margin['ttft_pct']:.1f}% TPOT {margin['tpot_pct']:.1f}%"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's verdict over the rows; a scenario that failed counts as not as good, its wall times still count."""
    from _aic_serving import verdict

    comparisons = [
        {
            "as_good": r.get("as_good", False),
            "wall_s": r.get("paratune_wall_s", 0.0),
            "peer_wall_s": r.get("peer_wall_s", 0.0),
            "faster": r.get("faster", r.get("paratune_wall_s", 0.0) <= r.get("peer_wall_s", 0.0)),
        }
        for r in rows
    ]
    out = verdict(comparisons)
    out["ratios"] = {r["scenario"]: r.get("ratio") for r in rows}
    out["errors"] = sum(r["status"] == "error" for r in rows)
    if any("layout_ratio" in r for r in rows):  # the labelled posing: paratune's layout, the peer's batch
        out["layout_as_good"] = sum(bool(r.get("layout_as_good", False)) for r in rows)
        out["layout_ratios"] = {r["scenario"]: r.get("layout_ratio") for r in rows}
    return out


def label(dep: Mapping[str, Any]) -> str:
    """A deployment in a few characters: ``8x tp1 b96 t1024`` or ``P 4x tp1 t2048 + D 2x tp2 b116``."""
    parts = []
    for p in dep["pools"]:
        pp = f"pp{p['pp']}" if p["pp"] > 1 else ""
        if p["role"] == "prefill":
            parts.append(f"P {p['replicas']}x tp{p['tp']}{pp} t{p['max_batched_tokens']}")
        elif p["role"] == "decode":
            parts.append(f"D {p['replicas']}x tp{p['tp']}{pp} b{p['max_num_seqs']}")
        else:
            parts.append(f"{p['replicas']}x tp{p['tp']}{pp} b{p['max_num_seqs']} t{p['max_batched_tokens']}")
    return " + ".join(parts)


def _fig(f: Mapping[str, Any]) -> str:
    """tokens/s/GPU | tokens/s/user | TTFT | TPOT, compactly (a missed SLO starred)."""
    if not f or not f.get("tokens_per_s_per_gpu_cluster"):
        return "-"
    ttft = "-" if f.get("ttft_ms") is None else f"{f['ttft_ms']:.0f}"
    tpot = "-" if f.get("tpot_ms") is None else f"{f['tpot_ms']:.1f}"
    star = "" if f.get("meets_slo") else "*"
    return f"{f['tokens_per_s_per_gpu_cluster']:.0f}{star} {f['tokens_per_s_per_user']:.0f} {ttft} {tpot}"


def _print(rows: list[dict[str, Any]], summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Serving search: paratune vs AIConfigurator (figures: tok/s/GPU tok/s/user TTFT TPOT, * = SLO missed)"
    )
    cols = (
        "scenario",
        "paratune's choice",
        "by paratune",
        "by peer",
        "peer's choice",
        "by peer ",
        "by paratune ",
        "ratio",
        "layout",
        "pt s",
        "peer s",
    )
    for col in cols:
        table.add_column(col, justify="left" if "choice" in col or col == "scenario" else "right")
    for r in rows:
        if r["status"] != "ok":
            table.add_row(
                r["scenario"],
                f"[red]{r.get('error', r.get('reason', ''))[:80]}[/red]",
                *[""] * 7,
                f"{r.get('paratune_wall_s', 0.0):.1f}",
                f"{r.get('peer_wall_s', 0.0):.1f}",
            )
            continue
        p, a = r["paratune"], r["peer"]
        ratio = r["ratio"]
        text = f"{ratio:.3f}" if math.isfinite(ratio) else str(ratio)
        table.add_row(
            r["scenario"],
            label(p["handoff"]),
            _fig(p["paratune"]),
            _fig(p["peer"]),
            f"{a['mode']}: {label(a['deployment'])}",
            _fig(a["peer"]),
            _fig(a["paratune"]["at_capacity"]),
            text if r["as_good"] else f"[yellow]{text}[/yellow]",
            _layout(r),
            f"{r['paratune_wall_s']:.1f}",
            f"{r['peer_wall_s']:.1f}",
        )
    Console(width=250).print(table)
    s = summary
    print(
        f"{s['as_good']}/{s['scenarios']} scenarios as good (ratio >= 0.97 by the peer's estimate, target 80%); "
        f"search wall time paratune {s['wall_s']:.1f} s, peer {s['peer_wall_s']:.1f} s "
        f"(paratune faster on {s['faster']}); target {'met' if s['meets_target'] else 'MISSED'}"
    )
    if "layout_as_good" in s:
        print(
            f"layout (a labelled posing: paratune's layout at the batch the peer's model allows, not the verdict): "
            f"{s['layout_as_good']}/{s['scenarios']} as good"
        )


def _layout(row: Mapping[str, Any]) -> str:
    """The layout ratio and the batch the peer re-fit, e.g. ``1.004 b160``."""
    if "layout_ratio" not in row:
        return "-"
    ratio = row["layout_ratio"]
    fit = row["refit"]
    text = f"{ratio:.3f}" if math.isfinite(ratio) else str(ratio)
    return f"{text} b{fit['batch']}" + (f" p{fit['prefill_batch']}" if fit.get("prefill_batch") else "")


def main(argv: list[str] | None = None) -> int:
    from _figures import emit, figure_parser, provenance
    from peer_aiconfigurator import peer_available

    parser = figure_parser(__doc__)
    parser.add_argument("--only", default=None, help="only the scenarios whose name contains this text")
    parser.add_argument(
        "--no-refit", action="store_true", help="skip re-fitting paratune's batch in the peer's model (layout ratio)"
    )
    parser.add_argument(
        "--slo-margin",
        default="0",
        help="paratune's planning headroom (serve-tune --slo-margin): auto, or a percent (0, the default: none)",
    )
    args = parser.parse_args(argv)
    from paratune.serving._margin import check_margin

    margin = check_margin(args.slo_margin, "--slo-margin")
    if not peer_available():
        print(
            "aiconfigurator is not installed: pip install aiconfigurator (the peer of this benchmark)", file=sys.stderr
        )
        return 2
    from _aic_serving import SCENARIOS

    scenarios = [s for s in SCENARIOS if args.only is None or args.only in s["name"]]
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    import paratune.search._serve  # noqa: F401  (imports are not the searches' wall time)

    start = time.perf_counter()
    rows = run(scenarios, say=say, refit_batch=not args.no_refit, slo_margin=margin)
    summary = summarise(rows)
    from importlib.metadata import version as dist_version

    out = {
        "summary": summary,
        "rows": rows,
        "posing": {
            "objective": "output tokens/s per GPU of the budget (fill_budget)",
            "load": "open loop, each candidate at its capacity within the SLO",
            "slo_percentile": 50.0,
            "slo_margin": margin,
            "handoff": "decoding pools' batch cap at their operating batch, prefill pools' prompts per step",
            "layout_ratio": "labelled posing: paratune's layout with the decoding batch re-fit in the peer's model",
        },
        "peer": {"package": "aiconfigurator", "version": dist_version("aiconfigurator"), "licence": "Apache-2.0"},
        "seconds": time.perf_counter() - start,
        "provenance": provenance(),
    }
    if emit(_finite(json.loads(json.dumps(out, default=str))), args.out, args.json):
        return 0
    _print(rows, summary)
    print(f"paratune's planning headroom: --slo-margin {margin} (the peer's choice is priced against the SLO itself)")
    return 0


def _finite(value: Any) -> Any:
    """``value`` with infinite and NaN floats as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
