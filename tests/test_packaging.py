"""The install: every data folder is declared (a quiet `pip install`, presets in an installed copy); pins."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_shipped_data_file_belongs_to_a_declared_package() -> None:
    """A data folder missing from ``packages`` is left out of a wheel, and setuptools warns "would be ignored"."""
    setup = PYPROJECT["tool"]["setuptools"]
    packages, data = set(setup["packages"]), setup["package-data"]
    assert PYPROJECT["project"]["license"] == "MIT"  # an SPDX string, not the deprecated table
    shipped = [*(ROOT / "configs").glob("*/*"), *(ROOT / "agents" / "policies").glob("*")]
    matched = 0
    for path in shipped:
        if not path.is_file() or path.suffix == ".py" or "measurements" in path.parts:
            continue
        package = "paratune." + ".".join(path.parent.relative_to(ROOT).parts)
        assert package in packages, f"{path.relative_to(ROOT)}: {package} is not in [tool.setuptools] packages"
        assert any(fnmatch(path.name, g) for g in data.get(package, [])), f"{path.name} matches no package-data glob"
        matched += 1
    assert matched >= 20


def test_the_numerical_stack_is_pinned_and_the_set_up_uses_it() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in ("numpy", "scipy", "networkx", "optuna", "gymnasium", "stable_baselines3", "transformers"):
        assert re.fullmatch(r"\d+(\.\d+)+", pins[name]), (name, pins.get(name))
    assert pins["torch"] == "2.13.0"  # matches the CPU build's 2.13.0+cpu
    run = (ROOT / "scripts" / "run.sh").read_text()
    assert 'pip install -q -c "$pins" -e' in run and "constraints.txt" in run.split("want=$(", 1)[1].split("\n")[0]
