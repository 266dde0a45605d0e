"""Where a store's password lives: never in a file paratune writes, nor on a worker's command line.

A storage URL may carry a password (``postgresql://user:secret@host/db``). The run
folder's ``campaign.json`` records the URL *without* it, plus the name of the
environment variable that supplies it at ``status`` / ``resume`` time
(``"password_env": "PGPASSWORD"``; libpq, hence psycopg, reads that variable and
``~/.pgpass`` by itself). Workers started by a launcher receive the full URL in their
environment (``PARATUNE_STORAGE``), which only their owner can read, never in argv,
which ``ps`` shows to every user of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

#: the variable through which a launcher hands the storage URL to its workers
STORAGE_ENV = "PARATUNE_STORAGE"
#: the variable read for the password of a non-PostgreSQL store whose URL had one
PASSWORD_ENV = "PARATUNE_STORAGE_PASSWORD"
#: what an older paratune wrote in place of the password (a mangled copy; treated as "no password stored")
_MASK = "***"


def password_env(url: sa.engine.URL) -> str:
    """The environment variable that supplies ``url``'s password: libpq's own for PostgreSQL."""
    return "PGPASSWORD" if url.get_backend_name() == "postgresql" else PASSWORD_ENV


def run_file_entry(url: str) -> dict[str, str]:
    """What ``campaign.json`` records of ``url``: the URL without its password, and where the password comes from.

    Raises:
        ValueError: ``url`` is not a database URL.
    """
    parsed = _parse(url)
    if parsed.password is None:
        return {"storage": parsed.render_as_string(hide_password=False)}
    bare = _without_password(parsed).render_as_string(hide_password=False)
    return {"storage": bare, "password_env": password_env(parsed)}


def run_file_storage(info: Mapping[str, Any], where: str | Path) -> str:
    """The URL to connect with for a ``campaign.json``'s ``info``: its password from the environment if it had one.

    Raises:
        ValueError: the file names no storage, or the store needs a password that no variable (nor, for
            PostgreSQL, a password file) supplies: the message says which variable to set.
    """
    stored = info.get("storage")
    if not isinstance(stored, str) or not stored:
        raise ValueError(f"{where}: field 'storage' must be a database URL, got {stored!r}")
    parsed = _parse(stored, where)
    env = info.get("password_env")
    if parsed.password == _MASK:  # written by an older paratune: the real password was never stored
        parsed, env = _without_password(parsed), env or password_env(parsed)
    if not env:
        return stored
    if not isinstance(env, str):
        raise ValueError(f"{where}: field 'password_env' must be an environment variable name, got {env!r}")
    secret = os.environ.get(env)
    if secret:
        return parsed.set(password=secret).render_as_string(hide_password=False)
    if parsed.get_backend_name() == "postgresql" and _pgpass_file().is_file():
        return parsed.render_as_string(hide_password=False)  # libpq finds the password there itself
    raise ValueError(
        f"{where}: the store {parsed.render_as_string()} needs a password: set the environment variable {env} "
        "(or give --storage URL)"
    )


def _without_password(url: sa.engine.URL) -> sa.engine.URL:
    # not url.set(password=None): set() takes None as "leave unchanged"
    return sa.engine.URL.create(url.drivername, url.username, None, url.host, url.port, url.database, url.query)


def _pgpass_file() -> Path:
    return Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")


def _parse(url: str, where: str | Path | None = None) -> sa.engine.URL:
    try:
        return sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}storage {url!r} is not a database URL") from None
