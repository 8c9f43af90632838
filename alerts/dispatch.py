"""The dispatcher: hands notifications to channels without letting one hold up another.

Each channel has its own bounded queue and worker thread, so a mail server that hangs
for its full timeout delays only the mail. Within a channel notifications go out in the
order submitted (a RESOLVED never overtakes its FIRING), and a failed send blocks that
channel's queue while it is retried with backoff (``DeliveryRetry``; at least as long as
the other side asked with ``Retry-After``). Channels never retry by themselves, so one
notification makes at most ``attempts`` attempts. Every attempt is recorded through the
``record`` callback, and so is every notification given up without one more attempt:

    record(channel_name, notification, attempt, ok, error)

``attempt`` counts from 1; it is 0 for a notification dropped without an attempt (queue
full, dispatcher closed), and ``error`` then starts with ``"dropped:"``.

When a queue is full, the oldest queued REPEAT gives way (it only repeats what was said
before); FIRING and RESOLVED are never dropped, and are queued past the bound when there
is no REPEAT to drop, as losing them would hide an incident.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from alerts.channels.base import Channel, DeliveryError
from alerts.model import Event, Notification
from ingest.retry import Backoff

__all__ = ["DeliveryRetry", "DispatchSettings", "Dispatcher", "Recorder"]

log = logging.getLogger(__name__)

Recorder = Callable[[str, Notification, int, bool, str | None], None]


@dataclass(frozen=True, slots=True)
class DeliveryRetry:
    """How often and how patiently a notification is tried on one channel: exponential
    backoff with jitter between the attempts."""

    attempts: int = 6  # including the first; 1 means no retry
    base_delay: timedelta = timedelta(seconds=2)
    max_delay: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.base_delay < timedelta(0) or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")

    @property
    def backoff(self) -> Backoff:
        """``base_delay`` doubling up to ``max_delay``; half of each wait is fixed and half
        random, so channels that failed together (the network came back) do not all retry
        in the same instant, yet the wait never collapses to nothing."""
        return Backoff(self.base_delay, self.max_delay, multiplier=2.0, jitter=0.5)

    def delay(self, failed_attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based), at least
        ``retry_after`` (what the other side asked for) up to ``max_delay``."""
        wait = self.backoff.delay(failed_attempts - 1).total_seconds()
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay.total_seconds()))
        return wait


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    retry: DeliveryRetry = DeliveryRetry()  # attempts per notification and channel
    queue_size: int = 1000  # per channel
    close_timeout: timedelta = timedelta(seconds=10)  # for draining on close()

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {self.queue_size}")


@dataclass(eq=False, slots=True)
class _Lane:
    channel: Channel
    queue: deque[Notification] = field(default_factory=deque)
    busy: bool = False  # a notification is being sent or waits for its retry
    thread: threading.Thread | None = None


class Dispatcher:
    def __init__(
        self,
        channels: Sequence[Channel],
        record: Recorder,
        settings: DispatchSettings | None = None,
    ) -> None:
        names = [c.name for c in channels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"alert channel names must be unique: {', '.join(duplicates)}")
        self.settings = settings if settings is not None else DispatchSettings()
        self._record_callback = record
        self._changed = threading.Condition()
        self._accepting = True
        self._stop = threading.Event()
        self._lanes = {c.name: _Lane(c) for c in channels}
        for name, lane in self._lanes.items():
            lane.thread = threading.Thread(
                target=self._work, args=(lane,), name=f"alert-channel-{name}", daemon=True
            )
            lane.thread.start()

    @property
    def channel_names(self) -> list[str]:
        return list(self._lanes)

    def submit(self, notification: Notification, channels: Sequence[str] | None = None) -> None:
        """Queue ``notification`` for the named channels (all when None); never blocks."""
        names = list(self._lanes) if channels is None else list(channels)
        unknown = [n for n in names if n not in self._lanes]
        if unknown:
            raise ValueError(f"no alert channel named {', '.join(unknown)}")
        dropped: list[tuple[str, Notification, str]] = []
        with self._changed:
            for name in names:
                lane = self._lanes[name]
                if not self._accepting:
                    dropped.append((name, notification, "dropped: dispatcher closed"))
                    continue
                victim = self._make_room(lane, notification)
                if victim is not None:
                    dropped.append((name, victim, "dropped: queue full"))
                if victim is not notification:
                    lane.queue.append(notification)
            self._changed.notify_all()
        for name, victim, reason in dropped:
            log.warning(
                "alert channel %s %s: %s", name, reason, _describe(victim),
                extra={"channel": name},
            )  # fmt: skip
            self._record(name, victim, 0, ok=False, error=reason)

    def wait_idle(self, timeout: float) -> bool:
        """True once every queue is empty and no send is in flight or waiting to retry."""
        with self._changed:
            return self._changed.wait_for(self._idle, timeout)

    def close(self) -> None:
        """Stop taking notifications, drain the queues for up to ``close_timeout``, then
        stop the workers (what is still queued is recorded as dropped) and close the
        channels. A send in flight at the deadline is abandoned to its own timeout."""
        with self._changed:
            self._accepting = False
        deadline = time.monotonic() + self.settings.close_timeout.total_seconds()
        self.wait_idle(self.settings.close_timeout.total_seconds())
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
        for lane in self._lanes.values():
            lane.channel.close()
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()) + 1.0)

    # -- the workers ---------------------------------------------------------------------

    def _idle(self) -> bool:
        return all(not lane.queue and not lane.busy for lane in self._lanes.values())

    def _make_room(self, lane: _Lane, incoming: Notification) -> Notification | None:
        """What to drop so ``incoming`` fits: None, the oldest queued REPEAT, or
        ``incoming`` itself when it is a REPEAT and nothing else may go."""
        if len(lane.queue) < self.settings.queue_size:
            return None
        for index, queued in enumerate(lane.queue):
            if queued.event is Event.REPEAT:
                del lane.queue[index]
                return queued
        if incoming.event is Event.REPEAT:
            return incoming
        log.warning(
            "alert channel %s: queue over its bound of %d, keeping %s anyway",
            lane.channel.name, self.settings.queue_size, _describe(incoming),
            extra={"channel": lane.channel.name},
        )  # fmt: skip
        return None

    def _work(self, lane: _Lane) -> None:
        name = lane.channel.name
        left: list[Notification] = []
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(lane.queue) or self._stop.is_set())
                if self._stop.is_set():
                    left.extend(lane.queue)
                    lane.queue.clear()
                    self._changed.notify_all()
                    break
                notification = lane.queue.popleft()
                lane.busy = True
            try:
                self._deliver(lane.channel, notification)
            finally:
                with self._changed:
                    lane.busy = False
                    self._changed.notify_all()
        for notification in left:
            self._record(name, notification, 0, ok=False, error="dropped: dispatcher closed")

    def _deliver(self, channel: Channel, notification: Notification) -> None:
        retry = self.settings.retry
        for attempt in range(1, retry.attempts + 1):
            retry_after: float | None = None
            try:
                channel.send(notification)
            except DeliveryError as exc:
                self._record(channel.name, notification, attempt, ok=False, error=str(exc))
                retry_after = exc.retry_after
                if not exc.retry:
                    log.warning(
                        "alert channel %s gave up on %s: %s",
                        channel.name, _describe(notification), exc,
                        extra={"channel": channel.name},
                    )  # fmt: skip
                    return
            except Exception as exc:
                # A bug in one channel must not end its worker, which would silently stop
                # that channel for good; it is recorded like any failure and not retried.
                log.exception(
                    "alert channel %s failed unexpectedly", channel.name,
                    extra={"channel": channel.name},
                )  # fmt: skip
                self._record(channel.name, notification, attempt, ok=False, error=repr(exc))
                return
            else:
                self._record(channel.name, notification, attempt, ok=True, error=None)
                return
            if attempt < retry.attempts and self._stop.wait(retry.delay(attempt, retry_after)):
                self._record(
                    channel.name, notification, 0, ok=False,
                    error="dropped: dispatcher closed while waiting to retry",
                )  # fmt: skip
                return
        log.warning(
            "alert channel %s gave up on %s after %d attempts",
            channel.name, _describe(notification), retry.attempts,
            extra={"channel": channel.name},
        )  # fmt: skip

    def _record(
        self, name: str, notification: Notification, attempt: int, *, ok: bool, error: str | None
    ) -> None:
        try:
            self._record_callback(name, notification, attempt, ok, error)
        except Exception:
            # The delivery log failing (a locked database) must not stop deliveries.
            log.exception("could not record the delivery attempt of channel %s", name)


def _describe(notification: Notification) -> str:
    what = notification.alert.id if notification.alert is not None else notification.site
    return f"{notification.event} {what}"
