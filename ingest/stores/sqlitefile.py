"""A private SQLite file: readable by its owner only, in WAL mode, written in immediate
transactions. The local database of the stores (``local.py``), the alert state
(``alerts.state``) and the export tokens (``export.tokens``) all open theirs here.

The file is created with mode 0600 (never looser, whatever the umask), and an existing file
with a looser mode is tightened to 0600 before SQLite opens it, with a warning in the log.
SQLite creates the ``-wal`` and ``-shm`` files beside it with the database's mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SYNCHRONOUS_LEVELS", "SqliteFile", "create_private"]

log = logging.getLogger(__name__)

SYNCHRONOUS_LEVELS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_PRIVATE = 0o600


def create_private(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600: create it so (and its directory), or
    tighten an existing file that others may read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, _PRIVATE)
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
        created = False
    else:
        created = True
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != _PRIVATE:
            # A new file is at most 0600 (the umask only takes bits away), so this is
            # either a stricter umask or an existing file of an earlier version or a copy.
            os.fchmod(fd, _PRIVATE)
            if not created and mode & 0o077:
                log.warning(
                    "%s was readable by others (mode %o); tightened to 0600", path, mode,
                    extra={"path": str(path)},
                )  # fmt: skip
    finally:
        os.close(fd)


class SqliteFile:
    """One private SQLite file in WAL mode, with one connection shared by threads under a
    lock (``transaction``, ``locked``) and more connections on request (``connect``)."""

    def __init__(
        self, path: Path, *, synchronous: str | None = None, busy_timeout_ms: int = 5000
    ) -> None:
        if synchronous is not None and synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"sqlite synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}"
            )
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        create_private(path)
        self._lock = threading.Lock()
        self.conn = self.connect()
        self.conn.execute("PRAGMA journal_mode=WAL")
        if synchronous is not None:
            self.conn.execute(f"PRAGMA synchronous={synchronous}")

    def connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode (transactions are explicit), usable from
        any thread, that waits ``busy_timeout_ms`` for another writer's lock."""
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` on the shared connection: the write lock is taken at once,
        committed when the block ends, rolled back when it raises."""
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The shared connection, for reads and maintenance outside a transaction."""
        with self._lock:
            yield self.conn

    def close(self) -> None:
        with self._lock:
            self.conn.close()
