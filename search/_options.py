"""Typed tuner options: one frozen dataclass per tuner, checked when the tuner is built.

Options reach a tuner as a mapping (keyword arguments in Python, ``options:`` of a
campaign YAML, CLI flags). Read with ``options.get(...)`` a typo such as
``max_label`` was silently ignored and the tuner ran with its default. Each tuner
therefore declares ``Options``, a frozen dataclass whose fields carry a type, a
default and a help text (:func:`option`); :meth:`TunerOptions.parse` refuses an
unknown name or a value of the wrong type with a ``ValueError`` naming the tuner,
the option and the allowed ones, and ``paratune tuners list`` shows the fields.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class MyOptions(TunerOptions):
    ...     depth: int = field(default=3, metadata=about("how deep to look", minimum=1))
    >>> MyOptions.parse("mine", {"depth": 5}).depth
    5
    >>> MyOptions.parse("mine", {"dpeth": 5})
    Traceback (most recent call last):
    ...
    ValueError: mine: unknown option(s) dpeth; allowed: depth
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from .._limits import MAX_DEVICES, MAX_MICRO_BATCHES

#: Activation recomputation choices of the layered space (``dp``, ``enumerate``).
Recompute = Literal["search", "off", "on"]


def about(help: str, *, minimum: float | None = None, maximum: float | None = None) -> dict[str, Any]:
    """A field's metadata: its ``help`` text (shown by ``paratune tuners show``) and numeric bounds.

    Use as ``depth: int = field(default=3, metadata=about("how deep to look", minimum=1))``.
    """
    return {"help": help, "minimum": minimum, "maximum": maximum}


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``paratune tuners list`` shows it."""

    name: str
    type: str
    default: Any
    help: str

    def to_dict(self) -> dict[str, Any]:
        default = self.default.value if isinstance(self.default, enum.Enum) else self.default
        if isinstance(default, tuple):
            default = list(default)
        return {"name": self.name, "type": self.type, "default": default, "help": self.help}


@dataclass(frozen=True)
class TunerOptions:
    """Base of every tuner's options (a tuner without options uses it as is)."""

    @classmethod
    def parse(cls, tuner: str, given: Mapping[str, Any]) -> Self:
        """Check ``given`` against the fields: names, types and bounds; ``tuner`` names the tuner in errors.

        Raises:
            ValueError: ``"<tuner>: unknown option(s) x; allowed: a, b"`` or
                ``"<tuner>: option 'a' must be ..., got ..."``.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in given if k not in fields]
        if unknown:
            allowed = ", ".join(fields) or "none (this tuner takes no options)"
            raise ValueError(f"{tuner}: unknown option(s) {', '.join(map(str, unknown))}; allowed: {allowed}")
        hints = typing.get_type_hints(cls)
        values = {name: _check(tuner, name, value, hints[name], fields[name]) for name, value in given.items()}
        try:
            return cls(**values)
        except ValueError as exc:  # a cross-field check of __post_init__
            raise ValueError(f"{tuner}: {exc}") from None

    @classmethod
    def describe(cls) -> list[OptionInfo]:
        """The fields as (name, type, default, help), in declaration order."""
        hints = typing.get_type_hints(cls)
        return [
            OptionInfo(f.name, type_text(hints[f.name]), f.default, str(f.metadata.get("help", "")))
            for f in dataclasses.fields(cls)
        ]


def _check(tuner: str, name: str, value: Any, hint: Any, spec: dataclasses.Field[Any]) -> Any:
    """``value`` converted to the field's type (a list for a tuple, an int for a float), or a ValueError."""
    ok, converted = _convert(value, hint)
    if not ok:
        choices = _choices(hint)
        if choices and isinstance(value, str):
            raise ValueError(f"{tuner}: option {name!r} is {value!r}; allowed: {', '.join(choices)}")
        raise ValueError(f"{tuner}: option {name!r} must be of type {type_text(hint)}, got {value!r}")
    if isinstance(converted, int | float) and not isinstance(converted, bool):
        low, high = spec.metadata.get("minimum"), spec.metadata.get("maximum")
        if low is not None and converted < low:
            if low == 1 and isinstance(converted, int):
                raise ValueError(f"{tuner}: option {name!r} must be a positive integer, got {value!r}")
            raise ValueError(f"{tuner}: option {name!r} must be >= {low}, got {value!r}")
        if high is not None and converted > high:
            raise ValueError(f"{tuner}: option {name!r} must be <= {high}, got {value!r}")
    return converted


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value as ``hint``) when ``value`` is one, else (False, None)."""
    if hint is Any or hint is object:
        return True, value
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(hint):
            ok, converted = _convert(value, arm)
            if ok:
                return True, converted
        return False, None
    if origin is Literal:
        return (value in typing.get_args(hint)), value
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            return False, None
        items = [_convert(v, inner) for v in value]
        return (all(ok for ok, _ in items)), tuple(v for _, v in items)
    if hint is type(None):
        return value is None, None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return True, hint(value)
        except ValueError:
            return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value


def _choices(hint: Any) -> list[str]:
    """The strings a ``Literal`` (or a ``Literal | None``, or a StrEnum) allows; empty for other types."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return [c for arm in typing.get_args(hint) for c in _choices(arm)]
    if origin is Literal:
        return [str(a) for a in typing.get_args(hint)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return [str(m.value) for m in hint]
    return []


def type_text(hint: Any) -> str:
    """A type as a user reads it: ``int``, ``str | None``, ``'search' | 'off' | 'on'``, ``list of str``."""
    if hint is Any or hint is object:
        return "any"
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " | ".join(type_text(a) for a in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"list of {type_text(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return " | ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))


@dataclass(frozen=True)
class LayeredOptions(TunerOptions):
    """Options of the tuners over the layered space (``dp``, ``enumerate``)."""

    max_micro_batches: int = field(
        default=64, metadata=about("largest micro-batch count tried", minimum=1, maximum=MAX_MICRO_BATCHES)
    )
    recompute: Recompute = field(
        default="search",
        metadata=about("activation recomputation when training: search both, off or on for every stage"),
    )
    replicas: int | None = field(
        default=None,
        metadata=about("fix the replica count (default: every divisor of the batch)", minimum=1, maximum=MAX_DEVICES),
    )
    micro_batches: int | None = field(
        default=None,
        metadata=about(
            "fix the micro-batch count (default: every divisor up to max_micro_batches)",
            minimum=1,
            maximum=MAX_MICRO_BATCHES,
        ),
    )
