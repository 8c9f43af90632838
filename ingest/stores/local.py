"""The local SQLite database (WAL) behind every durable commit.

It holds the series table, the quarantine, and, depending on the store, either the readings
themselves (``SqliteStore``) or the journal of readings waiting for InfluxDB
(``InfluxStore``). One batch is one transaction, so its readings and its quarantine
records become durable together, and only then are the MQTT messages acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from devices.registry import Series
from ingest.batch import ReadingBatch, Receipt, Rejection, message_digest
from ingest.stores.sqlitefile import SqliteFile

# A reading's row in the stores' insert statements, and how many rows one statement
# carries: five parameters each, under SQLite's limit of 32,766 per statement.
_ROW = "(?, ?, ?, ?, ?)"
_ONE_ROW = f"VALUES {_ROW}"
ROWS_PER_STATEMENT = 6000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    channel TEXT NOT NULL,
    measurement TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (site, device, channel, measurement)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    replayed_ns INTEGER,
    digest BLOB NOT NULL UNIQUE,
    times INTEGER NOT NULL DEFAULT 1,
    last_received_ns INTEGER NOT NULL,
    records TEXT
);
CREATE INDEX IF NOT EXISTS quarantine_reason ON quarantine (reason);
CREATE TABLE IF NOT EXISTS receipts (
    digest BLOB PRIMARY KEY,
    received_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Receipt times are needed only while the broker may still redeliver the message, that is
# within the session expiry; two days covers the default of one.
_RECEIPT_RETENTION_NS = 2 * 86400 * 1_000_000_000
_PRUNE_EVERY_NS = 60 * 1_000_000_000


def add_records_column(conn: sqlite3.Connection) -> None:
    """Give a quarantine table from before records were refused one by one its
    ``records`` column (autocommit connection)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(quarantine)")}
    if "records" in columns:
        return
    try:
        conn.execute("ALTER TABLE quarantine ADD COLUMN records TEXT")
    except sqlite3.OperationalError as exc:  # another process added it meanwhile
        if "duplicate column" not in str(exc):
            raise


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    path: Path
    # FULL makes each batch commit survive power loss, not only a crash of the process;
    # with one commit per batch the fsync is cheap.
    synchronous: str = "FULL"
    busy_timeout_ms: int = 5000


class LocalDatabase:
    """A private SQLite file (``SqliteFile``: mode 0600, WAL) with one writer connection,
    guarded by a lock."""

    def __init__(
        self, settings: SqliteSettings, series: Sequence[Series], extra_schema: str
    ) -> None:
        self.settings = settings
        self.path = settings.path
        self._file = SqliteFile(
            self.path,
            synchronous=settings.synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )
        self._file.conn.executescript(_SCHEMA + extra_schema)
        add_records_column(self._file.conn)
        self.series_ids = self._register_series(series)
        self._pruned_ns = 0

    def connect(self) -> sqlite3.Connection:
        return self._file.connect()

    def _register_series(self, series: Sequence[Series]) -> npt.NDArray[np.int64]:
        """Map registry series indexes to stable database ids (kept across registry edits)."""
        rows = [
            (s.key.site, s.key.device, s.key.channel, s.key.measurement, s.unit) for s in series
        ]
        with self.transaction() as cur:
            cur.executemany(
                "INSERT OR IGNORE INTO series (site, device, channel, measurement, unit) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            ids = {
                (site, device, channel, meas): sid
                for sid, site, device, channel, meas in cur.execute(
                    "SELECT id, site, device, channel, measurement FROM series"
                )
            }
        return np.array([ids[r[:4]] for r in rows], dtype=np.int64)

    def transaction(self) -> AbstractContextManager[sqlite3.Cursor]:
        return self._file.transaction()

    def commit(
        self,
        insert_readings: str,
        batch: ReadingBatch,
        rejected: Sequence[Rejection],
        receipts: Sequence[Receipt],
    ) -> int | None:
        """One batch in one transaction: readings (with the store's own statement taking
        series id, ts_ns, value, anomaly, score), quarantine records and receipt times.

        Returns the rowid SQLite gave the batch's last reading row (``None`` without
        readings); only a table with rowids makes it meaningful."""
        head, values, tail = insert_readings.partition(_ONE_ROW)
        if not values:
            raise ValueError(f"the readings statement must insert {_ONE_ROW}")
        columns = self.reading_columns(batch)
        last_rowid: int | None = None
        with self.transaction() as cur:
            self.add_rejections(cur, rejected)
            self.add_receipts(cur, receipts)
            # Thousands of rows per statement, not one: sqlite3 lets go of the GIL around
            # every statement it steps, and with another thread busy in Python each
            # hand-back waits out the switch interval (5 ms). Per row, 200,000 rows took
            # minutes; per statement, SQLite's own work runs beside the decoder.
            n = len(batch)
            for start in range(0, n, ROWS_PER_STATEMENT):
                end = min(n, start + ROWS_PER_STATEMENT)
                rows = end - start
                sql = f"{head}VALUES {','.join([_ROW] * rows)}{tail}"
                # Interleaved by slice assignment: half the cost of zipping the rows.
                params: list[int | float | None] = [None] * (len(columns) * rows)
                for k, column in enumerate(columns):
                    params[k :: len(columns)] = column[start:end]
                cur.execute(sql, params)
                last_rowid = cur.lastrowid
        return last_rowid

    @staticmethod
    def add_rejections(cur: sqlite3.Cursor, rejected: Sequence[Rejection]) -> None:
        """Quarantine messages; the same message again (a redelivery, or a device repeating
        itself) raises the entry's count instead of adding a row, as readings overwrite.
        ``records`` is the JSON list of the refused records' positions, or NULL when nothing
        of the message was stored."""
        if rejected:
            cur.executemany(
                "INSERT INTO quarantine (received_ns, last_received_ns, topic, payload, reason, "
                "detail, digest, records) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE "
                "SET times = times + 1, last_received_ns = excluded.last_received_ns, "
                "reason = excluded.reason, detail = excluded.detail, records = excluded.records",
                [
                    (
                        r.received_ns,
                        r.received_ns,
                        r.topic,
                        r.payload,
                        r.reason,
                        r.detail,
                        message_digest(r.topic, r.payload),
                        None if r.records is None else json.dumps(r.records),
                    )
                    for r in rejected
                ],
            )

    def add_receipts(self, cur: sqlite3.Cursor, receipts: Sequence[Receipt]) -> None:
        if not receipts:
            return
        cur.executemany(
            "INSERT OR IGNORE INTO receipts (digest, received_ns) VALUES (?, ?)",
            [(r.digest, r.received_ns) for r in receipts],
        )
        now = max(r.received_ns for r in receipts)  # the pipeline's clock, not this module's
        if now - self._pruned_ns > _PRUNE_EVERY_NS:
            cur.execute(
                "DELETE FROM receipts WHERE received_ns < ?", (now - _RECEIPT_RETENTION_NS,)
            )
            self._pruned_ns = now

    def receipt_time(self, digest: bytes) -> int | None:
        with self._file.locked() as conn:
            row = conn.execute(
                "SELECT received_ns FROM receipts WHERE digest = ?", (digest,)
            ).fetchone()
        return None if row is None else int(row[0])

    def reading_columns(self, batch: ReadingBatch) -> list[list[int] | list[float]]:
        """The columns (series id, ts_ns, value, anomaly, score) as Python lists: one
        conversion per column is far cheaper than one per value."""
        return [
            self.series_ids[batch.series].tolist(),
            batch.ts_ns.tolist(),
            batch.values.tolist(),
            batch.flags.tolist(),
            batch.scores.tolist(),
        ]

    def writable(self) -> bool:
        try:
            with self.transaction() as cur:
                cur.execute("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def maintain(self) -> None:
        """Nightly upkeep: fold the WAL back into the database so it does not keep the
        size of the busiest hour, and let SQLite refresh its query statistics."""
        with self._file.locked() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA optimize")

    def close(self) -> None:
        self._file.close()


class LocallyCommitting:
    """What the stores whose durable commit is one transaction of a ``LocalDatabase`` do
    alike: ``commit`` with the store's own statement for the readings, the receipt times,
    the writable check and the upkeep of that database."""

    def __init__(self, db: LocalDatabase, insert: str) -> None:
        self.db = db
        self._insert = insert  # the statement each reading row is written with

    def commit(
        self,
        batch: ReadingBatch,
        rejected: Sequence[Rejection],
        receipts: Sequence[Receipt] = (),
    ) -> None:
        last_rowid = self.db.commit(self._insert, batch, rejected, receipts)
        self.committed(batch, last_rowid)

    def committed(self, batch: ReadingBatch, last_rowid: int | None) -> None:
        """Called after each durable commit with the readings it stored and the rowid of
        the last one (see ``LocalDatabase.commit``)."""

    def receipt_time(self, digest: bytes) -> int | None:
        return self.db.receipt_time(digest)

    def writable(self) -> bool:
        return self.db.writable()

    def maintain(self) -> None:
        self.db.maintain()
