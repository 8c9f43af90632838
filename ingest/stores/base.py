"""The contracts of the stores, and the rows they give back: ``ReadingSource`` reads stored
readings (the export, the alert digest), ``Committer`` is what the pipeline commits to, and
``Store`` is both plus what the service starts, watches and closes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ingest.batch import ReadingBatch, Receipt, Rejection


@dataclass(frozen=True, slots=True)
class ReadingQuery:
    site: str
    start_ns: int
    end_ns: int
    device: str | None = None
    measurement: str | None = None


@dataclass(frozen=True, slots=True)
class StoredReading:
    ts_ns: int
    site: str
    device: str
    channel: str
    measurement: str
    unit: str
    value: float
    anomaly: int
    score: float


@dataclass(slots=True)
class WriteStats:
    """Counters of a store that forwards committed readings to a remote database, for
    /metrics; written by the store's forwarding thread only.

    ``last_write_error`` describes the latest failed request and is reset to ``None`` by
    the next accepted one, so it reads as "what is wrong right now".
    """

    points_written: int = 0
    write_retries: int = 0
    points_quarantined: int = 0
    last_write_error: str | None = None


class ReadingSource(Protocol):
    """Readings of one site in a time range, ordered by time, then device, channel and
    measurement. Every store is one; exports and the alert digest read through it."""

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]: ...


class Committer(Protocol):
    """What the pipeline needs of a store.

    ``commit`` is the durable commit of the delivery guarantee: when it returns, the
    readings and the quarantine records of one batch survive a crash of the process, and
    only then are the MQTT messages acknowledged. A commit that raises has stored nothing
    of the batch; the caller retries the same batch. Writes are idempotent on the reading
    key (site, device, channel, measurement, device timestamp).
    """

    def commit(
        self,
        batch: ReadingBatch,
        rejected: Sequence[Rejection],
        receipts: Sequence[Receipt] = (),
    ) -> None: ...

    def receipt_time(self, digest: bytes) -> int | None:
        """The receipt time committed earlier for a message without device time, if any."""
        ...


class Store(ReadingSource, Committer, Protocol):
    """Where committed readings go, and what the service starts, watches and closes."""

    def journal_depth(self) -> int:
        """Readings committed locally but not yet in the final database (0 if none)."""
        ...

    def writable(self) -> bool: ...

    def maintain(self) -> None:
        """Upkeep the scheduler runs at night (checkpoint, statistics); may take a while."""
        ...

    @property
    def stats(self) -> WriteStats | None:
        """The forwarding counters, or ``None`` for a store that keeps readings itself."""
        ...

    def start(self) -> None:
        """Start background work (forwarding to the final database); idempotent."""
        ...

    def close(self) -> None: ...
