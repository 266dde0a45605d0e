"""What every study shares: its output folder, provenance, tables and per-cell checkpoints.

A study writes, into its output folder ``DIR``:

* ``study.json``: everything it measured (the contract the dashboard's Studies page
  and the report read; keys are only added), with ``kind``, ``version``,
  ``summary`` (lines of text) and ``provenance``;
* one CSV per table (raw numbers, SI units: seconds, bytes);
* ``summary.md``: the generated summary and the tables;
* ``plots.html``: the figures, self-contained (plotly.js inlined: it opens offline);
* ``cells/*.json``: one checkpoint per finished unit of work (a tuner at a
  granularity, a bucket's optimum), so an interrupted study resumes where it stopped.

Every file is written to a temporary name and renamed, ``study.json`` last, so a
folder never holds half a file.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._provenance import host_record, library_versions, paratune_version
from ..costmodel._fields import read_json

STUDY_FILE = "study.json"
Say = Callable[[str], None]


@dataclass
class StudyTable:
    """A table of raw values (numbers stay numbers in the CSV; :meth:`formatted` is for display)."""

    name: str  # file stem of its CSV
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    formats: dict[str, Callable[[Any], str]] = field(default_factory=dict)  # column -> formatter

    def formatted(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            out.append([self.formats.get(c, fmt_value)(v) for c, v in zip(self.columns, row, strict=True)])
        return out

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(["" if v is None else v for v in row])
        return buf.getvalue()

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns) + "\n"
        body = "".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n" for r in self.formatted())
        note = f"\n{self.note}\n" if self.note else ""
        return f"### {self.title}\n\n{head}{body}{note}"


def fmt_value(value: Any) -> str:
    """A table cell: 4 significant digits for floats, '-' for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_pct(value: Any) -> str:
    """A fraction as a percentage (0.012 -> '1.20%')."""
    return "-" if value is None else f"{100 * float(value):.2f}%"


def fmt_seconds(value: Any) -> str:
    """Seconds with a unit that keeps 3-4 digits (ms below one second, us below one millisecond)."""
    if value is None:
        return "-"
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        return "-"
    if abs(v) >= 1:
        return f"{v:.3g} s"
    if abs(v) >= 1e-3:
        return f"{1e3 * v:.3g} ms"
    return f"{1e6 * v:.3g} us"


def provenance(seed: int, profile: str, **extra: Any) -> dict[str, Any]:
    """Versions, seed, calibration profile and host of a study (plus ``extra`` fields)."""
    return {
        "paratune": paratune_version(),
        "libraries": library_versions(),
        "seed": seed,
        "profile": profile,
        **host_record(),
        **extra,
    }


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class Checkpoints:
    """Finished units of work of a study, one JSON file each under ``DIR/cells``.

    ``key`` identifies the work *and its inputs* (the caller puts the parameters that
    change the answer into it), so a study re-run with other parameters never reuses
    a stale cell. ``None`` for the folder keeps nothing (a study run without ``-o``).
    """

    def __init__(self, out_dir: Path | None) -> None:
        self.dir = None if out_dir is None else Path(out_dir) / "cells"

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", key)[:120]
        return self.dir / f"{slug}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.dir is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data.get("value") if data.get("key") == key else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.dir is not None:
            write_json_atomic(self._path(key), {"key": key, "value": value})


def write_study(
    out_dir: Path, data: dict[str, Any], tables: Sequence[StudyTable], figures: Sequence[Any], title: str
) -> None:
    """Write a study's files (see the module docstring); ``study.json`` goes last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for table in tables:
        write_text_atomic(out_dir / f"{table.name}.csv", table.csv_text())
    lines = [f"# {title}", ""] + [f"- {line}" for line in data.get("summary", [])] + [""]
    lines += [t.markdown() for t in tables]
    write_text_atomic(out_dir / "summary.md", "\n".join(lines))
    write_text_atomic(out_dir / "plots.html", plots_html(title, data.get("summary", []), figures))
    write_json_atomic(out_dir / STUDY_FILE, data)


def plots_html(title: str, summary: Sequence[str], figures: Sequence[Any]) -> str:
    """One self-contained HTML page with the summary and the figures."""
    from plotly.offline import get_plotlyjs

    divs = "".join(f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for f in figures)
    items = "".join(f"<li>{html.escape(s)}</li>" for s in summary)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
        f"<body style='font-family: system-ui, sans-serif; max-width: 1200px; margin: 1em auto'>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul>{divs}</body></html>"
    )


def load_study(path: str | Path) -> dict[str, Any]:
    """Read ``study.json`` from a study folder (or the file itself); a clear error if it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / STUDY_FILE
    if not p.exists():
        raise ValueError(f"{p}: no such study file (a study folder holds {STUDY_FILE})")
    data = read_json(p)
    if not isinstance(data, dict) or "kind" not in data:
        raise ValueError(f"{p}: not a paratune study (no field 'kind')")
    missing = [f for f in REQUIRED_FIELDS.get(data["kind"], ()) if f not in data]
    if missing:
        raise ValueError(f"{p}: a {data['kind']} study without field(s) {', '.join(missing)} (partial or older?)")
    return data


#: Fields a study.json of each kind holds: what its tables, figures and summary read.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "granularity": ("objective", "direction", "unit", "granularities", "tuners", "rows", "best", "sweet_spot"),
    "static-vs-runtime": (
        "model", "platform", "phase", "objective", "unit", "workload", "buckets", "static", "oracle", "k_plans",
        "decisions", "decision_pairs", "break_even", "notes",
    ),
}  # fmt: skip
