"""``paratune serve-tune``: the deployment that serves a traffic with the most tokens/s per GPU within the SLO.

The search runs on the steady-state analytic model; the chosen deployment is then served request by request by
the simulator (``--simulate``, on by default), whose percentiles are printed beside the analytic ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .._limits import MAX_BUDGET, MAX_DEVICES
from ._common import (
    JsonOpt,
    ModelOpt,
    PlatformOpt,
    SeedOpt,
    at_most,
    console,
    output_file,
    output_folder,
    positive_number,
    print_json,
    user_errors,
)


def serve_tune(
    model: ModelOpt = None,
    platform: PlatformOpt = None,
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", min=1, callback=at_most(MAX_DEVICES), help="GPU budget (default: the platform's)."),
    ] = None,
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            "-w",
            help="chat | long-context | PROMPT/OUTPUT (fixed:N, uniform:LO-HI, lognormal:MEAN,SIGMA) | a CSV trace.",
        ),
    ] = "chat",
    rate: Annotated[
        float | None,
        typer.Option("--rate", callback=positive_number, help="Requests/s to carry (Poisson); default: capacity."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, max=1 << 20, help="Closed loop: requests always in flight."),
    ] = None,
    ttft_ms: Annotated[float | None, typer.Option("--ttft-ms", callback=positive_number, help="TTFT SLO, ms.")] = None,
    tpot_ms: Annotated[float | None, typer.Option("--tpot-ms", callback=positive_number, help="TPOT SLO, ms.")] = None,
    percentile: Annotated[
        float, typer.Option("--percentile", min=1.0, max=99.9, help="Percentile the SLO applies to.")
    ] = 90.0,
    slo_margin: Annotated[
        str,
        typer.Option(
            "--slo-margin",
            help="Planning headroom: the deployment must meet SLO / (1 + margin) at its load x (1 + margin), so "
            "it still meets the SLO with every step that much slower. auto = the cost model's held-out error of "
            "the deployment's steps; PCT = that percent; 0 = at the edge of the SLO.",
        ),
    ] = "0",
    engine: Annotated[str, typer.Option("--engine", help="vllm | sglang | trtllm.")] = "vllm",
    dtype: Annotated[str, typer.Option("--dtype", help="bf16 | fp8 weights and GEMMs.")] = "bf16",
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="bf16 | fp8 KV cache.")] = "bf16",
    modes: Annotated[str, typer.Option("--modes", help="agg, disagg, or agg,disagg.")] = "agg,disagg",
    tuner: Annotated[
        str,
        typer.Option(
            "--tuner", "-t", help="exhaustive | optuna-tpe | optuna-nsga2 | random | rl | vllm/sglang/trtllm-default."
        ),
    ] = "exhaustive",
    budget: Annotated[
        int | None,
        typer.Option("--budget", "-n", min=1, max=MAX_BUDGET, help="Trials (optuna-*, random) or rollouts (rl)."),
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate/--no-simulate", help="Check the chosen deployment with the simulator.")
    ] = True,
    seed: SeedOpt = 0,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the chosen deployment (JSON).")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write the result as a study folder (the dashboard and report show it)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the deployment (TP, PP, replicas, batch cap, chunk, aggregated or disaggregated) for a traffic and SLO."""
    from ..costmodel import get_platform
    from ..search._serve import VERIFY_REQUESTS, ServingProblem, search_deployments
    from ..search._serve_tuners import SERVING_TUNERS, serve_tune
    from ..serving import ENGINES, Slo, traffic_from_spec
    from ..serving._margin import check_margin

    if output is not None:
        output_file(output, example="deployment.json")
    if out_dir is not None:
        output_folder(out_dir, "--out")
    if not model or not platform:
        raise ValueError("--model and --platform are required")
    if engine not in ENGINES:
        raise ValueError(f"--engine is {engine!r}; allowed: {', '.join(ENGINES)}")
    for flag, value in (("--dtype", dtype), ("--kv-dtype", kv_dtype)):
        if value not in ("bf16", "fp16", "fp8"):
            raise ValueError(f"{flag} is {value!r}; allowed: bf16, fp16, fp8")
    if rate is not None and concurrency is not None:
        raise ValueError("give --rate or --concurrency, not both")
    margin = check_margin(slo_margin, "--slo-margin")
    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not wanted or any(m not in ("agg", "disagg") for m in wanted):
        raise ValueError(f"--modes is {modes!r}; allowed: agg, disagg, or agg,disagg")
    plat = get_platform(platform)
    gpus_used = gpus if gpus is not None else plat.num_devices
    if gpus_used > plat.num_devices:
        raise ValueError(f"--gpus is {gpus_used} but platform {platform!r} has {plat.num_devices} GPUs")
    carry = rate is not None or concurrency is not None
    traffic = traffic_from_spec(workload, rate=rate if carry else 1.0, concurrency=concurrency)
    slo = Slo(ttft_ms=ttft_ms, tpot_ms=tpot_ms, percentile=percentile) if (ttft_ms or tpot_ms) else None
    problem = ServingProblem(
        model, platform, traffic, slo, gpus_used, engine, dtype, kv_dtype, carry, modes=wanted, slo_margin=margin
    )
    if tuner not in SERVING_TUNERS:
        raise ValueError(f"--tuner is {tuner!r}; allowed: {', '.join(SERVING_TUNERS)}")
    say = None if as_json else (lambda msg: console.print(f"[dim]{escape(msg)}[/dim]"))
    if tuner == "exhaustive":
        result = search_deployments(
            model, plat, traffic, slo, gpus=gpus_used, engine=engine, dtype=dtype, kv_dtype=kv_dtype, carry=carry,
            space=problem.space(), progress=say, slo_margin=margin,
        )  # fmt: skip
    else:
        result = serve_tune(problem, tuner, budget=budget, seed=seed)
    if simulate and result.best is not None and say is not None:
        say(f"checking the chosen deployment with the simulator ({VERIFY_REQUESTS} requests)")
    data = _result_data(problem, plat, result, simulate=simulate, seed=seed)
    data["tuner"] = tuner
    if output is not None and data["deployment"] is not None:  # only a deployment the simulator's check kept
        import json

        output.write_text(json.dumps(data["deployment"], indent=2) + "\n")
        data["deployment_file"] = str(output)
    if out_dir is not None:
        from ..study._serve_tune import write_serve_tune

        write_serve_tune(out_dir, data)
        data["out"] = str(out_dir)
    if as_json:
        print_json(data)
    else:
        _print(data)
    if data["deployment"] is None:
        raise typer.Exit(1)


def _result_data(problem: Any, platform: Any, result: Any, *, simulate: bool, seed: int) -> dict[str, Any]:
    """serve-tune's JSON: the search, the chosen deployment, and (``simulate``) the simulator's check of it.

    With the check, the headline figures are the simulator's: when it says the SLO is missed at the load the
    analytic model chose, the load is lowered until it is met (``verified``), and tokens/s per GPU follow.
    Both models check the planning targets (``slo_margin.planning_slo``: the SLO less the headroom); ``slo``
    stays the user's.
    """
    from .. import __version__
    from .._provenance import library_versions
    from ..search._serve import verify_with_simulator
    from ..serving import metrics_json, serving_launch_lines

    slo = problem.slo
    data: dict[str, Any] = {
        "model": problem.model,
        "platform": platform.name,
        "profile": platform.profile.name,
        "problem": problem.to_dict(),
        "slo": None if slo is None else {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "percentile": slo.percentile},
        "seed": seed,
        "paratune_version": __version__,
        "versions": library_versions(),
        "slo_margin": result.to_dict()["slo_margin"],
        "search": {
            k: v for k, v in result.to_dict().items() if k not in ("best", "pareto_front", "ttft_front", "slo_margin")
        },
        "pareto_front": [_point(c) for c in result.front],
        "ttft_front": [_point(c) for c in result.ttft_front],
        "deployment": None,
        "meets_slo": False,
        "reason": result.reason,
    }
    best = result.best
    if best is None:
        return data
    data.update(
        deployment=best.deployment.to_dict(),
        analytic={"load": best.load, **metrics_json(best.metrics)},
        launch=[x.to_dict() for x in serving_launch_lines(best.deployment, problem.model)],
    )
    chosen = best
    if simulate:
        verified, at_load = verify_with_simulator(problem, best, seed=seed)
        data["simulated"] = {"load": best.load, **metrics_json(at_load)}
        if verified is None:
            data["reason"] = "the simulator says the chosen deployment misses the SLO at its load" + (
                "" if problem.carry else " and at a quarter of it"
            )
            data["unverified_deployment"] = data["deployment"]
            data["deployment"] = None
            return data
        else:
            chosen = verified
            data["verified"] = {"load": verified.load, "lowered": verified.load < best.load}
            data["simulated"]["cdf"] = _cdf(problem, platform, verified, seed)
    m = chosen.metrics
    data.update(
        load=chosen.load,
        tokens_per_s_per_gpu=m.tokens_per_s_per_gpu,
        tokens_per_s_per_user=m.tokens_per_s_per_user,
        ttft_ms=m.ttft_ms,
        tpot_ms=m.tpot_ms,
        meets_slo=m.meets_slo if m.meets_slo is not None else True,
        source="simulated" if simulate else "analytic",
    )
    return data


def _cdf(problem: Any, platform: Any, candidate: Any, seed: int) -> dict[str, list[float]]:
    """The simulated latency distributions of the verified deployment at its load (101 quantiles each)."""
    from ..search._serve import VERIFY_REQUESTS, with_load
    from ..serving import instance_cost, latency_quantiles

    dep = candidate.deployment
    costs = {p.role: instance_cost(problem.model, platform, p, dep) for p in dep.pools}
    traffic = with_load(problem.traffic, candidate.load)
    return latency_quantiles(dep, traffic, costs, requests=VERIFY_REQUESTS, seed=seed)


def _point(c: Any) -> dict[str, Any]:
    m = c.metrics
    pools = c.deployment.pools
    return {
        "deployment": c.deployment.to_dict(),
        "label": " + ".join(
            f"{p.role} {p.replicas}x(TP{p.tp}" + (f" PP{p.pp}" if p.pp > 1 else "") + ")" for p in pools
        ),
        "load": c.load,
        "tokens_per_s_per_gpu": m.tokens_per_s_per_gpu,
        "tokens_per_s_per_user": m.tokens_per_s_per_user,
        "ttft_ms": m.ttft_ms,
        "tpot_ms": m.tpot_ms,
    }


def _print(d: dict[str, Any]) -> None:
    if d["deployment"] is None:
        console.print(f"[bold red]no deployment[/bold red]: {escape(d['reason'])}")
        return
    table = Table(title=f"serve-tune: {d['model']} on {d['platform']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    dep = d["deployment"]
    for p in dep["pools"]:
        table.add_row(
            f"pool {p['role']}",
            f"{p['replicas']} x TP{p['tp']} PP{p['pp']}, batch cap {p['max_num_seqs']}, "
            f"token budget {p['max_batched_tokens']}",
        )
    table.add_row("engine", f"{dep['engine']} ({dep['dtype']}, KV {dep['kv_dtype']}), {dep['gpus']} GPUs")
    source = d.get("source", "analytic")
    table.add_row("tokens/s/GPU", f"{d['tokens_per_s_per_gpu']:.1f} ({source})")
    table.add_row("tokens/s/user", f"{d['tokens_per_s_per_user']:.1f}")
    load = f"{d['load']:.3g}"
    if d.get("verified", {}).get("lowered"):
        load += f" (the simulator lowered it from the analytic model's {d['analytic']['load']:.3g})"
    table.add_row("load", load)
    for name in ("ttft_ms", "tpot_ms"):
        text = f"{source} " + _percentiles(d[name])
        if source != "analytic":
            text += " | analytic " + _percentiles(d["analytic"][name])
        table.add_row(name.replace("_ms", " ms"), text)
    table.add_row("meets SLO", str(d["meets_slo"]) + _planning(d))
    table.add_row("search", f"{d['search']['evaluations']} evaluations in {d['search']['wall_s']:.2f} s")
    table.add_row("Pareto front", f"{len(d['pareto_front'])} points (--json for all)")
    for line in d["launch"][:1]:
        for pool in line["pools"]:
            table.add_row(f"{line['engine']} {pool['role']}", escape(str(pool["command"])))
        if line["router"]:
            table.add_row(f"{line['engine']} router", escape(line["router"]))
    console.print(table)


def _planning(d: dict[str, Any]) -> str:
    """`` (planned for TTFT 920 ms, TPOT 37.1 ms: auto margin 8.7% / 7.8%)`` when a margin was used."""
    m = d.get("slo_margin") or {}
    plan = m.get("planning_slo")
    if not plan or (not m.get("ttft_pct") and not m.get("tpot_pct")):
        return ""
    targets = ", ".join(
        f"{name} {plan[key]:.4g} ms" for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms")) if plan[key]
    )
    kind = "auto" if str(m.get("source", "")).startswith("auto") else "fixed"
    return f" (planned for {targets}: {kind} margin {m['ttft_pct']:.1f}% / {m['tpot_pct']:.1f}%)"


def _percentiles(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in row.items() if k != "mean")


def register(app: typer.Typer) -> None:
    """Add ``serve-tune`` to ``app``."""
    app.command("serve-tune")(user_errors(serve_tune))
