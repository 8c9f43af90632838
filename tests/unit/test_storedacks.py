"""``AckWhenStored`` holds a committed batch's acknowledgement until the journal's drain has
removed the batch's rows, in commit order, keeps held messages in progress, and hands back
what the database never took. The source and journal are small recorders passed in: the
real pair runs in ``tests/integration/test_nats.py``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from ingest.messages import InboundMessage
from ingest.storedacks import AckWhenStored
from tests.support.waiting import wait_until


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.in_progress_calls: list[list[str]] = []
        self.naked: list[str] = []

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        return []

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        with self.lock:
            self.acked += [m.topic for m in messages]

    def in_progress(self, messages: Sequence[InboundMessage]) -> None:
        with self.lock:
            self.in_progress_calls.append([m.topic for m in messages])

    def nak(self, messages: Sequence[InboundMessage]) -> None:
        with self.lock:
            self.naked += [m.topic for m in messages]


class Journal:
    """Appends on commit, removes in order, tells the listener as the drain would."""

    def __init__(self, rows: int = 0) -> None:
        self.appended = rows
        self.removed = 0
        self.listeners: list[Callable[[int], None]] = []

    def on_drained(self, listener: Callable[[int], None]) -> None:
        self.listeners.append(listener)

    def commit(self, rows: int) -> None:
        self.appended += rows

    def drain(self, rows: int) -> None:
        self.removed += rows
        for listener in self.listeners:
            listener(self.removed)


def batch(*names: str) -> list[InboundMessage]:
    return [InboundMessage(n, b"", 0) for n in names]


def test_a_batch_is_acknowledged_once_its_rows_are_drained_and_in_commit_order() -> None:
    source, journal = Recorder(), Journal(rows=5)  # 5 rows from before the start
    acks = AckWhenStored(source, journal, timedelta(seconds=30))
    journal.commit(3)
    acks.ack(batch("a1", "a2"))
    journal.commit(0)  # everything of this one was quarantined: no rows
    acks.ack(batch("b"))
    journal.commit(4)
    acks.ack(batch("c"))
    assert source.acked == []
    journal.drain(5)  # the old rows only
    assert source.acked == []
    journal.drain(2)  # part of a's rows
    assert source.acked == []
    journal.drain(1)  # a done, and b (no rows) with it
    assert source.acked == ["a1", "a2", "b"]
    assert acks.held == 1
    journal.drain(4)
    assert source.acked == ["a1", "a2", "b", "c"]
    assert acks.held == 0


def test_a_batch_the_drain_already_wrote_is_acknowledged_at_once() -> None:
    source, journal = Recorder(), Journal()
    acks = AckWhenStored(source, journal, timedelta(seconds=30))
    journal.commit(2)
    journal.drain(2)  # the drain can remove the rows before the commit thread acks
    acks.ack(batch("a"))
    assert source.acked == ["a"]


def test_held_messages_are_kept_in_progress_and_handed_back_at_stop() -> None:
    source, journal = Recorder(), Journal()
    acks = AckWhenStored(source, journal, timedelta(seconds=0.09))
    acks.start()
    journal.commit(2)
    acks.ack(batch("a", "b"))
    wait_until(lambda: len(source.in_progress_calls) >= 2, 5, "two in-progress signals")
    assert all(call == ["a", "b"] for call in source.in_progress_calls)
    acks.stop(timedelta(seconds=0.05))
    assert source.naked == ["a", "b"]
    assert source.acked == []
    assert acks.held == 0


def test_stop_waits_for_the_drain_before_handing_anything_back() -> None:
    source, journal = Recorder(), Journal()
    acks = AckWhenStored(source, journal, timedelta(seconds=30))
    journal.commit(1)
    acks.ack(batch("a"))
    drain = threading.Timer(0.05, journal.drain, args=(1,))
    drain.start()
    acks.stop(timedelta(seconds=10))
    drain.join()
    assert source.acked == ["a"]
    assert source.naked == []
