"""The Dash app: ``paratune dashboard [RUNS_DIR]`` over one or many campaigns.

Pages (URL paths): ``/`` overview, ``/leaderboard``, ``/anytime``, ``/pareto``,
``/plans``, ``/transfer``. The filter bar (campaign, model, platform, phase,
objective, scenario, tuner) applies to every page; filters can also be given in
the URL (``/leaderboard?tuner=dp&tuner=megatron``) so a view can be shared.

Data is re-read from the stores at most every ``refresh_s`` seconds, so a
dashboard left open on a running campaign follows it. Every user string is
passed to Dash as text (children, never raw HTML), which React escapes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from dash import Dash, Input, Output, dcc, html
from dash.exceptions import PreventUpdate

from ..campaign import JobState, Role
from ._data import Results, load_runs, plan_view, transfer_rows
from ._figures import (
    Table,
    anytime_figure,
    campaigns_table,
    failures_table,
    gantt_figure,
    gap_heatmap,
    leaderboard_table,
    memory_figure,
    overall_table,
    pareto_figure,
    scenarios_table,
    stages_figure,
    status_figure,
    study_parts,
    transfer_figure,
    transfer_table,
    tuners_table,
)

FILTERS = ("campaign", "model", "platform", "phase", "objective", "scenario", "tuner")
PAGES = {
    "/": "Overview",
    "/leaderboard": "Leaderboard",
    "/anytime": "Anytime curves",
    "/pareto": "Pareto fronts",
    "/plans": "Plans",
    "/transfer": "Transfer",
    "/studies": "Studies",
}
GRAPH_CONFIG: Any = {"displaylogo": False}
STYLE = {
    "body": {
        "fontFamily": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
        "margin": "0 auto",
        "maxWidth": "1400px",
        "padding": "0 1em",
        "color": "#222",
    },
    "nav": {"display": "flex", "gap": "1.2em", "padding": "0.5em 0", "borderBottom": "1px solid #ddd"},
    "filters": {
        "display": "grid",
        "gridTemplateColumns": "repeat(7, 1fr)",
        "gap": "0.5em",
        "padding": "0.6em 0",
        "fontSize": "0.85em",
    },
    "table": {"borderCollapse": "collapse", "fontSize": "0.85em", "margin": "0.4em 0"},
    "cell": {"border": "1px solid #ddd", "padding": "0.2em 0.5em", "textAlign": "right"},
    "head": {"border": "1px solid #ddd", "padding": "0.2em 0.5em", "background": "#f4f4f4"},
    "note": {"color": "#666", "fontSize": "0.8em", "maxWidth": "1100px"},
}


class Source:
    """The loaded results, re-read when older than ``refresh_s`` (thread-safe: Flask serves in threads)."""

    def __init__(self, targets: Iterable[str | Path], refresh_s: float = 10.0) -> None:
        self.targets = [str(t) for t in targets]
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._results = load_runs(self.targets)  # fails early (ValueError) on a bad target
        self._at = time.monotonic()

    def get(self) -> Results:
        with self._lock:
            if time.monotonic() - self._at > self.refresh_s:
                with contextlib.suppress(Exception):  # a store briefly unreadable: keep showing what we have
                    self._results = load_runs(self.targets)
                self._at = time.monotonic()
            return self._results


def create_app(targets: str | Path | Iterable[str | Path], *, refresh_s: float = 10.0) -> Dash:
    """The dashboard over ``targets`` (run folders, a folder of them, SQLite files or URLs).

    Raises:
        ValueError: a target with no campaign (the message says what was looked for).
    """
    items = [targets] if isinstance(targets, (str, Path)) else list(targets)
    source = Source(items, refresh_s)
    app = Dash(__name__, title="paratune dashboard", suppress_callback_exceptions=True, update_title="")
    _guard_hosts(app)

    def layout() -> html.Div:
        results = source.get()
        return html.Div(
            [
                dcc.Location(id="url"),
                html.H2("paratune dashboard", style={"margin": "0.4em 0 0"}),
                html.Div(f"from {', '.join(source.targets)}", style=STYLE["note"]),
                html.Nav(
                    [dcc.Link(title, href=path, id=f"nav-{title.split()[0].lower()}") for path, title in PAGES.items()],
                    style=STYLE["nav"],
                ),
                html.Div(
                    [
                        html.Div(
                            [
                                html.Label(name),
                                dcc.Dropdown(
                                    id=f"filter-{name}",
                                    multi=True,
                                    options=[{"label": v, "value": v} for v in results.choices(name)],
                                    placeholder=f"all {name}s",
                                ),
                            ]
                        )
                        for name in FILTERS
                    ],
                    style=STYLE["filters"],
                ),
                dcc.Loading(html.Div(id="page"), delay_show=300),
            ],
            style=STYLE["body"],
        )

    app.layout = layout

    @app.callback(
        [Output(f"filter-{name}", "value") for name in FILTERS],
        Input("url", "search"),
    )
    def filters_from_url(search: str | None) -> list[list[str] | None]:
        query = parse_qs((search or "").lstrip("?"))
        if not any(name in query for name in FILTERS):
            raise PreventUpdate  # no filter in the URL: keep the dropdowns (and skip a second render)
        return [query.get(name) or None for name in FILTERS]

    @app.callback(
        Output("page", "children"),
        Input("url", "pathname"),
        *[Input(f"filter-{name}", "value") for name in FILTERS],
    )
    def render(pathname: str | None, *values: list[str] | None) -> Any:
        results = source.get().select(**dict(zip(FILTERS, values, strict=True)))
        page = pathname if pathname in PAGES else "/"
        body = {
            "/": _overview,
            "/leaderboard": _leaderboard,
            "/anytime": _anytime,
            "/pareto": _pareto,
            "/plans": _plans,
            "/transfer": _transfer,
            "/studies": _studies,
        }[page](results)
        return html.Div([html.H3(PAGES[page]), *body], id=f"page-{page.strip('/') or 'overview'}")

    @app.callback(Output("plan-figs", "children"), Input("plan-job", "value"))
    def plan_figures(value: str | None) -> Any:
        if not value:
            return html.P("Pick a job.", style=STYLE["note"])
        campaign, _, job_id = value.rpartition("\t")
        results = source.get()
        job = results.job(campaign, int(job_id))
        if job is None:
            return html.P("That job is gone from the store.", style=STYLE["note"])
        view = plan_view(job, results.scenarios[(job.campaign, job.scenario)].problem)
        if view is None:
            return html.P("This job has no plan (it found no feasible one).", style=STYLE["note"])
        figs: list[Any] = [
            dcc.Graph(figure=stages_figure(view), id="plan-stages", config=GRAPH_CONFIG),
            dcc.Graph(figure=gantt_figure(view), id="plan-gantt", config=GRAPH_CONFIG),
            dcc.Graph(figure=memory_figure(view), id="plan-memory", config=GRAPH_CONFIG),
        ]
        return figs + [html.P(n, style=STYLE["note"]) for n in view.notes]

    return app


# -- pages --------------------------------------------------------------------------------------------


def table(t: Table, table_id: str | None = None) -> html.Div:
    """A :class:`Table` as Dash components; every cell is a text child (escaped by React)."""
    head = html.Thead(html.Tr([html.Th(c, style=STYLE["head"]) for c in t.columns]))
    rows = []
    for i, row in enumerate(t.rows):
        key = t.row_keys[i] if i < len(t.row_keys) else ""
        cells = [
            html.Td(v, style={**STYLE["cell"], **({"textAlign": "left"} if k == 0 else {})}) for k, v in enumerate(row)
        ]
        attrs: dict[str, Any] = {"data-key": key}
        rows.append(html.Tr(cells, **attrs))
    parts: list[Any] = [html.H4(t.title)] if t.title else []
    if t.rows:
        parts.append(html.Table([head, html.Tbody(rows)], style=STYLE["table"], id=table_id or ""))
    else:
        parts.append(html.P("none", style=STYLE["note"]))
    if t.note:
        parts.append(html.P(t.note, style=STYLE["note"]))
    return html.Div(parts, className="pt-table")


def _empty(results: Results) -> list[Any]:
    return [] if results.scenarios else [html.P("No scenario matches the filters.", style=STYLE["note"])]


def _overview(results: Results) -> list[Any]:
    return [
        dcc.Graph(figure=status_figure(results), config=GRAPH_CONFIG, id="status-graph"),
        table(campaigns_table(results), "campaigns-table"),
        table(scenarios_table(results), "scenarios-table"),
        table(tuners_table(results), "tuners-table"),
        table(failures_table(results), "failures-table"),
    ]


def _leaderboard(results: Results) -> list[Any]:
    out: list[Any] = [*_empty(results), table(overall_table(results), "overall-table")]
    if results.scenarios:
        out.append(dcc.Graph(figure=gap_heatmap(results), config=GRAPH_CONFIG, id="gap-heatmap"))
    for i, key in enumerate(results.scenarios):
        out.append(table(leaderboard_table(results, key), f"leaderboard-{i}"))
    return out


def _anytime(results: Results) -> list[Any]:
    out = _empty(results)
    for i, key in enumerate(results.scenarios):
        out.append(
            html.Div(
                [
                    dcc.Graph(
                        figure=anytime_figure(results, key, "evaluations"),
                        config=GRAPH_CONFIG,
                        id=f"anytime-e-{i}",
                        style={"flex": "1"},
                    ),
                    dcc.Graph(
                        figure=anytime_figure(results, key, "wall_s"),
                        config=GRAPH_CONFIG,
                        id=f"anytime-w-{i}",
                        style={"flex": "1"},
                    ),
                ],
                style={"display": "flex", "gap": "0.5em"},
            )
        )
    return out


def _pareto(results: Results) -> list[Any]:
    keys = [k for k, s in results.scenarios.items() if s.multi]
    if not keys:
        return [
            html.P(
                "No selected scenario has a two-value objective (ttft+memory, tbt+memory, step+memory).",
                style=STYLE["note"],
            )
        ]
    return [
        dcc.Graph(figure=pareto_figure(results, k), config=GRAPH_CONFIG, id=f"pareto-{i}") for i, k in enumerate(keys)
    ]


def _plans(results: Results) -> list[Any]:
    options, default = [], None
    for key, scenario in results.scenarios.items():
        done = [j for j in results.jobs_of(key) if j.state == JobState.DONE and j.plan is not None]
        sign = -1.0 if scenario.direction == "maximize" else 1.0
        for j in sorted(done, key=lambda j: (sign * (j.value or 0.0), j.role != Role.OPTIMUM, j.id)):
            value = f"{j.campaign}\t{j.id}"
            options.append({"label": f"{results.scenario_label(key)} · {j.label}", "value": value})
            default = default or value
    if not options:
        return [html.P("No finished job with a plan matches the filters.", style=STYLE["note"])]
    return [
        html.Label("job (best first within each scenario)"),
        dcc.Dropdown(id="plan-job", options=options, value=default, clearable=False),
        dcc.Loading(html.Div(id="plan-figs")),
    ]


def _transfer(results: Results) -> list[Any]:
    rows = transfer_rows(results)
    out: list[Any] = []
    if rows:
        out += [
            dcc.Graph(figure=transfer_figure(rows), config=GRAPH_CONFIG, id="transfer-graph"),
            table(transfer_table(rows, results), "transfer-table"),
        ]
    else:
        out.append(html.P("No rl tuner results in the selected campaigns.", style=STYLE["note"]))
    if not any(r.kind == "fine-tuned" for r in rows):
        out.append(
            html.P(
                "No fine-tuned results recorded: fine-tuning a policy on a scenario is run by "
                "`paratune transfer --json ... > RUN_DIR/transfer/NAME.json`; saved reports show here.",
                style=STYLE["note"],
            )
        )
    return out


def _studies(results: Results) -> list[Any]:
    if not results.studies:
        return [
            html.P(
                "No study matches the filters. Studies come from `paratune study granularity | static-vs-runtime "
                "-o RUNS_DIR/NAME` or from a campaign's `studies:`.",
                style=STYLE["note"],
            )
        ]
    out: list[Any] = []
    for i, study in enumerate(results.studies):
        tables, figures, summary = study_parts(study)
        out.append(html.H4(study.title, id=f"study-{i}-title"))
        out.append(html.Ul([html.Li(line) for line in summary], id=f"study-{i}-summary"))
        out += [dcc.Graph(figure=f, config=GRAPH_CONFIG, id=f"study-{i}-fig-{k}") for k, f in enumerate(figures)]
        out += [table(t, f"study-{i}-table-{k}") for k, t in enumerate(tables)]
        out.append(html.P(f"files: {study.where}", style=STYLE["note"]))
    return out


def serve(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> None:
    """Run the app (blocking) with Flask's threaded server; requests must name ``host`` (or loopback) as Host."""
    allow_host(app, host)
    app.run(host=host, port=port, debug=False)


# -- the Host header (DNS rebinding) --------------------------------------------------------

#: extra names the dashboard answers to (comma-separated), e.g. the public name behind a reverse proxy
HOSTS_ENV = "PARATUNE_DASHBOARD_HOSTS"
_ALLOWED = "PARATUNE_ALLOWED_HOSTS"


def _guard_hosts(app: Dash) -> None:
    """Answer 400 to a request whose ``Host`` names a host this dashboard was not bound to.

    A page on an attacker's site can make its own domain name resolve to 127.0.0.1 (DNS rebinding)
    and then read a dashboard bound to loopback as if it were its own origin; its requests still
    carry the attacker's name in ``Host``, which is how they are told apart. Addresses (``127.0.0.1``,
    ``[::1]``, any IP literal) and ``localhost`` are always accepted: a rebinding needs a name.
    """
    extra = {_bare(h) for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()}
    app.server.config[_ALLOWED] = {"localhost", *extra}

    @app.server.before_request
    def check_host() -> Any:
        from flask import request

        name = _bare(request.host)
        if _is_address(name) or name in app.server.config[_ALLOWED]:
            return None
        text = (f"Host {name!r} is not allowed: open the dashboard by address (127.0.0.1) or by the name it "
                f"was started with, or list the name in {HOSTS_ENV}\n")  # fmt: skip
        return text, 400, {"Content-Type": "text/plain"}


def allow_host(app: Dash, host: str) -> None:
    """Accept ``host`` (the address ``serve`` binds) in Host headers; a wildcard bind accepts this machine's names."""
    names = app.server.config.setdefault(_ALLOWED, {"localhost"})
    if host in ("", "0.0.0.0", "::"):
        names.update(_bare(n) for n in (socket.gethostname(), socket.getfqdn()))
    else:
        names.add(_bare(host))


def _bare(host: str) -> str:
    """``host`` without its port, brackets, trailing dot or case: ``[::1]:8050`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
