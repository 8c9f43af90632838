"""Read tokens for the students' export, and the log of every export made with them.

A teacher creates a token for one school (or one room of it) with an expiry; the token is
shown once and only its SHA-256 is stored, so a copy of the database does not hand out
access. The export API takes the school from the token, never from a parameter.

Tokens and the export log live in their own small SQLite file (``tokens.sqlite`` in the data
directory by default): the export API writes the log on every request, and a separate file
keeps those writes off the ingest's commit lock.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from ingest.stores.sqlitefile import SqliteFile

NS = 1_000_000_000
TOKEN_PREFIX = "spx_"  # noqa: S105 - not a secret: recognisable in a leaked paste, so it can be revoked quickly
_RATE_WINDOW_NS = 60 * NS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    site TEXT NOT NULL,
    device TEXT,
    label TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    revoked_ns INTEGER
);
CREATE TABLE IF NOT EXISTS export_log (
    id INTEGER PRIMARY KEY,
    token_id INTEGER,
    at_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    what TEXT NOT NULL,
    rows INTEGER,
    bytes INTEGER
);
CREATE INDEX IF NOT EXISTS export_log_token ON export_log (token_id, at_ns);
"""


class TokenRefused(PermissionError):
    """No valid token: unknown, expired or revoked (the reason is for the log, not the
    client, which only learns that the token is not valid)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimited(PermissionError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many exports; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class TokenScope:
    """What a token may read: one site, or one device (room) of it."""

    token_id: int
    site: str
    device: str | None
    label: str
    expires_ns: int


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    site: str
    device: str | None
    label: str
    created_ns: int
    expires_ns: int
    revoked_ns: int | None
    exports: int
    last_export_ns: int | None

    def status(self, now_ns: int) -> str:
        if self.revoked_ns is not None:
            return "revoked"
        return "expired" if now_ns >= self.expires_ns else "active"


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    token_id: int | None
    at_ns: int
    status: str
    what: str
    rows: int | None
    bytes: int | None


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path)
        self._file.conn.executescript(_SCHEMA)

    def _tx(self) -> AbstractContextManager[sqlite3.Cursor]:
        return self._file.transaction()

    def create(
        self, site: str, device: str | None, expires_ns: int, label: str, now_ns: int
    ) -> tuple[int, str]:
        """Return (token id, secret). The secret is not stored and cannot be shown again."""
        if expires_ns <= now_ns:
            raise ValueError("the expiry must lie in the future")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO tokens (hash, site, device, label, created_ns, expires_ns) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash(secret), site, device, label, now_ns, expires_ns),
            )
            token_id = cur.lastrowid
        assert token_id is not None
        return token_id, secret

    def verify(self, secret: str, now_ns: int) -> TokenScope:
        with self._file.locked() as conn:
            row = conn.execute(
                "SELECT id, site, device, label, expires_ns, revoked_ns FROM tokens WHERE hash = ?",
                (token_hash(secret),),
            ).fetchone()
        if row is None:
            raise TokenRefused("unknown")
        token_id, site, device, label, expires_ns, revoked_ns = row
        if revoked_ns is not None:
            raise TokenRefused("revoked")
        if now_ns >= expires_ns:
            raise TokenRefused("expired")
        return TokenScope(token_id, site, device, label, expires_ns)

    def revoke(self, token_id: int, now_ns: int) -> bool:
        with self._tx() as cur:
            cur.execute(
                "UPDATE tokens SET revoked_ns = ? WHERE id = ? AND revoked_ns IS NULL",
                (now_ns, token_id),
            )
            return cur.rowcount == 1

    def all(self) -> list[TokenInfo]:
        with self._file.locked() as conn:
            rows = conn.execute(
                "SELECT t.id, t.site, t.device, t.label, t.created_ns, t.expires_ns, "
                "t.revoked_ns, count(l.id), max(l.at_ns) FROM tokens t "
                "LEFT JOIN export_log l ON l.token_id = t.id AND l.status = 'ok' "
                "GROUP BY t.id ORDER BY t.id"
            ).fetchall()
        return [TokenInfo(*r) for r in rows]

    def begin_export(self, scope: TokenScope, what: str, now_ns: int, per_minute: int) -> int:
        """Admit an export under the token's rate cap and log it; return the log id.

        Every attempt in the last minute counts, refused ones too, so probing a token's
        limits is throttled like exporting. Checked and logged in one transaction, so
        parallel requests cannot all slip under the cap.
        """
        retry = 0
        with self._tx() as cur:
            (recent, oldest) = cur.execute(
                "SELECT count(*), min(at_ns) FROM export_log WHERE token_id = ? AND at_ns > ?",
                (scope.token_id, now_ns - _RATE_WINDOW_NS),
            ).fetchone()
            if recent >= per_minute:
                retry = max(1, -(-(oldest + _RATE_WINDOW_NS - now_ns) // NS))
            cur.execute(
                "INSERT INTO export_log (token_id, at_ns, status, what) VALUES (?, ?, ?, ?)",
                (scope.token_id, now_ns, "rate_limited" if retry else "started", what),
            )
            log_id = cur.lastrowid
        if retry:
            raise RateLimited(int(retry))
        assert log_id is not None
        return log_id

    def log(self, token_id: int | None, what: str, status: str, now_ns: int) -> None:
        """Record an attempt that did not start an export (refused, forbidden, bad token)."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO export_log (token_id, at_ns, status, what) VALUES (?, ?, ?, ?)",
                (token_id, now_ns, status, what),
            )

    def finish_export(self, log_id: int, status: str, rows: int, size: int) -> None:
        with self._tx() as cur:
            cur.execute(
                "UPDATE export_log SET status = ?, rows = ?, bytes = ? WHERE id = ?",
                (status, rows, size, log_id),
            )

    def entries(self, token_id: int | None = None, limit: int = 100) -> list[LogEntry]:
        sql = "SELECT id, token_id, at_ns, status, what, rows, bytes FROM export_log"
        params: tuple[object, ...] = ()
        if token_id is not None:
            sql += " WHERE token_id = ?"
            params = (token_id,)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._file.locked() as conn:
            rows = conn.execute(sql, (*params, limit)).fetchall()
        return [LogEntry(*r) for r in rows]

    def close(self) -> None:
        self._file.close()
