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
    DIGEST = "digest"  # the daily summary of a site


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


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one or more channels. ``alert`` is a snapshot: the channel may
    deliver it later (retries) without seeing later changes. For a digest, ``alert`` is
    None and ``digest`` carries the site's summary."""

    event: Event
    at: datetime  # when it was decided (UTC)
    topic_prefix: str
    alert: Alert | None = None
    digest: dict[str, Any] | None = None
    site: str = ""
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON body channels send (MQTT, webhook); README "Alerts" documents it."""
        body: dict[str, Any] = {"event": str(self.event), "at": self.at.isoformat()}
        if self.alert is not None:
            a = self.alert
            body["alert"] = {
                "id": a.id,
                "rule": a.key.rule,
                "site": a.key.site,
                "device": a.key.device,
                "channel": a.key.channel,
                "kind": a.kind,
                "severity": str(a.severity),
                "state": str(a.state),
                "summary": a.summary,
                "value": a.value,
                "threshold": a.threshold,
                "unit": a.unit,
                "since": _iso(a.since),
                "fired_at": _iso(a.fired_at),
                "resolved_at": _iso(a.resolved_at),
                "acked_by": a.acked_by,
                "acked_at": _iso(a.acked_at),
                "labels": a.all_labels(),
            }
        if self.digest is not None:
            body["site"] = self.site
            body["kind"] = self.kind
            body["digest"] = self.digest
        return body


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()
