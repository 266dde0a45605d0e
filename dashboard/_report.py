"""``paratune report RUN_DIR -o report.html``: the dashboard's tables and figures in one self-contained file.

Plotly's JavaScript is inlined once in the page head (no CDN: the file opens
offline and can be mailed or attached to an issue); each figure is a ``<div>``
with its JSON. Every user string in a table goes through :func:`html.escape`, and
in figures through :func:`~._figures.text`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

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

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 1.5em auto; max-width: 1280px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.55em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #666; font-size: 0.85em; max-width: 1100px; }
nav a { margin-right: 1em; }
"""


def table_html(table: Table) -> str:
    """An escaped HTML table (every cell is text)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table.rows)
    title = f"<h3>{html.escape(table.title)}</h3>" if table.title else ""
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    if not table.rows:
        return f"{title}<p class='note'>none</p>"
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def figure_html(fig: go.Figure) -> str:
    html_text: str = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
    return html_text


def build_report(results: Results, *, title: str = "paratune campaign report") -> str:
    """The report of ``results`` as one HTML string."""
    parts: list[str] = []
    add = parts.append
    add(
        '<nav><a href="#overview">overview</a><a href="#leaderboard">leaderboard</a>'
        '<a href="#anytime">anytime</a><a href="#pareto">Pareto</a><a href="#plans">plans</a>'
        '<a href="#transfer">transfer</a><a href="#studies">studies</a></nav>'
    )
    add('<h2 id="overview">Overview</h2>')
    add(figure_html(status_figure(results)))
    for t in (campaigns_table(results), scenarios_table(results), tuners_table(results), failures_table(results)):
        add(table_html(t))
    add('<h2 id="leaderboard">Leaderboard</h2>')
    add(table_html(overall_table(results)))
    if results.scenarios:
        add(figure_html(gap_heatmap(results)))
    for key in results.scenarios:
        add(table_html(leaderboard_table(results, key)))
    add('<h2 id="anytime">Anytime curves</h2>')
    for key in results.scenarios:
        add(figure_html(anytime_figure(results, key, "evaluations")))
        add(figure_html(anytime_figure(results, key, "wall_s")))
    add('<h2 id="pareto">Pareto fronts</h2>')
    multi = [k for k, s in results.scenarios.items() if s.multi]
    for key in multi:
        add(figure_html(pareto_figure(results, key)))
    if not multi:
        add('<p class="note">No scenario has a two-value objective (ttft+memory, tbt+memory, step+memory).</p>')
    add('<h2 id="plans">Plans</h2><p class="note">The best plan of each scenario (the optimum when known).</p>')
    for key, scenario in results.scenarios.items():
        done = [j for j in results.jobs_of(key) if j.state == JobState.DONE and j.value is not None]
        if not done:
            continue
        sign = -1.0 if scenario.direction == "maximize" else 1.0
        best = min(done, key=lambda j: (sign * (j.value or 0.0), j.role != Role.OPTIMUM, j.id))
        view = plan_view(best, scenario.problem)
        if view is None:
            continue
        label = f"{results.scenario_label(key)}, {best.label}"
        add(f"<h3>{html.escape(label)}</h3>")
        for fig in (stages_figure(view), gantt_figure(view), memory_figure(view)):
            add(figure_html(fig))
        for note in view.notes:
            add(f'<p class="note">{html.escape(note)}</p>')
    add('<h2 id="transfer">Transfer (RL policies)</h2>')
    rows = transfer_rows(results)
    if rows:
        add(figure_html(transfer_figure(rows)))
        add(table_html(transfer_table(rows, results)))
    else:
        add(
            '<p class="note">No rl tuner results in these campaigns; fine-tuning is measured by '
            "<code>paratune transfer --json</code> (save its output as RUN_DIR/transfer/NAME.json).</p>"
        )
    add('<h2 id="studies">Studies</h2>')
    for study in results.studies:
        tables, figures, summary = study_parts(study)
        add(f"<h3>{html.escape(study.title)}</h3>")
        add("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>")
        for fig in figures:
            add(figure_html(fig))
        for t in tables:
            add(table_html(t))
    if not results.studies:
        add('<p class="note">No study in these folders (<code>paratune study ... -o DIR</code>).</p>')
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    sources = ", ".join(results.sources)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<style>{CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<h1>{html.escape(title)}</h1><p class='note'>from {html.escape(sources)}, {stamp}</p>"
        + "\n".join(parts)
        + "</body></html>\n"
    )


def write_report(targets: str | Path | Iterable[str | Path], out: str | Path) -> Path:
    """Load ``targets`` (see :func:`~._data.load_runs`) and write the report to ``out``; returns the path."""
    results = load_runs(targets)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ", ".join(c.name for c in results.campaigns) or f"{len(results.studies)} studies"
    path.write_text(build_report(results, title=f"paratune report: {names}"), encoding="utf-8")
    return path
