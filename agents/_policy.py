"""A saved policy: a stable-baselines3 zip plus a JSON file that describes it.

``policy.zip`` holds the weights (SB3's own format); ``policy.json`` next to it
says what the weights mean: the environment id and version they were trained
on, the observation layout (:data:`~paratune.envs.OBS_SCHEMA_VERSION`), the
action count, the training scenarios (names and full scenario mappings), the
algorithm, timesteps, seed, wall time, date and library versions. A policy is
only meaningful on the observation layout it was trained on, so
:func:`load_policy` refuses one whose schema, env id or action count differs
from this installation's, naming both versions, instead of running a network
on features it has never seen (the SB3 ``save_util`` / Optuna-upgrade habit of
artifacts that describe themselves).

Loading never unpickles anything from the zip (:mod:`._policy_zip`): the
network is built from this JSON, checked field by field
(:func:`check_metadata`), and only its weights are read, through
``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``.
SB3's own ``load`` would run the cloudpickle payloads a crafted zip carries.

Example:
    >>> policy = load_policy(default_policy_path())  # doctest: +SKIP
    >>> policy.metadata["algo"]  # doctest: +SKIP
    'maskable-ppo'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from .._limits import shown
from ._policy_meta import check_fields, is_int, model_kwargs, read_metadata_file
from ._policy_zip import PolicyArchive, load_optimizer_state, plain_tensor, read_policy_zip

#: The serving environment: its policies have their own observation schema and scenarios (serving problems).
SERVING_ENV_ID = "paratune/Serving-v0"

#: Version of the metadata layout written next to a policy zip.
POLICY_FORMAT_VERSION = 1

#: Algorithms a policy may be trained with: name -> (module, class).
ALGOS: dict[str, tuple[str, str]] = {
    "maskable-ppo": ("sb3_contrib", "MaskablePPO"),
    "ppo": ("stable_baselines3", "PPO"),
    "a2c": ("stable_baselines3", "A2C"),
}

_PACKAGES = ("paratune", "stable-baselines3", "sb3-contrib", "gymnasium", "torch", "numpy")


def algo_class(algo: str) -> Any:
    """The SB3 class of ``algo`` (imported lazily: torch loads only when a policy is used)."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; allowed: {', '.join(ALGOS)}")
    import importlib

    module, attr = ALGOS[algo]
    return getattr(importlib.import_module(module), attr)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a policy depends on (``unknown`` when not installed as a package)."""
    out: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "unknown"
    if out["paratune"] == "unknown":
        from .. import __version__

        out["paratune"] = __version__
    return out


def default_policy_path() -> Path:
    """The pretrained policy shipped inside the package (``agents/policies/default.zip``)."""
    return Path(__file__).resolve().parent / "policies" / "default.zip"


def metadata_path(path: str | Path) -> Path:
    """The JSON file that describes the policy zip ``path`` (same stem, ``.json``)."""
    return Path(path).with_suffix(".json")


def env_spaces(env_id: str, techniques: bool = False) -> tuple[Any, Any]:
    """(observation space, action space) of the registered env ``env_id`` on this installation
    (``techniques``: Mapping-v0's option that adds the techniques decision and schema 4)."""
    import gymnasium as gym

    from .. import envs

    if env_id not in envs.ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; this paratune registers {', '.join(envs.ENV_IDS)}")
    env = gym.make(env_id, **({"techniques": True} if techniques else {}))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def env_spec_of(env_id: str, techniques: bool = False) -> tuple[int, int]:
    """(observation size, action count) of the registered env ``env_id`` on this installation."""
    obs_space, action_space = env_spaces(env_id, techniques)
    shape = obs_space.shape
    if shape is None:  # every paratune env has a flat Box observation
        raise TypeError(f"{env_id}: observation space {obs_space} has no shape")
    return int(shape[0]), int(action_space.n)


def check_metadata(meta: dict[str, Any], where: str) -> None:
    """Raise ValueError unless the policy described by ``meta`` runs on this installation's env.

    The message names the field and both versions (the policy's and this
    installation's), e.g. an observation schema 1 policy on a schema 2 env.
    Every field the loader reads is type-checked too (:mod:`._policy_meta`).
    """
    from .. import envs

    fmt = meta.get("format_version")
    if not is_int(fmt) or fmt != POLICY_FORMAT_VERSION:
        raise ValueError(
            f"{where}: policy metadata format_version {shown(fmt)} is not supported (this paratune reads "
            f"{POLICY_FORMAT_VERSION}); retrain the policy with `paratune train`"
        )
    check_fields(meta, where)
    from ..envs import _serving
    from ..envs._features import mapping_obs_spec
    from ._settings import DEFAULT_ENV_ID

    env_id = meta.get("env_id")
    if not isinstance(env_id, str) or env_id not in envs.ENV_IDS:
        raise ValueError(
            f"{where}: the policy was trained on env id {shown(env_id)}, which this paratune does not register "
            f"(it registers {', '.join(envs.ENV_IDS)}); retrain it with `paratune train`"
        )
    serving = env_id == SERVING_ENV_ID  # its own observation schema, action count and scenarios
    techniques = _techniques(meta)
    if techniques and env_id != DEFAULT_ENV_ID:
        raise ValueError(f"{where}: field 'env_kwargs.techniques' applies to {DEFAULT_ENV_ID} only, not {env_id}")
    want_schema = _serving.SERVING_OBS_SCHEMA_VERSION if serving else mapping_obs_spec(techniques)[0]
    schema = meta.get("obs_schema_version")
    if not is_int(schema) or schema != want_schema:
        raise ValueError(
            f"{where}: the policy was trained on observation schema version {shown(schema)} but this paratune's "
            f"{SERVING_ENV_ID if serving else 'plan'} environments use observation schema version {want_schema}; "
            "the features differ, so the policy cannot run here: retrain it with `paratune train` (or use the "
            f"paratune version {str(meta.get('versions', {}).get('paratune', '?'))[:40]} it was trained with)"
        )
    want_actions = _serving.N_ACTIONS if serving else envs.N_ACTIONS
    n_actions = meta.get("n_actions")
    if not is_int(n_actions) or n_actions != want_actions:
        menu = "largest menu: 8 batch caps" if serving else f"TP menu {list(envs.TP_MENU)}"
        raise ValueError(
            f"{where}: the policy has {shown(n_actions)} actions but {env_id} has {want_actions} "
            f"({menu}); retrain it with `paratune train`"
        )
    if serving:
        _check_serving_scenarios(meta.get("scenarios", []), where)
    obs_size, _ = env_spec_of(env_id, techniques)
    if not is_int(meta.get("obs_size")) or meta.get("obs_size") != obs_size:
        raise ValueError(
            f"{where}: the policy's observation has {shown(meta.get('obs_size'))} features but {env_id} has "
            f"{obs_size} at observation schema version {want_schema}; retrain it with `paratune train`"
        )
    algo = meta.get("algo")
    if not isinstance(algo, str) or algo not in ALGOS:
        raise ValueError(f"{where}: field 'algo' is {shown(algo)}; allowed: {', '.join(ALGOS)}")
    model_kwargs(meta, algo, where)


def _techniques(meta: dict[str, Any]) -> bool:
    """Whether the policy's Mapping-v0 had the techniques decision (its ``env_kwargs``, checked)."""
    return bool((meta.get("env_kwargs") or {}).get("techniques"))


def _check_serving_scenarios(scenarios: list[Any], where: str) -> None:
    """A Serving-v0 policy's training scenarios must read as serving problems (errors name the item and field)."""
    from ..search._serve import ServingProblem

    for i, item in enumerate(scenarios):
        ServingProblem.from_dict(item, where=f"{where}: field 'scenarios[{i}]'")


def build_model(meta: dict[str, Any], *, env: Any = None, **overrides: Any) -> Any:
    """A fresh SB3 model of the architecture and hyperparameters ``meta`` records (checked metadata).

    ``env`` None builds it as SB3's own ``load`` does when given no env (spaces
    from this installation's env, one env, nothing to train on): enough to
    predict. ``overrides`` replace hyperparameters (fine-tuning's ``n_steps``,
    ``batch_size``, ``learning_rate``). Weights are random until
    :func:`load_weights`; the seed recorded in ``meta`` seeds them, as SB3's
    ``load`` did.
    """
    algo = str(meta["algo"])
    kwargs = {**model_kwargs(meta, algo, "policy metadata"), **overrides}
    if env is None:
        model = algo_class(algo)(
            "MlpPolicy", None, device="cpu", _init_setup_model=False, seed=meta.get("seed"), **kwargs
        )
        model.observation_space, model.action_space = env_spaces(str(meta["env_id"]), _techniques(meta))
        model.n_envs = 1
        model._setup_model()
        return model
    return algo_class(algo)("MlpPolicy", env, device="cpu", seed=meta.get("seed"), **kwargs)


def load_weights(model: Any, archive: PolicyArchive, where: str) -> None:
    """Put the archive's state dicts into ``model``, refusing any key, shape, dtype or non-finite value mismatch."""
    import torch

    policy = model.policy
    expected = policy.state_dict()
    state = archive.policy_state
    missing, extra = sorted(set(expected) - set(state)), sorted(map(str, set(state) - set(expected)))
    if missing or extra:
        lacks = ", ".join(shown(k, 60) for k in missing[:4]) or "nothing"
        adds = ", ".join(shown(k, 60) for k in extra[:4]) or "nothing"
        raise ValueError(
            f"{where}: policy.pth does not fit the network the metadata describes (missing {lacks}; "
            f"unexpected {adds}): a policy of another algorithm or architecture?"
        )
    for key, want in expected.items():
        got = state[key]
        if not plain_tensor(got) or got.shape != want.shape or got.dtype != want.dtype:
            given = type(got).__name__
            if isinstance(got, torch.Tensor):
                given = f"{tuple(got.shape)} {got.dtype} ({got.layout}, {got.device.type})"
            raise ValueError(
                f"{where}: policy.pth entry {key} is {given}; the metadata's network needs "
                f"{tuple(want.shape)} {want.dtype}"
            )
        if want.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"{where}: policy.pth entry {key} holds NaN or infinite weights")
    policy.load_state_dict(state, strict=True)
    if archive.optimizer_state is not None:
        load_optimizer_state(policy.optimizer, archive.optimizer_state, f"{where}: policy.optimizer.pth")


@dataclass
class Policy:
    """A loaded policy: the SB3 model and its metadata (build one with :func:`load_policy`)."""

    model: Any  # an SB3 OnPolicyAlgorithm (MaskablePPO, PPO or A2C)
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def env_id(self) -> str:
        return str(self.metadata["env_id"])

    @property
    def algo(self) -> str:
        return str(self.metadata["algo"])

    def action_probs(self, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The policy's action probabilities at ``obs``, restricted to ``mask`` and renormalised.

        ``obs`` is one observation or a batch (rows), ``mask`` the matching
        valid actions; the result has the mask's shape. PPO and A2C policies
        know nothing of masks; restricting their distribution here gives them
        the same masked greedy and sampled rollouts as MaskablePPO (whose own
        masking gives the same numbers).
        """
        import torch

        policy = self.model.policy
        with torch.no_grad():
            obs_t, _ = policy.obs_to_tensor(obs)
            dist = policy.get_distribution(obs_t)
            probs = dist.distribution.probs.cpu().numpy().astype(np.float64).reshape(np.shape(mask))
        probs = np.where(mask, probs, 0.0)
        total = probs.sum(axis=-1, keepdims=True)
        dead = ~np.isfinite(total) | (total <= 0.0)  # no mass on any allowed action: uniform over the allowed
        if dead.any():
            probs = np.where(dead, mask.astype(np.float64), probs)
            total = probs.sum(axis=-1, keepdims=True)
        return probs / total

    def predict(self, obs: np.ndarray, mask: np.ndarray, *, deterministic: bool = True) -> int:
        """One action through SB3's ``predict`` (masks passed to MaskablePPO; others ignore them)."""
        if self.algo == "maskable-ppo":
            action, _ = self.model.predict(obs, deterministic=deterministic, action_masks=mask)
        else:
            action, _ = self.model.predict(obs, deterministic=deterministic)
        return int(action)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.zip) and its metadata JSON; returns the zip path."""
        return save_policy(self.model, path, self.metadata)


def save_policy(model: Any, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Save ``model`` to ``path`` (``.zip`` added if missing) and ``metadata`` to the JSON next to it."""
    zip_path = Path(path)
    if zip_path.suffix != ".zip":
        zip_path = zip_path.with_suffix(".zip")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(zip_path))
    meta = {"format_version": POLICY_FORMAT_VERSION, **metadata}
    metadata_path(zip_path).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return zip_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata JSON of the policy zip ``path`` (errors name the file)."""
    meta_file = metadata_path(path)
    if not meta_file.exists():
        raise FileNotFoundError(f"{meta_file}: policy metadata not found (a policy is NAME.zip plus NAME.json)")
    meta = read_metadata_file(meta_file)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object of policy metadata")
    return meta


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a saved policy (None: the shipped default), refusing one this installation cannot run.

    Nothing in the files is unpickled (see the module docstring and
    :mod:`._policy_zip`).

    Raises:
        FileNotFoundError: the zip or its JSON is missing.
        ValueError: the observation schema, env id, action count or observation
            size differ from this installation's (the message names both); a
            metadata field has the wrong type; the zip is not a policy zip
            paratune can read, or its weights do not fit the network the
            metadata describes.
    """
    zip_path = default_policy_path() if path is None else Path(path)
    if zip_path.suffix != ".zip" and not zip_path.exists() and zip_path.with_suffix(".zip").is_file():
        zip_path = zip_path.with_suffix(".zip")
    if zip_path.is_dir():
        raise ValueError(f"{zip_path}: is a directory; --policy takes a policy zip (NAME.zip next to NAME.json)")
    if not zip_path.exists():
        raise FileNotFoundError(f"{zip_path}: no such policy file (train one with `paratune train`)")
    meta = read_metadata(zip_path)
    check_metadata(meta, str(metadata_path(zip_path)))
    archive = read_policy_zip(zip_path, str(meta["algo"]))
    model = build_model(meta)
    load_weights(model, archive, str(zip_path))
    return Policy(model, meta, zip_path)
