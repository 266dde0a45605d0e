"""``paratune models | platforms | graph | evaluate``: look at the inputs, and price one plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .._limits import MAX_DEVICES, MAX_MICRO_BATCHES, check_at_most
from ._common import (
    MAX_PLAN_DEGREE,
    BatchOpt,
    ContextOpt,
    GranOpt,
    JsonOpt,
    PhaseOpt,
    SeqOpt,
    at_most,
    console,
    output_file,
    print_json,
    user_errors,
)

models_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
platforms_app = typer.Typer(help="Platform presets.", no_args_is_help=True)
graph_app = typer.Typer(help="Task graphs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``models``, ``platforms``, ``graph`` and ``evaluate`` to ``app``."""
    app.add_typer(models_app, name="models")
    app.add_typer(platforms_app, name="platforms")
    app.add_typer(graph_app, name="graph")
    app.command("evaluate")(evaluate)


# -- models -----------------------------------------------------------------
@models_app.command("list")
@user_errors
def models_list(as_json: JsonOpt = False) -> None:
    """List the zoo's presets with their sizes."""
    from ..graphs import PRESETS

    rows = [spec.describe() for spec in PRESETS.values()]
    if as_json:
        print_json(rows)
        return
    table = Table(title="model zoo")
    for col in ("name", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "params", "active"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for r in rows:
        table.add_row(
            escape(r["name"]),
            str(r["layers"]),
            str(r["hidden"]),
            str(r["heads"]),
            str(r["kv_heads"]),
            str(r["ffn"]),
            str(r["vocab"]),
            _si(r["params"]),
            _si(r["active_params"]),
        )
    console.print(table)


@models_app.command("show")
@user_errors
def models_show(
    name: Annotated[str, typer.Argument(help="Preset, preset:field=v,... or a model YAML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one model's shape and parameter counts."""
    from ..graphs import get_model

    info = get_model(name).describe()
    if as_json:
        print_json(info)
        return
    table = Table(title=escape(str(info["name"])), show_header=False)
    for key, value in info.items():
        table.add_row(key, _si(value) if key in ("params", "active_params", "weight_bytes") else escape(str(value)))
    console.print(table)


# -- platforms --------------------------------------------------------------
@platforms_app.command("list")
@user_errors
def platforms_list(as_json: JsonOpt = False) -> None:
    """List the platform presets (add xN for N nodes, e.g. dgx-h100x4)."""
    from ..costmodel import get_platform, preset_names

    rows = [get_platform(n).describe() for n in preset_names()]
    if as_json:
        print_json(rows)
        return
    table = Table(title="platform presets (NAMExN for N nodes; NAME:field=value to override)")
    for col in ("name", "devices", "device", "bf16 TFLOP/s", "memory GiB", "HBM GB/s", "profile"):
        table.add_column(col)
    for r in rows:
        d = r["device"]
        table.add_row(
            escape(r["name"]),
            str(r["devices"]),
            escape(d["name"]),
            f"{d['peak_tflops'].get('bf16', 0):g}",
            f"{d['memory_gib']:g}",
            f"{d['memory_bw_gbs']:g}",
            escape(r["profile"]["name"]),
        )
    console.print(table)


@platforms_app.command("show")
@user_errors
def platforms_show(
    name: Annotated[str, typer.Argument(help="Preset, NAMExN, NAME:field=v or a YAML file.")], as_json: JsonOpt = False
) -> None:
    """Show a platform: devices, links, topology and the calibration profile in use."""
    from ..costmodel import get_platform

    info = get_platform(name).describe()
    if as_json:
        print_json(info)
        return
    console.print_json(json.dumps(info))


# -- graphs -----------------------------------------------------------------
#: `graph build` and `evaluate` need a model (they take no scenario file) and also read a user module's factory.
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Zoo name[:field=v], model YAML, graph JSON, hf:TYPE or module:PATH:FACTORY."),
]


def _load_graph(model: str, phase: str, batch: int, seq: int, context: int, granularity: str) -> Any:
    from ..graphs import PHASES, load_graph

    if phase not in PHASES:
        raise ValueError(f"--phase is {phase!r}; allowed: {', '.join(PHASES)}")
    if phase == "decode" and not context:
        context = seq
    return load_graph(model, phase=phase, batch=batch, seq=seq, context=context, granularity=granularity)


@graph_app.command("build")
@user_errors
def graph_build(
    model: ModelOpt,
    phase: PhaseOpt = "prefill",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    context: ContextOpt = 0,
    granularity: GranOpt = "op",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the graph as JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a task graph, print its summary, optionally save it."""
    if output is not None:
        output_file(output, example="graph.json")
    graph = _load_graph(model, phase, batch, seq, context, granularity)
    if output is not None:
        graph.save(output)
    summary = graph.summary()
    if output is not None:
        summary["output"] = str(output)
    if as_json:
        print_json(summary)
        return
    table = Table(title=escape(f"{summary['model']} {phase} graph"), show_header=False)
    for key, value in summary.items():
        table.add_row(key, _si(value) if key in ("flops", "param_bytes", "edge_bytes") else escape(str(value)))
    console.print(table)


# -- evaluate ---------------------------------------------------------------
@user_errors
def evaluate(
    model: ModelOpt,
    platform: Annotated[str, typer.Option("--platform", "-p", help="Platform preset, NAMExN or YAML file.")],
    phase: PhaseOpt = "decode",
    batch: BatchOpt = 1,
    seq: SeqOpt = 2048,
    context: ContextOpt = 0,
    tp: Annotated[
        int, typer.Option("--tp", min=1, max=MAX_PLAN_DEGREE, help="Tensor-parallel degree of every stage.")
    ] = 1,
    pp: Annotated[
        int, typer.Option("--pp", min=1, max=MAX_PLAN_DEGREE, help="Pipeline stages (layers split evenly).")
    ] = 1,
    micro_batches: Annotated[
        int,
        typer.Option("--micro-batches", min=1, callback=at_most(MAX_MICRO_BATCHES), help="Micro-batches in flight."),
    ] = 1,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, callback=at_most(MAX_DEVICES), help="Data-parallel replicas.")
    ] = 1,
    schedule: Annotated[str, typer.Option("--schedule", help="Training schedule: 1f1b | gpipe.")] = "1f1b",
    recompute: Annotated[bool, typer.Option("--recompute", help="Full activation recomputation (train).")] = False,
    zero: Annotated[
        int,
        typer.Option(
            "--zero", min=0, max=3, help="ZeRO stage (train): 1 = distributed optimizer, 2 + gradients, 3 = FSDP."
        ),
    ] = 0,
    shard_group: Annotated[
        int,
        typer.Option(
            "--shard-group",
            min=0,
            callback=at_most(MAX_DEVICES),
            help="Hybrid sharding (train): ZeRO shards over groups of N data-parallel ranks (0: all).",
        ),
    ] = 0,
    sequence_parallel: Annotated[
        bool, typer.Option("--sequence-parallel", help="Megatron sequence parallelism over each TP group (train).")
    ] = False,
    recompute_granularity: Annotated[
        str | None,
        typer.Option(
            "--recompute-granularity", help="Activation recomputation (train): selective (attention core) | full."
        ),
    ] = None,
    virtual_stages: Annotated[
        int,
        typer.Option(
            "--virtual-stages", min=1, max=MAX_PLAN_DEGREE, help="Model chunks per pipeline stage (interleaved 1F1B)."
        ),
    ] = 1,
    cp: Annotated[
        int, typer.Option("--cp", min=1, max=MAX_PLAN_DEGREE, help="Context-parallel degree (train, ring attention).")
    ] = 1,
    ep: Annotated[
        int, typer.Option("--ep", min=1, max=MAX_PLAN_DEGREE, help="Expert-parallel degree (train, MoE models).")
    ] = 1,
    overlap: Annotated[
        bool,
        typer.Option("--overlap/--no-overlap", help="Overlap data-parallel gradient reduction with backward (train)."),
    ] = False,
    tp_overlap: Annotated[
        bool, typer.Option("--tp-overlap", help="Overlap TP collectives with the GEMMs they feed (train).")
    ] = False,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="A plan JSON file instead of --tp/--pp.")] = None,
    granularity: GranOpt = "layer",
    simulate: Annotated[bool, typer.Option("--simulate", help="Use the discrete-event simulator.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Predict latency, throughput and memory of a parallel plan on a platform."""
    from ..costmodel import Plan, get_platform
    from ..costmodel._plan import TECHNIQUE_DEFAULTS
    from ..costmodel._trust import calibration_reason

    if recompute_granularity not in (None, "selective", "full"):
        raise ValueError(f"--recompute-granularity is {recompute_granularity!r}; allowed: selective, full")
    if recompute and recompute_granularity == "selective":
        raise ValueError("--recompute means full recomputation; it contradicts --recompute-granularity selective")
    techniques = {
        "zero": zero,
        "shard_group": shard_group,
        "sequence_parallel": sequence_parallel,
        "selective_recompute": recompute_granularity == "selective",
        "virtual_stages": virtual_stages,
        "cp": cp,
        "ep": ep,
        "overlap": overlap,
        "tp_overlap": tp_overlap,
    }
    techniques = {k: v for k, v in techniques.items() if v != TECHNIQUE_DEFAULTS[k]}  # the flags given
    full = "--recompute" if recompute else "--recompute-granularity full"
    recompute = recompute or recompute_granularity == "full"
    flags = [f for f, on in ((full, recompute), (f"--schedule {schedule}", schedule != "1f1b")) if on]
    flags += [_technique_flag(k, v) for k, v in techniques.items()]
    if phase != "train" and flags:  # only a training step has a backward pass (and these techniques)
        raise ValueError(
            f"{flags[0]} applies to training (--phase train) only, not {phase}: a {phase} step runs no backward"
        )
    if plan_file is not None and (flags or (tp, pp, micro_batches, replicas) != (1, 1, 1, 1)):
        given = f" (given: {', '.join(flags)})" if flags else ""
        raise ValueError("--plan FILE gives the whole plan: leave out --tp, --pp, --micro-batches, --replicas, "
                         f"--schedule, --recompute and the technique flags{given}")  # fmt: skip
    what = f"--tp x --pp ({tp} x {pp})" if cp == 1 else f"--tp x --cp x --pp ({tp} x {cp} x {pp})"
    check_at_most(tp * cp * pp, MAX_DEVICES, what)  # before Plan.uniform
    plat = get_platform(platform)
    if plan_file is not None:
        plan = Plan.load(plan_file)
        granularity = plan.granularity
    graph = _load_graph(model, phase, batch, seq, context, granularity)
    if plan_file is None:
        _check_uniform_flags(graph, pp, replicas, micro_batches, virtual_stages)
        plan = Plan.uniform(
            graph.meta.n_layers,
            tp=tp,
            pp=pp,
            micro_batches=micro_batches,
            replicas=replicas,
            schedule=schedule,
            recompute=recompute,
            **techniques,
        )
    plan.check(graph, plat)
    if simulate or not graph.is_layered or not plan.is_layered:
        from ..costmodel import Simulator

        metrics = Simulator(graph, plat).evaluate(plan)
    else:
        from ..costmodel import AnalyticEvaluator

        metrics = AnalyticEvaluator(graph, plat).evaluate(plan)
    data = metrics.to_dict()
    data.update(
        model=graph.meta.model,
        platform=plat.name,
        profile=plat.profile.name,
        plan=plan.to_dict(),
        evaluator="simulator" if simulate else "analytic",
        calibration_reason=calibration_reason(metrics, plat),
    )
    if as_json:
        print_json(data)
        return
    _metrics_table(data, plat.device.usable_memory)


#: The ``evaluate`` flag that sets each plan-wide training technique (for messages that name what was typed).
_TECHNIQUE_FLAGS = {
    "zero": "--zero",
    "shard_group": "--shard-group",
    "sequence_parallel": "--sequence-parallel",
    "selective_recompute": "--recompute-granularity selective",
    "virtual_stages": "--virtual-stages",
    "cp": "--cp",
    "ep": "--ep",
    "overlap": "--overlap",
    "tp_overlap": "--tp-overlap",
}


def _technique_flag(name: str, value: Any) -> str:
    """The flag as typed: ``--zero 3``, ``--sequence-parallel``."""
    flag = _TECHNIQUE_FLAGS[name]
    return flag if isinstance(value, bool) or " " in flag else f"{flag} {value}"


def _check_uniform_flags(graph: Any, pp: int, replicas: int, micro_batches: int, virtual_stages: int = 1) -> None:
    """What ``Plan.uniform`` and ``Plan.check`` refuse in their words (``pp``, ``micro_batches``), named as typed."""
    n_layers, batch = graph.meta.n_layers, graph.meta.batch
    if pp > n_layers:
        raise ValueError(f"--pp is {pp} but the model has {n_layers} layers; give at most {n_layers}")
    if pp * virtual_stages > n_layers:
        raise ValueError(
            f"--pp x --virtual-stages is {pp} x {virtual_stages} = {pp * virtual_stages} model chunks but the "
            f"model has {n_layers} layers; each chunk needs at least one"
        )
    if batch % (replicas * micro_batches):
        raise ValueError(
            f"--replicas x --micro-batches ({replicas} x {micro_batches}) must divide the batch ({batch}, --batch)"
        )


def _metrics_table(d: dict[str, Any], usable: float) -> None:
    title = f"{d['model']} on {d['platform']} ({d['phase']}, profile {d['profile']}, {d['evaluator']})"
    table = Table(title=escape(title), show_header=False)
    table.add_row("feasible", "[green]yes[/green]" if d["feasible"] else f"[red]no[/red]: {escape(d['reason'])}")
    for key, label in (("ttft_s", "TTFT"), ("tbt_s", "TBT"), ("step_s", "step time")):
        if d.get(key) is not None:
            table.add_row(label, _ms(d[key]))
    table.add_row("tokens/s", f"{d['tokens_per_s']:,.1f}")
    if d.get("mfu") is not None:
        table.add_row("MFU", f"{100 * d['mfu']:.1f}%")
    table.add_row("lower bound", _ms(d["lower_bound_s"]))
    for key, value in d["breakdown"].items():
        table.add_row(f"  {key.removesuffix('_s')}", _ms(value))
    if (d.get("calibration_reason") or "").startswith("uncalibrated on "):  # another CPU, or a borrowed profile
        trust = f"[yellow]{escape(d['calibration_reason'])}[/yellow]"
    elif d.get("expected_error_pct") is None:
        trust = "[yellow]hand-set profile: no measured error[/yellow]"
    else:
        inside = "inside" if d["calibrated"] else "[yellow]outside[/yellow]"
        trust = f"{inside} the calibrated range, expected error ±{d['expected_error_pct']:.0f}%"
    table.add_row("calibration", trust)
    mem = [m for m in d["peak_memory_bytes"] if m > 0]
    if mem:
        gib = 1024**3
        table.add_row(
            "peak memory / device",
            f"max {max(mem) / gib:.2f} GiB, min {min(mem) / gib:.2f} GiB (usable {usable / gib:.1f} GiB)",
        )
    table.add_row("devices used", str(d["devices_used"]))
    stages = d["plan"]["stages"]
    table.add_row(
        "plan",
        f"{len(stages)} stage(s), tp {[s['tp'] for s in stages]}, micro-batches "
        f"{d['plan']['micro_batches']}, replicas {d['plan']['replicas']}",
    )
    techniques = {k: v for k, v in d["plan"].items() if k in _TECHNIQUE_FLAGS}
    if techniques:
        table.add_row("techniques", escape(", ".join(f"{k} {v}" for k, v in techniques.items())))
    if d.get("memory_breakdown"):
        gib = 1024**3
        terms = ", ".join(f"{k} {v / gib:.2f}" for k, v in d["memory_breakdown"].items() if v)
        table.add_row("memory by term", escape(f"{terms} GiB (busiest device)"))
    for w in d.get("warnings", []):
        table.add_row("[yellow]warning[/yellow]", escape(w))
    console.print(table)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.3f} ms"


def _si(value: Any) -> str:
    if not isinstance(value, int | float):
        return str(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"
