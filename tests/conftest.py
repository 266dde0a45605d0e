"""What the whole suite shares: one guard for optional parts, and the fixtures several modules use.

Optional parts are of two kinds, guarded one way:

- Python extras: mark a test (or a module, with ``pytestmark``) ``@pytest.mark.needs("torch", "sb3_contrib")``
  and import the extra inside the test or fixture, never at module level;
- services: the ``pg_server`` fixture (a throwaway PostgreSQL on 127.0.0.1) and the ``chromium`` fixture
  (Debian's Chromium driven by Playwright).

A missing part skips the test with the reason and the command that installs it, except under CI (``CI`` set):
CI installs everything (``scripts/run.sh test``), so there a missing part fails the test instead of hiding it.

Test modules never import one another (the suite passes under ``--import-mode=importlib``): what several
modules use lives here, as fixtures.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the pip extra that brings each optional module
EXTRA_OF = {
    "torch": "import",
    "transformers": "import",
    "stable_baselines3": "rl",
    "sb3_contrib": "rl",
    "playwright": "dev",
    "aiconfigurator_core": "silicon",
    "aiconfigurator": "peer",
    "pyarrow": "silicon",
}


def unavailable(reason: str) -> NoReturn:
    """Skip for want of an optional part, or fail under CI, where every part is installed."""
    if os.environ.get("CI"):
        pytest.fail(f"CI installs every optional part, yet: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up: they may import the extra
def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = [m for mark in item.iter_markers("needs") for m in mark.args if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({EXTRA_OF.get(m, "?") for m in missing})
        unavailable(f"needs {', '.join(missing)}: pip install -e '.[{','.join(extras)}]'")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests see no machine profile a developer measured (``paratune calibrate local``): a fresh cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARATUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL server: CI's (``$PARATUNE_PG_URL``), or one started and stopped for this session."""
    url = os.environ.get("PARATUNE_PG_URL")
    if url:
        yield url
        return
    script = ROOT / "scripts" / "postgres.sh"
    env = {**os.environ, "PARATUNE_PG_DIR": f"/tmp/paratune-pg-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"}
    started = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    if started.returncode != 0:
        reason = f"no PostgreSQL server: scripts/postgres.sh exited {started.returncode}: {started.stderr.strip()}"
        if started.returncode != 3:  # 3: PostgreSQL cannot be installed here; anything else is a fault
            pytest.fail(reason)
        unavailable(reason)
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh database on the server, dropped afterwards."""
    import sqlalchemy as sa

    name = f"paratune_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


# -- Chromium --------------------------------------------------------------------------------

CHROMIUM = os.environ.get("PARATUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``); ``scripts/browser.sh`` installs both."""
    if importlib.util.find_spec("playwright") is None:
        unavailable("the playwright package is not installed: bash scripts/browser.sh")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        unavailable(f"no Chromium at {CHROMIUM}: bash scripts/browser.sh (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- the dashboard's campaign -------------------------------------------------------------------

#: the name of the fixture campaign's first scenario: user strings must render as text, never as markup
DASHBOARD_EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="session")
def dashboard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small campaign for the dashboard tests, run in-process in a few seconds; its run folder.

    Three tiny scenarios (a 4-layer Llama on one DGX A100): a decode scenario named
    ``<script>alert(1)</script>`` (user strings must render as text), a prefill one,
    and a two-objective ``tbt+memory`` one (a Pareto front; dp does not apply to it,
    so its gaps refer to the best known value). Tuners: two heuristics, dp, and
    optuna-random with a small budget over two seeds; and a small granularity study
    on the prefill scenario (the Studies page). Tests only read it.
    """
    import yaml

    from paratune.campaign import CampaignSpec, create_campaign, work

    folder, name = tmp_path_factory.mktemp("dashboard"), "fixture"
    tiny = {"model": "llama2-7b:layers=4", "platform": "dgx-a100", "context": 512}

    spec_data = {
        "name": name,
        "description": "dashboard test fixture",
        "scenarios": [
            {**tiny, "name": DASHBOARD_EVIL, "phase": "decode", "objective": "tbt", "batch": 8},
            {**tiny, "name": "tiny-prefill", "phase": "prefill", "objective": "ttft", "batch": 4, "seq": 512},
            {**tiny, "name": "tiny-pareto", "phase": "decode", "objective": "tbt+memory", "batch": 16},
        ],
        "tuners": ["megatron", "balanced-pp", "dp", {"name": "optuna-random", "budget": 40}],
        "seeds": 2,
        "studies": [
            {
                "kind": "granularity",
                "scenarios": ["tiny-prefill"],
                "budget": 10,
                "tuners": ["dp", "megatron"],
                "granularities": ["layer", "layers:2"],
            },
        ],
        "output": str(folder / name),
    }
    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data, sort_keys=False))
    spec = CampaignSpec.load(spec_path)
    located = create_campaign(spec, spec_path)
    work(located.storage, located.name, output=located.output, say=lambda _line: None)
    return located.output
