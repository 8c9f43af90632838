"""The quarantine: every rejected message with its raw bytes, topic, reason and receive time,
listable and replayable (after fixing the registry, say)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.codecs import Decoder, ReadingRejected
from devices.rejections import positions, summarize
from ingest.anomaly import AnomalyCheck
from ingest.batch import ReadingBatch
from ingest.stores.base import Store
from ingest.stores.local import SqliteSettings, add_records_column


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    received_ns: int
    topic: str
    payload: bytes
    reason: str
    detail: str
    replayed_ns: int | None
    times: int
    last_received_ns: int
    # Positions of the records refused while the rest of the message was stored (SenML
    # records, or block samples counted across the series); None: nothing was stored.
    records: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    entry_id: int
    stored: int
    reason: str | None  # None when the message (or its refused records) is now accepted
    detail: str = ""


_COLUMNS = (
    "id, received_ns, topic, payload, reason, detail, replayed_ns, times, last_received_ns, records"
)


def _entry(row: tuple[Any, ...]) -> QuarantineEntry:
    entry_id, received_ns, topic, payload, reason, detail, replayed_ns, times, last, records = row
    return QuarantineEntry(
        entry_id,
        received_ns,
        topic,
        payload,
        reason,
        detail,
        replayed_ns,
        times,
        last,
        None if records is None else tuple(json.loads(records)),
    )


class Quarantine:
    """Reads the quarantine table of the local database (whatever the store)."""

    def __init__(self, path: Path) -> None:
        self.settings = SqliteSettings(path)
        self._migrated = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.settings.path, isolation_level=None)
        if not self._migrated:
            add_records_column(conn)
            self._migrated = True
        return conn

    def _query(self, sql: str, params: tuple[object, ...]) -> list[QuarantineEntry]:
        conn = self._connect()
        try:
            return [_entry(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def list(
        self, *, reason: str | None = None, limit: int = 100, include_replayed: bool = False
    ) -> list[QuarantineEntry]:
        where = ["1=1"]
        params: list[object] = []
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if not include_replayed:
            where.append("replayed_ns IS NULL")
        sql = (
            f"SELECT {_COLUMNS} FROM quarantine WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?"
        )
        return self._query(sql, (*params, limit))

    def get(self, entry_id: int) -> QuarantineEntry | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,))
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        conn = self._connect()
        try:
            return dict(
                conn.execute(
                    "SELECT reason, count(*) FROM quarantine WHERE replayed_ns IS NULL "
                    "GROUP BY reason ORDER BY reason"
                ).fetchall()
            )
        finally:
            conn.close()

    def pending(self) -> Iterator[QuarantineEntry]:
        yield from self._query(
            f"SELECT {_COLUMNS} FROM quarantine WHERE replayed_ns IS NULL ORDER BY id", ()
        )

    def replay(
        self, entry: QuarantineEntry, decoder: Decoder, check: AnomalyCheck, store: Store
    ) -> ReplayResult:
        """Decode the raw message again with the current registry and limits, judged at its
        original receive time; store what passes now and mark the entry replayed.

        Of a message whose other records were stored when it arrived, only the refused
        records are decoded and stored, so nothing is written twice. Records that are still
        refused keep the entry waiting, narrowed to them.
        """
        if entry.reason == "store_rejected":
            return ReplayResult(
                entry.id,
                0,
                entry.reason,
                "refused by the database, not by validation; fix the point and write it there",
            )
        try:
            decoded = decoder.decode(entry.topic, entry.payload, entry.received_ns, entry.records)
        except ReadingRejected as exc:
            return ReplayResult(entry.id, 0, exc.reason.value, exc.detail)
        batch = ReadingBatch.concat([decoded])
        check.check(batch)
        store.commit(batch, [])
        refused = decoded.rejected
        conn = self._connect()
        try:
            if refused:
                reason, detail = refused[0].reason.value, summarize(refused, len(batch))
                conn.execute(
                    "UPDATE quarantine SET reason = ?, detail = ?, records = ? WHERE id = ?",
                    (reason, detail, json.dumps(positions(refused)), entry.id),
                )
                return ReplayResult(entry.id, len(batch), reason, detail)
            conn.execute(
                "UPDATE quarantine SET replayed_ns = ? WHERE id = ?", (time.time_ns(), entry.id)
            )
        finally:
            conn.close()
        return ReplayResult(entry.id, len(batch), None)
