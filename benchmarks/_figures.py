"""What the speed benchmarks share: the provenance of their figures, and writing them as JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def figure_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a speed benchmark: its description (``doc``'s first paragraph), ``--json`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    return parser


def provenance() -> dict[str, Any]:
    """The paratune version and the machine the figures were measured on (speed figures mean little without it)."""
    import paratune

    return {
        "paratune": paratune.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def emit(figures: dict[str, Any], out: Path | None, as_json: bool) -> bool:
    """Write ``figures`` to ``out`` (when given) and print them with ``as_json``; True when printed (done)."""
    text = json.dumps(figures, indent=2)
    if out is not None:
        out.write_text(text)
    if as_json:
        print(text)
    return as_json
