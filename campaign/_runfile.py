"""Reading a run folder's ``campaign.json``, the file that ``status``, ``resume``, the dashboard and the report follow.

The file is small and written by paratune, but a run folder is copied, edited and
mailed around: a garbage, truncated or hand-edited file must give one line that
names it and the field at fault, never a KeyError or a TypeError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._limits import read_text, shown

#: The largest run file read: paratune writes a few hundred bytes.
MAX_RUN_FILE_BYTES = 1 << 20


def read_run_file(path: Path) -> dict[str, Any]:
    """The mapping of the run file ``path``, checked: ``name`` a string, and ``storage_file`` (a file name in
    the run folder) or ``storage`` (a database URL string). Other keys are kept as they are.

    Raises:
        ValueError: unreadable, too large, not JSON, not an object, or a field of the wrong type; the message
            names the file and the field.
    """
    text = read_text(path, "paratune run file", MAX_RUN_FILE_BYTES)
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a paratune run file (invalid JSON: {exc.msg}, line {exc.lineno})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: not a paratune run file (a JSON object is expected, got {type(info).__name__})")
    name = info.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{path}: field 'name' must be the campaign's name (a string), got {shown(name)}")
    storage_file = info.get("storage_file")
    if storage_file is not None:
        bare = isinstance(storage_file, str) and storage_file not in ("", ".", "..")
        if not bare or Path(storage_file).name != storage_file:
            raise ValueError(
                f"{path}: field 'storage_file' must be a file name in the run folder, got {shown(storage_file)}"
            )
    elif not isinstance(info.get("storage"), str) or not info["storage"]:
        raise ValueError(
            f"{path}: field 'storage' must be a database URL (or 'storage_file' a file name), "
            f"got {shown(info.get('storage'))}"
        )
    return info
