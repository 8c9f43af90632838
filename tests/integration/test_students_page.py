"""The students' page in headless Chromium (Debian's, driven by Playwright; no browser is
downloaded), used the way a pupil uses it: open the teacher's link, see a chart without
touching anything, choose a room, two more measurements and a calendar week, download CSV
for German Excel and open it as numbers; then look closer at one day. A second test opens
the page in an English browser in New York: it is German and in Berlin time all the same,
and the switch at the top changes the language in place.

Screenshots go to ``test-artifacts/students-page/`` at the top of the repository (ignored by
git; ``STADTPULS_TEST_ARTIFACTS`` moves it)."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pytest
from playwright.sync_api import Page, sync_playwright
from prometheus_client import CollectorRegistry

from export.api import ExportApi, ExportCaps
from export.tokens import TokenStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from stadtpuls.web import HttpServer, build_app
from tests.support.school import DAY, MONDAY, NS, fill_school, school_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium: make tools"),
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("STADTPULS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
# The server's clock: Monday 30.11.2026 10:00 UTC (11:00 in Berlin), calendar week 49. The
# store holds Monday to Friday of week 48, minute by minute.
NOW = MONDAY + 7 * DAY + 10 * 3600 * NS
GERMAN_DAY_TICK = re.compile(r"^(Mo|Di|Mi|Do|Fr|Sa|So) \d\d\.\d\d\.$")
GERMAN_TIME_TICK = re.compile(r"^\d\d\.\d\d\. ([01]\d|2[0-3]):[0-5]\d$")
GERMAN_INSTANT = re.compile(r"^(Mo|Di|Mi|Do|Fr|Sa|So) \d\d\.\d\d\.2026 ([01]\d|2[0-3]):[0-5]\d$")
CSV_DE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{6}$")  # README, "Formats"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An HTTP server with the export routes over a filled store; (base URL, token)."""
    registry = school_registry()
    store = SqliteStore(SqliteSettings(tmp_path / "stadtpuls.db"), registry.series)
    fill_school(store, registry, MONDAY, days=5)
    tokens = TokenStore(tmp_path / "tokens.sqlite")
    _, secret = tokens.create("fbg", None, NOW + 14 * DAY, "7b", NOW)
    api = ExportApi(store, registry, tokens, ExportCaps(timedelta(days=31), 100), lambda: NOW)
    app = build_app(lambda: {}, CollectorRegistry(), extra_routes=api.routes())
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    try:
        yield f"http://127.0.0.1:{http.port}", secret
    finally:
        http.stop()
        tokens.close()
        store.close()


def artifacts() -> Path:
    out = ARTIFACTS / "students-page"
    out.mkdir(parents=True, exist_ok=True)
    return out


def ticks(page: Page) -> list[str]:
    return (page.locator("#chart").get_attribute("data-x-ticks") or "").split("|")


def hovered_time(page: Page) -> str:
    """Moves the mouse over the middle of the plot; the legend shows the time under it."""
    box = page.locator("#chart .u-over").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    return page.locator("#chart .u-legend .u-series").first.locator(".u-value").inner_text()


def test_pupil_sees_a_chart_at_once_and_downloads_german_csv(
    server: tuple[str, str], tmp_path: Path
) -> None:
    base, token = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                timezone_id="Europe/Berlin", locale="de-DE", accept_downloads=True
            )
            page = context.new_page()
            page.goto(f"{base}/students#token={token}")

            # Without a click: the school's rooms, CO₂, the last seven days, a chart.
            page.locator("#chart canvas").wait_for()
            assert "token" not in page.url  # taken out of the address bar
            assert page.get_attribute("html", "lang") == "de"
            assert page.locator("h1").inner_text() == "Daten meiner Schule"
            assert "Friedrich-Bährens-Gymnasium, Schwerte" in page.locator("#school").inner_text()
            rooms = page.locator("#rooms").inner_text()
            assert "Raum 101 \N{EN DASH} senseBox an der Ostwand, 1,5 m über dem Boden" in rooms
            assert "Chemieraum 204 \N{EN DASH} senseBox neben der Tür" in rooms
            assert page.is_checked("#rooms input[value='room-101']")
            assert page.is_checked("#rooms input[value='room-204']")
            assert page.locator("#measurements label").all_inner_texts() == [
                " CO₂ (ppm)", " Temperatur (°C)", " Luftfeuchte (%)", " Feinstaub PM2,5 (µg/m³)",
            ]  # fmt: skip
            assert checked(page, "measurements") == ["co2"]
            assert page.input_value("#week") == "last7"
            assert page.input_value("#start") == "23.11.2026 11:00"  # Berlin time, 24 hours
            assert page.input_value("#end") == "30.11.2026 11:00"
            assert page.locator("#chart").get_attribute("data-points") == "168"
            legend = page.locator("#chart .u-legend").inner_text()
            assert "Raum 101 · CO₂" in legend
            assert "Chemieraum 204 · CO₂" in legend
            assert all(GERMAN_DAY_TICK.match(t) for t in ticks(page)), ticks(page)
            assert "Di 24.11." in ticks(page)  # Berlin midnights
            assert GERMAN_INSTANT.match(hovered_time(page))
            text = page.locator("body").inner_text()
            for code in ("ug/m3", "Cel", "%RH", "co2 [", "room-101"):
                assert code not in text, code
            page.screenshot(path=str(artifacts() / "first-view-de.png"), full_page=True)

            # A room, two more measurements, calendar week 48.
            page.uncheck("#rooms input[value='room-101']")
            page.check("#measurements input[value='temperature']")
            page.check("#measurements input[value='pm2_5']")
            week = page.locator("#week option", has_text="KW 48")
            assert week.inner_text() == "KW 48: 23.11.\N{EN DASH}29.11.2026"
            page.select_option("#week", week.get_attribute("value") or "")
            assert page.input_value("#start") == "23.11.2026 00:00"
            assert page.input_value("#end") == "30.11.2026 00:00"
            page.locator(".u-legend", has_text="Chemieraum 204 · Feinstaub PM2,5").wait_for()
            legend = page.locator("#chart .u-legend").inner_text()
            assert "Raum 101" not in legend
            assert "Chemieraum 204 · Temperatur" in legend
            assert "Mo 23.11." in ticks(page)
            shot = artifacts() / "week-de.png"
            page.screenshot(path=str(shot), full_page=True)

            assert page.input_value("#format") == "csv-de"  # the default
            assert page.input_value("#layout") == "wide"
            with page.expect_download() as info:
                page.click("#download")
            download = info.value
            assert download.suggested_filename == (
                "stadtpuls-fbg-room-204-20261123-20261129-1h-wide-excel-de.csv"
            )
            saved = tmp_path / download.suggested_filename
            download.save_as(saved)

            # A closer look at Tuesday, typed as a pupil would: "to" a day means to its end.
            # The axis shows hours, 24-hour, Berlin time.
            page.fill("#start", "24.11.2026")
            page.fill("#end", "24.11.2026")
            page.press("#end", "Tab")
            page.locator("#chart[data-points='24']").wait_for()
            assert page.input_value("#week") == "custom"
            day = ticks(page)
            assert all(GERMAN_TIME_TICK.match(t) for t in day), day
            assert any(int(t[7:9]) > 12 for t in day), day  # no am/pm
            assert "24.11. 00:00" in day
            assert GERMAN_INSTANT.match(hovered_time(page))
            page.screenshot(path=str(artifacts() / "day-de.png"), full_page=True)
        finally:
            browser.close()

    raw = saved.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # so Excel reads µg/m³ as UTF-8
    lines = raw.decode("utf-8-sig").splitlines()
    assert lines[0] == (
        "time;local_time;room-204 co2 [ppm];room-204 pm2_5 [µg/m³];room-204 temperature [°C]"
    )
    # Monday 00:00 in Berlin is 23:00 UTC; the data begin at 01:00 Berlin time.
    assert lines[1] == "2026-11-22 23:00:00,000000;2026-11-23 00:00:00,000000;;;"
    # Minutes 0..59 of the day: CO₂ 600 + m, mean 629.5.
    assert lines[2] == "2026-11-23 00:00:00,000000;2026-11-23 01:00:00,000000;629,5;8,25;20,5"
    frame = pd.read_csv(io.BytesIO(raw), sep=";", decimal=",", encoding="utf-8-sig")
    assert len(frame) == 7 * 24
    for column in frame.columns[2:]:
        assert frame[column].dtype == "float64", column
    assert frame["room-204 co2 [ppm]"].iloc[1] == pytest.approx(629.5)
    assert frame["room-204 pm2_5 [µg/m³]"].iloc[1 : 5 * 24].tolist() == [8.25] * (5 * 24 - 1)
    assert frame["room-204 temperature [°C]"].iloc[5 * 24 + 1 :].isna().all()  # the weekend
    assert all(CSV_DE_TIME.match(t) for t in frame["time"])
    assert all(CSV_DE_TIME.match(t) for t in frame["local_time"])
    local = pd.to_datetime(frame["local_time"], format="%Y-%m-%d %H:%M:%S,%f")
    assert local.iloc[0] == pd.Timestamp("2026-11-23 00:00")
    assert local.iloc[-1] == pd.Timestamp("2026-11-29 23:00")
    assert shot.stat().st_size > 10_000


def checked(page: Page, container: str) -> list[str]:
    values = page.eval_on_selector_all(
        f"#{container} input:checked", "boxes => boxes.map(b => b.value)"
    )
    return [str(v) for v in values]


def test_page_is_german_in_an_english_browser_and_switches_in_place(
    server: tuple[str, str],
) -> None:
    base, token = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(timezone_id="America/New_York", locale="en-US")
            page = context.new_page()
            page.goto(f"{base}/students#token={token}")
            page.locator("#chart canvas").wait_for()
            assert page.get_attribute("html", "lang") == "de"
            assert page.locator("h1").inner_text() == "Daten meiner Schule"
            # Berlin time, not the computer's (New York is six hours behind).
            assert page.input_value("#start") == "23.11.2026 11:00"
            assert "Di 24.11." in ticks(page)

            page.click("#lang a[data-lang='en']")
            assert page.locator("h1").inner_text() == "My school's data"
            assert page.get_attribute("html", "lang") == "en"
            assert page.url.endswith("/students?lang=en")
            assert page.is_visible("#form")  # still signed in
            assert "Particulate matter PM2.5 (µg/m³)" in page.locator("#measurements").inner_text()
            assert "Tue 24/11" in ticks(page)  # redrawn from the same data
            assert page.input_value("#start") == "23/11/2026 11:00"
            assert "Raum 101 · CO₂" in page.locator("#chart .u-legend").inner_text()

            english = context.new_page()
            english.goto(f"{base}/students?lang=en#token={token}")
            english.locator("#chart canvas").wait_for()
            assert english.locator("h1").inner_text() == "My school's data"
            assert "Temperature (°C)" in english.locator("#measurements").inner_text()
        finally:
            browser.close()
