"""``AckWhenStored``: acknowledge a JetStream message only once InfluxDB has its readings.

With MQTT the worker acknowledges after the commit to its local journal, because Mosquitto
drops what it has queued too long: the journal must take the readings off the broker. A
JetStream stream keeps its messages replicated on a majority of the nodes until they are
acknowledged, so it is the better journal. Acknowledging on the local commit would leave
readings that are in no database but the worker's own disk: a worker whose host is lost
for good takes them with it, and its partitions' next holder never sees them.

So on NATS with the InfluxDB store the pipeline's acknowledgement of a committed batch is
held here until the journal's drain has written the batch to InfluxDB. The journal is
drained in commit order, so a batch is written once the drain has removed as many rows as
had been appended up to and including the batch. While InfluxDB is away the held messages
stay with the stream: the source stops taking more at its ``max_pending`` and the held
ones are told to the server to be in progress every third of the ack wait, so they are
not delivered again meanwhile. A redelivery after all (the worker died) writes the same
points again, which InfluxDB keeps once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

from ingest.messages import InboundMessage
from ingest.pipeline import MessageSource

log = logging.getLogger(__name__)


class HeldSource(MessageSource, Protocol):
    """A source whose messages can be held unacknowledged for a long time."""

    def in_progress(self, messages: Sequence[InboundMessage]) -> None:
        """Tell the server these are still being worked on (restart their ack wait)."""
        ...

    def nak(self, messages: Sequence[InboundMessage]) -> None:
        """Hand these back for delivery at once."""
        ...


class DrainedJournal(Protocol):
    """A journal drained in commit order, counting the rows it appended and drained
    (written to the database, or quarantined)."""

    @property
    def appended(self) -> int: ...

    def on_drained(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(removed)`` on the drain's thread each time rows are drained;
        ``removed`` counts every row drained so far."""
        ...


class AckWhenStored:
    """The ``MessageSource`` the ingest loop runs on: ``take`` from ``source``, and
    ``ack`` once ``journal`` has drained the batch."""

    def __init__(self, source: HeldSource, journal: DrainedJournal, ack_wait: timedelta) -> None:
        self.source = source
        self.journal = journal
        self.keep_alive_s = ack_wait.total_seconds() / 3
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        # (rows appended when the batch was committed, its messages), in commit order.
        self._held: deque[tuple[int, Sequence[InboundMessage]]] = deque()
        self._removed = 0
        self._stop = threading.Event()
        self._keeper = threading.Thread(target=self._keep_alive, name="ack-keeper", daemon=True)
        journal.on_drained(self._drained)

    @property
    def held(self) -> int:
        """Messages committed and waiting for the database."""
        with self._lock:
            return sum(len(messages) for _, messages in self._held)

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        return self.source.take(max_messages, max_wait, max_bytes)

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        # Called on the commit thread right after the batch's commit, which has counted its
        # rows in ``appended`` already.
        end = self.journal.appended
        with self._lock:
            if self._held or end > self._removed:
                self._held.append((end, messages))
                return
        self.source.ack(messages)

    def _drained(self, removed: int) -> None:
        ready: list[InboundMessage] = []
        with self._lock:
            self._removed = removed
            while self._held and self._held[0][0] <= removed:
                ready.extend(self._held.popleft()[1])
            if not self._held:
                self._emptied.notify_all()
        if ready:
            self.source.ack(ready)

    def start(self) -> None:
        self._keeper.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.keep_alive_s):
            with self._lock:
                waiting = [m for _, messages in self._held for m in messages]
            if waiting:
                self.source.in_progress(waiting)

    def stop(self, timeout: timedelta) -> None:
        """Wait up to ``timeout`` for the drain to write what is held, then hand the rest
        back to the stream: the next holder writes it (again, harmlessly)."""
        self._stop.set()
        with self._emptied:
            self._emptied.wait_for(lambda: not self._held, timeout.total_seconds())
            rest = [m for _, messages in self._held for m in messages]
            self._held.clear()
        if rest:
            log.info("handing %d messages back that InfluxDB does not have yet", len(rest))
            self.source.nak(rest)
