"""``SqliteStore``: the embedded default store, readings in the local SQLite database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from devices.registry import Series
from ingest.stores.base import ReadingQuery, StoredReading
from ingest.stores.local import LocalDatabase, LocallyCommitting, SqliteSettings

# WITHOUT ROWID keeps the reading key itself as the b-tree key: the upsert and the
# per-series time-range scans of exports touch one index instead of two.
_READINGS = """
CREATE TABLE IF NOT EXISTS readings (
    series_id INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    value REAL NOT NULL,
    anomaly INTEGER NOT NULL DEFAULT 0,
    score REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (series_id, ts_ns)
) WITHOUT ROWID;
"""

_UPSERT = (
    "INSERT INTO readings (series_id, ts_ns, value, anomaly, score) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (series_id, ts_ns) DO UPDATE SET "
    "value = excluded.value, anomaly = excluded.anomaly, score = excluded.score"
)


class SqliteStore(LocallyCommitting):
    def __init__(self, settings: SqliteSettings, series: Sequence[Series]) -> None:
        super().__init__(LocalDatabase(settings, series, _READINGS), _UPSERT)

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        sql = (
            "SELECT r.ts_ns, s.site, s.device, s.channel, s.measurement, s.unit, "
            "r.value, r.anomaly, r.score FROM readings r JOIN series s ON s.id = r.series_id "
            "WHERE s.site = ? AND r.ts_ns >= ? AND r.ts_ns < ?"
        )
        params: list[object] = [query.site, query.start_ns, query.end_ns]
        if query.device is not None:
            sql += " AND s.device = ?"
            params.append(query.device)
        if query.measurement is not None:
            sql += " AND s.measurement = ?"
            params.append(query.measurement)
        sql += " ORDER BY r.ts_ns, s.device, s.channel, s.measurement"
        conn = self.db.connect()
        try:
            for row in conn.execute(sql, params):
                yield StoredReading(*row)
        finally:
            conn.close()

    def count(self) -> int:
        conn = self.db.connect()
        try:
            (n,) = conn.execute("SELECT count(*) FROM readings").fetchone()
            return int(n)
        finally:
            conn.close()

    def journal_depth(self) -> int:
        return 0

    @property
    def stats(self) -> None:
        """No forwarding counters: the readings stay in this database."""
        return None

    def start(self) -> None:
        """Nothing runs in the background."""

    def close(self) -> None:
        self.db.close()
