"""The one protocol every channel meets."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from alerts.model import Notification


class DeliveryError(Exception):
    """A delivery failed. ``retry`` says whether the same notification may succeed later
    (a timeout, a 5xx) or never will (a 4xx, a refused recipient)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Channel(Protocol):
    name: str  # unique per configured channel, e.g. "ops-mail"

    def send(self, notification: Notification) -> None:
        """Deliver one notification, blocking until it is accepted by the other side;
        raise ``DeliveryError`` when it was not. Retries across attempts are the
        dispatcher's job; a channel may retry within one attempt only where its protocol
        asks for it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Exponential backoff with jitter, shared by channels that retry within one send
    (the webhook) and by the dispatcher between sends."""

    attempts: int = 5  # including the first; 1 means no retry
    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.base_delay < timedelta(0) or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based).

        Half the backoff is fixed and half random, so channels that failed together
        (the network came back) do not all retry in the same instant, yet the wait never
        collapses to nothing."""
        ceiling = min(
            self.max_delay.total_seconds(),
            self.base_delay.total_seconds() * 2 ** max(0, failed_attempts - 1),
        )
        return random.uniform(ceiling / 2, ceiling)


def json_body(notification: Notification) -> bytes:
    """``Notification.to_json()`` as compact UTF-8, the payload of MQTT and webhooks."""
    return json.dumps(notification.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
