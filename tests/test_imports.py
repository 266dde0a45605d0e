"""Import hygiene: the cost model stays light (no torch) so tuning workers start fast."""

from __future__ import annotations

import subprocess
import sys


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_costmodel_does_not_import_torch() -> None:
    modules = _imported_after("import paratune.costmodel, paratune.graphs")
    assert "paratune.costmodel" in modules
    assert not {m for m in modules if m == "torch" or m.startswith(("torch.", "transformers"))}


def test_cli_start_does_not_import_torch() -> None:
    modules = _imported_after("import paratune.cli")
    assert "torch" not in modules
