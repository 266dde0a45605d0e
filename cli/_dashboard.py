"""``paratune dashboard`` and ``paratune report``: look at campaign results in a browser or in one HTML file.

:func:`register` adds both commands to the ``paratune`` app. Dash and Plotly are
imported inside the commands, never at start-up.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import console, output_file, user_errors


@user_errors
def dashboard_command(
    runs_dir: Annotated[
        list[str] | None,
        typer.Argument(help="Run folders, a folder of them (default: runs), SQLite files or database URLs."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; other machines reach it only if told.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8050,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0, help="Seconds between re-reads of the stores (live campaigns).")
    ] = 10.0,
) -> None:
    """Open the campaign dashboard: overview, leaderboard, anytime curves, Pareto fronts, plans, transfer."""
    from ..dashboard import create_app, serve

    _check_listen(host, port)
    targets = runs_dir or ["runs"]
    app = create_app(targets, refresh_s=refresh)
    if not _loopback(host):
        console.print(
            f"[yellow]note[/yellow]: listening on {escape(host)}: anyone who can reach this machine can see it"
        )
    shown = f"[{host}]" if ":" in host else host
    console.print(escape(f"dashboard on http://{shown}:{port}/  (Ctrl-C to stop)"))
    serve(app, host=host, port=port)


@user_errors
def report_command(
    run_dir: Annotated[
        list[str], typer.Argument(help="Run folder(s) (runs/demo), a folder of them, SQLite files or database URLs.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write one self-contained HTML report (tables and figures, plotly inlined: opens offline)."""
    from ..dashboard import write_report

    path = write_report(run_dir, output_file(out, example="report.html"))
    size = path.stat().st_size / 1e6
    console.print(f"report: {escape(str(path))} ({size:.1f} MB); open it in a browser (no network needed)")


def _check_listen(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (the server prints several lines, exit 1)."""
    import socket

    if not host.strip():
        raise ValueError("--host is empty; give an address of this machine, e.g. 127.0.0.1")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host}: not a known address ({getattr(exc, 'strerror', None) or exc})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` and ``report`` to ``app`` (the main ``paratune`` app, or a test's)."""
    app.command("dashboard")(dashboard_command)
    app.command("report")(report_command)
