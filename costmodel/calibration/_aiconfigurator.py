"""Reading NVIDIA AIConfigurator's measured tables: kernels and collectives timed on real GPUs.

Why: the package ``aiconfigurator-core`` (Apache-2.0, on PyPI; the optional extra
``paratune[silicon]``) ships, per system (``h200_sxm``, ``b200_sxm``, ``gb200``, ...),
kernel and collective timings measured with TensorRT-LLM, vLLM and SGLang under
``systems/data/<system>/<family>/<backend>/<version>/<table>.parquet``, and the
system's datasheet in ``systems/<system>.yaml``. paratune fits its profiles to these
tables; the fitted profiles are committed, so only refitting needs the package.

Layout read (package 0.12): ``family`` is ``gemm``, ``attention``, ``comm``, ``moe``,
...; ``backend`` is ``trtllm``, ``vllm``, ``sglang`` (and ``nccl`` under ``comm``).
Every table has a ``latency`` column in **milliseconds**, returned here in seconds as
``seconds``. Nothing here trusts a name from the user as a path: systems, backends
and versions are matched against the folders the package holds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._limits import MAX_FILE_BYTES, parse_yaml, read_text

PACKAGE = "aiconfigurator_core"
DISTRIBUTION = "aiconfigurator-core"
LICENCE = "Apache-2.0"
INSTALL_HINT = "install it with: pip install 'paratune[silicon]'"
#: Largest table read (rows); the biggest table of package 0.12 has about 1e5.
MAX_ROWS = 2_000_000
#: Largest parquet file read (bytes).
MAX_TABLE_BYTES = 256 << 20


@dataclass(frozen=True)
class Table:
    """Columns of one measured table (numpy arrays), with where they came from."""

    columns: dict[str, np.ndarray]
    system: str
    family: str
    backend: str
    version: str
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["seconds"]) if "seconds" in self.columns else 0

    def __getitem__(self, column: str) -> np.ndarray:
        return self.columns[column]

    def where(self, mask: np.ndarray) -> Table:
        """The rows where ``mask`` is true (same provenance)."""
        return Table(
            {k: v[mask] for k, v in self.columns.items()},
            self.system,
            self.family,
            self.backend,
            self.version,
            self.name,
            self.provenance,
        )


def systems_dir() -> Path:
    """The package's ``systems`` folder; a clear error when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the measured tables come from {DISTRIBUTION!r}, which is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "systems"


def package_version() -> str:
    """The installed version of ``aiconfigurator-core`` (recorded in every profile fitted from it)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def systems() -> list[str]:
    """Systems with measured data in the installed package (e.g. ``h200_sxm``)."""
    data = systems_dir() / "data"
    return sorted(p.name for p in data.iterdir() if p.is_dir() and next(p.rglob("*.parquet"), None) is not None)


def _choose(options: list[str], wanted: str | None, what: str) -> str:
    if not options:
        raise ValueError(f"no {what} in the installed {DISTRIBUTION} {package_version()}")
    if wanted is None:
        return options[-1]
    if wanted not in options:
        raise ValueError(f"unknown {what} {wanted!r}; the installed {DISTRIBUTION} has: {', '.join(options)}")
    return wanted


def _version_key(version: str) -> tuple[Any, ...]:
    """Sort versions numerically where they are numbers (``0.5.9`` < ``0.5.14``; rc after its base)."""
    parts: list[Any] = []
    for piece in version.replace("rc", ".-1.").replace(".post", ".").split("."):
        parts.append((0, int(piece), "") if piece.lstrip("-").isdigit() else (1, 0, piece))
    return tuple(parts)


def system_spec(system: str) -> dict[str, Any]:
    """The datasheet of a system (``systems/<system>.yaml``): ``gpu`` and ``node`` sections."""
    system = _choose(systems(), system, "system")
    path = systems_dir() / f"{system}.yaml"
    data = parse_yaml(read_text(path, "system spec", MAX_FILE_BYTES), str(path))
    if not isinstance(data, dict) or not isinstance(data.get("gpu"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'gpu' section")
    return data


def backends(system: str, family: str) -> list[str]:
    """Backends (engines, or ``nccl``) with tables of ``family`` for ``system``."""
    folder = systems_dir() / "data" / _choose(systems(), system, "system") / family
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def versions(system: str, family: str, backend: str) -> list[str]:
    """Versions of ``backend`` measured for ``family`` on ``system``, oldest first."""
    folder = systems_dir() / "data" / system / family / _choose(backends(system, family), backend, "backend")
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=_version_key)


def tables(system: str, family: str, backend: str, version: str) -> list[str]:
    """Table names (parquet files without suffix) measured for one engine version."""
    folder = systems_dir() / "data" / system / family / backend / version
    return sorted(p.stem for p in folder.glob("*.parquet"))


def read_table(
    system: str,
    family: str,
    table: str,
    backend: str,
    version: str | None = None,
    columns: tuple[str, ...] | None = None,
) -> Table:
    """One measured table as numpy columns, latency converted to ``seconds``.

    ``version`` None takes the newest version of ``backend`` that has ``table``. Rows
    with a non-finite or non-positive latency are dropped (the package marks failed
    measurements so); their count is in ``provenance["dropped_rows"]``.
    """
    system = _choose(systems(), system, "system")
    backend = _choose(backends(system, family), backend, f"backend for {family} on {system}")
    having = [v for v in versions(system, family, backend) if table in tables(system, family, backend, v)]
    version = _choose(having, version, f"version of {backend} with table {table!r} on {system}")
    path = systems_dir() / "data" / system / family / backend / version / f"{table}.parquet"
    columns_read = _read_parquet(path, columns)
    latency = columns_read.pop("latency")
    ok = np.isfinite(latency) & (latency > 0)
    cols = {k: v[ok] for k, v in columns_read.items()}
    cols["seconds"] = latency[ok] * 1e-3
    provenance = {
        "package": DISTRIBUTION,
        "package_version": package_version(),
        "licence": LICENCE,
        "table": f"systems/data/{system}/{family}/{backend}/{version}/{table}.parquet",
        "engine": backend,
        "engine_version": version,
        "rows": int(ok.sum()),
        "dropped_rows": int((~ok).sum()),
    }
    return Table(cols, system, family, backend, version, table, provenance)


def _read_parquet(path: Path, columns: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # the extra brings pyarrow with the package
        raise ValueError(f"reading {path.name} needs pyarrow; {INSTALL_HINT}") from exc
    size = path.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the {MAX_TABLE_BYTES} bytes a measured table may have")
    meta = pq.read_metadata(path)
    if meta.num_rows > MAX_ROWS:
        raise ValueError(f"{path}: {meta.num_rows} rows, more than the {MAX_ROWS} a measured table may have")
    wanted = None if columns is None else sorted(set(columns) | {"latency"})
    data = pq.read_table(path, columns=wanted)
    if "latency" not in data.column_names:
        raise ValueError(f"{path}: no 'latency' column")
    out: dict[str, np.ndarray] = {}
    for name in data.column_names:
        col = data.column(name).to_numpy(zero_copy_only=False)
        out[name] = col.astype(float) if name == "latency" else np.asarray(col)
    return out
