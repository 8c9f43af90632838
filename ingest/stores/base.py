"""The contract every store meets, and the rows it gives back."""

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


class Store(Protocol):
    """Where committed readings go.

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

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]: ...

    def journal_depth(self) -> int:
        """Readings committed locally but not yet in the final database (0 if none)."""
        ...

    def writable(self) -> bool: ...

    def maintain(self) -> None:
        """Upkeep the scheduler runs at night (checkpoint, statistics); may take a while."""
        ...

    def close(self) -> None: ...
