"""Workloads: traces of request shapes, the synthetic ones shipped with paratune, and their buckets.

A trace is a table of batches as a server would run them: ``prompt_tokens`` (the
prompt, or the sequence length when training), ``output_tokens`` (tokens generated
per request; 0 for training or prefill-only rows), ``batch`` (requests run together)
and an optional ``count`` (how many such batches; default 1). It is read from a CSV
file with that header, or by name for the shipped ones (``configs/workloads/*.csv``,
written by :func:`generate_workload`, whose seeds and distributions are documented
in ``configs/workloads/README.md``).

A study cannot tune a plan for every exact shape (and a run time would not keep
thousands of plans), so shapes are *bucketed* the way serving systems pad them:
the prompt rounded up to a power of two (at least :data:`MIN_PROMPT`), the batch
up to a power of two. Rounding up prices every request on a shape at least as
large as its own, so a plan that fits a bucket fits every request in it. A cap on
the number of buckets keeps a study to a few dozen tuner runs: the rarest bucket
(fewest batches) is merged into its nearest neighbour (in log2 prompt + log2 batch)
until the cap is met, preferring a neighbour that already covers it; a merged
bucket takes the larger prompt and the larger batch of the two, again rounding up.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: Smallest prompt bucket: shorter prompts are padded to it (kernels do not get faster below it).
MIN_PROMPT = 128
#: Default cap on the number of buckets (each costs one exact tuner run per study).
MAX_BUCKETS = 12
COLUMNS = ("prompt_tokens", "output_tokens", "batch")
OPTIONAL = ("count",)


@dataclass(frozen=True)
class Bucket:
    """Requests of one padded shape: ``batches`` batches of ``batch`` requests with prompts <= ``prompt``.

    ``output`` is the mean number of tokens generated per batch (each request of a
    batch generates the same number, so a batch runs ``output`` decode steps).
    """

    prompt: int
    batch: int
    requests: int
    batches: int
    output: float
    rows: int

    @property
    def id(self) -> str:
        return f"p{self.prompt}-b{self.batch}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "batch": self.batch,
            "requests": self.requests,
            "batches": self.batches,
            "output": self.output,
            "rows": self.rows,
        }


@dataclass(frozen=True, eq=False)
class Workload:
    """A trace of batches (one entry per row): prompt and output tokens per request, batch size, count."""

    name: str
    source: str
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    batch: np.ndarray
    count: np.ndarray
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.prompt_tokens)
        if not (len(self.output_tokens) == len(self.batch) == len(self.count) == n) or n == 0:
            raise ValueError(f"workload {self.name!r}: columns must be non-empty and of equal length")

    @property
    def rows(self) -> int:
        return len(self.prompt_tokens)

    @property
    def requests(self) -> int:
        return int((self.batch * self.count).sum())

    def buckets(self, max_buckets: int = MAX_BUCKETS) -> list[Bucket]:
        """The trace bucketed (see the module docstring), sorted by prompt then batch."""
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
        acc: dict[tuple[int, int], list[int]] = {}  # (prompt, batch) -> [requests, batches, output sum, rows]
        for p, o, b, c in zip(self.prompt_tokens, self.output_tokens, self.batch, self.count, strict=True):
            key = (max(MIN_PROMPT, _pow2_up(int(p))), _pow2_up(int(b)))
            a = acc.setdefault(key, [0, 0, 0, 0])
            a[0] += int(b) * int(c)
            a[1] += int(c)
            a[2] += int(o) * int(c)
            a[3] += 1
        while len(acc) > max_buckets:
            _merge_rarest(acc)
        return [
            Bucket(prompt=p, batch=b, requests=a[0], batches=a[1], output=a[2] / a[1], rows=a[3])
            for (p, b), a in sorted(acc.items())
        ]

    def to_dict(self, max_buckets: int = MAX_BUCKETS) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "rows": self.rows,
            "requests": self.requests,
            "batches": int(self.count.sum()),
            "buckets": len(self.buckets(max_buckets)),
            "max_buckets": max_buckets,
        }

    def csv_text(self) -> str:
        """The trace as CSV (the ``count`` column only when some count is not 1)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        with_count = bool((self.count != 1).any())
        writer.writerow([*COLUMNS, *(OPTIONAL if with_count else ())])
        for p, o, b, c in zip(self.prompt_tokens, self.output_tokens, self.batch, self.count, strict=True):
            writer.writerow([int(p), int(o), int(b), *([int(c)] if with_count else [])])
        return buf.getvalue()


def _pow2_up(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _merge_rarest(acc: dict[tuple[int, int], list[int]]) -> None:
    """Merge the bucket with the fewest batches into its nearest neighbour; the result takes the larger shape."""
    rare = min(acc, key=lambda k: (acc[k][1], acc[k][0], k))

    def rank(k: tuple[int, int]) -> tuple[bool, float, int, tuple[int, int]]:
        covers = k[0] >= rare[0] and k[1] >= rare[1]
        dist = abs(math.log2(k[0] / rare[0])) + abs(math.log2(k[1] / rare[1]))
        return (not covers, dist, -acc[k][1], k)

    other = min((k for k in acc if k != rare), key=rank)
    merged = (max(rare[0], other[0]), max(rare[1], other[1]))
    a, b = acc.pop(rare), acc.pop(other)
    into = acc.setdefault(merged, [0, 0, 0, 0])
    for i in range(4):
        into[i] += a[i] + b[i]


# -- reading traces ---------------------------------------------------------


def load_workload(spec: str | Path) -> Workload:
    """A shipped workload by name (``chat``, ``summarise``, ``mixed``, ``train-mixed``) or a CSV trace by path.

    Raises:
        ValueError: naming the file, the row (its line number), the column and what is allowed.
    """
    text = str(spec)
    if text in WORKLOADS:
        path = shipped_path(text)
        w = read_workload_csv(path, name=text)
        return Workload(
            text, f"shipped:{text}", w.prompt_tokens, w.output_tokens, w.batch, w.count, WORKLOADS[text].description
        )
    path = Path(text)
    if not path.is_file():
        raise ValueError(
            f"{text}: no such workload file (a CSV with columns {', '.join(COLUMNS)}[, count]); "
            f"shipped workloads: {', '.join(WORKLOADS)}"
        )
    return read_workload_csv(path)


def read_workload_csv(path: Path, *, name: str | None = None) -> Workload:
    """Read a CSV trace; lines starting with ``#`` and blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the workload file ({exc})") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise ValueError(f"{path}: empty workload file; expected a header {','.join(COLUMNS)}[,count] and rows")
    header_line, header_text = numbered[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    allowed = (*COLUMNS, *OPTIONAL)
    for h in header:
        if h not in allowed:
            raise ValueError(
                f"{path}: row {header_line} (header), column {h!r} is unknown; allowed: {', '.join(allowed)}"
            )
    for c in COLUMNS:
        if c not in header:
            raise ValueError(
                f"{path}: row {header_line} (header), column {c!r} is missing; required: {', '.join(COLUMNS)}"
            )
    cols: dict[str, list[int]] = {c: [] for c in allowed}
    for line_no, line in numbered[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != len(header):
            raise ValueError(
                f"{path}: row {line_no} has {len(cells)} value(s) but the header has {len(header)} column(s) "
                f"({', '.join(header)})"
            )
        for h, cell in zip(header, cells, strict=True):
            cols[h].append(_cell(path, line_no, h, cell.strip()))
    if not cols["batch"]:
        raise ValueError(f"{path}: the workload has a header but no rows")
    n = len(cols["batch"])
    return Workload(
        name or path.stem,
        str(path),
        np.array(cols["prompt_tokens"], dtype=np.int64),
        np.array(cols["output_tokens"], dtype=np.int64),
        np.array(cols["batch"], dtype=np.int64),
        np.array(cols["count"] or [1] * n, dtype=np.int64),
    )


def _cell(path: Path, line_no: int, column: str, text: str) -> int:
    minimum = 0 if column == "output_tokens" else 1
    what = "a non-negative integer (0 for prefill-only or training rows)" if minimum == 0 else "a positive integer"
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{path}: row {line_no}, column {column!r}: {text!r} is not allowed; allowed: {what}")
    return value


# -- the shipped synthetic workloads ------------------------------------------


@dataclass(frozen=True)
class WorkloadRecipe:
    """How a shipped workload is drawn: a generator of (prompt, output, batch) columns and its seed."""

    name: str
    description: str
    seed: int
    draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _lognormal_int(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int, n: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, n)), lo, hi).astype(np.int64)


def _loguniform_int(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    return np.clip(np.rint(np.exp(rng.uniform(math.log(lo), math.log(hi), n))), lo, hi).astype(np.int64)


def _chat(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prompt = _lognormal_int(rng, 300, 0.9, 16, 8192, n)
    output = _lognormal_int(rng, 200, 0.7, 8, 2048, n)
    batch = _loguniform_int(rng, 1, 64, n)
    return prompt, output, batch


def _summarise(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prompt = _loguniform_int(rng, 2048, 16384, n)
    output = _lognormal_int(rng, 150, 0.35, 32, 512, n)
    batch = rng.choice(np.array([1, 2, 3, 4, 6, 8]), size=n, p=[0.3, 0.25, 0.1, 0.15, 0.1, 0.1]).astype(np.int64)
    return prompt, output, batch


def _mixed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chat_rng, doc_rng = rng.spawn(2)
    parts = [_chat(chat_rng, 240), _summarise(doc_rng, 160)]
    order = rng.permutation(400)
    prompt, output, batch = (np.concatenate([p[i] for p in parts])[order] for i in range(3))
    return prompt, output, batch


def _train_mixed(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seq = rng.choice(np.array([1024, 2048, 3072, 4096, 6144, 8192]), size=n, p=[0.1, 0.25, 0.15, 0.25, 0.1, 0.15])
    batch = rng.choice(np.array([8, 16, 24, 32, 48, 64]), size=n, p=[0.15, 0.25, 0.1, 0.25, 0.1, 0.15])
    return seq.astype(np.int64), np.zeros(n, dtype=np.int64), batch.astype(np.int64)


WORKLOADS: dict[str, WorkloadRecipe] = {
    r.name: r
    for r in (
        WorkloadRecipe(
            "chat",
            "short chat turns: prompts lognormal (median 300 tokens), outputs lognormal (median 200), batch 1-64",
            seed=1,
            draw=_chat,
        ),
        WorkloadRecipe(
            "summarise",
            "long-document summarisation: prompts log-uniform 2k-16k tokens, outputs median 150, batches of 1-8",
            seed=2,
            draw=_summarise,
        ),
        WorkloadRecipe("mixed", "60% chat and 40% summarisation batches, interleaved", seed=3, draw=_mixed),
        WorkloadRecipe(
            "train-mixed",
            "training batches: sequence lengths 1k-8k, global batch 8-64 sequences (no output tokens)",
            seed=4,
            draw=_train_mixed,
        ),
    )
}


def generate_workload(name: str, seed: int | None = None) -> Workload:
    """Draw shipped workload ``name`` (with its own seed unless ``seed`` is given): deterministic per seed."""
    recipe = WORKLOADS.get(name)
    if recipe is None:
        raise ValueError(f"unknown workload {name!r}; shipped: {', '.join(WORKLOADS)}")
    rng = np.random.default_rng(recipe.seed if seed is None else seed)
    prompt, output, batch = recipe.draw(rng)
    ones = np.ones(len(prompt), dtype=np.int64)
    return Workload(name, f"generated:{name}", prompt, output, batch, ones, recipe.description)


def workloads_dir() -> Path:
    return Path(str(resources.files("paratune.configs"))) / "workloads"


def shipped_path(name: str) -> Path:
    return workloads_dir() / f"{name}.csv"


def write_shipped(folder: Path | None = None) -> list[Path]:
    """(Re)write every shipped trace; ``python -m paratune.study._workload`` runs this."""
    out_dir = folder or workloads_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in WORKLOADS:
        path = out_dir / f"{name}.csv"
        path.write_text(generate_workload(name).csv_text(), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_shipped():
        print(written)


def shipped_workloads() -> list[dict[str, Any]]:
    """The shipped workloads: name, description, rows, requests and buckets (for ``paratune study workloads``)."""
    out = []
    for name, recipe in WORKLOADS.items():
        w = load_workload(name)
        out.append(
            {
                "name": name,
                "description": recipe.description,
                "rows": w.rows,
                "requests": w.requests,
                "buckets": len(w.buckets()),
                "file": str(shipped_path(name)),
            }
        )
    return out
