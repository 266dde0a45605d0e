"""Helpers shared by the campaign test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_spec(folder: Path, name: str, storage: str | None, **fields: Any) -> Path:
    """A spec file in ``folder`` whose output is ``folder/run``."""
    data = {"name": name, "output": str(folder / "run"), **fields}
    if storage is not None:
        data["storage"] = storage
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
