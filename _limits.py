"""The sizes paratune accepts, in one place, and the checks that enforce them where values are read.

Every number that drives work (layers, devices, batch, sequence, seeds, jobs, plan stages) has a bound,
so a typo such as ``layers=100000000`` or ``seeds: 1000000000`` ends in one clear error instead of a
machine that hangs or runs out of memory. The bounds sit far above real use (the largest shipped model
has 126 layers, the largest platform 64 devices); docs/known-limits.md gives the reasons. Files read from
the user are capped in size and nesting for the same reason, and every number read from a file must be
finite: a NaN or an infinity poisons every result and breaks strict JSON output.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

#: Transformer layers of a model (llama3-405b has 126).
MAX_LAYERS = 10_000
#: Model width, MLP inner size (llama3-405b: 16,384 and 53,248).
MAX_WIDTH = 1 << 20
#: Attention heads and key/value heads (llama3-405b: 128).
MAX_HEADS = 1 << 16
#: Vocabulary and token-type vocabulary (llama3: 128,256).
MAX_VOCAB = 1 << 24
#: MoE experts (mixtral: 8; the largest published models use a few hundred).
MAX_EXPERTS = 1 << 12
#: Devices of a platform (nodes x devices per node, or mesh rows x cols); also the bound of TP x PP x replicas.
MAX_DEVICES = 1 << 16
#: Sequences in a batch (32x a 4M-token training batch of 2k-token sequences).
MAX_BATCH = 1 << 16
#: Micro-batches of a plan read from the user: the simulator steps every micro-batch through every stage
#: (32 stages x 65,536 micro-batches ran past 60 s), so this is tighter than the batch.
MAX_MICRO_BATCHES = 4_096
#: Tokens of a prompt, a training sequence, a decode context, learned positions.
MAX_SEQ = 1 << 24
#: Cells of the exact solver's tables, layers^2 x devices: dp's memory grows with it (1,000 layers on 64 devices,
#: 6.4e7 cells, take 2.4 GB; 2,000 layers 9.4 GB). Larger problems are refused by ``dp``, not by the other tuners.
MAX_DP_CELLS = 64_000_000
#: Choices of one trial of Optuna's placement space, tasks x device groups (each task draws a group; Optuna
#: keeps every trial's choices in memory): 4,096 op-level tasks on 256 groups.
MAX_PLACEMENT_CHOICES = 1 << 20
#: Evaluations of one tuner run (``--budget``, a campaign tuner's ``budget``; Optuna keeps every trial in memory);
#: also the rollouts of the rl tuner (``transfer --rollouts``), which are its evaluations.
MAX_BUDGET = 10_000_000
#: Environment steps of a training or fine-tuning run (``train --timesteps``, ``transfer --finetune-steps``):
#: 1,000x the default 100,000, about a day at the ~1,000 steps/s of a 2-core machine.
MAX_TIMESTEPS = 100_000_000
#: Seeds of one campaign.
MAX_SEEDS = 10_000
#: Scenarios of one campaign after inline lists expand.
MAX_SCENARIOS = 10_000
#: Jobs of one campaign (scenarios x tuners x seeds, plus optimum and study jobs).
MAX_JOBS = 100_000
#: Bytes of a YAML or JSON file paratune reads (a plan, a scenario, a platform, a campaign spec...).
MAX_FILE_BYTES = 16 << 20
#: Nesting depth of a YAML or JSON file (a plan is 4 deep, a campaign spec 5).
MAX_NESTING = 64

DOC = "docs/known-limits.md"


def check_at_most(value: int | float, maximum: int | float, what: str) -> None:
    """Raise ``ValueError`` when ``value`` exceeds ``maximum``; ``what`` names the field (and where it is)."""
    if value > maximum:
        raise ValueError(f"{what} is {value:,}; at most {maximum:,} is accepted (see {DOC})")


def is_finite_number(value: Any) -> bool:
    """True for an int or a finite float (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, or a ValueError naming it.

    Opened without blocking and checked to be a regular file before a byte is
    read, so a FIFO cannot hang the reader and ``/dev/zero`` cannot fill memory;
    a file that grows past ``limit`` meanwhile is refused after ``limit + 1`` bytes.
    """
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not {what}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot open {what} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file (a device, FIFO or socket?), not {what}")
        try:
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise ValueError(f"{path}: {what} larger than {limit} bytes, the most allowed")
    return raw


def read_text(path: Path, what: str = "file", limit: int = MAX_FILE_BYTES) -> str:
    """The text of a user file, at most ``limit`` bytes (:func:`read_bounded`), decoded as UTF-8.

    Raises:
        ValueError: the file is too large, not a regular file or not UTF-8 text (naming ``path``).
        FileNotFoundError: there is no such file.
    """
    try:
        return read_bounded(path, limit, what).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {what} is not UTF-8 text") from None


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error line quotes what was given, not 16 MiB of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_nesting(data: Any, where: str) -> None:
    """Refuse data nested deeper than :data:`MAX_NESTING` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"{where}: nested more than {MAX_NESTING} levels deep (see {DOC})")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def refuse_json_constant(name: str) -> Any:
    """``parse_constant`` for :func:`json.loads`: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, where: str) -> Any:
    """Strict JSON: no ``NaN`` / ``Infinity``, no nesting deeper than :data:`MAX_NESTING`; errors name ``where``."""
    try:
        data = json.loads(text, parse_constant=refuse_json_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested more than {MAX_NESTING} levels deep (see {DOC})") from None
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc}; JSON numbers must be finite)") from None
    check_nesting(data, where)
    return data


def parse_yaml(text: str, where: str) -> Any:
    """Safe YAML (no Python tags) with the nesting bound; a syntax error is one line naming ``where`` and the line."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{where}: not valid YAML: {'; '.join(parts) or 'syntax error'}{at}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ValueError(f"{where}: nested more than {MAX_NESTING} levels deep (see {DOC})") from None
    check_nesting(data, where)
    return data


def check_workload(batch: int, seq: int, context: int, where: str = "workload") -> None:
    """The workload shape's bounds: ``batch`` <= :data:`MAX_BATCH`, ``seq`` and ``context`` <= :data:`MAX_SEQ`."""
    for name, value, maximum in (("batch", batch, MAX_BATCH), ("seq", seq, MAX_SEQ), ("context", context, MAX_SEQ)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: field '{name}' must be an integer, got {value!r}")
        check_at_most(value, maximum, f"{where}: field '{name}'")
