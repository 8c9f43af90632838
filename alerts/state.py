"""Alert state, history, silences and the delivery log, in one SQLite file.

The service's engine and the command line (``stadtpuls alerts ack``, ``silence``) share the
file, so acknowledgements and silences are written here and read by the engine when it
decides a notification; WAL lets both work at once. The engine owns the lifecycle
columns and never writes the acknowledgement ones, so an ack from the command line is not
overwritten by the engine's next update.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from alerts.model import Alert, AlertKey, Event, Notification, Severity, State
from ingest.stores.sqlitefile import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL, channel TEXT NOT NULL,
    kind TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL, summary TEXT NOT NULL,
    value REAL, threshold REAL, unit TEXT NOT NULL,
    since TEXT, fired_at TEXT, resolved_at TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL DEFAULT '{}',
    engine TEXT NOT NULL,             -- the engine's own bookkeeping, JSON
    acked_by TEXT, acked_at TEXT
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts(state);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, alert_id TEXT NOT NULL, event TEXT NOT NULL,
    state TEXT, value REAL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_alert ON history(alert_id, seq);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL, starts_at TEXT NOT NULL, ends_at TEXT NOT NULL,
    created_by TEXT NOT NULL, comment TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, channel TEXT NOT NULL, alert_id TEXT, event TEXT NOT NULL,
    attempt INTEGER NOT NULL, ok INTEGER NOT NULL, error TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: Mapping[str, str]  # label -> value or glob ("bridge-*")
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str

    def active(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(fnmatchcase(labels.get(k, ""), v) for k, v in self.matchers.items())


@dataclass(slots=True)
class Stored:
    """An alert with the engine's bookkeeping."""

    alert: Alert
    engine: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    at: datetime
    alert_id: str
    event: str
    state: str | None
    value: float | None
    detail: str


@dataclass(frozen=True, slots=True)
class Delivery:
    seq: int
    at: datetime
    channel: str
    alert_id: str | None
    event: str
    attempt: int
    ok: bool
    error: str | None


def stored_to_json(st: Stored) -> dict[str, Any]:
    """An alert with its bookkeeping as JSON, for handing it to another worker."""
    a = st.alert
    return {
        "rule": a.key.rule, "site": a.key.site, "device": a.key.device,
        "channel": a.key.channel, "kind": a.kind, "severity": str(a.severity),
        "state": str(a.state), "summary": a.summary, "value": a.value,
        "threshold": a.threshold, "unit": a.unit, "since": _t(a.since),
        "fired_at": _t(a.fired_at), "resolved_at": _t(a.resolved_at),
        "acked_by": a.acked_by, "acked_at": _t(a.acked_at), "labels": a.labels,
        "annotations": a.annotations, "engine": st.engine,
    }  # fmt: skip


def stored_from_json(d: dict[str, Any]) -> Stored:
    alert = Alert(
        key=AlertKey(d["rule"], d["site"], d["device"], d["channel"]),
        severity=Severity(d["severity"]),
        kind=d["kind"],
        state=State(d["state"]),
        summary=d["summary"],
        value=d["value"],
        threshold=d["threshold"],
        unit=d["unit"],
        since=_dt(d["since"]),
        fired_at=_dt(d["fired_at"]),
        resolved_at=_dt(d["resolved_at"]),
        acked_by=d["acked_by"],
        acked_at=_dt(d["acked_at"]),
        labels=dict(d["labels"]),
        annotations=dict(d["annotations"]),
    )
    return Stored(alert, dict(d["engine"]))


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class AlertStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path)  # mode 0600: who acknowledged what is operational data
        db = self._file.conn
        db.executescript(_SCHEMA)
        columns = {r[1] for r in db.execute("PRAGMA table_info(alerts)")}
        if "annotations" not in columns:  # a file written before incidents had them
            db.execute("ALTER TABLE alerts ADD COLUMN annotations TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        self._file.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._file.transaction() as cur:
            yield cur.connection

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._file.locked() as db:
            return db.execute(sql, args).fetchall()

    def _latest(
        self, table: str, columns: str, alert_id: str | None, limit: int
    ) -> list[tuple[Any, ...]]:
        """The last ``limit`` rows of a log table (``history``, ``deliveries``), of one
        alert when ``alert_id`` is given, oldest first."""
        where, args = ("WHERE alert_id=?", (alert_id,)) if alert_id else ("", ())
        rows = self._query(
            f"SELECT {columns} FROM {table} {where} ORDER BY seq DESC LIMIT ?", (*args, limit)
        )
        return rows[::-1]

    # -- alerts --------------------------------------------------------------------------

    def save(
        self, stored: Stored, event: str, detail: str, at: datetime, *, clear_ack: bool = False
    ) -> None:
        """Write an alert's lifecycle (not its acknowledgement) and a history entry at
        ``at``, in one transaction. A new firing clears an old acknowledgement: it ended
        with the alert; ``clear_ack`` clears it too (an escalation asks for a new one)."""
        a = stored.alert
        with self._tx() as db:
            db.execute(
                """INSERT INTO alerts (id, rule, site, device, channel, kind, severity, state,
                    summary, value, threshold, unit, since, fired_at, resolved_at, labels,
                    annotations, engine)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(id) DO UPDATE SET kind=excluded.kind,
                    severity=excluded.severity, state=excluded.state,
                    summary=excluded.summary, value=excluded.value,
                    threshold=excluded.threshold, unit=excluded.unit, since=excluded.since,
                    fired_at=excluded.fired_at, resolved_at=excluded.resolved_at,
                    labels=excluded.labels, annotations=excluded.annotations,
                    engine=excluded.engine""",
                (
                    a.id, a.key.rule, a.key.site, a.key.device, a.key.channel, a.kind,
                    str(a.severity), str(a.state), a.summary, a.value, a.threshold, a.unit,
                    _t(a.since), _t(a.fired_at), _t(a.resolved_at), json.dumps(a.labels),
                    json.dumps(a.annotations), json.dumps(stored.engine),
                ),
            )  # fmt: skip
            if event == "firing" or clear_ack:
                db.execute("UPDATE alerts SET acked_by=NULL, acked_at=NULL WHERE id=?", (a.id,))
            db.execute(
                "INSERT INTO history (at, alert_id, event, state, value, detail) "
                "VALUES (?,?,?,?,?,?)",
                (_t(at), a.id, event, str(a.state), a.value, detail),
            )

    def record(self, alert_id: str, event: str, detail: str, at: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO history (at, alert_id, event, state, value, detail) "
                "VALUES (?,?,?,NULL,NULL,?)",
                (_t(at), alert_id, event, detail),
            )

    def _alert(self, row: tuple[Any, ...]) -> Stored:
        (_, rule, site, device, channel, kind, severity, state, summary, value, threshold,
         unit, since, fired_at, resolved_at, labels, annotations, engine, acked_by,
         acked_at) = row  # fmt: skip
        alert = Alert(
            key=AlertKey(rule, site, device, channel),
            severity=Severity(severity),
            kind=kind,
            state=State(state),
            summary=summary,
            value=value,
            threshold=threshold,
            unit=unit,
            since=_dt(since),
            fired_at=_dt(fired_at),
            resolved_at=_dt(resolved_at),
            acked_by=acked_by,
            acked_at=_dt(acked_at),
            labels=json.loads(labels),
            annotations=json.loads(annotations),
        )
        return Stored(alert, json.loads(engine))

    _COLUMNS = (
        "id, rule, site, device, channel, kind, severity, state, summary, value, threshold, "
        "unit, since, fired_at, resolved_at, labels, annotations, engine, acked_by, acked_at"
    )

    def alerts(self, states: tuple[State, ...] = (State.PENDING, State.FIRING)) -> list[Stored]:
        marks = ",".join("?" * len(states))
        rows = self._query(
            f"SELECT {self._COLUMNS} FROM alerts WHERE state IN ({marks}) ORDER BY id",
            tuple(str(s) for s in states),
        )
        return [self._alert(r) for r in rows]

    def get(self, alert_id: str) -> Stored | None:
        rows = self._query(f"SELECT {self._COLUMNS} FROM alerts WHERE id=?", (alert_id,))
        return self._alert(rows[0]) if rows else None

    def acknowledge(self, alert_id: str, by: str, at: datetime) -> bool:
        """Acknowledge a firing or pending alert; False if there is none by that id."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE alerts SET acked_by=?, acked_at=? WHERE id=? AND state IN (?,?)",
                (by, _t(at), alert_id, str(State.PENDING), str(State.FIRING)),
            )
            if cur.rowcount:
                db.execute(
                    "INSERT INTO history (at, alert_id, event, state, value, detail) "
                    "VALUES (?,?,'acknowledged',NULL,NULL,?)",
                    (_t(at), alert_id, f"by {by}"),
                )
            return cur.rowcount > 0

    def acks(self) -> dict[str, tuple[str, datetime]]:
        rows = self._query(
            "SELECT id, acked_by, acked_at FROM alerts WHERE acked_by IS NOT NULL AND state=?",
            (str(State.FIRING),),
        )
        return {r[0]: (r[1], datetime.fromisoformat(r[2])) for r in rows}

    def history(self, alert_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        rows = self._latest(
            "history", "seq, at, alert_id, event, state, value, detail", alert_id, limit
        )
        return [
            HistoryEntry(r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], r[6])
            for r in rows
        ]

    # -- silences ------------------------------------------------------------------------

    def add_silence(
        self,
        matchers: Mapping[str, str],
        starts_at: datetime,
        ends_at: datetime,
        created_by: str,
        comment: str = "",
    ) -> Silence:
        if not matchers:
            raise ValueError("a silence needs at least one matcher, or it would mute everything")
        if ends_at <= starts_at:
            raise ValueError("a silence must end after it starts")
        s = Silence(uuid.uuid4().hex[:12], dict(matchers), starts_at, ends_at, created_by, comment)
        matched = ", ".join(f"{k}={v}" for k, v in matchers.items())
        now = datetime.now(UTC)
        with self._tx() as db:
            db.execute(
                "INSERT INTO silences VALUES (?,?,?,?,?,?,?)",
                (s.id, json.dumps(dict(matchers)), _t(starts_at), _t(ends_at), created_by,
                 comment, _t(now)),
            )  # fmt: skip
            db.execute(
                "INSERT INTO history (at, alert_id, event, state, value, detail) "
                "VALUES (?,'','silenced',NULL,NULL,?)",
                (_t(now), f"silence {s.id} {matched} until {_t(ends_at)} by {created_by}"),
            )
        return s

    def expire_silence(self, silence_id: str, at: datetime) -> bool:
        """End a silence now; False if it is unknown or already over."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE silences SET ends_at=? WHERE id=? AND ends_at>?",
                (_t(at), silence_id, _t(at)),
            )
            return cur.rowcount > 0

    def silences(self, active_at: datetime | None = None) -> list[Silence]:
        rows = self._query(
            "SELECT id, matchers, starts_at, ends_at, created_by, comment FROM silences "
            "ORDER BY starts_at"
        )
        out = [
            Silence(
                r[0],
                json.loads(r[1]),
                datetime.fromisoformat(r[2]),
                datetime.fromisoformat(r[3]),
                r[4],
                r[5],
            )
            for r in rows
        ]
        return out if active_at is None else [s for s in out if s.active(active_at)]

    # -- delivery log --------------------------------------------------------------------

    def record_delivery(
        self, channel: str, notification: Notification, attempt: int, ok: bool, error: str | None
    ) -> None:
        alert_id = None if notification.alert is None else notification.alert.id
        with self._tx() as db:
            db.execute(
                "INSERT INTO deliveries (at, channel, alert_id, event, attempt, ok, error) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    _t(datetime.now(UTC)),
                    channel,
                    alert_id,
                    str(notification.event),
                    attempt,
                    int(ok),
                    error,
                ),
            )

    def deliveries(self, alert_id: str | None = None, limit: int = 100) -> list[Delivery]:
        rows = self._latest(
            "deliveries", "seq, at, channel, alert_id, event, attempt, ok, error", alert_id, limit
        )
        return [
            Delivery(r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5], bool(r[6]), r[7])
            for r in rows
        ]

    def prune(self, before: datetime) -> int:
        """Drop history, deliveries, resolved alerts and silences older than ``before``."""
        cut = _t(before)
        with self._tx() as db:
            n = db.execute("DELETE FROM history WHERE at<?", (cut,)).rowcount
            n += db.execute("DELETE FROM deliveries WHERE at<?", (cut,)).rowcount
            n += db.execute(
                "DELETE FROM alerts WHERE state=? AND resolved_at<?", (str(State.RESOLVED), cut)
            ).rowcount
            n += db.execute("DELETE FROM silences WHERE ends_at<?", (cut,)).rowcount
        with self._file.locked() as db:
            db.execute("PRAGMA optimize")
        return n


__all__ = ["AlertStore", "Delivery", "Event", "HistoryEntry", "Silence", "Stored"]
