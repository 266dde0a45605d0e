"""Reading user files field by field, with errors that name the file, the field and what is allowed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from .._limits import parse_json, parse_yaml, read_text


class FieldReader:
    """Typed access to a mapping loaded from ``where`` (a file name, or a description).

    Example:
        >>> r = FieldReader({"nodes": 2}, "my.yaml")
        >>> r.integer("nodes", minimum=1)
        2
    """

    def __init__(self, data: Any, where: str, prefix: str = "") -> None:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {prefix or 'the file'} must be a mapping of field: value")
        self.data = data
        self.where = where
        self.prefix = prefix
        self.seen: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ValueError:
        return ValueError(f"{self.where}: field '{self.path(name)}' {message}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise self.error(name, "is missing")
            return default
        return self.data[name]

    def number(
        self,
        name: str,
        default: Any = ...,
        *,
        minimum: float | None = None,
        positive: bool = False,
        maximum: float | None = None,
    ) -> float:
        """A finite number: NaN and infinities are refused (they poison every result and strict JSON)."""
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.error(name, f"must be a finite number, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum:,}, got {value:,}")
        if positive and value <= 0:
            raise self.error(name, f"must be > 0, got {value}")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        return float(value)

    def fraction(self, name: str, default: Any = ...) -> float:
        """A fraction of a datasheet peak: in (0, 1]."""
        value = self.number(name, default, positive=True)
        if value > 1.0:
            raise self.error(name, f"is a fraction of the datasheet peak and must be <= 1, got {value}")
        return value

    def integer(self, name: str, default: Any = ..., *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be <= {maximum:,}, got {value:,} (see docs/known-limits.md)")
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        return value

    def text(self, name: str, default: Any = ..., *, choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(name, f"is {value!r}; allowed: {', '.join(choices)}")
        return value

    def child(self, name: str, default: Any = ...) -> FieldReader:
        return FieldReader(self.raw(name, default), self.where, self.path(name))

    def finish(self) -> None:
        """Reject fields nobody read: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            where = f" in '{self.prefix}'" if self.prefix else ""
            raise ValueError(
                f"{self.where}: unknown field(s){where}: {', '.join(unknown)}; allowed: {', '.join(sorted(self.seen))}"
            )


def load_yaml(path: Path) -> Any:
    """Load a YAML file (size and nesting bounded, see :mod:`paratune._limits`); errors are one line naming it."""
    if not path.is_file():
        raise ValueError(f"{path}: file does not exist")
    return parse_yaml(read_text(path), str(path))


def read_json(path: Path) -> Any:
    """Parse a JSON file strictly (no NaN / Infinity, size and nesting bounded); errors name the file.

    The caller checks that it exists, in its own words.
    """
    return parse_json(read_text(path), str(path))


def apply_overrides(data: dict[str, Any], overrides: str, where: str) -> dict[str, Any]:
    """Apply ``a.b=v,c=w`` overrides to a nested mapping (values parsed as YAML scalars)."""
    data = _deep_copy(data)
    for item in overrides.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{where}: override {item!r} must look like field=value")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{where}: override {key!r}: '{part}' is not a group of fields")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"{where}: override {key!r}: no field '{parts[-1]}'; fields: {', '.join(node)}")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"{where}: override {key!r}: value {value!r} is not a YAML scalar") from None
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
