"""What message sources share: ``take_from``, a batch from the queue a client's thread
fills; and ``ListSource``, a source over a list, for replays and tests (passed in, never
patched in), recording what was acknowledged."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta

from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics

_POLL_INTERVAL_S = 0.005


def take_from(
    q: queue.SimpleQueue[InboundMessage],
    max_messages: int,
    max_wait: timedelta,
    max_bytes: int | None,
) -> list[InboundMessage]:
    """``MessageSource.take`` over ``q``: up to ``max_messages`` (or ``max_bytes`` of
    payload), waiting at most ``max_wait`` once the first has arrived; none after 0.2 s
    without any, so the caller can look at its stop flag."""
    try:
        first = q.get(timeout=0.2)
    except queue.Empty:
        return []
    out = [first]
    size = len(first.payload)
    limit = max_bytes if max_bytes is not None else float("inf")
    deadline = time.monotonic() + max_wait.total_seconds()
    while len(out) < max_messages and size < limit:
        try:
            m = q.get_nowait()
            out.append(m)
            size += len(m.payload)
        except queue.Empty:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Let messages pile up rather than waking for each one: every wake-up takes
            # the GIL from the client's network thread.
            time.sleep(min(remaining, _POLL_INTERVAL_S))
    return out


def take_counted(
    q: queue.SimpleQueue[InboundMessage],
    metrics: IngestMetrics,
    max_messages: int,
    max_wait: timedelta,
    max_bytes: int | None,
    held_elsewhere: int = 0,
) -> list[InboundMessage]:
    """``take_from``, with the batch counted as received and the pending messages set to
    what is left on ``q``, the batch itself and ``held_elsewhere`` (not yet on ``q``)."""
    out = take_from(q, max_messages, max_wait, max_bytes)
    if out:
        # Counted here, once per batch: a counter update per message would cost the
        # network thread a lock round trip at tens of thousands of messages a second.
        metrics.messages_received.inc(len(out))
        metrics.pending_messages.set(q.qsize() + held_elsewhere + len(out))
    return out


class ListSource:
    def __init__(self, messages: Iterable[InboundMessage] = ()) -> None:
        self._messages = list(messages)
        self._lock = threading.Lock()
        self.acked: list[InboundMessage] = []
        self.drained = threading.Event()

    def add(self, messages: Iterable[InboundMessage]) -> None:
        with self._lock:
            self._messages.extend(messages)
            self.drained.clear()

    @property
    def untaken(self) -> int:
        with self._lock:
            return len(self._messages)

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        with self._lock:
            n, size = 0, 0
            for m in self._messages[:max_messages]:
                n += 1
                size += len(m.payload)
                if max_bytes is not None and size >= max_bytes:
                    break
            out = self._messages[:n]
            del self._messages[:n]
        if not out:
            self.drained.wait(min(max_wait.total_seconds(), 0.05))
        return out

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        with self._lock:
            self.acked.extend(messages)
            if not self._messages:
                self.drained.set()
