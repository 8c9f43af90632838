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
