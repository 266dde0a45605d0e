"""``paratune calibrate``: fit the cost model to measurements, check it, measure a machine.

The work is done in :mod:`paratune.costmodel.calibration`; this module only parses
arguments and prints. Measuring needs torch (``paratune[import]``), fitting and
checking do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ._common import JsonOpt, console, finite_number, output_file, output_folder, print_json, user_errors

calibrate_app = typer.Typer(help="Fit the cost model to measured profiles, check it, measure this machine.",
                            no_args_is_help=True)  # fmt: skip

ProfilesOpt = Annotated[
    Path, typer.Option("--profiles", help="Directory of measured profiles in Vidur's format (compute/, network/).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="Device folder in the profiles: a100, h100, cpu, cuda, ...")]


@calibrate_app.command("fit")
@user_errors
def fit(
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the fitted profile (YAML).")],
    profiles: Annotated[
        Path | None,
        typer.Option("--profiles", help="--from vidur: folder of measured profiles."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="--from vidur: device folder (a100, h100, cpu, ...).")] = "",
    source: Annotated[
        str,
        typer.Option("--from", help="vidur (a profiles folder) or aiconfigurator (installed)."),
    ] = "vidur",
    system: Annotated[str, typer.Option("--system", help="--from aiconfigurator: e.g. h200_sxm.")] = "",
    backend: Annotated[str, typer.Option("--backend", help="trtllm, vllm or sglang.")] = "trtllm",
    version: Annotated[str, typer.Option("--version", help="Engine version (default: newest).")] = "",
    holdout: Annotated[str, typer.Option("--holdout", help="Models kept out of the fit, comma separated.")] = "",
    name: Annotated[str, typer.Option("--name", help="Profile name (default: DEVICE-fit, or GPU-aic).")] = "",
    host_overhead_us: Annotated[
        float,
        typer.Option(
            "--host-overhead-us",
            min=0,
            callback=finite_number,
            help="Host time per op the timings include (ops timed one by one with a sync; 0: kernel timings).",
        ),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Fit efficiency curves, kernel overheads and link terms; report the error on held-out rows."""
    from ..costmodel.calibration import fit_profile, write_profile

    output_file(output, example="profile.yaml")
    if source == "aiconfigurator":
        _fit_aiconfigurator(output, system, backend, version, name, as_json)
        return
    if source != "vidur":
        raise ValueError(f"--from is {source!r}; allowed: vidur, aiconfigurator")
    if profiles is None or not device:
        raise ValueError("--from vidur needs --profiles DIR and --device NAME")
    held = [h.strip() for h in holdout.split(",") if h.strip()]
    result = fit_profile(profiles, device, holdout=held, name=name or None, host_overhead_us=host_overhead_us)
    write_profile(result.profile, output)
    report = {**result.report, "output": str(output)}
    if as_json:
        print_json(report)
        return
    _error_table(escape(f"fit of {device} on {profiles} (held out: {', '.join(held) or 'none'})"), report)
    console.print(f"profile written to {escape(str(output))}")


def _fit_aiconfigurator(output: Path, system: str, backend: str, version: str, name: str, as_json: bool) -> None:
    from ..costmodel.calibration import fit_from_aiconfigurator, write_profile

    if not system:
        raise ValueError("--from aiconfigurator needs --system (e.g. h200_sxm)")
    if not as_json:
        console.print(f"fitting {escape(system)} ({escape(backend)}) ...", style="dim")
    result = fit_from_aiconfigurator(system, backend=backend, version=version or None, name=name or None)
    write_profile(result.profile, output)
    report = {**result.report, "profile": result.profile.name, "output": str(output)}
    if as_json:
        print_json(report)
        return
    columns = ("dtype", "rows", "MAPE % in sample", "MAPE % held out", "held out: fitted on")
    table = _table(escape(f"GEMM fit of {system} ({backend})"), columns, text=("dtype", "held out: fitted on"))
    for dtype, row in report["gemm"].items():
        held = row.get("held_out", {})
        table.add_row(dtype, str(row["in_sample"]["rows"]), f"{row['in_sample']['mape']:.1f}",
                      f"{held['mape']:.1f}" if held else "-", escape(held.get("fitted_on", "no sibling")))  # fmt: skip
    console.print(table)
    console.print(f"profile {escape(result.profile.name)} written to {escape(str(output))}")


@calibrate_app.command("check")
@user_errors
def check(
    profiles: ProfilesOpt,
    device: DeviceOpt,
    profile: Annotated[str, typer.Option("--profile", help="Profile name or YAML file (default: the preset's).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Predict every row of a profile directory and print the error per op class and overall."""
    from ..costmodel import load_profile
    from ..costmodel.calibration import check_profile, default_profile_for

    prof = load_profile(profile) if profile else default_profile_for(device)
    report = check_profile(profiles, device, prof).to_dict()
    if as_json:
        print_json(report)
        return
    _error_table(escape(f"profile {prof.name} on {profiles} ({device})"), report)


@calibrate_app.command("measure")
@user_errors
def measure(
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory to write the profiles to.")],
    quick: Annotated[bool, typer.Option("--quick", help="A small grid (for tests and a first look).")] = False,
) -> None:
    """Run microbenchmarks with torch and write them in the Vidur profile format."""
    from ..costmodel.calibration import measure as run_measure

    output_folder(output)
    written = run_measure(device, output, quick=quick)
    console.print(f"measured profiles written to {escape(str(written))}")


@calibrate_app.command("local")
@user_errors
def local(
    force: Annotated[bool, typer.Option("--force", help="Measure again even if this CPU is already measured.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="The tiny test grid (seconds; a rough profile).")] = False,
) -> None:
    """Measure this CPU (about 30 s, torch needed), fit cpu-local and cache it outside the repository."""
    from ..costmodel.calibration import calibrate_local

    path, result = calibrate_local(quick=quick, force=force)
    if result is not None:
        rep = result.report
        console.print(f"cpu-local fitted: MAPE {rep['mape']:.1f}% over {rep['rows']} kernel rows (the rows fitted)")
    console.print(f"cpu-local on this machine now prices with {escape(str(path))}")


@calibrate_app.command("published")
@user_errors
def published(
    platform: Annotated[str, typer.Option("--platform", help="Preset the runs are predicted on.")] = "dgx-a100",
    as_json: JsonOpt = False,
) -> None:
    """Predict published end-to-end figures (Megatron-LM Table 1, LLMCompass GPT-3 layer) and print the errors."""
    from ..costmodel.calibration import compare_published

    rows = [c.to_dict() for c in compare_published(platform)]
    if as_json:
        print_json(rows)
        return
    columns = ("run", "published", "predicted", "unit", "error %")
    table = _table(escape(f"published figures against paratune on {platform}"), columns, text=("run", "unit"))
    for r in rows:
        table.add_row(
            escape(str(r["name"])),
            f"{r['measured']:.3g}",
            f"{r['predicted']:.3g}",
            escape(str(r["unit"])),
            f"{r['error_pct']:+.1f}",
        )
    console.print(table)


def _table(title: str, columns: tuple[str, ...], *, text: tuple[str, ...]) -> Table:
    """A table whose ``text`` columns are left-aligned and the others (numbers) right-aligned."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in text else "right")
    return table


def _error_table(title: str, report: dict[str, Any]) -> None:
    table = _table(title, ("op class", "rows", "MAPE %", "max |error| %"), text=("op class",))
    for op, row in sorted(report.get("per_op", {}).items()):
        table.add_row(escape(op), str(row["rows"]), f"{row['mape']:.1f}", f"{row['max_abs_pct_error']:.1f}")
    table.add_row("[bold]all[/bold]", str(report.get("rows", "")), f"{report.get('mape', float('nan')):.1f}",
                  f"{report.get('max_abs_pct_error', float('nan')):.1f}")  # fmt: skip
    console.print(table)
    extra = {k: v for k, v in report.items() if k not in ("per_op", "rows", "mape", "max_abs_pct_error")}
    if extra:
        console.print_json(json.dumps(extra, default=str))


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` and its subcommands to ``app``."""
    app.add_typer(calibrate_app, name="calibrate")
