"""Round trip: a simulated school week goes through the real pipeline into SQLite, and comes
out of the export with the same values and timestamps in every format; German Excel's CSV
reads with pandas, Parquet with pyarrow and proper types. The week crosses the change to
summer time, so local times and the 23-hour day are checked on real data too.

SQLite only, not conftest's store on both: the export reads through the store's
``readings()``, which for ``InfluxStore`` is Flux, and VictoriaMetrics (the tests' InfluxDB)
has no Flux; the Flux it would send is checked in ``test_export_flux.py``."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from devices.codecs import DecodeLimits, Decoder
from devices.registry import Registry, parse_registry
from devices.simulator import Simulator
from devices.topics import TopicScheme
from export.formats import ExportFormat
from export.query import ExportRequest, Layout, Resolution, Statistic
from export.stream import ExportStats, export_stream
from ingest.anomaly import LimitCheck
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.pipeline import Pipeline
from ingest.stores.base import ReadingQuery, StoredReading
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.registry import REGISTRY_YAML

NS = 1_000_000_000
MIN = 60 * NS
HOUR = 60 * MIN
DAY = 24 * HOUR
# Monday 2026-03-23 00:00 UTC; summer time starts Sunday 2026-03-29 at 01:00 UTC.
WEEK = int(datetime(2026, 3, 23, tzinfo=UTC).timestamp()) * NS
DST_START = int(datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()) * NS
# Two hours of Wednesday's readings never arrive: a gap the export must show.
GAP = (WEEK + 2 * DAY + 10 * HOUR, WEEK + 2 * DAY + 12 * HOUR)

Key = tuple[int, str, str, float]  # ts_ns, device, measurement, value


@pytest.fixture(scope="module")
def registry() -> Registry:
    # The test registry's school alone: simulating its 1 Hz bridge for a week would take
    # most of the test's time.
    return parse_registry(
        REGISTRY_YAML[REGISTRY_YAML.index("  s1:") :].replace("  s1:", "sites:\n  s1:", 1)
    )


@pytest.fixture(scope="module")
def week(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[tuple[SqliteStore, list[Key]]]:
    """The store after a simulated week of school s1, and what the simulator published."""
    sim = Simulator(registry, TopicScheme(), seed=3, start_ns=WEEK, school_interval_s=60.0)
    messages = [
        m for m in sim.messages(WEEK + 7 * DAY) if m.site == "s1" and not GAP[0] <= m.t_ns < GAP[1]
    ]
    published: list[Key] = []
    for m in messages:
        pack = json.loads(m.payload)
        ts = round(pack[0]["bt"] * 1_000_000) * 1000
        published += [(ts, m.device, rec["n"], float(rec["v"])) for rec in pack]
    path = tmp_path_factory.mktemp("week") / "stadtpuls.db"
    store = SqliteStore(SqliteSettings(path, synchronous="OFF"), registry.series)
    pipeline = Pipeline(
        Decoder(registry, TopicScheme(), DecodeLimits()),
        LimitCheck(registry.series),
        store,
        IngestMetrics(),
    )
    for i in range(0, len(messages), 2000):
        batch = [InboundMessage(m.topic, m.payload, m.t_ns) for m in messages[i : i + 2000]]
        pipeline.commit(pipeline.prepare(batch))
    yield store, sorted(published)
    store.close()


def request(**kw: object) -> ExportRequest:
    args: dict[str, object] = {"site": "s1", "start_ns": WEEK, "end_ns": WEEK + 7 * DAY}
    args.update(kw)
    return ExportRequest(**args)  # type: ignore[arg-type]


def export(store: SqliteStore, registry: Registry, req: ExportRequest, fmt: ExportFormat) -> bytes:
    return b"".join(export_stream(store, registry, req, fmt))


def utc_ns(text: str, fmt: str) -> int:
    dt = datetime.strptime(text, fmt).replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS + dt.microsecond * 1000


def keys_from_records(records: list[dict[str, object]], fmt: str) -> list[Key]:
    return sorted(
        (utc_ns(str(r["time"]), fmt), str(r["device"]), str(r["measurement"]), float(r["value"]))  # type: ignore[arg-type]
        for r in records
    )


def test_published_week_comes_out_of_every_format_unchanged(
    week: tuple[SqliteStore, list[Key]], registry: Registry
) -> None:
    store, published = week
    assert len(published) > 25_000
    iso = "%Y-%m-%dT%H:%M:%S.%fZ"
    req = request()

    text = export(store, registry, req, ExportFormat.CSV).decode("utf-8")
    assert text.startswith("time,local_time,")
    assert keys_from_records(list(csv.DictReader(io.StringIO(text))), iso) == published

    for fmt in (ExportFormat.JSON, ExportFormat.NDJSON):
        raw = export(store, registry, req, fmt).decode("utf-8")
        records = (
            json.loads(raw)
            if fmt == ExportFormat.JSON
            else [json.loads(x) for x in raw.splitlines()]
        )
        assert keys_from_records(records, iso) == published

    german = export(store, registry, req, ExportFormat.CSV_DE)
    assert german.startswith(b"\xef\xbb\xbftime;local_time;")
    frame = pd.read_csv(io.BytesIO(german), sep=";", decimal=",", encoding="utf-8-sig")
    assert frame["value"].dtype == "float64"
    assert frame["score"].dtype == "float64"
    times = pd.to_datetime(frame["time"], format="%Y-%m-%d %H:%M:%S,%f", utc=True)
    got = sorted(
        zip(
            [int(t.value) for t in times],  # Timestamp.value is nanoseconds
            frame["device"],
            frame["measurement"],
            frame["value"],
            strict=True,
        )
    )
    assert got == published

    table = pq.read_table(io.BytesIO(export(store, registry, req, ExportFormat.PARQUET)))
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("local_time").type == pa.timestamp("us", tz="Europe/Berlin")
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("device").type == pa.string()
    us = table.column("time").cast(pa.int64()).to_pylist()
    got_pq = sorted(
        zip(
            [u * 1000 for u in us],
            table.column("device").to_pylist(),
            table.column("measurement").to_pylist(),
            table.column("value").to_pylist(),
            strict=True,
        )
    )
    assert got_pq == published

    bundle = zipfile.ZipFile(io.BytesIO(export(store, registry, req, ExportFormat.ZIP)))
    names = bundle.namelist()
    assert {"LIESMICH.txt", "README.txt", "data_dictionary.json"} <= set(names)
    (data_name,) = [n for n in names if n.endswith(".csv")]
    inner = pd.read_csv(io.BytesIO(bundle.read(data_name)), sep=";", decimal=",")
    assert len(inner) == len(published)
    dictionary = json.loads(bundle.read("data_dictionary.json"))
    assert dictionary["anomaly_flags"]["gap"]["bit"] == 128
    assert "dl-de/by-2-0" in dictionary["licence"]
    # Units as people write them (issue 14); the SenML name beside them for tools.
    assert {s["measurement"]: (s["unit"], s["senml_unit"]) for s in dictionary["series"]} == {
        "co2": ("ppm", "ppm"),
        "humidity": ("%", "%RH"),
        "temperature": ("°C", "Cel"),
    }
    assert "Lizenz" in bundle.read("LIESMICH.txt").decode("utf-8")


def test_local_time_follows_summer_time(
    week: tuple[SqliteStore, list[Key]], registry: Registry
) -> None:
    store, _ = week
    req = request(start_ns=DST_START - 2 * MIN, end_ns=DST_START + 2 * MIN, measurements=("co2",))
    rows = list(
        csv.DictReader(io.StringIO(export(store, registry, req, ExportFormat.CSV).decode()))
    )
    offsets = [r["local_time"][-6:] for r in rows]
    hours = [r["local_time"][11:13] for r in rows]
    assert offsets == ["+01:00", "+01:00", "+02:00", "+02:00"]
    assert hours == ["01", "01", "03", "03"]  # 02:xx does not exist that night


def test_day_buckets_are_berlin_days_and_gaps_are_empty(
    week: tuple[SqliteStore, list[Key]], registry: Registry
) -> None:
    store, published = week
    req = request(resolution=Resolution.DAY1, measurements=("co2",))
    rows = list(
        csv.DictReader(io.StringIO(export(store, registry, req, ExportFormat.CSV).decode()))
    )
    # The first bucket is the Berlin day holding the start (Monday 00:00 UTC is 01:00 there).
    assert rows[0]["local_time"] == "2026-03-23T00:00:00.000000+01:00"
    sunday = next(r for r in rows if r["local_time"].startswith("2026-03-29"))
    assert sunday["time"] == "2026-03-28T23:00:00.000000Z"
    assert int(sunday["expected"]) == 23 * 60  # the day summer time starts has 23 hours
    assert int(sunday["count"]) == 23 * 60
    co2 = [v for (_, _, m, v) in published if m == "co2"]
    assert sum(int(r["count"]) for r in rows) == len(co2)
    assert min(float(r["min"]) for r in rows) == min(co2)
    assert max(float(r["max"]) for r in rows) == max(co2)

    hourly = request(
        start_ns=GAP[0] - HOUR, end_ns=GAP[1] + HOUR, resolution=Resolution.HOUR1,
        measurements=("co2",),
    )  # fmt: skip
    rows = list(
        csv.DictReader(io.StringIO(export(store, registry, hourly, ExportFormat.CSV).decode()))
    )
    assert [(r["count"], r["expected"], r["mean"] == "") for r in rows] == [
        ("60", "60", False),
        ("0", "60", True),
        ("0", "60", True),
        ("60", "60", False),
    ]

    wide = request(
        start_ns=GAP[0] - HOUR, end_ns=GAP[1] + HOUR, resolution=Resolution.MIN15,
        layout=Layout.WIDE, statistic=Statistic.MAX,
    )  # fmt: skip
    frame = pd.read_csv(
        io.BytesIO(export(store, registry, wide, ExportFormat.CSV_DE)), sep=";", decimal=","
    )
    assert list(frame.columns) == [
        "time",
        "local_time",
        "room-1 co2 [ppm]",
        "room-1 humidity [%]",
        "room-1 temperature [°C]",
    ]
    assert len(frame) == 16
    assert frame["room-1 co2 [ppm]"].isna().tolist() == [False] * 4 + [True] * 8 + [False] * 4


class CountingSource:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.queries: list[ReadingQuery] = []

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        self.queries.append(query)
        return self.store.readings(query)


def test_export_streams_chunk_by_chunk(
    week: tuple[SqliteStore, list[Key]], registry: Registry
) -> None:
    """The first bytes are out before the source is asked for the rest of the week, and no
    query spans more than a day: memory follows the chunk, not the range."""
    store, published = week
    source = CountingSource(store)
    stats = ExportStats()
    chunks = export_stream(source, registry, request(), ExportFormat.CSV, stats=stats)
    next(chunks)
    next(chunks)
    assert len(source.queries) == 1
    for _ in chunks:
        pass
    assert len(source.queries) == 7
    assert all(q.end_ns - q.start_ns <= DAY for q in source.queries)
    assert stats.rows == len(published)


def test_unknown_room_or_measurement_is_refused(registry: Registry, tmp_path: Path) -> None:
    from export.query import ExportRefused

    store = SqliteStore(SqliteSettings(tmp_path / "x.db"), registry.series)
    try:
        for bad in ({"devices": ("room-9",)}, {"measurements": ("strain",)}, {"site": "b9"}):
            with pytest.raises(ExportRefused):
                export_stream(store, registry, request(**bad), ExportFormat.CSV)
    finally:
        store.close()
