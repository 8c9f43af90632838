"""The local databases are readable by their owner only: the store and the InfluxDB journal
hold raw device payloads (the quarantine), ``alerts.sqlite`` who acknowledged what, and
``tokens.sqlite`` the hashes of the students' read tokens.

Created under umask 000, so a mode of 0600 comes from the code and not from the umask."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Protocol

import pytest

from alerts.state import AlertStore
from export.tokens import TokenStore
from ingest.stores.influx import InfluxStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.registry import sample_registry
from tests.support.stores import influx_settings

pytestmark = pytest.mark.integration


class Closable(Protocol):
    def close(self) -> None: ...


def sqlite_store(path: Path) -> Closable:
    return SqliteStore(SqliteSettings(path), sample_registry().series)


def influx_journal(path: Path) -> Closable:
    # Never started: the journal is what is on disk; no InfluxDB is needed for that.
    return InfluxStore(
        influx_settings("http://127.0.0.1:9"), SqliteSettings(path), sample_registry().series
    )


def token_store(path: Path) -> Closable:
    tokens = TokenStore(path)
    # A write makes SQLite create the WAL and shared-memory files beside the database.
    tokens.log(None, "file mode test", "unauthorized", time.time_ns())
    return tokens


def alert_store(path: Path) -> Closable:
    return AlertStore(path)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("stadtpuls.db", sqlite_store),
        ("stadtpuls.db", influx_journal),
        ("tokens.sqlite", token_store),
        ("alerts.sqlite", alert_store),
    ],
    ids=["sqlite store", "influxdb journal", "tokens", "alerts"],
)
def test_databases_are_created_owner_only(
    tmp_path: Path, name: str, make: Callable[[Path], Closable]
) -> None:
    path = tmp_path / "data" / name
    with closing(make(path)):
        files = sorted(tmp_path.joinpath("data").iterdir())
        assert path in files
        modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}
        assert modes == dict.fromkeys(modes, "0o600")
