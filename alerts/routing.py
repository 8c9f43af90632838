"""Which channels hear of a notification: the ``min_severity`` of each."""

from __future__ import annotations

from alerts.dispatch import Dispatcher
from alerts.model import SEVERITY_RANK, Notification, Severity

__all__ = ["SeverityRouter"]


class SeverityRouter:
    """Sends each alert to the channels whose ``min_severity`` it reaches; digests to all.

    An incident is routed by the highest severity it speaks of (its peak, what it was
    before an escalation): a channel that heard it fire as critical also hears it
    de-escalate and resolve, and is not left with an open alert."""

    def __init__(self, dispatcher: Dispatcher, min_severity: dict[str, Severity]) -> None:
        self.dispatcher = dispatcher
        self.min_severity = min_severity

    def submit(self, notification: Notification) -> None:
        severity = notification.highest_severity()
        names = [
            name
            for name, least in self.min_severity.items()
            if severity is None or SEVERITY_RANK[severity] >= SEVERITY_RANK[least]
        ]
        if names:
            self.dispatcher.submit(notification, names)
