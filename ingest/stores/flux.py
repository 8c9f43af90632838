"""Readings from InfluxDB 2.x through Flux: how ``InfluxStore`` serves ``readings``, and the
reader an export uses without a store (``stadtpuls export``, or every site's series when a
worker's store holds its own sites only).

The Flux text is fixed: it is assembled only from constant fragments (which filters apply),
and every user value (bucket, site, device, measurement, the time range) travels as a query
parameter. influxdb-client sends parameters as the ``extern`` AST beside the query, one
``option p_site = "..."`` literal each, which the text names as ``p_site``; they are never
spliced into it. Ids are also checked against the registry's alphabet before they get here.

Rows come back as CSV (``query_csv``, RFC3339 times with nanoseconds) and are parsed as they
stream in, so an export holds one chunk's response at most. Aggregation to buckets is done
by the exporter, the same way for both stores, so both give identical files.

The tests check the query text and parameters against a local HTTP server standing in for
``/api/v2/query`` (VictoriaMetrics, the tests' InfluxDB stand-in, does not answer Flux).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.dialect import Dialect

from devices.registry import Series
from ingest.stores.base import ReadingQuery, StoredReading

if TYPE_CHECKING:  # influx imports this module for its reads
    from ingest.stores.influx import InfluxSettings

NS = 1_000_000_000

_HEAD = """from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => r.site == p_site)
"""
_BY_DEVICE = "  |> filter(fn: (r) => r.device == p_device)\n"
_BY_MEASUREMENT = "  |> filter(fn: (r) => r._measurement == p_measurement)\n"
_TAIL = """  |> filter(fn: (r) => r._field == "value" or r._field == "anomaly"
                       or r._field == "score")
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time", "device", "channel", "_measurement"])
"""

_DIALECT = Dialect(  # type: ignore[no-untyped-call]
    header=True, delimiter=",", annotations=[], comment_prefix="#", date_time_format="RFC3339Nano"
)


def flux_query(query: ReadingQuery) -> tuple[str, dict[str, Any]]:
    """The Flux text for ``query`` and its parameters (``bucket`` is added by the source)."""
    text = _HEAD
    params: dict[str, Any] = {
        "p_start": _datetime(query.start_ns),
        "p_stop": _datetime(query.end_ns),
        "p_site": query.site,
    }
    if query.device is not None:
        text += _BY_DEVICE
        params["p_device"] = query.device
    if query.measurement is not None:
        text += _BY_MEASUREMENT
        params["p_measurement"] = query.measurement
    return text + _TAIL, params


def _datetime(ts_ns: int) -> datetime:
    # Flux times in parameters go as RFC 3339 with microseconds; round up so that an
    # exclusive bound never takes in a reading before it.
    us = -(-ts_ns // 1000)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def parse_rfc3339_ns(text: str) -> int:
    """``2026-11-23T06:08:59.626000001Z`` to integer nanoseconds, without float rounding."""
    if text.endswith("Z"):
        text = text[:-1]
    base, _, frac = text.partition(".")
    seconds = int(datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp())
    return seconds * NS + int((frac + "000000000")[:9])


class FluxSource:
    """A ``ReadingSource`` over InfluxDB 2.x (the schema of README "InfluxDB schema");
    ``series`` give the units, which the database does not keep."""

    def __init__(self, settings: InfluxSettings, series: Sequence[Series]) -> None:
        self.settings = settings
        self._units = {
            (s.key.site, s.key.device, s.key.channel, s.key.measurement): s.unit for s in series
        }
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token,
            org=settings.org,
            timeout=int(settings.read_timeout.total_seconds() * 1000),
        )

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        text, params = flux_query(query)
        params["p_bucket"] = self.settings.bucket
        rows = self._client.query_api().query_csv(text, params=params, dialect=_DIALECT)
        index: dict[str, int] = {}
        for row in rows:
            if not row or not any(row):
                continue
            if "_time" in row and "_measurement" in row:
                index = {name: i for i, name in enumerate(row)}
                continue
            if not index:
                continue
            yield self._reading(row, index, query.site)

    def _reading(self, row: list[str], index: dict[str, int], site: str) -> StoredReading:
        def col(name: str) -> str:
            i = index.get(name)
            return row[i] if i is not None and i < len(row) else ""

        device, channel, meas = col("device"), col("channel"), col("_measurement")
        anomaly = col("anomaly")
        score = col("score")
        return StoredReading(
            ts_ns=parse_rfc3339_ns(col("_time")),
            site=site,
            device=device,
            channel=channel,
            measurement=meas,
            unit=self._units.get((site, device, channel, meas), ""),
            value=float(col("value")),
            anomaly=int(anomaly) if anomaly else 0,
            score=float(score) if score else 0.0,
        )

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]
