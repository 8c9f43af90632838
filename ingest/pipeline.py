"""The data path, top to bottom.

    source.take()  ->  decode + validate (per message)  ->  anomaly check (vectorised)
      ->  store.commit (durable: readings + quarantine in one transaction)
      ->  source.ack (in arrival order)  ->  listeners (alerts, ...)

A bad message is quarantined with its reason and counted; a store that fails is retried
with jittered backoff while the messages stay unacknowledged, so the broker keeps them.
The catch-alls are two: a decoder bug quarantines its message (``Pipeline.prepare``), and
a failed commit is retried (``IngestLoop._commit``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from devices.codecs import Decoded, Decoder, ReadingRejected
from devices.rejections import positions, summarize
from ingest.anomaly import AnomalyCheck
from ingest.batch import ReadingBatch, Receipt, Rejection, message_digest
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.retry import Backoff
from ingest.stores.base import Committer

log = logging.getLogger(__name__)


class MessageSource(Protocol):
    """Where messages come from (the MQTT subscriber, or a list in tests)."""

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        """Up to ``max_messages``, waiting at most ``max_wait`` once the first has arrived,
        and no more once their payloads hold ``max_bytes`` (``None``: no limit)."""
        ...

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge committed messages to the broker, in arrival order."""
        ...


class BatchListener(Protocol):
    """Sees every committed batch; this is how alerts see readings without ``ingest``
    importing ``alerts``. A listener that raises is logged and counted, never retried."""

    def batch_committed(self, batch: ReadingBatch) -> None: ...


@dataclass(slots=True)
class PreparedBatch:
    messages: Sequence[InboundMessage]
    readings: ReadingBatch
    rejected: list[Rejection]
    receipts: list[Receipt]


# A failed durable commit is retried without end, after 0.1 s rising to 10 s (full jitter).
COMMIT_RETRY = Backoff(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=10))


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        check: AnomalyCheck,
        store: Committer,
        metrics: IngestMetrics,
        listeners: Sequence[BatchListener] = (),
    ) -> None:
        self.decoder = decoder
        self.check = check
        self.store = store
        self.metrics = metrics
        self.listeners = list(listeners)

    def prepare(self, messages: Sequence[InboundMessage]) -> PreparedBatch:
        """Decode, validate and check a batch; nothing is written yet."""
        parts: list[Decoded] = []
        rejected: list[Rejection] = []
        receipts: list[Receipt] = []
        decode = self.decoder.decode
        for m in messages:
            # The quarantine keeps the receive time the message was decoded at, so that a
            # replay times its records as the stored ones were timed.
            received_ns = m.received_ns
            try:
                if m.dup:
                    # A redelivery of a message timed at receipt keeps its first receipt
                    # time, so its readings overwrite themselves instead of doubling.
                    earlier = self.store.receipt_time(message_digest(m.topic, m.payload))
                    received_ns = received_ns if earlier is None else earlier
                decoded = decode(m.topic, m.payload, received_ns)
            except ReadingRejected as exc:
                rejected.append(
                    Rejection(m.topic, m.payload, exc.reason.value, exc.detail, received_ns)
                )
                continue
            except Exception as exc:  # a decoder bug must not lose the message or stop ingest
                log.exception("decoder failed on a message", extra={"topic": m.topic})
                rejected.append(
                    Rejection(m.topic, m.payload, "decoder_error", repr(exc), received_ns)
                )
                continue
            parts.append(decoded)
            if decoded.receipt_timed:
                receipts.append(Receipt(message_digest(m.topic, m.payload), received_ns))
            if decoded.rejected:
                # Some records refused, the others stored: one entry keeps the whole
                # message and which records to replay.
                refused = decoded.rejected
                rejected.append(
                    Rejection(
                        m.topic,
                        m.payload,
                        refused[0].reason.value,
                        summarize(refused, len(decoded)),
                        received_ns,
                        positions(refused),
                    )
                )
        readings = ReadingBatch.concat(parts)
        # CPU time of this thread, not wall time: while paho's thread holds the GIL the
        # check waits without costing anything, and that wait is not the check's share.
        started = time.thread_time()
        self.check.check(readings)
        self.metrics.check_seconds.inc(time.thread_time() - started)
        return PreparedBatch(messages, readings, rejected, receipts)

    def commit(self, prepared: PreparedBatch) -> None:
        """The durable commit; raises if the store failed (nothing of the batch is kept)."""
        started = time.perf_counter()
        self.store.commit(prepared.readings, prepared.rejected, prepared.receipts)
        m = self.metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.batch_messages.observe(len(prepared.messages))
        m.messages_committed.inc(len(prepared.messages))
        m.readings_stored.inc(len(prepared.readings))
        flagged = int((prepared.readings.flags != 0).sum())
        if flagged:
            m.anomalies.inc(flagged)
        for r in prepared.rejected:
            m.rejected.labels(r.reason).inc()

    def notify(self, prepared: PreparedBatch) -> None:
        for listener in self.listeners:
            try:
                listener.batch_committed(prepared.readings)
            except Exception:
                name = type(listener).__name__
                log.exception("batch listener failed", extra={"listener": name})
                self.metrics.listener_errors.labels(name).inc()


@dataclass
class BatchSettings:
    max_messages: int = 2000
    max_wait: timedelta = timedelta(milliseconds=100)
    # 2,000 blocks of 100 samples are 200,000 readings: a commit of a third of a second that
    # the next batch waits out at the end of a burst, and a quarter GB of memory.
    max_bytes: int | None = 1 << 20
    retry: Backoff = COMMIT_RETRY


class IngestLoop:
    """Takes batches from the source, commits them, then acknowledges them.

    Decoding runs on this loop's thread and the commit on a second one, one batch apart:
    SQLite releases the GIL while it writes, so the next batch is decoded meanwhile on the
    other core (the stores write thousands of rows per statement, see
    ``LocalDatabase.commit``, or the decoder would take the GIL from every row). A single
    committer keeps commits and acknowledgements in arrival order.
    """

    def __init__(self, source: MessageSource, pipeline: Pipeline, settings: BatchSettings) -> None:
        self.source = source
        self.pipeline = pipeline
        self.settings = settings
        self.batches = 0
        self._handoff: queue.Queue[PreparedBatch | None] = queue.Queue(maxsize=1)
        self._uncommitted = 0  # batches handed over and not yet committed
        self._settled = threading.Condition()

    def run(self, stop: threading.Event) -> None:
        committer = threading.Thread(
            target=self._commit_loop, args=(stop,), name="ingest-commit", daemon=True
        )
        committer.start()
        try:
            while not stop.is_set() and committer.is_alive():
                settings = self.settings
                messages = self.source.take(
                    settings.max_messages, settings.max_wait, settings.max_bytes
                )
                if not messages:
                    continue
                if any(m.dup for m in messages):
                    # A redelivery may repeat a message of the batch still committing; its
                    # receipt time must be looked up after that commit, not before.
                    self._wait_settled(stop, committer)
                self._hand_over(self.pipeline.prepare(messages), stop, committer)
        finally:
            self._hand_over(None, stop, committer)
            committer.join()

    def _hand_over(
        self, item: PreparedBatch | None, stop: threading.Event, committer: threading.Thread
    ) -> None:
        # Bounded: while the committer is busy (a slow disk, a retried commit) the loop
        # stops taking messages, and the broker holds the rest.
        while committer.is_alive():
            if item is not None:
                with self._settled:
                    self._uncommitted += 1
            try:
                self._handoff.put(item, timeout=0.1)
            except queue.Full:
                if item is not None:
                    self._settle()
                if stop.is_set() and item is not None:
                    return  # stopping: unacknowledged messages are redelivered
                continue
            return

    def _settle(self) -> None:
        with self._settled:
            self._uncommitted -= 1
            self._settled.notify_all()

    def _wait_settled(self, stop: threading.Event, committer: threading.Thread) -> None:
        with self._settled:
            while self._uncommitted and committer.is_alive() and not stop.is_set():
                self._settled.wait(0.1)

    def _commit_loop(self, stop: threading.Event) -> None:
        while True:
            prepared = self._handoff.get()
            if prepared is None:
                return
            committed = self._commit(prepared, stop)
            self._settle()
            if not committed:
                return  # stopping: the broker redelivers what was not acknowledged
            self.source.ack(prepared.messages)
            self.batches += 1
            self.pipeline.notify(prepared)

    def _commit(self, prepared: PreparedBatch, stop: threading.Event) -> bool:
        attempt = 0
        while True:
            try:
                self.pipeline.commit(prepared)
            except Exception:
                self.pipeline.metrics.commit_failures.inc()
                log.exception("durable commit failed; retrying the same batch")
                if stop.wait(self.settings.retry.delay(attempt).total_seconds()):
                    return False
                attempt += 1
            else:
                return True
