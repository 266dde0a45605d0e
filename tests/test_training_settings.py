"""Training and transfer defaults are written once (agents._settings): the functions and the CLI read them."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from paratune.agents._settings import TRAIN, TRANSFER
from paratune.agents._train import train
from paratune.agents._transfer import transfer
from paratune.cli._rl import train_command, transfer_command


def _defaults(func: Any) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(func).parameters.items() if p.default is not p.empty}


def test_train_and_the_cli_share_the_training_defaults() -> None:
    fields = dataclasses.asdict(TRAIN)
    for func in (train, train_command):
        defaults = _defaults(func)
        shared = {n for n in fields if n in defaults}
        assert len(shared) >= 9, f"{func.__name__}: only {sorted(shared)} read TrainSettings"
        for name in shared:
            assert defaults[name] == fields[name], f"{func.__name__}({name}=...) differs from TRAIN.{name}"


def test_transfer_and_the_cli_share_the_transfer_defaults() -> None:
    fields = dataclasses.asdict(TRANSFER)
    for func in (transfer, transfer_command):
        defaults = _defaults(func)
        assert set(fields) <= set(defaults), f"{func.__name__} lacks {set(fields) - set(defaults)}"
        for name, value in fields.items():
            assert defaults[name] == value, f"{func.__name__}({name}=...) differs from TRANSFER.{name}"
