"""The students' page in headless Chromium (Debian's, driven by Playwright; no browser is
downloaded): sign in with a token, choose a room, a measurement and a range, see the chart,
download a CSV. The screenshot is saved under the test's temporary directory."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from prometheus_client import CollectorRegistry

from export.api import ExportApi, ExportCaps
from export.tokens import TokenStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from stadtpuls.web import HttpServer, build_app
from tests.support.registry import sample_registry
from tests.unit.test_export_api import DAY, T0, Clock, fill_store

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An HTTP server with the export routes over a filled store; (base URL, token)."""
    registry = sample_registry()
    store = SqliteStore(SqliteSettings(tmp_path / "stadtpuls.db"), registry.series)
    fill_store(store, registry)
    tokens = TokenStore(tmp_path / "tokens.sqlite")
    clock = Clock(T0 + 3 * DAY)
    _, secret = tokens.create("s1", None, clock() + DAY, "7b", clock())
    api = ExportApi(store, registry, tokens, ExportCaps(timedelta(days=31), 100), clock)
    app = build_app(lambda: {}, CollectorRegistry(), extra_routes=api.routes())
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    try:
        yield f"http://127.0.0.1:{http.port}", secret
    finally:
        http.stop()
        tokens.close()
        store.close()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium: make tools")
def test_student_previews_and_downloads_a_csv(server: tuple[str, str], tmp_path: Path) -> None:
    base, token = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                timezone_id="Europe/Berlin", locale="de-DE", accept_downloads=True
            )
            page = context.new_page()
            page.goto(f"{base}/students?lang=de#token={token}")
            page.get_by_text("Test school").wait_for()
            assert "token" not in page.url  # taken out of the address bar
            page.check("#rooms input[value='room-1']")
            page.check("#measurements input[value='co2']")
            page.fill("#start", "2026-11-23T07:00")  # Berlin time: 06:00 UTC
            page.fill("#end", "2026-11-23T19:00")
            page.select_option("#resolution", "15min")
            page.click("#preview")
            page.locator("#chart canvas").wait_for()
            assert page.locator("#chart").get_attribute("data-points") == "48"
            assert "room-1 co2 [ppm]" in page.locator("#chart").inner_text()
            page.screenshot(path=str(tmp_path / "students-page.png"), full_page=True)

            page.select_option("#format", "csv")
            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            assert download.suggested_filename.endswith(".csv")
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)
        finally:
            browser.close()
    rows = list(csv.DictReader(io.StringIO(saved.read_text("utf-8"))))
    assert list(rows[0]) == ["time", "local_time", "room-1 co2 [ppm]"]
    assert len(rows) == 48
    assert rows[0]["time"] == "2026-11-23T06:00:00.000000Z"
    assert rows[0]["local_time"] == "2026-11-23T07:00:00.000000+01:00"
    # co2 is 400 + minute of the day: minutes 360..374 average to 767.
    assert float(rows[0]["room-1 co2 [ppm]"]) == pytest.approx(767.0)
    assert (tmp_path / "students-page.png").stat().st_size > 10_000
