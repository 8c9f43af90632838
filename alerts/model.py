"""What an alert is, and what a channel is handed to deliver."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class State(StrEnum):
    PENDING = "pending"  # the condition holds, but not yet for the rule's duration
    FIRING = "firing"
    RESOLVED = "resolved"


class Event(StrEnum):
    """Why a notification goes out."""

    FIRING = "firing"
    RESOLVED = "resolved"
    REPEAT = "repeat"  # still firing, not acknowledged, the repeat interval has passed
    # The incident's severity changed, up or down; ``Notification.previous`` is what the
    # channels were told before.
    ESCALATED = "escalated"
    # Episodes that fired and resolved inside a backlog (data delayed by an outage), told
    # once when the backlog is over instead of a firing and a resolved each.
    BACKLOG = "backlog"
    DIGEST = "digest"  # the daily summary of a site


SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class AlertKey:
    """One alert per rule and place: the deduplication key. ``channel`` is the sensor
    channel of the device (a gauge), empty for device-wide alerts; for pipeline alerts
    site and device are empty."""

    rule: str
    site: str = ""
    device: str = ""
    channel: str = ""

    @property
    def id(self) -> str:
        return "/".join((self.rule, self.site, self.device, self.channel))


@dataclass(slots=True)
class Alert:
    key: AlertKey
    severity: Severity
    kind: str  # "bridge", "school" or "pipeline"
    state: State
    summary: str  # one readable line: what, where, how much
    value: float | None = None  # the value that decided the last transition
    threshold: float | None = None
    unit: str = ""
    since: datetime | None = None  # when the condition began to hold (pending)
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)  # extra, e.g. measurement
    # Text for people, not for matching (Alertmanager's sense): an incident's members, its
    # peak severity. Never part of the identity, so changing them opens nothing new.
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.key.id

    def all_labels(self) -> dict[str, str]:
        """Labels for matching silences and for Alertmanager."""
        out = {
            "alertname": self.key.rule,
            "severity": str(self.severity),
            "kind": self.kind,
        }
        place = {"site": self.key.site, "device": self.key.device, "channel": self.key.channel}
        out.update({name: value for name, value in place.items() if value})
        out.update(self.labels)
        return out

    def to_json(self, *, listing: bool = False) -> dict[str, Any]:
        """The alert as JSON: the ``alert`` object of a notification (README "Alerts"),
        whose ``rule`` is the rule leading it (its ``alertname``). With ``listing``, as
        ``stadtpuls alerts list --json`` and ``GET /api/v1/alerts`` show it: ``rule`` is
        the rule of its id (``incident`` for an incident), and no ``resolved_at``."""
        labels = self.all_labels()
        body: dict[str, Any] = {
            "id": self.id,
            "rule": self.key.rule if listing else labels["alertname"],
            "site": self.key.site,
            "device": self.key.device,
            "channel": self.key.channel,
            "kind": self.kind,
            "severity": str(self.severity),
            "state": str(self.state),
            "summary": self.summary,
            "value": self.value,
            "threshold": self.threshold,
            "unit": self.unit,
            "since": _iso(self.since),
            "fired_at": _iso(self.fired_at),
        }
        if not listing:
            body["resolved_at"] = _iso(self.resolved_at)
        body["acked_by"] = self.acked_by
        body["acked_at"] = _iso(self.acked_at)
        body["labels"] = labels
        body["annotations"] = dict(self.annotations)
        return body


@dataclass(frozen=True, slots=True)
class Episode:
    """One firing of an incident from start to end, in reading time, with the highest
    severity it reached (and the rule and value that took it there)."""

    fired_at: datetime
    resolved_at: datetime
    severity: Severity
    rule: str
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fired_at": self.fired_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat(),
            "severity": str(self.severity),
            "rule": self.rule,
            "value": self.value,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one or more channels. ``alert`` is a snapshot: the channel may
    deliver it later (retries) without seeing later changes. For a digest, ``alert`` is
    None and ``digest`` carries the site's summary.

    ``previous`` is the alert as the channels last heard of it, when its labels have
    changed since (an escalation, or a resolution after one): Alertmanager identifies an
    alert by its labels and must be told that the old label set ended. ``episodes`` are
    the episodes of a BACKLOG summary."""

    event: Event
    at: datetime  # when it was decided (UTC)
    topic_prefix: str
    alert: Alert | None = None
    digest: dict[str, Any] | None = None
    site: str = ""
    kind: str = ""
    previous: Alert | None = None
    episodes: tuple[Episode, ...] = ()

    def highest_severity(self) -> Severity | None:
        """The highest severity this notification speaks of: the alert's, what it was
        before, any episode's and the incident's peak. Routing by it keeps a channel that
        heard of an incident at its peak informed until its end."""
        if self.alert is None:
            return None
        found = [self.alert.severity, *(e.severity for e in self.episodes)]
        if self.previous is not None:
            found.append(self.previous.severity)
        peak = self.alert.annotations.get("peak_severity")
        if peak in tuple(Severity):
            found.append(Severity(peak))
        return max(found, key=SEVERITY_RANK.__getitem__)

    def to_json(self) -> dict[str, Any]:
        """The JSON body channels send (MQTT, webhook); README "Alerts" documents it."""
        body: dict[str, Any] = {"event": str(self.event), "at": self.at.isoformat()}
        if self.alert is not None:
            body["alert"] = self.alert.to_json()
        if self.previous is not None:
            body["previous"] = {
                "rule": self.previous.all_labels()["alertname"],
                "severity": str(self.previous.severity),
                "labels": self.previous.all_labels(),
            }
        if self.episodes:
            body["episodes"] = [e.to_json() for e in self.episodes]
        if self.digest is not None:
            body["site"] = self.site
            body["kind"] = self.kind
            body["digest"] = self.digest
        return body


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()
