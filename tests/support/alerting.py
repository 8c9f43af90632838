"""Test doubles for the alert engine, passed in (never patched in): a clock the test moves
and a sink that keeps what the engine handed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from alerts.model import Notification


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Sink:
    sent: list[Notification] = field(default_factory=list)

    def submit(self, notification: Notification) -> None:
        self.sent.append(notification)

    def events(self, rule: str | None = None) -> list[tuple[str, str]]:
        """(event, alert id) of every alert notification, of one rule if given."""
        return [
            (str(n.event), n.alert.id)
            for n in self.sent
            if n.alert is not None and (rule is None or n.alert.all_labels()["alertname"] == rule)
        ]
