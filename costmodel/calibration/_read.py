"""Reading measured profiles: Vidur's CSV tree and LLMCompass's A100 GEMM timings.

Layouts accepted for ``profiles_dir`` (so ``--profiles`` may point at any level):

* a Vidur tree: ``compute/<device>/<org>/<model>/mlp.csv`` and
  ``network/<cluster>/{all_reduce,send_recv}.csv``;
* a folder holding ``vidur/`` (such a tree) and optionally ``llmcompass/``
  (``matmul_A100.csv``), like ``../shared/data/profiles``;
* for ``a100``, a folder holding only LLMCompass's ``matmul_A100.csv`` (such as
  ``../shared/data/profiles/llmcompass``): the GEMMs of LLMCompass's own A100, with
  no Vidur rows (``configs/profiles/a100-llmcompass.yaml`` is fitted so).

The network clusters of a device are ``network/<device>`` and ``network/<device>_*``
(``a100_dgx``, ``cpu_local``); several are read and reported apart.

Units. Compute times are milliseconds (Vidur's ``time_stats.<op>.median``).
Network ``size`` is read as **bytes**: Vidur's collective profiler writes
``"size": self._size * 2  # bytes`` for a buffer of ``_size`` fp16 elements, and its
predictor turns it back into tokens as ``size / embedding_dim / 2``. Read as fp16
elements instead, the 2-GPU NVLink send/recv of these files would run at 540 GB/s
on A100 and 695 GB/s on H100, above the 300 / 450 GB/s the links carry per
direction. ``meta.json`` beside ``compute/`` (written by ``calibrate measure``) may
give the ``dtype`` of the measurement; Vidur's profiles are fp16.

Every error names the file and the column (and the line for a bad value).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._fields import read_json

#: Vidur op columns of mlp.csv, in file order.
VIDUR_OPS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)  # fmt: skip
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
ROW_COLUMNS = ("num_tokens", "num_tensor_parallel_workers")
NETWORK_COLUMNS = ("num_workers", "size", "devices_per_node")
COLLECTIVES = ("all_reduce", "send_recv")
#: Bytes per unit of the network ``size`` column (see the module docstring).
SIZE_UNIT_BYTES = 1


@dataclass(frozen=True)
class ComputeFile:
    """The rows of one ``mlp.csv``: shape, tokens, TP degree and seconds per Vidur op."""

    path: Path
    model: str  # the folder name, e.g. Llama-2-70b-hf
    shapes: np.ndarray  # (rows, 6) ints: SHAPE_COLUMNS, use_gated_mlp as 0/1
    tokens: np.ndarray
    tp: np.ndarray
    seconds: dict[str, np.ndarray]  # Vidur op -> median seconds (NaN where the cell is empty)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class NetworkFile:
    """The rows of one collective CSV of a cluster."""

    path: Path
    cluster: str
    collective: str
    size_bytes: np.ndarray
    workers: np.ndarray
    devices_per_node: np.ndarray
    seconds: np.ndarray
    node_size: int  # max_devices_per_node: devices in one node of the cluster (0: not given)

    @property
    def spans_nodes(self) -> np.ndarray:
        """True where the group has members on several nodes (the ``inter`` link class)."""
        return self.workers > self.devices_per_node


@dataclass(frozen=True)
class GemmFile:
    """LLMCompass ``matmul_*.csv``: one (M x K) @ (K x N) GEMM per row, seconds."""

    path: Path
    mkn: np.ndarray  # (rows, 3)
    seconds: np.ndarray


@dataclass(frozen=True)
class Measurements:
    """Everything found for one device under a profiles folder."""

    root: Path
    device: str
    dtype: str
    compute: tuple[ComputeFile, ...]
    network: tuple[NetworkFile, ...]
    gemms: tuple[GemmFile, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # meta.json beside compute/, when there is one

    def sources(self) -> list[str]:
        """Files read, relative to the folder given, for the profile's ``source``."""
        files = [f.path for f in self.compute] + [f.path for f in self.network] + [g.path for g in self.gemms]
        return [str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p) for p in files]


def vidur_root(profiles_dir: Path) -> Path | None:
    """The folder holding ``compute/`` or ``network/``: ``profiles_dir`` itself or its ``vidur/``."""
    for cand in (profiles_dir, profiles_dir / "vidur"):
        if (cand / "compute").is_dir() or (cand / "network").is_dir():
            return cand
    return None


def read_measurements(profiles_dir: Path | str, device: str) -> Measurements:
    """Read every compute, network and (for a100) LLMCompass GEMM file of ``device``.

    Raises:
        ValueError: the folder is missing or holds nothing for ``device`` (the message
            lists the devices it does hold), or a file lacks a column or has a bad value.
    """
    root = Path(profiles_dir)
    if not root.is_dir():
        raise ValueError(f"{root}: profiles folder does not exist")
    vidur = vidur_root(root)
    if vidur is None and device == "a100" and (root / "matmul_A100.csv").is_file():
        return Measurements(root, device, "fp16", (), (), (read_gemms(root / "matmul_A100.csv"),), {})
    if vidur is None:
        raise ValueError(
            f"{root}: no measured profiles (expected compute/<device>/<org>/<model>/mlp.csv and "
            "network/<cluster>/*.csv, or a vidur/ folder holding them)"
        )
    compute = tuple(read_compute(p) for p in sorted((vidur / "compute" / device).glob("*/*/mlp.csv")))
    network = tuple(
        read_network(p, cluster.name)
        for cluster in _clusters(vidur / "network", device)
        for p in sorted(cluster.glob("*.csv"))
        if p.stem in COLLECTIVES
    )
    if not compute and not network:
        have = sorted({p.name for p in (vidur / "compute").glob("*") if p.is_dir()})
        raise ValueError(
            f"{vidur}: no profiles for device {device!r} (compute/{device}/ or network/{device}_*/); "
            f"devices there: {', '.join(have) or 'none'}"
        )
    gemms: tuple[GemmFile, ...] = ()
    if device == "a100":
        for folder in (root / "llmcompass", root):
            if (folder / "matmul_A100.csv").is_file():
                gemms = (read_gemms(folder / "matmul_A100.csv"),)
                break
    meta = _meta(vidur)
    dtype = meta.get("dtype", "fp16")
    if dtype not in ("fp16", "bf16"):
        raise ValueError(f"{vidur / 'meta.json'}: field 'dtype' is {dtype!r}; the zoo's ops allow fp16, bf16")
    return Measurements(root, device, str(dtype), compute, network, gemms, meta)


def _clusters(network: Path, device: str) -> list[Path]:
    return sorted(p for p in network.glob("*") if p.is_dir() and (p.name == device or p.name.startswith(device + "_")))


def _meta(vidur: Path) -> dict[str, Any]:
    path = vidur / "meta.json"
    if not path.is_file():
        return {}
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: must be a JSON object")
    return meta


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        for col in required:
            if col not in fields:
                raise ValueError(f"{path}: column {col!r} is missing")
        yield from enumerate(reader, start=2)


def _number(path: Path, line: int, row: dict[str, str], col: str) -> float:
    text = (row.get(col) or "").strip()
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: column {col!r} is not a number: {text!r}") from None


def read_compute(path: Path) -> ComputeFile:
    """One Vidur ``mlp.csv``: at least one ``time_stats.<op>.median`` and the shape columns."""
    with path.open(newline="") as fh:
        fields = next(csv.reader(fh), [])
    ops = [op for op in VIDUR_OPS if f"time_stats.{op}.median" in fields]
    if not ops:
        raise ValueError(f"{path}: column 'time_stats.<op>.median' is missing for every op ({', '.join(VIDUR_OPS)})")
    shapes, tokens, tp = [], [], []
    seconds: dict[str, list[float]] = {op: [] for op in ops}
    for line, row in _rows(path, (*SHAPE_COLUMNS, *ROW_COLUMNS)):
        shape = [_number(path, line, row, c) for c in SHAPE_COLUMNS[:-1]]
        gated = (row.get("use_gated_mlp") or "").strip().lower()
        if gated not in ("true", "false", "1", "0"):
            raise ValueError(f"{path}, line {line}: column 'use_gated_mlp' is not True/False: {gated!r}")
        shapes.append([*shape, float(gated in ("true", "1"))])
        tokens.append(_number(path, line, row, "num_tokens"))
        tp.append(_number(path, line, row, "num_tensor_parallel_workers"))
        for op in ops:
            col = f"time_stats.{op}.median"
            cell = (row.get(col) or "").strip()
            seconds[op].append(_number(path, line, row, col) * 1e-3 if cell else float("nan"))
    if not tokens:
        raise ValueError(f"{path}: no rows")
    arr = np.array(shapes, dtype=np.int64)
    if (arr[:, :5] < 1).any() or min(tokens) < 1 or min(tp) < 1:
        raise ValueError(f"{path}: shape columns, 'num_tokens' and 'num_tensor_parallel_workers' must be >= 1")
    return ComputeFile(
        path=path,
        model=path.parent.name,
        shapes=arr,
        tokens=np.array(tokens, dtype=np.int64),
        tp=np.array(tp, dtype=np.int64),
        seconds={op: np.array(v) for op, v in seconds.items()},
    )


def read_network(path: Path, cluster: str) -> NetworkFile:
    """One Vidur ``all_reduce.csv`` / ``send_recv.csv`` (``size`` in bytes, times in ms)."""
    collective = path.stem
    col = f"time_stats.{collective}.median"
    cols: dict[str, list[float]] = {c: [] for c in (*NETWORK_COLUMNS, col)}
    for line, row in _rows(path, (*NETWORK_COLUMNS, col)):
        for c in cols:
            cols[c].append(_number(path, line, row, c))
    if not cols[col]:
        raise ValueError(f"{path}: no rows")
    return NetworkFile(
        path=path,
        cluster=cluster,
        collective=collective,
        size_bytes=np.array(cols["size"]) * SIZE_UNIT_BYTES,
        workers=np.array(cols["num_workers"], dtype=np.int64),
        devices_per_node=np.array(cols["devices_per_node"], dtype=np.int64),
        seconds=np.array(cols[col]) * 1e-3,
        node_size=_node_size(path),
    )


def _node_size(path: Path) -> int:
    """The cluster's ``max_devices_per_node`` (one value per file), 0 when the column is absent."""
    sizes = set()
    for line, row in _rows(path, ()):
        if "max_devices_per_node" in row:
            sizes.add(int(_number(path, line, row, "max_devices_per_node")))
    if len(sizes) > 1:
        raise ValueError(f"{path}: column 'max_devices_per_node' has several values {sorted(sizes)}; one per cluster")
    return sizes.pop() if sizes else 0


def read_gemms(path: Path) -> GemmFile:
    """LLMCompass ``matmul_A100.csv``: header-less rows ``M, K, N, 0.1900ms, 101.7Tflops``."""
    mkn, seconds = [], []
    with path.open(newline="") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            if len(row) < 4:
                raise ValueError(f"{path}, line {line}: expected columns M, K, N, time, TFLOPS; got {len(row)}")
            try:
                mkn.append([int(c) for c in row[:3]])
            except ValueError:
                raise ValueError(f"{path}, line {line}: columns M, K, N must be integers: {row[:3]}") from None
            text = row[3].strip()
            scale = 1e-3 if text.endswith("ms") else 1e-6 if text.endswith("us") else 1.0
            try:
                seconds.append(float(text.removesuffix("ms").removesuffix("us").removesuffix("s")) * scale)
            except ValueError:
                raise ValueError(f"{path}, line {line}: column 'time' is not a time: {text!r}") from None
    if not mkn:
        raise ValueError(f"{path}: no rows")
    return GemmFile(path=path, mkn=np.array(mkn, dtype=np.int64), seconds=np.array(seconds))
