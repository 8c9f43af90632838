"""The Flux read path, checked on what is sent: a local HTTP server stands in for InfluxDB's
``/api/v2/query``, records the request influxdb-client posts, and answers with a small CSV.
(VictoriaMetrics, the integration tests' InfluxDB, cannot answer Flux.) User values must
travel only as parameters (the ``extern`` AST), never inside the query text."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from export.formats import ExportFormat
from export.query import ExportRequest, Resolution
from export.stream import export_stream
from ingest.stores.base import ReadingQuery
from ingest.stores.flux import FluxSource, flux_query, parse_rfc3339_ns
from ingest.stores.influx import InfluxSettings
from tests.support.registry import sample_registry

NS = 1_000_000_000
T0 = 1_795_392_000 * NS  # 2026-11-23T00:00:00Z

ANSWER = (
    ",result,table,_time,_measurement,channel,device,site,anomaly,score,value\r\n"
    ",_result,0,2026-11-23T00:00:00.000000001Z,co2,,room-1,s1,0,0,812.5\r\n"
    ",_result,0,2026-11-23T00:01:00Z,co2,,room-1,s1,128,0.5,815\r\n"
    ",_result,0,2026-11-23T00:01:00Z,temperature,,room-1,s1,0,0,21.25\r\n"
    "\r\n"
)


class Recorder(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.bodies.append(  # type: ignore[attr-defined]
            {"path": self.path, "body": json.loads(self.rfile.read(length))}
        )
        payload = ANSWER.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def influx() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    bodies: list[dict[str, Any]] = []
    server.bodies = bodies  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def source(url: str) -> FluxSource:
    settings = InfluxSettings(url=url, org="stadtpuls", bucket="city-bucket", token="t0ken-abc")
    return FluxSource(settings, sample_registry().series)


def extern_params(body: dict[str, Any]) -> dict[str, Any]:
    """The options of the extern AST (one literal per parameter), as name -> value."""
    return {
        s["assignment"]["id"]["name"]: s["assignment"]["init"]["value"]
        for s in body["extern"]["body"]
        if s["type"] == "OptionStatement"
    }


def test_query_carries_user_values_only_as_parameters(
    influx: tuple[str, list[dict[str, Any]]],
) -> None:
    url, bodies = influx
    src = source(url)
    try:
        got = list(src.readings(ReadingQuery("s1", T0, T0 + 3600 * NS, "room-1", "co2")))
    finally:
        src.close()
    (sent,) = bodies
    assert sent["path"].startswith("/api/v2/query")
    text = sent["body"]["query"]
    for user_value in ("s1", "room-1", "city-bucket", "2026-11-23"):
        assert user_value not in text
    assert "p_site" in text
    assert "p_device" in text
    assert "p_measurement" in text
    params = extern_params(sent["body"])
    assert params["p_site"] == "s1"
    assert params["p_device"] == "room-1"
    assert params["p_measurement"] == "co2"
    assert params["p_bucket"] == "city-bucket"
    assert params["p_start"].startswith("2026-11-23T00:00:00")
    assert params["p_stop"].startswith("2026-11-23T01:00:00")
    # The rows of the answer, typed, with the nanosecond kept and units from the registry.
    assert [(r.ts_ns - T0, r.measurement, r.value, r.unit, r.anomaly) for r in got] == [
        (1, "co2", 812.5, "ppm", 0),
        (60 * NS, "co2", 815.0, "ppm", 128),
        (60 * NS, "temperature", 21.25, "Cel", 0),
    ]


def test_hostile_values_stay_outside_the_query_text() -> None:
    """Even a value that got past the API's checks could not change the query."""
    hostile = 'x") |> drop(columns: ["site"]) |> yield(name: "'
    text, params = flux_query(ReadingQuery(hostile, 0, NS, hostile, hostile))
    assert hostile not in text
    assert params["p_site"] == params["p_device"] == params["p_measurement"] == hostile
    plain, _ = flux_query(ReadingQuery("s1", 0, NS))
    assert "p_device" not in plain


def test_export_from_influx_in_day_chunks(influx: tuple[str, list[dict[str, Any]]]) -> None:
    url, bodies = influx
    src = source(url)
    request = ExportRequest("s1", T0, T0 + 2 * 86_400 * NS, resolution=Resolution.HOUR1)
    try:
        text = b"".join(export_stream(src, sample_registry(), request, ExportFormat.CSV)).decode()
    finally:
        src.close()
    assert len(bodies) == 2  # one query per day: memory follows the chunk
    first = text.splitlines()[1:4]
    assert first[0].startswith("2026-11-23T00:00:00.000000Z,2026-11-23T01:00:00.000000+01:00,s1")
    assert ",co2,813.75,812.5,815.0,2,60,ppm,gap" in first[0]


def test_rfc3339_keeps_nanoseconds() -> None:
    assert parse_rfc3339_ns("2026-11-23T00:00:00.123456789Z") == T0 + 123_456_789
    assert parse_rfc3339_ns("2026-11-23T00:00:00Z") == T0
