"""Reading a policy zip without running anything in it.

A stable-baselines3 zip holds a ``data`` member (JSON whose ``:serialized:``
entries are cloudpickle: unpickling one runs whatever code it names) and
PyTorch state files (pickles too). SB3's ``load`` unpickles both, so a policy
file from someone else could run code on this machine. paratune never does:

* the archive is opened with :mod:`zipfile`; only the members of SB3's layout
  (:data:`MEMBERS`) are accepted, and the end-of-archive record, member count
  and every member's size are checked against :data:`LIMITS` before anything is
  decompressed, so a zip bomb or a directory of millions of entries is refused
  before it costs memory;
* ``data`` is parsed as plain JSON; no ``:serialized:`` entry is ever decoded
  (only the policy class's plain ``__module__`` string is read, to refuse a zip
  of another algorithm);
* ``policy.pth`` and ``policy.optimizer.pth`` are read with
  ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that
  builds tensors, numbers, strings and containers and nothing else;
* ``pytorch_variables.pth``, ``_stable_baselines3_version`` and
  ``system_info.txt`` are allowed but never read.

The network itself is built from paratune's own checked metadata (see
:func:`paratune.agents._policy.build_model`), not from anything in the zip.
Every refusal is a :class:`ValueError` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._limits import read_bounded, shown

_MiB = 1 << 20

#: Members a policy zip may hold: name -> (required, largest uncompressed size in bytes).
MEMBERS: dict[str, tuple[bool, int]] = {
    "data": (True, 16 * _MiB),
    "policy.pth": (True, 128 * _MiB),
    "policy.optimizer.pth": (False, 256 * _MiB),
    "pytorch_variables.pth": (False, 1 * _MiB),
    "_stable_baselines3_version": (False, 1024),
    "system_info.txt": (False, 64 * 1024),
}


@dataclass(frozen=True)
class Limits:
    """Sizes a policy zip may not exceed (well above any policy paratune trains: the shipped one is 0.8 MiB)."""

    file_bytes: int = 256 * _MiB  # the zip on disk
    total_bytes: int = 256 * _MiB  # all members, uncompressed
    zip_entries: int = 64  # entries of the policy zip's directory (its names are checked next)
    tensor_files_entries: int = 4096  # records inside one PyTorch state file (one per tensor, plus a few)


LIMITS = Limits()

#: The policy class module SB3 records for each algorithm (a plain string of ``data``, never unpickled).
POLICY_MODULES: dict[str, str] = {
    "maskable-ppo": "sb3_contrib.common.maskable.policies",
    "ppo": "stable_baselines3.common.policies",
    "a2c": "stable_baselines3.common.policies",
}

#: What torch.load may raise on bytes that are not a state file (its own errors, zip and pickle errors).
#: AssertionError: the weights-only unpickler checks its input with asserts ("saved_id must be a tuple").
_TORCH_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError,
    AssertionError,
    struct.error,
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
)

#: What zipfile may raise on a damaged directory (NotImplementedError: a "zip file version" it does not know).
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    struct.error,
    OSError,
    EOFError,
    ValueError,
)

#: What reading a member may raise besides: a bad deflate stream, an "encrypted" flag.
_MEMBER_ERRORS: tuple[type[BaseException], ...] = (*_ZIP_ERRORS, zlib.error, RuntimeError)

_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_RECORD = b"PK\x06\x06"


@dataclass
class PolicyArchive:
    """What a policy zip holds, read without unpickling: ``data``'s JSON and the two state dicts."""

    data: dict[str, Any]
    policy_state: dict[str, Any]
    optimizer_state: dict[str, Any] | None


def read_policy_zip(path: Path, algo: str) -> PolicyArchive:
    """Read ``path`` (an SB3 policy zip trained with ``algo``) safely; see the module docstring.

    Raises:
        ValueError: the file is not a zip, holds other members, is too large, or a member is
            not what it should be (the message names the file and the member).
    """
    where = str(path)
    raw = read_bounded(path, LIMITS.file_bytes, "a policy zip")
    _check_directory_record(raw, where, max_entries=LIMITS.zip_entries, max_dir_bytes=64 * 1024)
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except _ZIP_ERRORS as exc:
        raise ValueError(f"{where}: not a readable zip archive ({one_line(exc)})") from None
    with archive:
        infos = _check_members(archive, where)
        members = {name: _read_member(archive, info, where) for name, info in infos.items() if _needed(name)}
    data = _parse_data(members["data"], where, algo)
    policy_state = load_state_file(members["policy.pth"], f"{where}: member policy.pth")
    optimizer = members.get("policy.optimizer.pth")
    optimizer_state = None
    if optimizer is not None:
        optimizer_state = load_state_file(optimizer, f"{where}: member policy.optimizer.pth")
    return PolicyArchive(data, policy_state, optimizer_state)


def _needed(name: str) -> bool:
    return name in ("data", "policy.pth", "policy.optimizer.pth")


def _check_directory_record(raw: bytes, where: str, *, max_entries: int, max_dir_bytes: int) -> int:
    """The member count of the zip ``raw``, refused when too large before :mod:`zipfile` reads the directory.

    :mod:`zipfile` loads the whole central directory into memory (one object
    per entry): a small file can list millions of entries. Its end record is
    read here first (and the ZIP64 end record's, which overrides it: PyTorch
    writes ZIP64 state files).
    """
    tail = raw[-(_EOCD_SIZE + 0xFFFF) :]
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise ValueError(f"{where}: not a zip archive (no end-of-archive record; truncated or another format?)")
    _, _, _, _, entries, dir_size, _, _ = struct.unpack("<4s4H2LH", tail[at : at + _EOCD_SIZE])
    if at >= 20 and tail[at - 20 : at - 16] == _ZIP64_LOCATOR:  # zipfile then reads the ZIP64 record's counts
        (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])
        record = raw[offset : offset + 56]
        if len(record) < 56 or record[:4] != _ZIP64_RECORD:
            raise ValueError(f"{where}: broken ZIP64 end record (truncated or not a zip?)")
        _, _, _, _, _, _, _, entries64, dir_size64, _ = struct.unpack("<4sQ2H2L4Q", record)
        entries, dir_size = max(entries, entries64), max(dir_size, dir_size64)
    if entries > max_entries or dir_size > max_dir_bytes:
        raise ValueError(
            f"{where}: the zip lists {entries} members in a {dir_size}-byte directory; at most {max_entries} "
            f"members in {max_dir_bytes} bytes are allowed"
        )
    return int(entries)


def _check_members(archive: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    names = [i.filename for i in infos]
    extra = sorted({n for n in names if n not in MEMBERS})
    if extra:
        raise ValueError(
            f"{where}: unexpected member(s) {', '.join(shown(n, 40) for n in extra[:5])} in the policy zip; "
            f"allowed: {', '.join(MEMBERS)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: the policy zip lists a member twice ({', '.join(names)})")
    missing = [n for n, (required, _) in MEMBERS.items() if required and n not in names]
    if missing:
        raise ValueError(
            f"{where}: the policy zip has no {' or '.join(missing)} member (a policy zip is what "
            "`paratune train` writes: data, policy.pth, policy.optimizer.pth, ...)"
        )
    total = 0
    for info in infos:
        limit = MEMBERS[info.filename][1]
        if info.file_size > limit:
            raise ValueError(f"{where}: member {info.filename} is {info.file_size} bytes; at most {limit} allowed")
        total += info.file_size
    if total > LIMITS.total_bytes:
        raise ValueError(f"{where}: the members add up to {total} bytes; at most {LIMITS.total_bytes} allowed")
    return {i.filename: i for i in infos}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    try:
        with archive.open(info) as fh:
            out = fh.read(info.file_size + 1)  # never more than the directory says (checked above)
    except _MEMBER_ERRORS as exc:
        raise ValueError(f"{where}: member {info.filename} cannot be read ({one_line(exc)})") from None
    if len(out) != info.file_size:
        raise ValueError(f"{where}: member {info.filename} does not have the size the zip directory gives")
    return out


def _parse_data(raw: bytes, where: str, algo: str) -> dict[str, Any]:
    """``data`` as JSON, checked to come from ``algo``; its ``:serialized:`` entries stay undecoded strings."""
    import json

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: member data is not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: member data must be a JSON object, got {type(data).__name__}")
    policy_class = data.get("policy_class")
    module = policy_class.get("__module__") if isinstance(policy_class, dict) else None
    expected = POLICY_MODULES[algo]
    if module is not None and module != expected:
        raise ValueError(
            f"{where}: the zip holds a policy of {shown(module)}, not of algo {algo!r} ({expected}) "
            "as the metadata says"
        )
    return data


def load_state_file(raw: bytes, where: str) -> dict[str, Any]:
    """A PyTorch state dict from ``raw`` through ``torch.load(weights_only=True)``: tensors and plain values only.

    Only the zip-based format ``torch.save`` has written since PyTorch 1.6 is
    accepted (not the legacy bare pickle), and its records are counted and
    sized before torch reads them.
    """
    import torch

    if not raw.startswith(b"PK\x03\x04"):
        raise ValueError(f"{where} is not a PyTorch state file (torch.save's zip format)")
    limit = LIMITS.tensor_files_entries
    _check_directory_record(raw, where, max_entries=limit, max_dir_bytes=limit * 1024)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as inner:
            infos = inner.infolist()
    except _ZIP_ERRORS as exc:
        raise ValueError(f"{where} is not a readable PyTorch state file ({one_line(exc)})") from None
    total = sum(i.file_size for i in infos)
    if total > LIMITS.total_bytes:
        raise ValueError(f"{where}: its records add up to {total} bytes; at most {LIMITS.total_bytes} allowed")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols on stderr: the refusal says enough
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        raise ValueError(f"{where} is refused by torch.load(weights_only=True): {one_line(exc)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{where} must hold a state dict, got {type(state).__name__}")
    return state


def load_optimizer_state(optimizer: Any, state: dict[str, Any], where: str) -> None:
    """Load ``state`` (from ``policy.optimizer.pth``) into ``optimizer``, refusing one that does not fit it.

    The groups must list the same parameters as this optimizer's; each
    parameter's state holds tensors of its shape (or scalars, such as Adam's
    step), all finite; group settings are plain numbers, booleans or strings.
    """
    import torch

    fresh = optimizer.state_dict()
    groups = state.get("param_groups")
    entries = state.get("state")
    if set(state) != {"state", "param_groups"} or not isinstance(groups, list) or not isinstance(entries, dict):
        raise ValueError(f"{where} must be an optimizer state dict (state, param_groups)")
    if len(groups) != len(fresh["param_groups"]):
        raise ValueError(
            f"{where}: {len(groups)} parameter groups; the network's optimizer has {len(fresh['param_groups'])}"
        )
    shapes: dict[int, torch.Size] = {}
    for group, mine, live in zip(groups, fresh["param_groups"], optimizer.param_groups, strict=True):
        if not isinstance(group, dict) or group.get("params") != mine["params"]:
            raise ValueError(f"{where}: its parameter groups do not list this network's parameters")
        for key, value in group.items():
            if key != "params" and not _plain(value):
                raise ValueError(f"{where}: group setting {shown(key)} is {type(value).__name__}, not a plain value")
        numeric = [k for k, v in mine.items() if k != "params" and v is not None and not isinstance(v, bool)]
        missing = [k for k in numeric if k not in group]
        if missing:  # e.g. RMSprop's state (A2C) offered to Adam (PPO): no betas
            raise ValueError(f"{where}: its groups lack {', '.join(missing)}: the state of another optimizer")
        shapes.update({index: p.shape for index, p in zip(mine["params"], live["params"], strict=True)})
    for index, per_param in entries.items():
        if index not in shapes or not isinstance(per_param, dict):
            raise ValueError(f"{where}: state of unknown parameter {shown(index)}")
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                fits = plain_tensor(value) and (value.shape == shapes[index] or value.numel() == 1)
                fits = fits and bool(torch.isfinite(value).all())
            else:
                fits = _plain(value)
            if not fits:
                raise ValueError(f"{where}: state {shown(key)} of parameter {index} does not fit the parameter")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise ValueError(f"{where} does not fit the network's optimizer ({one_line(exc)})") from None


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, cut to ``limit`` characters (library messages can run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def plain_tensor(value: Any) -> bool:
    """A dense CPU tensor of a real dtype (no sparse, meta, quantized or complex ones, which the checks cannot read)."""
    import torch

    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and (value.dtype.is_floating_point or value.dtype in (torch.int64, torch.int32, torch.bool))
    )


def _plain(value: Any) -> bool:
    """A finite number, a boolean, a string, None, or a short tuple/list of finite numbers."""
    import math

    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)) and len(value) <= 8:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    return False
