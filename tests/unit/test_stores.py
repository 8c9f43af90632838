"""What every store keeps, run on each (the ``store`` fixture): ``SqliteStore`` and
``InfluxStore`` into VictoriaMetrics. Both keep a local SQLite database (the readings, or
the journal of readings on their way to InfluxDB), and its file and upkeep are the same.

The InfluxDB store's journal, drain, retries and refusals are its own, and are tested in
``tests/integration/test_influx_store.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from ingest.batch import ReadingBatch
from ingest.stores.base import ReadingQuery
from ingest.stores.local import ROWS_PER_STATEMENT, SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.registry import sample_registry
from tests.support.stores import LocalStore, StoreRig


def test_store_is_private(store: LocalStore) -> None:
    assert store.db.path.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(store.db.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_store_maintenance_truncates_the_wal(store: LocalStore, store_rig: StoreRig) -> None:
    n = 5000
    ts = np.arange(n, dtype=np.int64) * 1_000_000_000 + 1_700_000_000 * 10**9
    store.commit(ReadingBatch.unchecked(np.zeros(n), ts, np.ones(n)), [])
    wal = Path(f"{store.db.path}-wal")
    assert wal.stat().st_size > 0
    # InfluxStore's drain deletes journal rows as InfluxDB takes them: wait until it is
    # done, so that nothing writes to the file while it is maintained.
    assert store_rig.count() == n
    store.maintain()
    assert wal.stat().st_size == 0
    assert store_rig.count() == n  # nothing lost by folding the WAL in


def test_a_batch_larger_than_one_statement_is_stored_whole(
    store: LocalStore, store_rig: StoreRig
) -> None:
    """A batch is written thousands of rows per statement: one of two and a half
    statements' worth of readings arrives whole, the last partial statement included."""
    n = 2 * ROWS_PER_STATEMENT + ROWS_PER_STATEMENT // 2 + 7
    ts = np.arange(n, dtype=np.int64) * 1_000_000_000 + 1_700_000_000 * 10**9
    store.commit(ReadingBatch.unchecked(np.zeros(n), ts, np.arange(n, dtype=np.float64)), [])
    assert store_rig.count() == n


def test_a_reading_repeated_across_statements_keeps_its_last_value(tmp_path: Path) -> None:
    """The same key twice in one batch, in different statements of its commit: the later
    value and flags are stored, as with one statement per row."""
    registry = sample_registry()
    store = SqliteStore(SqliteSettings(tmp_path / "s.db"), registry.series)
    n = ROWS_PER_STATEMENT + 10
    ts = np.arange(n, dtype=np.int64) * 1_000_000_000 + 1_700_000_000 * 10**9
    ts[-1] = ts[0]
    values = np.arange(n, dtype=np.float64)
    batch = ReadingBatch.unchecked(np.zeros(n), ts, values)
    batch.flags[-1] = 4
    store.commit(batch, [])
    assert store.count() == n - 1
    series = registry.series[0].key
    query = ReadingQuery(series.site, int(ts[0]), int(ts[0]) + 1)
    (first,) = list(store.readings(query))
    assert (first.value, first.anomaly) == (float(n - 1), 4)
    store.close()
