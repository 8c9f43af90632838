"""``InfluxStore``: readings go to InfluxDB 2.x, through a durable local journal.

The delivery guarantee asks that a slow or dead database never holds back MQTT
acknowledgements, and that nothing is lost while it is away. So the store splits the job:

- ``commit`` is the durable commit: one SQLite transaction appends the batch's readings to
  the ``journal`` table and its rejections to the quarantine. It never talks to InfluxDB.
- A drain thread takes the journal in id order, ``chunk_size`` rows at a time, writes each
  chunk as line protocol (``ingest.stores.lineprotocol`` documents the schema) with one
  synchronous request, and deletes the rows only after InfluxDB accepted them. A crash
  between the write and the delete sends the chunk again, which overwrites the same points
  (measurement, tags and timestamp are the reading key), so each reading is stored once.
- The journal is what makes a batch durable, but the drain need not read it back: the
  commit hands each batch, with the ids its rows got, to the drain in memory as well
  (``_Committed``), and while the oldest rows left in the journal are the rows of such a
  batch, the chunk is formatted from the batch's arrays (``lineprotocol.reading_lines``)
  by the thread that sends it.
  Only rows whose batch is not in memory (found at start, or let go while the database
  was away, beyond ``_RECENT_ROWS``) are read back, and SQLite builds their lines
  (``_CHUNK``). Ids are ``AUTOINCREMENT``, never reused, so a batch's ids name its rows
  and no other; the drain checks that they are all still there before it trusts them.
  Reading the lines back cost 1.3-1.8 µs per reading of the drain's time, formatting them
  from memory about 0.5.
- Written rows are deleted in ranges of ``_DELETE_EVERY`` rows, or when the drain runs out
  of work, not one transaction per chunk: each delete waits for the write lock the commit
  holds, and one per chunk cost the drain 1.3 µs per reading. Rows written but not yet
  deleted are sent again after a crash, which overwrites them (see above).
- The next chunk is taken while the one before is being written (a second thread does the
  writing, in order), so the database's time to take a chunk and the time to build the
  next one overlap.

How a failed write is handled:

- 429, 5xx, timeouts, refused or reset connections, and any other status that says
  nothing about the data (401, 403, 404: a token or bucket the operator fixes while the
  journal holds the readings): retry the same chunk with full-jitter exponential backoff
  (``InfluxSettings.retry``, an ``ingest.retry.Backoff``), honouring ``Retry-After`` on
  429, and never give up; only ``stop`` interrupts the wait, and the chunk stays in the
  journal for the next start.
- 400, 413 and 422 are about the data (a parse error, a body too large, a field type
  conflict, a point outside the retention period): split the chunk in halves and write
  each; a single line the database still refuses is quarantined (reason
  ``store_rejected``, topic ``influxdb/<measurement>``, the line as payload) and deleted
  from the journal in the same transaction. So only the bad points leave the data path.
  InfluxDB OSS writes the good points of a refused batch anyway; writing them again in
  a half is harmless for the same reason as above.

influxdb-client is built with ``retries=False`` (its urllib3 pool then raises connection
errors at once, never retrying behind our back) and only its synchronous write API is used:
the batching ``WriteApi`` keeps batches in memory and drops them when its retries run out.

Reads (``readings``, for exports and the alert digest) go to InfluxDB through Flux
(``ingest.stores.flux``); readings still in the journal are not in them yet.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from devices.registry import Series
from ingest.batch import ReadingBatch, Rejection
from ingest.retry import Backoff, parse_retry_after
from ingest.stores.base import ReadingQuery, StoredReading, WriteStats
from ingest.stores.flux import FluxSource
from ingest.stores.lineprotocol import reading_lines, reading_prefix
from ingest.stores.local import LocalDatabase, LocallyCommitting, SqliteSettings

logger = logging.getLogger(__name__)

# AUTOINCREMENT: an id is never given twice, not even once the journal was empty, so the
# ids a committed batch got (``_Committed``) can only ever name its own rows.
_JOURNAL_TABLE = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_id INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    value REAL NOT NULL,
    anomaly INTEGER NOT NULL DEFAULT 0,
    score REAL NOT NULL DEFAULT 0
);
"""
# ``influx_series`` keeps each series' line prefix beside the journal, so rows committed
# before a registry edit removed their series can still be drained under their own tags.
_JOURNAL = (
    _JOURNAL_TABLE
    + """
CREATE TABLE IF NOT EXISTS influx_series (
    series_id INTEGER PRIMARY KEY,
    measurement TEXT NOT NULL,
    prefix TEXT NOT NULL
);
"""
)

# A journal row's line, as ``lineprotocol.reading_line`` builds it but for the floats:
# ``repr`` prints the shortest digits that read back as the same double; SQLite's printf
# is not correctly rounded at 17 digits (1 in 40 doubles of extreme magnitude came back
# different), at 18 every double of a wide sample did (``tests/integration/
# test_influx_store.py``). A row without a prefix gives NULL.
_LINE_SQL = (
    "s.prefix || ' value=' || printf('%!.18g', j.value) || ',anomaly=' || j.anomaly "
    "|| 'i,score=' || printf('%!.18g', j.score) || ' ' || j.ts_ns"
)
_ROWS_AFTER = (
    "FROM journal j LEFT JOIN influx_series s ON s.series_id = j.series_id "
    "WHERE j.id > ? ORDER BY j.id LIMIT ?"
)
# The oldest rows after an id as one body: first and last id, rows, lines, body. SQLite
# (3.40 here) has no ORDER BY inside group_concat; it concatenates in the order the
# subquery yields, which is id order.
_CHUNK = (
    "SELECT min(id), max(id), count(*), count(line), group_concat(line, char(10)) FROM "
    f"(SELECT j.id AS id, {_LINE_SQL} AS line {_ROWS_AFTER})"
)
# The same rows one line each, to split a chunk the database refused.
_LINES = f"SELECT j.id, s.measurement, {_LINE_SQL} {_ROWS_AFTER}"

# Requests under way at once: the database parses one chunk while it takes another, and a
# chunk from memory is formatted by its writer while the others wait for the database.
# Two writers that did not format stored block streams at 195-250k readings/s into
# VictoriaMetrics in `make bench`; four that format, 245-250k in every run.
_WRITERS = 4

# Committed batches kept for the drain, in readings (28 bytes each): beyond this, while
# the database is away, the oldest are let go and their rows read back from the journal.
_RECENT_ROWS = 2_000_000

# Written rows are deleted from the journal in one transaction once this many are waiting.
_DELETE_EVERY = 500_000

_NO_ID_LIMIT = 2**63 - 1

_INSERT = "INSERT INTO journal (series_id, ts_ns, value, anomaly, score) VALUES (?, ?, ?, ?, ?)"

# Statuses that are about the data of the request, not the state of the server: sending
# the same body again cannot succeed, sending less of it can.
_REFUSED_STATUSES = frozenset({400, 413, 422})

QUARANTINE_REASON = "store_rejected"

# A read scans up to a day of a site's readings, so it waits at least this long even when
# writes are set to give up sooner.
_MIN_READ_TIMEOUT = timedelta(seconds=30)


# A failed write is retried without end, after 0.2 s rising to 30 s (full jitter).
WRITE_RETRY = Backoff(initial=timedelta(seconds=0.2), maximum=timedelta(seconds=30))


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """The InfluxDB 2.x database: where it is, and how the store writes to it and reads
    from it (the ``influxdb`` section of the settings)."""

    url: str
    org: str
    bucket: str
    token: str = field(repr=False)
    timeout: timedelta = timedelta(seconds=10)
    chunk_size: int = 5000
    # The drain is woken by every commit; the poll only catches what a wake-up missed.
    poll_interval: timedelta = timedelta(seconds=1)
    retry: Backoff = WRITE_RETRY

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("influx chunk_size must be at least 1")
        if self.timeout <= timedelta(0) or self.poll_interval <= timedelta(0):
            raise ValueError("influx timeout and poll_interval must be positive")
        if self.retry.initial <= timedelta(0):
            raise ValueError("influx retry backoff needs 0 < initial <= maximum")

    @property
    def read_timeout(self) -> timedelta:
        return max(self.timeout, _MIN_READ_TIMEOUT)


@dataclass(frozen=True, slots=True)
class _Line:
    journal_id: int
    measurement: str
    text: str


@dataclass(frozen=True, slots=True)
class _Committed:
    """A batch the commit made durable: journal rows ``first_id`` to ``last_id`` are its
    readings, in order."""

    first_id: int
    last_id: int
    batch: ReadingBatch


@dataclass(frozen=True, slots=True)
class _Chunk:
    first_id: int
    last_id: int
    rows: int
    # Parts of committed batches are formatted by the writer thread that sends them.
    body: str | tuple[_Part, ...]


@dataclass(frozen=True, slots=True)
class _Part:
    """Readings ``start`` to ``end`` of a committed batch, not yet formatted."""

    batch: ReadingBatch
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    message: str


class _Stopping(Exception):
    """Raised inside the drain when ``stop`` interrupts a backoff wait."""


class InfluxStore(LocallyCommitting):
    def __init__(
        self, settings: InfluxSettings, local: SqliteSettings, series: Sequence[Series]
    ) -> None:
        self.settings = settings
        super().__init__(LocalDatabase(local, series, _JOURNAL), _INSERT)
        self.stats = WriteStats()  # the drain thread's counters
        self._flux = FluxSource(settings, series)
        _never_reuse_ids(self.db)
        # Each series' line prefix, by registry index, for chunks built from memory.
        self._prefix_of = np.array(self._register_prefixes(series), dtype=object)
        self._reader = self.db.connect()
        (count, last_id) = self._reader.execute(
            "SELECT count(*), coalesce(max(id), 0) FROM journal"
        ).fetchone()
        # Rows appended to the journal and drained from it (written to InfluxDB, or
        # quarantined) by this process, the rows found at start counting as appended: the
        # drain is in id order, so a commit's rows are in InfluxDB once ``removed`` reaches
        # what ``appended`` was right after that commit. Each has one writer (the commit
        # thread, the drain thread), so no lock is needed.
        self._appended = int(count)
        self._removed = 0
        # Committed batches not yet drained, oldest first (the commit thread appends, the
        # drain takes), and their readings.
        self._recent: deque[_Committed] = deque()
        self._recent_rows = 0
        self._recent_lock = threading.Lock()
        # The last journal id the commit has reported: rows with larger ids are durable
        # and about to be handed over, so the drain waits for them rather than read them.
        self._reported_id = int(last_id)
        # The drain thread's own: every row up to ``_drained_id`` is in InfluxDB or the
        # quarantine, and the range ``_undeleted`` of them is still in the journal.
        self._drained_id = 0
        self._undeleted: tuple[int, int] | None = None
        self._undeleted_rows = 0
        self._drain_listeners: list[Callable[[int], None]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _register_prefixes(self, series: Sequence[Series]) -> list[str]:
        """Store each series' line prefix beside the journal; the prefixes, in order."""
        rows = [
            (
                sid,
                s.key.measurement,
                reading_prefix(
                    str(s.kind), s.key.site, s.key.device, s.key.channel, s.key.measurement
                ),
            )
            for sid, s in zip(self.db.series_ids.tolist(), series, strict=True)
        ]
        with self.db.transaction() as cur:
            # The registry is the truth for series it names (a site's kind may change);
            # rows of series it no longer names keep the prefix they were committed under.
            cur.executemany(
                "INSERT INTO influx_series (series_id, measurement, prefix) VALUES (?, ?, ?) "
                "ON CONFLICT (series_id) DO UPDATE SET "
                "measurement = excluded.measurement, prefix = excluded.prefix",
                rows,
            )
        return [prefix for _, _, prefix in rows]

    # -- the durable commit (``LocallyCommitting.commit``) ---------------------------------

    @property
    def appended(self) -> int:
        return self._appended

    def on_drained(self, listener: Callable[[int], None]) -> None:
        """Have ``listener(removed)`` called on the drain's thread after each removal."""
        self._drain_listeners.append(listener)

    def committed(self, batch: ReadingBatch, last_rowid: int | None) -> None:
        readings = len(batch)
        self._appended += readings
        if not readings:
            return
        with self._recent_lock:
            if last_rowid is None:  # not from a journal insert: let the drain read them all
                self._reported_id = _NO_ID_LIMIT
            else:
                # One transaction gave the rows consecutive ids, ending at the last one's.
                self._recent.append(_Committed(last_rowid - readings + 1, last_rowid, batch))
                self._recent_rows += readings
                self._reported_id = max(self._reported_id, last_rowid)
                while self._recent_rows > _RECENT_ROWS:
                    self._recent_rows -= len(self._recent.popleft().batch)
        self._wake.set()

    def journal_depth(self) -> int:
        # The drain may delete a batch's rows before commit adds them to the counter;
        # the dip is momentary, and the metric must never read negative.
        return max(self._appended - self._removed, 0)

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        return self._flux.readings(query)

    # -- the drain thread -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        # Built here, not in the thread, so a setting the client refuses fails the caller.
        client = InfluxDBClient(
            url=self.settings.url,
            token=self.settings.token,
            org=self.settings.org,
            timeout=int(self.settings.timeout.total_seconds() * 1000),
            retries=False,
        )
        self._thread = threading.Thread(
            target=self._drain_loop, args=(client,), name="influx-drain", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the drain; returns within one request timeout (a write under way finishes).

        Rows not yet accepted stay in the journal and are sent after the next ``start``.
        """
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join()
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._flux.close()
        self._reader.close()
        self.db.close()

    def _drain_loop(self, client: InfluxDBClient) -> None:
        # The thread owns its client: when it ends, the client is closed and released while
        # the interpreter is whole, not by its __del__ at interpreter exit. One write API per
        # writer, so no two requests share one.
        apis: queue.SimpleQueue[WriteApi] = queue.SimpleQueue()
        for _ in range(_WRITERS):
            apis.put(client.write_api(write_options=SYNCHRONOUS))
        try:
            self._drain_until_stopped(apis)
        finally:
            try:
                self._delete_written()
            except sqlite3.Error:  # they are sent again after the next start: harmless
                logger.exception("could not delete written rows from the journal")
            while not apis.empty():
                # influxdb-client leaves these two unannotated.
                apis.get().close()  # type: ignore[no-untyped-call]
            client.close()  # type: ignore[no-untyped-call]

    def _drain_until_stopped(self, apis: queue.SimpleQueue[WriteApi]) -> None:
        failures = 0
        # Chunks being written, oldest first. Up to ``_WRITERS`` requests are under way at
        # once, so the database takes one chunk while it takes another; they are settled
        # (deleted from the journal) in id order all the same, as ``removed`` counts rows
        # in journal order.
        writing: deque[tuple[_Chunk, Future[_Refusal | None]]] = deque()
        with ThreadPoolExecutor(_WRITERS, thread_name_prefix="influx-write") as writers:
            while not self._stopping.is_set():
                chunk = None
                try:
                    if len(writing) < _WRITERS:
                        # Rows after those being written or drained: ids only grow.
                        after = writing[-1][0].last_id if writing else self._drained_id
                        chunk = self._next_chunk(after)
                        if chunk is not None:
                            writing.append((chunk, writers.submit(self._send, apis, chunk)))
                    if writing and (chunk is None or len(writing) >= _WRITERS):
                        oldest, done = writing[0]
                        refusal = done.result()
                        if refusal is None:
                            self._settle(oldest.first_id, oldest.last_id, oldest.rows, [])
                            self.stats.points_written += oldest.rows
                        else:
                            self._split(apis, oldest, refusal)
                        writing.popleft()
                except _Stopping:
                    return
                # The drain's one catch-all: a dead thread would let the journal grow
                # unnoticed, while the rows are safe where they are, so log it, back off and
                # start again from the oldest row.
                except Exception as exc:
                    for _, later in writing:
                        with contextlib.suppress(Exception):
                            later.result()
                    writing.clear()
                    failures += 1
                    self.stats.last_write_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("influx drain failed; retrying", extra={"failures": failures})
                    self._stopping.wait(self.settings.retry.delay(failures).total_seconds())
                    continue
                failures = 0
                if chunk is None and not writing:
                    self._delete_written()
                    self._wake.wait(self.settings.poll_interval.total_seconds())
                    self._wake.clear()

    def _next_chunk(self, after_id: int) -> _Chunk | None:
        """The oldest ``chunk_size`` journal rows after ``after_id``, as one body: from
        memory when a committed batch holds them, else read back."""
        (first,) = self._reader.execute(
            "SELECT min(id) FROM journal WHERE id > ?", (after_id,)
        ).fetchone()
        if first is None:
            return None
        with self._recent_lock:
            reported = self._reported_id
        if first > reported:
            return None  # a commit that has not reported yet; ``committed`` wakes the drain
        return self._chunk_in_memory(int(first)) or self._read_chunk(after_id)

    def _chunk_in_memory(self, first_id: int) -> _Chunk | None:
        # A chunk spans consecutive batches: at a few readings a batch (a city at 1 Hz, or
        # the backlog after an outage) one request per batch would be hundreds a second.
        parts: list[_Part] = []
        rows = 0
        with self._recent_lock:
            while self._recent and self._recent[0].last_id < first_id:
                self._recent_rows -= len(self._recent.popleft().batch)
            next_id = first_id
            for held in self._recent:
                if rows == self.settings.chunk_size or not (
                    held.first_id <= next_id <= held.last_id
                ):
                    break
                take = min(self.settings.chunk_size - rows, held.last_id - next_id + 1)
                start = next_id - held.first_id
                parts.append(_Part(held.batch, start, start + take))
                rows += take
                next_id += take
        if not parts:
            return None
        last_id = first_id + rows - 1
        (present,) = self._reader.execute(
            "SELECT count(*) FROM journal WHERE id BETWEEN ? AND ?", (first_id, last_id)
        ).fetchone()
        if present != rows:
            # Not expected with AUTOINCREMENT ids; the journal is the truth, so read it.
            logger.warning(
                "journal rows differ from the batch committed under their ids; reading them",
                extra={"first_id": first_id, "rows": rows, "present": present},
            )
            with self._recent_lock:
                self._recent.clear()
                self._recent_rows = 0
            return None
        return _Chunk(first_id, last_id, rows, tuple(parts))

    def _format(self, parts: Sequence[_Part]) -> str:
        return "\n".join(
            reading_lines(
                self._prefix_of[part.batch.series[part.start : part.end]].tolist(),
                part.batch.ts_ns[part.start : part.end].tolist(),
                part.batch.values[part.start : part.end].tolist(),
                part.batch.flags[part.start : part.end].tolist(),
                part.batch.scores[part.start : part.end].tolist(),
            )
            for part in parts
        )

    def _read_chunk(self, after_id: int) -> _Chunk | None:
        """The oldest ``chunk_size`` journal rows after ``after_id``, as one body that
        SQLite builds."""
        first, last, rows, lines, body = self._reader.execute(
            _CHUNK, (after_id, self.settings.chunk_size)
        ).fetchone()
        if not rows:
            return None
        if lines != rows:
            raise RuntimeError("journal rows of a series without a line prefix")
        return _Chunk(int(first), int(last), int(rows), str(body))

    def _send(self, apis: queue.SimpleQueue[WriteApi], chunk: _Chunk) -> _Refusal | None:
        """Write a chunk whole: ``None`` once the database took it, else its refusal
        (``_split`` then finds the bad lines, in order with the other chunks)."""
        write_api = apis.get()
        try:
            if self._stopping.is_set():
                raise _Stopping
            body = chunk.body if isinstance(chunk.body, str) else self._format(chunk.body)
            return self._write(write_api, body, chunk.rows)
        finally:
            apis.put(write_api)

    def _split(self, apis: queue.SimpleQueue[WriteApi], chunk: _Chunk, refusal: _Refusal) -> None:
        """Find the bad lines of a refused chunk (``_write_or_split``)."""
        # A connection of its own: the drain's reader may be in the middle of a read.
        conn = self.db.connect()
        try:
            lines = [
                _Line(int(i), str(measurement), str(text))
                for i, measurement, text in conn.execute(_LINES, (chunk.first_id - 1, chunk.rows))
            ]
        finally:
            conn.close()
        write_api = apis.get()
        try:
            self._write_or_split(write_api, lines, refusal)
        finally:
            apis.put(write_api)

    def _write_or_split(
        self, write_api: WriteApi, lines: list[_Line], refused: _Refusal | None = None
    ) -> None:
        """Write ``lines``, or halve them until the lines the database refuses on their own
        are found and quarantined. ``refused``: its answer to all of them, if already sent."""
        if self._stopping.is_set():
            raise _Stopping
        refusal = refused or self._write(
            write_api, "\n".join(line.text for line in lines), len(lines)
        )
        if refusal is None:
            self.stats.points_written += len(lines)
            self._settle(lines[0].journal_id, lines[-1].journal_id, len(lines), [])
        elif len(lines) == 1:
            (line,) = lines
            logger.warning(
                "InfluxDB refused a point; quarantined",
                extra={"status": refusal.status, "error": refusal.message, "line": line.text},
            )
            rejection = Rejection(
                topic=f"influxdb/{line.measurement}",
                payload=line.text.encode(),
                reason=QUARANTINE_REASON,
                detail=f"{refusal.status} {refusal.message}",
                received_ns=time.time_ns(),
            )
            self._settle(line.journal_id, line.journal_id, 1, [rejection])
            self.stats.points_quarantined += 1
        else:
            half = len(lines) // 2
            self._write_or_split(write_api, lines[:half])
            self._write_or_split(write_api, lines[half:])

    def _settle(
        self, first_id: int, last_id: int, rows: int, rejected: Sequence[Rejection]
    ) -> None:
        """Count ``rows`` (every journal row from ``first_id`` to ``last_id``) as drained.

        Quarantined rows are deleted at once: a quarantine record and the deletion of its
        row commit together, so a refused point is never both lost and unrecorded. Written
        rows join the range deleted later (``_delete_written``)."""
        if rejected:
            with self.db.transaction() as cur:
                cur.execute("DELETE FROM journal WHERE id BETWEEN ? AND ?", (first_id, last_id))
                self.db.add_rejections(cur, rejected)
        else:
            start = first_id if self._undeleted is None else self._undeleted[0]
            self._undeleted = (start, last_id)
            self._undeleted_rows += rows
        self._drained_id = last_id
        self._removed += rows
        for listener in self._drain_listeners:
            listener(self._removed)
        if self._undeleted_rows >= _DELETE_EVERY:
            self._delete_written()

    def _delete_written(self) -> None:
        """Delete the written rows still in the journal. They are the oldest in id order,
        so they are every row between the first and the last: one statement, not one per
        row, which would hand the GIL back and wait for it again at every row."""
        if self._undeleted is None:
            return
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM journal WHERE id BETWEEN ? AND ?", self._undeleted)
        self._undeleted = None
        self._undeleted_rows = 0

    def _write(self, write_api: WriteApi, body: str, points: int) -> _Refusal | None:
        """Write until InfluxDB accepts (``None``) or refuses the data (``_Refusal``)."""
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                write_api.write(
                    bucket=self.settings.bucket,
                    org=self.settings.org,
                    record=body,
                    # The parameter is annotated with the class, its constants are strings.
                    write_precision=WritePrecision.NS,  # type: ignore[arg-type]
                )
            except ApiException as exc:
                status = int(exc.status or 0)
                message = _error_text(exc)
                if status in _REFUSED_STATUSES:
                    self.stats.last_write_error = None
                    return _Refusal(status, message)
                error = f"HTTP {status}: {message}"
                if status == 429:
                    retry_after = parse_retry_after(exc.retry_after)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                self.stats.last_write_error = None
                return None
            self.stats.write_retries += 1
            self.stats.last_write_error = error
            wait = self.settings.retry.delay(attempt).total_seconds()
            if retry_after is not None:
                wait = retry_after
            attempt += 1
            logger.warning(
                "InfluxDB write failed; retrying in %.1f s",
                wait,
                extra={"error": error, "attempt": attempt, "points": points},
            )
            if self._stopping.wait(wait):
                raise _Stopping


def _never_reuse_ids(db: LocalDatabase) -> None:
    """Rebuild a journal created before its ids were ``AUTOINCREMENT`` (rows kept), so
    an id is never given to a second row once the journal was empty."""
    with db.transaction() as cur:
        (sql,) = cur.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'journal'"
        ).fetchone()
        if "AUTOINCREMENT" in sql.upper():
            return
        cur.execute(_JOURNAL_TABLE.replace("journal (", "journal_ids (", 1))
        cur.execute(
            "INSERT INTO journal_ids (id, series_id, ts_ns, value, anomaly, score) "
            "SELECT id, series_id, ts_ns, value, anomaly, score FROM journal"
        )
        cur.execute("DROP TABLE journal")
        cur.execute("ALTER TABLE journal_ids RENAME TO journal")


def _error_text(exc: ApiException) -> str:
    """The database's own words: InfluxDB's JSON ``message``, else the body or reason."""
    message: Any = getattr(exc, "message", None)
    if not message or message == "no response":
        message = exc.body or exc.reason or ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message).strip()
