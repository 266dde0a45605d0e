"""The dashboard in a real browser: Playwright driving Debian's Chromium headless against the app on 127.0.0.1.

The browser is conftest.py's ``chromium`` fixture: skipped only when Chromium or the playwright package is
missing and ``CI`` is not set (``scripts/browser.sh`` installs both); in CI a missing browser is a failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from paratune.dashboard import _data as data
from paratune.dashboard import create_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a browser start and page loads: seconds each

#: the fixture campaign's first scenario name (conftest.py's ``dashboard_run``)
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run_dir(dashboard_run: Path) -> Path:
    return dashboard_run


@pytest.fixture(scope="module")
def base_url(run_dir: Path) -> Iterator[str]:
    from werkzeug.serving import make_server

    app = create_app(run_dir)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)  # port 0: a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(chromium: Browser) -> Browser:
    return chromium


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A fresh page that records dialogs (none may open) and JavaScript errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss()

    pg.on("dialog", on_dialog)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg, dialogs, errors
    context.close()


def _open(pg: Page, url: str, page_id: str) -> None:
    pg.goto(url)
    pg.wait_for_selector(f"#{page_id}")


def test_every_page_loads(base_url: str, page: tuple[Page, list[str], list[str]], tmp_path: Path) -> None:
    pg, dialogs, errors = page
    for path, page_id, selector in [
        ("/", "page-overview", "#campaigns-table"),
        ("/leaderboard", "page-leaderboard", "#overall-table"),
        ("/anytime", "page-anytime", "#anytime-e-0 .main-svg"),
        ("/pareto", "page-pareto", "#pareto-0 .main-svg"),
        ("/transfer", "page-transfer", "p"),
        ("/studies", "page-studies", "#study-0-fig-0 .main-svg"),
    ]:
        _open(pg, base_url + path, page_id)
        pg.wait_for_selector(selector)
    shot = tmp_path / "pareto.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not dialogs and not errors


def test_leaderboard_shows_the_computed_numbers(
    base_url: str, run_dir: Path, page: tuple[Page, list[str], list[str]]
) -> None:
    pg, dialogs, errors = page
    _open(pg, base_url + "/leaderboard", "page-leaderboard")
    results = data.load_runs(run_dir)
    key = ("fixture", "tiny-prefill")
    entry = next(e for e in data.leaderboard(results, key) if e.tuner == "optuna-random")
    index = list(results.scenarios).index(key)
    row = pg.locator(f"#leaderboard-{index} tr[data-key='optuna-random']")
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == "optuna-random"
    assert cells[3] == data.fmt_value("ttft", entry.median)  # median value, with its unit
    assert cells[5] == data.fmt_pct(entry.gap_median)  # gap to the dp optimum
    assert not dialogs and not errors


def test_tuner_filter_changes_what_is_shown(base_url: str, page: tuple[Page, list[str], list[str]]) -> None:
    pg, dialogs, errors = page
    _open(pg, base_url + "/leaderboard", "page-leaderboard")
    overall = pg.locator("#overall-table tbody tr")
    assert overall.count() == 4
    # through the dropdown, as a user does
    pg.click("#filter-tuner")
    pg.keyboard.type("dp")
    pg.get_by_role("option", name="dp", exact=True).click()
    pg.keyboard.press("Escape")
    pg.wait_for_function("document.querySelectorAll('#overall-table tbody tr').length === 1")
    assert pg.locator("#overall-table tbody tr").first.get_attribute("data-key") == "dp"
    # and through the URL (a shareable view)
    _open(pg, base_url + "/leaderboard?tuner=megatron&tuner=balanced-pp&phase=prefill", "page-leaderboard")
    pg.wait_for_function("document.querySelectorAll('#overall-table tbody tr').length === 2")
    assert pg.locator("[id^=leaderboard-]").count() == 1
    assert not dialogs and not errors


def test_plan_view_renders_a_gantt(base_url: str, page: tuple[Page, list[str], list[str]], tmp_path: Path) -> None:
    pg, dialogs, errors = page
    _open(pg, base_url + "/plans", "page-plans")
    pg.wait_for_selector("#plan-gantt .main-svg")
    pg.wait_for_selector("#plan-stages .main-svg")
    pg.wait_for_selector("#plan-memory .main-svg")
    traces = pg.evaluate("document.getElementById('plan-gantt').querySelector('.js-plotly-plot').data.map(t => t.type)")
    assert "bar" in traces
    assert pg.locator("#plan-gantt .bars .point").count() > 10
    shot = tmp_path / "plans.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not dialogs and not errors


def test_studies_page_shows_the_study(base_url: str, page: tuple[Page, list[str], list[str]]) -> None:
    pg, dialogs, errors = page
    _open(pg, base_url + "/studies", "page-studies")
    pg.wait_for_selector("#study-0-table-0")
    assert "granularity study" in pg.inner_text("#study-0-title")
    summary = pg.inner_text("#study-0-summary")
    assert "layer" in summary and ("%" in summary or "ms" in summary)
    rows = pg.locator("#study-0-table-0 tbody tr")
    assert rows.count() == 4  # 2 granularities x 2 tuners
    _open(pg, base_url + "/studies?phase=decode", "page-studies")
    pg.wait_for_selector("#page-studies p")
    assert "No study matches" in pg.inner_text("#page-studies")
    assert not dialogs and not errors


def test_user_strings_render_as_text(base_url: str, page: tuple[Page, list[str], list[str]]) -> None:
    pg, dialogs, errors = page
    for path, page_id in [("/", "page-overview"), ("/leaderboard", "page-leaderboard"), ("/anytime", "page-anytime")]:
        _open(pg, base_url + path, page_id)
        pg.wait_for_selector(f"#{page_id} table, #{page_id} .main-svg")
        pg.wait_for_timeout(200)
        assert EVIL in pg.inner_text("#page"), path  # shown as the characters typed
    _open(pg, base_url + "/", "page-overview")
    cell = pg.locator("#scenarios-table tbody tr").first.locator("td").first
    assert cell.inner_text() == EVIL and cell.inner_html() == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert pg.evaluate("Array.from(document.scripts).every(s => !s.textContent.includes('alert(1)'))")
    assert not dialogs and not errors
