"""Writing a profile: atomically, in the YAML that :func:`load_profile` reads back into an equal profile."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .._profile import Profile


def write_profile(profile: Profile, path: Path | str) -> Path:
    """Write ``profile`` to ``path`` (YAML), replacing it atomically; returns the path.

    The file is written beside ``path`` and renamed over it, so a reader (a running
    campaign loading the preset) never sees half a profile.
    """
    return write_yaml(profile.to_dict(), path)


def write_yaml(data: Any, path: Path | str) -> Path:
    """Write ``data`` to ``path`` as YAML, replacing it atomically (see :func:`write_profile`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
