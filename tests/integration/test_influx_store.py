"""``InfluxStore``: the journal, the drain, retries and the split of refused batches.

The write path runs against a real VictoriaMetrics process, which accepts the requests
influxdb-client sends to ``/api/v2/write``: the session's shared one, emptied for each test,
or one of the test's own where the test stops it. The refusal and retry paths run against
a small stand-in server (see ``InfluxStandIn`` for why).

All of this is ``InfluxStore``'s own (``SqliteStore`` has no journal to drain), so these
tests run on it alone; what both stores keep is in ``tests/unit/test_stores.py`` and
``tests/unit/test_pipeline.py``.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest

from devices.registry import Registry, parse_registry
from ingest.batch import ReadingBatch, Rejection
from ingest.retry import Backoff
from ingest.stores.influx import InfluxStore
from ingest.stores.lineprotocol import reading_line, reading_prefix
from ingest.stores.local import SqliteSettings
from tests.support.processes import VictoriaFactory
from tests.support.stores import DRAIN_TIMEOUT_S, influx_settings
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

REGISTRY_YAML = """
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      sg1:
        interval: 1s
        channels: {g1: [strain]}
        measurements: [temperature]
"""

# Whole milliseconds: VictoriaMetrics keeps timestamps in ms and cuts off the rest.
T0_NS = 1_700_000_000_000 * 1_000_000


@pytest.fixture(scope="module")
def registry() -> Registry:
    """One device with a channel's and a device's measurement: both tag layouts, and the
    exported series stay few enough to compare whole."""
    return parse_registry(REGISTRY_YAML)


def _index(registry: Registry, channel: str, measurement: str) -> int:
    (series,) = (
        s for s in registry.series if s.key.channel == channel and s.key.measurement == measurement
    )
    return series.index


def readings(registry: Registry, start: int, count: int) -> ReadingBatch:
    """``count`` strain and ``count`` temperature readings, one per second from ``start``.

    Values, flags and scores differ per reading, and are exact in binary and decimal, so
    a stored value can be compared with ``==``.
    """
    strain = _index(registry, "g1", "strain")
    temperature = _index(registry, "", "temperature")
    seconds = np.arange(start, start + count, dtype=np.int64)
    ts = T0_NS + seconds * 1_000_000_000
    return ReadingBatch(
        series=np.concatenate([np.full(count, strain), np.full(count, temperature)]).astype(
            np.int32
        ),
        ts_ns=np.concatenate([ts, ts]),
        values=np.concatenate([100.25 + seconds, -3.5 + seconds / 4]).astype(np.float64),
        flags=np.concatenate([seconds % 4, np.zeros(count)]).astype(np.int32),
        scores=np.concatenate([(seconds % 8) / 8, np.zeros(count)]).astype(np.float32),
    )


def quarantine(store: InfluxStore) -> list[tuple[str, bytes, str, str]]:
    conn = store.db.connect()
    try:
        return [
            (topic, bytes(payload), reason, detail)
            for topic, payload, reason, detail in conn.execute(
                "SELECT topic, payload, reason, detail FROM quarantine ORDER BY id"
            )
        ]
    finally:
        conn.close()


def drained(store: InfluxStore) -> None:
    wait_until(lambda: store.journal_depth() == 0, DRAIN_TIMEOUT_S, "the journal to drain")


# -- against VictoriaMetrics -------------------------------------------------------------


def open_store(vm: VictoriaMetrics, tmp_path: Path, registry: Registry) -> InfluxStore:
    return InfluxStore(
        influx_settings(vm.url), SqliteSettings(tmp_path / "journal.db"), registry.series
    )


@pytest.fixture
def influx_store(
    victoria: VictoriaMetrics, tmp_path: Path, registry: Registry
) -> Iterator[InfluxStore]:
    """Not started: each test starts it when it wants the drain to run."""
    s = open_store(victoria, tmp_path, registry)
    try:
        yield s
    finally:
        s.close()


def stored(vm: VictoriaMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]:
    """``(name, labels) -> [(ts_ms, value), ...]`` of everything at site b1."""
    out = {}
    for item in vm.export('{site="b1"}'):
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        out[(name, tuple(sorted(labels.items())))] = sorted(
            zip(item["timestamps"], item["values"], strict=True)
        )
    return out


def expected(batch: ReadingBatch, registry: Registry) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = {}
    for i in range(len(batch)):
        s = registry.series[int(batch.series[i])]
        labels = {"kind": str(s.kind), "site": s.key.site, "device": s.key.device}
        if s.key.channel:
            labels["channel"] = s.key.channel
        key = tuple(sorted(labels.items()))
        ts_ms = int(batch.ts_ns[i]) // 1_000_000
        for field, value in (
            ("value", float(batch.values[i])),
            ("anomaly", float(batch.flags[i])),
            ("score", float(batch.scores[i])),
        ):
            out.setdefault((f"{s.key.measurement}_{field}", key), []).append((ts_ms, value))
    return {k: sorted(v) for k, v in out.items()}


def concat(batches: Sequence[ReadingBatch]) -> ReadingBatch:
    return ReadingBatch(
        series=np.concatenate([b.series for b in batches]),
        ts_ns=np.concatenate([b.ts_ns for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        flags=np.concatenate([b.flags for b in batches]),
        scores=np.concatenate([b.scores for b in batches]),
    )


@pytest.mark.integration
def test_committed_readings_arrive_with_exact_values_timestamps_and_labels(
    influx_store: InfluxStore, victoria: VictoriaMetrics, registry: Registry
) -> None:
    store = influx_store
    batch = readings(registry, 0, 50)
    store.start()
    store.commit(batch, [])
    drained(store)

    assert stored(victoria) == expected(batch, registry)
    assert store.stats.points_written == len(batch)
    assert store.stats.last_write_error is None


@pytest.mark.integration
def test_database_outage_grows_the_journal_and_every_reading_arrives_once(
    victoria_factory: VictoriaFactory, tmp_path: Path, registry: Registry
) -> None:
    """VictoriaMetrics deduplicates a re-sent point, so the export alone cannot show that
    nothing was sent twice; ``points_written`` counting every reading once does."""
    victoria = victoria_factory()  # its own: the test stops it
    store = open_store(victoria, tmp_path, registry)
    try:
        before = readings(registry, 0, 20)
        store.start()
        store.commit(before, [])
        drained(store)

        victoria.stop()
        during = [readings(registry, 20 + 30 * k, 30) for k in range(4)]
        for k, batch in enumerate(during, start=1):
            store.commit(batch, [])  # the durable commit does not wait for the database
            assert store.journal_depth() == 60 * k
        wait_until(lambda: store.stats.write_retries >= 2, DRAIN_TIMEOUT_S, "write retries")
        assert store.stats.last_write_error is not None
        assert store.journal_depth() == 240

        victoria.start()
        drained(store)

        everything = concat([before, *during])
        assert stored(victoria) == expected(everything, registry)
        assert store.stats.points_written == len(everything)
        assert store.stats.points_quarantined == 0
        assert store.stats.last_write_error is None
    finally:
        store.close()


@pytest.mark.integration
def test_journal_survives_a_restart_of_the_store(
    victoria: VictoriaMetrics, tmp_path: Path, registry: Registry
) -> None:
    """Rows committed but never drained are sent by the next process on the same file."""
    settings = influx_settings(victoria.url)
    local = SqliteSettings(tmp_path / "journal.db")
    batch = readings(registry, 0, 25)
    first = InfluxStore(settings, local, registry.series)
    first.commit(batch, [])  # never started: the rows stay in the journal
    first.close()

    second = InfluxStore(settings, local, registry.series)
    try:
        assert second.journal_depth() == len(batch)
        second.start()
        drained(second)
    finally:
        second.close()
    assert stored(victoria) == expected(batch, registry)


# -- against a stand-in for refusals and throttling --------------------------------------

MARKER = "value=-12345.5"
REFUSAL_MESSAGE = "failure writing points to database: partial write: field type conflict"


class InfluxStandIn:
    """A minimal ``/api/v2/write`` on a free loopback port.

    VictoriaMetrics cannot play these parts: it answers 204 to lines it cannot use, and
    never 422 or 429. This server refuses, as InfluxDB refuses a field type conflict, every
    request holding a line with ``MARKER`` (400 for a batch, 422 for the line alone), and
    answers the queued ``failures`` (status, headers) to the first requests. It stores the
    lines of accepted requests only, so a line sent twice shows up twice.
    """

    def __init__(self, failures: Sequence[tuple[int, dict[str, str]]] = ()) -> None:
        self.accepted: list[str] = []
        self.statuses: list[int] = []
        self.times: list[float] = []
        self._failures = list(failures)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def respond(self, path: str, body: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.times.append(time.monotonic())
            status, headers, payload = self._decide(path, body)
            self.statuses.append(status)
            return status, headers, payload

    def _decide(self, path: str, body: str) -> tuple[int, dict[str, str], bytes]:
        if not path.startswith("/api/v2/write?"):
            return 404, {}, b""
        if self._failures:
            status, headers = self._failures.pop(0)
            return status, headers, json.dumps({"code": "x", "message": "try later"}).encode()
        lines = body.split("\n")
        if any(MARKER in line for line in lines):
            status = 422 if len(lines) == 1 else 400
            return status, {}, json.dumps({"code": "invalid", "message": REFUSAL_MESSAGE}).encode()
        self.accepted.extend(lines)
        return 204, {}, b""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, headers, payload = stand_in.respond(self.path, body.decode())
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output to what failed."""

        return Handler


def lines_of(batch: ReadingBatch, registry: Registry) -> list[str]:
    """The lines the store is expected to send for ``batch``."""
    out = []
    for i in range(len(batch)):
        s = registry.series[int(batch.series[i])]
        prefix = reading_prefix(
            str(s.kind), s.key.site, s.key.device, s.key.channel, s.key.measurement
        )
        out.append(
            reading_line(
                prefix,
                int(batch.ts_ns[i]),
                float(batch.values[i]),
                int(batch.flags[i]),
                float(batch.scores[i]),
            )
        )
    return out


@pytest.mark.integration
def test_throttling_and_server_errors_are_retried_and_refused_points_quarantined(
    tmp_path: Path, registry: Registry
) -> None:
    failures = [(503, {}), (503, {}), (429, {"Retry-After": "1"}), (500, {})]
    with InfluxStandIn(failures) as server:
        store = InfluxStore(
            influx_settings(server.url, chunk_size=64),
            SqliteSettings(tmp_path / "journal.db"),
            registry.series,
        )
        try:
            batch = readings(registry, 0, 100)
            bad = [3, 77, 150]  # two strain readings and one temperature reading
            batch.values[bad] = -12345.5
            lines = lines_of(batch, registry)
            rejected = [Rejection("stadtpuls/bridge/b1/sg1", b"{", "not_json", "x", 1)]
            store.start()
            store.commit(batch, rejected)
            drained(store)

            good = [line for i, line in enumerate(lines) if i not in bad]
            assert Counter(server.accepted) == Counter(good)
            assert max(Counter(server.accepted).values()) == 1

            records = quarantine(store)
            assert records[0][2] == "not_json"  # the batch's own rejection, committed with it
            refused = records[1:]
            assert sorted(r[1].decode() for r in refused) == sorted(lines[i] for i in bad)
            assert {r[0] for r in refused} == {"influxdb/strain", "influxdb/temperature"}
            assert all(r[2] == "store_rejected" for r in refused)
            assert all(r[3] == f"422 {REFUSAL_MESSAGE}" for r in refused)

            assert server.statuses[:4] == [503, 503, 429, 500]
            assert store.stats.write_retries == 4
            assert store.stats.points_quarantined == 3
            assert store.stats.points_written == len(good)
            assert store.stats.last_write_error is None
            # Backoff here is at most 50 ms, so a full second can only be Retry-After: the
            # throttled chunk went out again a second later (several chunks are written at
            # once, so other requests may come in between).
            assert server.times[-1] - server.times[2] >= 1.0
        finally:
            store.close()


@pytest.mark.integration
@pytest.mark.parametrize("built_by", ["memory", "sqlite"])
def test_lines_carry_every_double_exactly(
    tmp_path: Path, registry: Registry, built_by: str
) -> None:
    """Lines come from the committed batch in memory (``memory``: the drain is running when
    the batch is committed) or, for rows found in the journal at start, are built by SQLite
    (``sqlite``): either way their floats read back as the very doubles committed, and the
    rest of each line is what ``reading_line`` writes."""
    rng = np.random.default_rng(5)
    wide = 10 ** rng.uniform(-320, 308, 3000) * rng.choice([-1, 1], 3000)
    awkward = [0.1, 2 / 3, 1e-300, 5e-324, sys.float_info.max, -2.5e17, 123456.789012345, 1e16]
    awkward += wide.tolist()
    batch = readings(registry, 0, len(awkward))
    n = len(awkward)
    batch.values[:n] = awkward
    with np.errstate(over="ignore"):  # the widest doubles become infinite float32 scores
        batch.scores[:n] = np.array(awkward, dtype=np.float32) / np.float32(7)
    finite = np.isfinite(batch.scores)
    batch = ReadingBatch(
        batch.series[finite],
        batch.ts_ns[finite],
        batch.values[finite],
        batch.flags[finite],
        batch.scores[finite],
    )
    local = SqliteSettings(tmp_path / "journal.db")
    with InfluxStandIn() as server:
        settings = influx_settings(server.url)
        if built_by == "sqlite":
            unstarted = InfluxStore(settings, local, registry.series)
            unstarted.commit(batch, [])
            unstarted.close()
        store = InfluxStore(settings, local, registry.series)
        try:
            store.start()
            if built_by == "memory":
                store.commit(batch, [])
            drained(store)
        finally:
            store.close()

    def parts(line: str) -> tuple[str, dict[str, str], str]:
        prefix, fields, ts = line.split(" ")
        return prefix, dict(f.split("=") for f in fields.split(",")), ts

    sent = sorted((parts(line) for line in server.accepted), key=lambda p: (p[0], p[2]))
    expected = sorted(
        (parts(line) for line in lines_of(batch, registry)), key=lambda p: (p[0], p[2])
    )
    assert [(p, ts) for p, _, ts in sent] == [(p, ts) for p, _, ts in expected]
    for (_, got, _), (_, want, _) in zip(sent, expected, strict=True):
        assert got["anomaly"] == want["anomaly"]
        assert float(got["value"]) == float(want["value"])
        assert float(got["score"]) == float(want["score"])
    if built_by == "memory":
        assert Counter(server.accepted) == Counter(lines_of(batch, registry))


@pytest.mark.integration
def test_a_chunk_from_memory_spans_many_small_batches(tmp_path: Path, registry: Registry) -> None:
    """Batches of a few readings (a city at 1 Hz, or the backlog of an outage) go out
    ``chunk_size`` lines a request, not one request per batch: 60 batches of 20 readings
    with chunk_size 500 are three requests, each line as ``reading_line`` writes it."""
    batches = [readings(registry, 10 * k, 10) for k in range(60)]
    with InfluxStandIn() as server:
        store = InfluxStore(
            influx_settings(server.url, chunk_size=500),
            SqliteSettings(tmp_path / "journal.db"),
            registry.series,
        )
        try:
            for batch in batches:
                store.commit(batch, [])  # not started: the backlog waits in memory too
            store.start()
            drained(store)
        finally:
            store.close()
    assert server.statuses == [204, 204, 204]
    # Four writers: the requests may reach the server in any order.
    assert Counter(server.accepted) == Counter(lines_of(concat(batches), registry))


def journal_ids(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        return [int(i) for (i,) in conn.execute("SELECT id FROM journal ORDER BY id")]


@pytest.mark.integration
def test_written_rows_leave_the_journal_and_their_ids_are_never_given_again(
    tmp_path: Path, registry: Registry
) -> None:
    """Written rows are deleted once the drain runs out of work; a batch committed after
    the journal was empty gets new ids (``AUTOINCREMENT``), so a batch the drain still
    holds in memory can never be taken for another one's rows. Every line is sent once."""
    local = SqliteSettings(tmp_path / "journal.db")
    first, second = readings(registry, 0, 30), readings(registry, 30, 30)
    with InfluxStandIn() as server:
        store = InfluxStore(influx_settings(server.url), local, registry.series)
        try:
            store.start()
            store.commit(first, [])
            drained(store)
            wait_until(lambda: not journal_ids(local.path), DRAIN_TIMEOUT_S, "rows deleted")
            store.stop()  # the next batch stays in the journal to be looked at
            store.commit(second, [])
            assert journal_ids(local.path) == list(range(len(first) + 1, 2 * len(first) + 1))
            store.start()
            drained(store)
            wait_until(lambda: not journal_ids(local.path), DRAIN_TIMEOUT_S, "rows deleted")
        finally:
            store.close()
    assert Counter(server.accepted) == Counter(lines_of(concat([first, second]), registry))


@pytest.mark.integration
def test_a_journal_from_before_autoincrement_keeps_its_rows(
    tmp_path: Path, registry: Registry
) -> None:
    """A journal created with plain ``INTEGER PRIMARY KEY`` ids is rebuilt at start with
    ``AUTOINCREMENT``, its rows and their ids kept, and drained as before."""
    local = SqliteSettings(tmp_path / "journal.db")
    batch = readings(registry, 0, 40)
    with InfluxStandIn() as server:
        settings = influx_settings(server.url)
        created = InfluxStore(settings, local, registry.series)  # series and prefixes
        ids = created.db.series_ids.tolist()
        created.close()
        with closing(sqlite3.connect(local.path)) as conn, conn:
            conn.execute("DROP TABLE journal")
            conn.execute(
                "CREATE TABLE journal (id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL, "
                "ts_ns INTEGER NOT NULL, value REAL NOT NULL, "
                "anomaly INTEGER NOT NULL DEFAULT 0, score REAL NOT NULL DEFAULT 0)"
            )
            conn.executemany(
                "INSERT INTO journal (id, series_id, ts_ns, value, anomaly, score) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (100 + i, ids[int(batch.series[i])], int(batch.ts_ns[i]),
                     float(batch.values[i]), int(batch.flags[i]), float(batch.scores[i]))
                    for i in range(len(batch))
                ],
            )  # fmt: skip
        store = InfluxStore(settings, local, registry.series)
        try:
            assert journal_ids(local.path) == list(range(100, 100 + len(batch)))
            with closing(sqlite3.connect(local.path)) as conn:
                (sql,) = conn.execute(
                    "SELECT sql FROM sqlite_master WHERE name = 'journal'"
                ).fetchone()
            assert "AUTOINCREMENT" in sql
            store.start()
            drained(store)
            more = readings(registry, 40, 5)
            store.commit(more, [])  # after the kept ids, not from 1 again
            drained(store)
        finally:
            store.close()
    assert Counter(server.accepted) == Counter(lines_of(concat([batch, more]), registry))


@pytest.mark.integration
def test_stop_interrupts_a_long_backoff_and_loses_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    with InfluxStandIn([(429, {"Retry-After": "3600"})]) as server:
        settings = influx_settings(server.url)
        local = SqliteSettings(tmp_path / "journal.db")
        batch = readings(registry, 0, 10)
        store = InfluxStore(settings, local, registry.series)
        try:
            store.start()
            store.commit(batch, [])
            wait_until(lambda: server.statuses == [429], DRAIN_TIMEOUT_S, "the throttled write")
            started = time.monotonic()
            store.stop()
            assert time.monotonic() - started < 5.0
            assert store.journal_depth() == len(batch)

            store.start()  # the server accepts now; the same rows go out once
            drained(store)
            assert Counter(server.accepted) == Counter(lines_of(batch, registry))
            assert server.statuses == [429, 204]
        finally:
            store.close()


def test_backoff_stays_under_its_exponential_ceiling() -> None:
    retry = Backoff(initial=timedelta(seconds=0.2), maximum=timedelta(seconds=30), multiplier=2)
    rng = random.Random(7)
    for attempt in range(200):
        ceiling = min(30.0, 0.2 * 2**attempt)
        delays = [retry.delay(attempt, rng).total_seconds() for _ in range(20)]
        assert all(0.0 <= d <= ceiling for d in delays)
    assert max(retry.delay(500, rng) for _ in range(200)) > timedelta(seconds=20)
