"""``ListSource``: a message source over a list, for replays and tests (passed in, never
patched in), recording what was acknowledged."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta

from ingest.batch import InboundMessage


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
