"""The export API over a real SQLite store and token database, through starlette's test
client: token scope, refusals, injection attempts, rate cap, the export log, streaming."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from devices.registry import Registry
from export.api import ExportApi, ExportCaps
from export.tokens import TokenStore
from ingest.batch import ReadingBatch
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore

NS = 1_000_000_000
T0 = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp()) * NS  # a Monday, winter time
DAY = 86_400 * NS
MIN = 60 * NS


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def fill_store(store: SqliteStore, registry: Registry, days: int = 2) -> None:
    """Every minute for ``days``: s1/room-1 co2 = 400 + minute of day, temperature 21.0,
    humidity 45.0; s2/room-9 co2 = 9999 (another school's data, must never leak)."""
    index = {(s.key.site, s.key.device, s.key.measurement): s.index for s in registry.series}
    minutes = days * 1440
    series, ts, values = [], [], []
    for m in range(minutes):
        t = T0 + m * MIN
        for key, v in (
            (("s1", "room-1", "co2"), 400.0 + m % 1440),
            (("s1", "room-1", "temperature"), 21.0),
            (("s1", "room-1", "humidity"), 45.0),
            (("s2", "room-9", "co2"), 9999.0),
        ):
            series.append(index[key])
            ts.append(t)
            values.append(v)
    store.commit(ReadingBatch.unchecked(series, ts, values), [])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[SqliteStore]:
    """Shared by the module's tests, which only read it. SQLite only, not conftest's store
    on both: the API reads through the store's readings(), which for InfluxStore is Flux,
    and VictoriaMetrics (the tests' InfluxDB) has no Flux."""
    path = tmp_path_factory.mktemp("api") / "stadtpuls.db"
    s = SqliteStore(SqliteSettings(path, synchronous="OFF"), registry.series)
    fill_store(s, registry)
    yield s
    s.close()


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenStore]:
    t = TokenStore(tmp_path / "tokens.sqlite")
    yield t
    t.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 3 * DAY)


@pytest.fixture
def client(store: SqliteStore, registry: Registry, tokens: TokenStore, clock: Clock) -> TestClient:
    caps = ExportCaps(max_range=timedelta(days=31), max_exports_per_minute=1000)
    api = ExportApi(store, registry, tokens, caps, clock)
    return TestClient(Starlette(routes=api.routes()))


def school_token(
    tokens: TokenStore, clock: Clock, site: str = "s1", room: str | None = None
) -> str:
    _, secret = tokens.create(site, room, clock() + 7 * DAY, "test", clock())
    return secret


RANGE = {"start": "2026-11-23T00:00:00Z", "end": "2026-11-23T01:00:00Z"}


def get(client: TestClient, secret: str, /, **params: str) -> tuple[int, str]:
    r = client.get("/api/v1/export", params=params, headers={"Authorization": f"Bearer {secret}"})
    return r.status_code, r.text


def test_export_streams_the_token_school_only(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token = school_token(tokens, clock)
    status, text = get(client, token, **RANGE)
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["site"] for r in rows} == {"s1"}
    assert len(rows) == 60 * 3
    assert "9999" not in text
    first_co2 = next(r for r in rows if r["measurement"] == "co2")
    assert (first_co2["time"], first_co2["value"], first_co2["unit"]) == (
        "2026-11-23T00:00:00.000000Z",
        "400.0",
        "ppm",
    )
    assert first_co2["local_time"] == "2026-11-23T01:00:00.000000+01:00"


def test_token_for_school_a_gets_403_on_school_b(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token = school_token(tokens, clock, "s1")
    status, text = get(client, token, site="s2", **RANGE)
    assert status == 403
    assert "9999" not in text
    # Its own school named explicitly is fine.
    assert get(client, token, site="s1", **RANGE)[0] == 200


@pytest.mark.parametrize(
    "params",
    [
        {"rooms": "room-9"},  # school B's room: not a room of the token's school
        {"rooms": "room-1,room-9"},
        {"measurements": "co2", "rooms": "room-9"},
        {"site": "s2", "rooms": "room-9"},
    ],
)
def test_no_parameter_widens_the_scope(
    client: TestClient, tokens: TokenStore, clock: Clock, params: dict[str, str]
) -> None:
    token = school_token(tokens, clock, "s1")
    status, text = get(client, token, **RANGE, **params)
    assert status in (400, 403)
    assert "9999" not in text


def test_a_second_token_in_the_query_adds_nothing(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token_a = school_token(tokens, clock, "s1")
    token_b = school_token(tokens, clock, "s2")
    status, text = get(client, token_a, token=token_b, **RANGE)
    assert status == 200
    assert {r["site"] for r in csv.DictReader(io.StringIO(text))} == {"s1"}


def test_room_token_reads_its_room_only(
    client: TestClient, tokens: TokenStore, clock: Clock, registry: Registry
) -> None:
    token = school_token(tokens, clock, "s1", "room-1")
    status, text = get(client, token, **RANGE)
    assert status == 200
    assert {r["device"] for r in csv.DictReader(io.StringIO(text))} == {"room-1"}
    assert get(client, token, rooms="room-2", **RANGE)[0] == 403


def test_expired_revoked_and_unknown_tokens_are_refused(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token = school_token(tokens, clock)
    assert get(client, token, **RANGE)[0] == 200
    clock.now_ns += 8 * DAY  # past its 7-day expiry
    assert get(client, token, **RANGE)[0] == 401
    clock.now_ns -= 8 * DAY
    revoked = school_token(tokens, clock)
    (info,) = [t for t in tokens.all() if t.status(clock()) == "active"][-1:]
    assert tokens.revoke(info.id, clock())
    assert get(client, revoked, **RANGE)[0] == 401
    assert get(client, "spx_" + "A" * 43, **RANGE)[0] == 401
    assert client.get("/api/v1/export", params=RANGE).status_code == 401
    # The token may also come as a parameter (download links); the same checks apply.
    assert client.get("/api/v1/export", params={**RANGE, "token": revoked}).status_code == 401


INJECTIONS = [
    "room-1' OR '1'='1",
    'room-1") |> drop(columns: ["site"]) //',
    "room-1; DROP TABLE readings; --",
    "../../etc/passwd",
    "s2",
    "room-1\nsite=s2",
    "ROOM-1",
    "%27%20OR%201=1",
    "r" * 5000,
]


@pytest.mark.parametrize(
    "name", ["site", "rooms", "measurements", "start", "end", "resolution", "format", "layout",
             "statistic"],
)  # fmt: skip
@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_in_every_parameter_is_refused(
    client: TestClient, tokens: TokenStore, clock: Clock, name: str, value: str
) -> None:
    token = school_token(tokens, clock)
    status, text = get(client, token, **{**RANGE, name: value})
    assert status in (400, 403), (name, value, status)
    assert "9999" not in text


def test_unknown_or_repeated_parameters_are_refused(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token = school_token(tokens, clock)
    assert get(client, token, device="room-9", **RANGE)[0] == 400
    r = client.get(
        "/api/v1/export?start=2026-11-23T00:00:00Z&end=2026-11-23T01:00:00Z&site=s1&site=s2",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 400


def test_range_cap_and_rate_cap(
    store: SqliteStore, registry: Registry, tokens: TokenStore, clock: Clock
) -> None:
    api = ExportApi(store, registry, tokens, ExportCaps(timedelta(days=1), 3), clock)
    client = TestClient(Starlette(routes=api.routes()))
    token = school_token(tokens, clock)
    too_long = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-03T00:00:00Z"}
    assert get(client, token, **too_long)[0] == 400
    assert get(client, token, **RANGE)[0] == 200
    assert get(client, token, **RANGE)[0] == 200
    r = client.get("/api/v1/export", params=RANGE, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    clock.now_ns += 61 * NS
    assert get(client, token, **RANGE)[0] == 200
    # Another token of the same school has its own budget.
    assert get(client, school_token(tokens, clock), **RANGE)[0] == 200


def test_every_export_is_logged(client: TestClient, tokens: TokenStore, clock: Clock) -> None:
    token = school_token(tokens, clock)
    token_id = tokens.verify(token, clock()).token_id
    get(client, token, measurements="co2", **RANGE)
    get(client, token, site="s2", **RANGE)
    entries = tokens.entries(token_id)
    assert [e.status for e in entries] == ["forbidden", "ok"]
    ok = entries[1]
    assert ok.rows == 60
    assert ok.bytes is not None
    assert ok.bytes > 0
    assert ok.at_ns == clock()
    what = dict(json.loads(ok.what))
    assert what["measurements"] == "co2"
    assert token not in ok.what


def test_aggregated_wide_export_shows_units_and_gaps(
    client: TestClient, tokens: TokenStore, clock: Clock
) -> None:
    token = school_token(tokens, clock)
    # The store holds two days from T0; the third day is a gap at every hour.
    status, text = get(
        client, token, start="2026-11-24T22:00:00Z", end="2026-11-25T01:00:00Z",
        resolution="1h", layout="wide", format="json",
    )  # fmt: skip
    assert status == 200
    rows = json.loads(text)
    assert [r["time"] for r in rows] == [
        "2026-11-24T22:00:00.000000Z",
        "2026-11-24T23:00:00.000000Z",
        "2026-11-25T00:00:00.000000Z",
    ]
    assert list(rows[0])[2:] == [
        "room-1 co2 [ppm]",
        "room-1 humidity [%RH]",
        "room-1 temperature [Cel]",
    ]
    # Minutes 1320..1379 of the day: co2 400 + m, mean 400 + 1349.5.
    assert rows[0]["room-1 co2 [ppm]"] == pytest.approx(1749.5)
    assert rows[2]["room-1 co2 [ppm]"] is None


def test_meta_lists_the_token_school(client: TestClient, tokens: TokenStore, clock: Clock) -> None:
    token = school_token(tokens, clock)
    r = client.get("/api/v1/export/meta", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    meta = r.json()
    assert meta["site"]["id"] == "s1"
    assert [room["id"] for room in meta["rooms"]] == ["room-1"]
    assert client.get("/api/v1/export/meta").status_code == 401


def test_page_and_chart_library_are_served(client: TestClient) -> None:
    page = client.get("/students")
    assert page.status_code == 200
    assert "/students/static/students.js" in page.text
    lib = client.get("/students/static/uPlot.iife.min.js")
    assert lib.status_code == 200
    assert "uPlot" in lib.text
    assert client.get("/students/static/../tokens.py").status_code == 404
