"""The schema of a policy's metadata JSON: each field's type and bounds, checked before anything is built.

The metadata is what the network is built from (:func:`model_kwargs`: the
algorithm's hyperparameters and ``net_arch``), so a file from someone else is
checked as strictly as a scenario: a wrong type, a non-finite number or a size
that would allocate gigabytes is a :class:`ValueError` naming the file and the
field, never a ``TypeError`` deep inside stable-baselines3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._limits import read_bounded, refuse_json_constant, shown

#: Largest metadata JSON read (the shipped one is 20 KiB; the training scenarios make up most of it).
MAX_METADATA_BYTES = 16 << 20
#: Hidden layers of the MLP and units per layer a policy may declare.
MAX_LAYERS = 8
MAX_UNITS = 4096
#: Largest rollout length per env (SB3 allocates ``n_steps`` observations when it builds the model).
MAX_N_STEPS = 1 << 16

_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "learning_rate": (0.0, 1.0),
    "gamma": (0.0, 1.0),
    "gae_lambda": (0.0, 1.0),
    "ent_coef": (0.0, 100.0),
    "vf_coef": (0.0, 100.0),
    "max_grad_norm": (0.0, 1e6),
    "clip_range": (0.0, 10.0),
}
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "n_steps": (2, MAX_N_STEPS),
    "batch_size": (2, MAX_N_STEPS),
    "n_epochs": (1, 1000),
}
#: Hyperparameters each algorithm may record (what ``paratune train`` writes, plus SB3 knobs of plain numbers).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    "maskable-ppo": (*_FLOAT_BOUNDS, *_INT_BOUNDS, "policy_kwargs"),
    "ppo": (*_FLOAT_BOUNDS, *_INT_BOUNDS, "policy_kwargs"),
    "a2c": (*(k for k in _FLOAT_BOUNDS if k != "clip_range"), "n_steps", "policy_kwargs"),
}
#: Environment options a policy may have been trained with (passed to ``gymnasium.make`` by fine-tuning).
ENV_KWARGS = ("random_setup", "techniques")

#: Optional fields and the JSON types they must have when present (None allowed where listed).
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "imitation": (dict, type(None)),
    "finetuned": (dict,),
    "scenarios": (list,),
    "scenario_names": (list,),
    "versions": (dict,),
    "granularity": (str, type(None)),
    "date": (str,),
    "pool": (str,),
    "hyperparameters": (dict,),
    "env_kwargs": (dict,),
}
_OPTIONAL_INTS = ("timesteps", "requested_timesteps", "n_envs", "env_version")


def read_metadata_file(path: Path) -> Any:
    """Parse the metadata JSON at ``path``: at most :data:`MAX_METADATA_BYTES`, no NaN or Infinity."""
    raw = read_bounded(path, MAX_METADATA_BYTES, "policy metadata")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse_json_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: policy metadata is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # NaN / Infinity
        raise ValueError(f"{path}: {exc}") from None


def is_int(value: Any) -> bool:
    """True for a JSON integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(meta: dict[str, Any], where: str) -> None:
    """Raise ValueError naming the field unless every optional field has its JSON type."""
    for name, types in _OPTIONAL_TYPES.items():
        if name in meta and not isinstance(meta[name], types):
            allowed = " or ".join("null" if t is type(None) else _JSON_NAMES[t] for t in types)
            raise ValueError(f"{where}: field {name!r} must be {allowed}, got {_json_type(meta[name])}")
    for name in _OPTIONAL_INTS:
        if name in meta and not (is_int(meta[name]) and meta[name] >= 0):
            raise ValueError(f"{where}: field {name!r} must be an integer >= 0, got {shown(meta[name])}")
    seed = meta.get("seed")
    if seed is not None and not (is_int(seed) and 0 <= seed < 2**32):
        raise ValueError(f"{where}: field 'seed' must be an integer in [0, 2**32), got {shown(seed)}")
    versions = meta.get("versions", {})
    if not all(isinstance(v, str) for v in versions.values()):
        raise ValueError(f"{where}: field 'versions' must map library names to version strings")
    imitation = meta.get("imitation")
    if imitation is not None and "scenarios" in imitation and not is_int(imitation["scenarios"]):
        raise ValueError(
            f"{where}: field 'imitation.scenarios' must be an integer, got {shown(imitation['scenarios'])}"
        )
    for key, value in meta.get("env_kwargs", {}).items():
        field = f"field 'env_kwargs.{shown(key, 40)[1:-1]}'"
        if key not in ENV_KWARGS:
            raise ValueError(f"{where}: {field} is not an env option; allowed: {', '.join(ENV_KWARGS)}")
        if key == "techniques":
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {field} must be true or false, got {shown(value)}")
        elif not _number_in(value, 0.0, 1.0):
            raise ValueError(f"{where}: {field} must be a number in [0, 1], got {shown(value)}")


def model_kwargs(meta: dict[str, Any], algo: str, where: str) -> dict[str, Any]:
    """The SB3 constructor arguments the metadata's ``hyperparameters`` give, each checked (see the module)."""
    hyper = meta.get("hyperparameters", {})
    allowed = HYPERPARAMETERS[algo]
    out: dict[str, Any] = {}
    for key, value in hyper.items():
        field = f"field 'hyperparameters.{shown(key, 40)[1:-1]}'"
        if key not in allowed:
            raise ValueError(f"{where}: {field} is not a hyperparameter of {algo}; allowed: {', '.join(allowed)}")
        if key == "policy_kwargs":
            out[key] = _policy_kwargs(value, where)
        elif key in _INT_BOUNDS:
            low, high = _INT_BOUNDS[key]
            if not (is_int(value) and low <= value <= high):
                raise ValueError(f"{where}: {field} must be an integer in [{low}, {high}], got {shown(value)}")
            out[key] = value
        else:
            lo, hi = _FLOAT_BOUNDS[key]
            if not _number_in(value, lo, hi):
                raise ValueError(f"{where}: {field} must be a number in [{lo:g}, {hi:g}], got {shown(value)}")
            out[key] = float(value)
    return out


def _policy_kwargs(value: Any, where: str) -> dict[str, Any]:
    field = "field 'hyperparameters.policy_kwargs'"
    if not isinstance(value, dict) or set(value) - {"net_arch"}:
        got = sorted(value) if isinstance(value, dict) else _json_type(value)
        raise ValueError(f"{where}: {field} may hold only 'net_arch' (the MLP's layer sizes), got {got}")
    if "net_arch" not in value:
        return {}
    arch = value["net_arch"]
    if isinstance(arch, dict) and set(arch) == {"pi", "vf"}:
        return {"net_arch": {k: _layers(arch[k], f"{field[:-1]}.net_arch.{k}'", where) for k in ("pi", "vf")}}
    return {"net_arch": _layers(arch, f"{field[:-1]}.net_arch'", where)}


def _layers(value: Any, field: str, where: str) -> list[int]:
    if not (
        isinstance(value, list) and len(value) <= MAX_LAYERS and all(is_int(v) and 1 <= v <= MAX_UNITS for v in value)
    ):
        raise ValueError(
            f"{where}: {field} must be a list of at most {MAX_LAYERS} layer sizes in [1, {MAX_UNITS}] "
            f"(or {{pi: [...], vf: [...]}}), got {shown(value)}"
        )
    return list(value)


def _number_in(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


_JSON_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return _JSON_NAMES.get(type(value), type(value).__name__)
