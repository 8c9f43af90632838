"""Both stores under one test: `SqliteStore` and `InfluxStore`, and how a test reads back
what reached each one's final database (the ``store`` and ``store_rig`` fixtures of
``tests/conftest.py``).

`SqliteStore` keeps its readings itself and is read through its own ``readings()``.
`InfluxStore` commits to a local journal and forwards it to InfluxDB, here a
VictoriaMetrics process (``tests.support.victoria``). Its own ``readings()`` speak Flux,
which VictoriaMetrics does not, so `InfluxRig` waits for the journal to drain and reads the
points back through VictoriaMetrics' export API, as `StoredReading` rows in the order
``ReadingSource`` promises. VictoriaMetrics keeps timestamps in whole milliseconds, so
tests that run on both stores use readings timed in whole milliseconds.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from devices.registry import Series
from ingest.retry import Backoff
from ingest.stores.base import ReadingQuery, StoredReading
from ingest.stores.influx import InfluxSettings, InfluxStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

__all__ = [
    "DRAIN_TIMEOUT_S",
    "FAST_RETRY",
    "InfluxRig",
    "LocalStore",
    "SqliteRig",
    "StoreRig",
    "influx_settings",
]

# Both stores keep a local SQLite database (``store.db``): the readings themselves, or the
# journal of readings on their way to InfluxDB; the quarantine and receipts in either case.
LocalStore = SqliteStore | InfluxStore

# A failing InfluxDB write is tried again within milliseconds, not seconds.
FAST_RETRY = Backoff(initial=timedelta(milliseconds=10), maximum=timedelta(milliseconds=50))
DRAIN_TIMEOUT_S = 30.0

_FIELDS = frozenset({"value", "anomaly", "score"})
_NS_PER_MS = 1_000_000


def influx_settings(url: str, **overrides: Any) -> InfluxSettings:
    """An InfluxDB at `url` that the tests' stores write to, retrying within milliseconds."""
    defaults: dict[str, Any] = {"retry": FAST_RETRY, "timeout": timedelta(seconds=5)}
    return InfluxSettings(
        url=url, org="stadtpuls", bucket="stadtpuls", token="unused", **(defaults | overrides)
    )


class StoreRig(ABC):
    """A store of one kind over the local database at `path`, and what reached its final
    database. ``store`` is the store the rig opened first; `open` opens more on the same
    file. `close` closes them all."""

    kind: str
    store: LocalStore

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def open(self, series: Sequence[Series]) -> LocalStore:
        """Another store of this kind on the same local database, as after a restart of
        the service (with a registry edited in between, say)."""

    @abstractmethod
    def stored(self, query: ReadingQuery) -> list[StoredReading]:
        """The readings `query` selects from the final database, once everything committed
        has arrived there."""

    @abstractmethod
    def count(self) -> int:
        """How many readings the final database holds, once everything committed has
        arrived there."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteRig(StoreRig):
    kind = "sqlite"

    def __init__(self, path: Path, series: Sequence[Series]) -> None:
        super().__init__(path)
        self._stores: list[SqliteStore] = []
        self.store = self.open(series)

    def open(self, series: Sequence[Series]) -> SqliteStore:
        store = SqliteStore(SqliteSettings(self.path), series)
        self._stores.append(store)
        return store

    def stored(self, query: ReadingQuery) -> list[StoredReading]:
        return list(self._stores[-1].readings(query))

    def count(self) -> int:
        return self._stores[-1].count()

    def close(self) -> None:
        while self._stores:
            self._stores.pop().close()


class InfluxRig(StoreRig):
    """`InfluxStore`s started as the service starts them, writing to `victoria`, which
    the caller empties first (the ``victoria`` fixture does)."""

    kind = "influx"

    def __init__(self, path: Path, series: Sequence[Series], victoria: VictoriaMetrics) -> None:
        super().__init__(path)
        self.victoria = victoria
        self.settings = influx_settings(victoria.url)
        self._stores: list[InfluxStore] = []
        self.store = self.open(series)

    def open(self, series: Sequence[Series]) -> InfluxStore:
        # One drain per journal, as there is one service per data directory: the new store
        # takes over from the ones before it (two drains would send the same rows twice).
        for earlier in self._stores:
            earlier.stop()
        store = InfluxStore(self.settings, SqliteSettings(self.path), series)
        self._stores.append(store)
        store.start()
        return store

    def drained(self) -> None:
        """Wait until the journal is empty: every committed reading is in VictoriaMetrics
        (or quarantined, had it refused one)."""
        wait_until(self._journal_is_empty, DRAIN_TIMEOUT_S, "the journal to drain")

    def _journal_is_empty(self) -> bool:
        # The table, not journal_depth(): a store's counter knows only its own commits.
        conn = self._stores[-1].db.connect()
        try:
            (rows,) = conn.execute("SELECT count(*) FROM journal").fetchone()
        finally:
            conn.close()
        return int(rows) == 0

    def _units(self) -> dict[tuple[str, str, str, str], str]:
        """Units by series key, from the local database: line protocol does not carry them."""
        conn = self._stores[-1].db.connect()
        try:
            return {
                (site, device, channel, measurement): unit
                for site, device, channel, measurement, unit in conn.execute(
                    "SELECT site, device, channel, measurement, unit FROM series"
                )
            }
        finally:
            conn.close()

    def stored(self, query: ReadingQuery) -> list[StoredReading]:
        self.drained()
        labels = {"site": query.site}
        if query.device is not None:
            labels["device"] = query.device
        selector = "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}"
        # Each field of a point is a series of its own, <measurement>_<field>.
        points: dict[tuple[int, str, str, str], dict[str, float]] = {}
        for item in self.victoria.export(selector):
            metric = item["metric"]
            measurement, _, field = metric["__name__"].rpartition("_")
            if field not in _FIELDS or query.measurement not in (None, measurement):
                continue
            for ts_ms, value in zip(item["timestamps"], item["values"], strict=True):
                ts_ns = int(ts_ms) * _NS_PER_MS
                if query.start_ns <= ts_ns < query.end_ns:
                    key = (ts_ns, metric["device"], metric.get("channel", ""), measurement)
                    points.setdefault(key, {})[field] = float(value)
        units = self._units()
        return [
            StoredReading(
                ts_ns=ts_ns,
                site=query.site,
                device=device,
                channel=channel,
                measurement=measurement,
                unit=units[(query.site, device, channel, measurement)],
                value=fields["value"],
                anomaly=int(fields["anomaly"]),
                score=fields["score"],
            )
            # Sorted by time, device, channel and measurement, as ReadingSource promises.
            for (ts_ns, device, channel, measurement), fields in sorted(points.items())
        ]

    def count(self) -> int:
        self.drained()
        return sum(len(item["values"]) for item in self.victoria.export('{__name__=~".+_value"}'))

    def close(self) -> None:
        while self._stores:
            self._stores.pop().close()
