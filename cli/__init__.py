"""The ``paratune`` command line: one Typer app, assembled from one module per command group.

Each module of this folder adds its commands with ``register(app)``. JSON output
(``--json``) is a contract that later tools parse: keys are only ever added. User
mistakes (unknown model, bad field, invalid plan) exit with code 2 and a one-line
message on stderr, never a traceback (``PARATUNE_DEBUG=1`` shows it). Start-up imports
no cost model, tuner or torch: each command imports what it needs.
"""

from __future__ import annotations

import typer

from . import _calibrate, _campaign, _dashboard, _inspect, _rl, _serve, _study, _tune
from ._usage import OneLineErrorGroup

app = typer.Typer(
    cls=OneLineErrorGroup,
    help="paratune: find how to run a large neural network on several accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _group in (_inspect, _calibrate, _tune, _serve, _campaign, _study, _rl, _dashboard):
    _group.register(app)


def main() -> None:
    """Entry point of the ``paratune`` console script."""
    app()


__all__ = ["app", "main"]
