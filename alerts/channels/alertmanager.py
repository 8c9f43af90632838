"""The Alertmanager channel: alerts posted to Prometheus Alertmanager's v2 API, so that
operations route, group, silence and inhibit them with what they already run.

Each notification becomes one element of ``POST {url}/api/v2/alerts``::

    [{"labels": {"alertname": "strain_limit", "severity": "critical", "kind": "bridge",
                 "site": "bridge-a", "device": "gw1", "channel": "g2", ...},
      "annotations": {"summary": "...", "description": "...", "value": "912",
                      "threshold": "900", "unit": "µε", "acked_by": "..."},
      "startsAt": "2024-05-01T12:03:12+00:00",
      "endsAt": "2024-05-01T12:40:00+00:00",       # RESOLVED only
      "generatorURL": "https://stadtpuls.example"}]  # when configured

Alertmanager identifies an alert by its label set, so the RESOLVED post, with the same
labels and an ``endsAt``, resolves the alert the FIRING post opened. An incident's
``severity`` and ``alertname`` labels change when it escalates: a notification that
carries ``previous`` (ESCALATED, or a RESOLVED or REPEAT after such a change) also posts
the previous label set with ``endsAt``, so the old one ends when the new one starts and
Alertmanager never shows the incident twice. BACKLOG summaries (episodes that began and
ended while data was delayed) are not posted: they are over, and Alertmanager routes what
is happening now. A firing alert
without ``endsAt`` is resolved by Alertmanager itself after its ``resolve_timeout``
(5 minutes by default) unless it is posted again; REPEAT notifications post it again,
and ``firing_ends_after`` sets an explicit end instead. Digests are not alerts and are
not posted.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from alerts.channels._http import build_opener, check_http_url, post, status_error
from alerts.channels.base import ChannelContext, ChannelSettings, register_channel
from alerts.model import Alert, Event, Notification
from devices.registry import Duration
from ingest.secrets import plain_settings

__all__ = [
    "AlertmanagerChannel",
    "AlertmanagerChannelModel",
    "AlertmanagerSettings",
    "alertmanager_alert",
    "alertmanager_alerts",
]

_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_IN_LABEL_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class AlertmanagerSettings:
    url: str  # the Alertmanager's base URL, e.g. http://alertmanager:9093
    timeout: timedelta = timedelta(seconds=10)
    external_url: str | None = None  # sent as generatorURL: where people see the alert
    username: str | None = None  # basic auth, e.g. behind a reverse proxy
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    # When set, a firing alert is posted with endsAt = notification time + this, so it
    # outlives Alertmanager's resolve_timeout until the next REPEAT refreshes it.
    firing_ends_after: timedelta | None = None

    def __post_init__(self) -> None:
        check_http_url(self.url, "the Alertmanager URL")
        if self.username is not None and self.bearer_token is not None:
            raise ValueError("Alertmanager: give either username/password or a bearer token")


class AlertmanagerChannel:
    def __init__(self, name: str, settings: AlertmanagerSettings) -> None:
        self.name = name
        self.settings = settings
        self.endpoint = settings.url.rstrip("/") + "/api/v2/alerts"
        self._opener = build_opener(settings.ca_file)
        self._headers = {"Content-Type": "application/json"}
        if settings.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {settings.bearer_token}"
        elif settings.username is not None:
            pair = f"{settings.username}:{settings.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()

    def send(self, notification: Notification) -> None:
        if notification.alert is None or notification.event is Event.BACKLOG:
            return  # a digest or past episodes: nothing for Alertmanager to route now
        body = json.dumps(alertmanager_alerts(notification, self.settings)).encode()
        answer = post(
            self._opener, self.endpoint, body, self._headers, self.settings.timeout.total_seconds()
        )
        error = status_error(self.endpoint, answer)
        if error is not None:
            raise error

    def close(self) -> None:
        """Nothing is kept open between sends."""


def alertmanager_alerts(
    notification: Notification, settings: AlertmanagerSettings
) -> list[dict[str, Any]]:
    """The postableAlerts for one notification: the alert, and the label set it had
    before, ended, when its labels changed since the channels last heard of it."""
    items = [alertmanager_alert(notification, settings)]
    previous = notification.previous
    if previous is not None and _labels(previous) != items[0]["labels"]:
        ended = alertmanager_alert(
            replace(notification, event=Event.RESOLVED, alert=previous, previous=None), settings
        )
        ended["endsAt"] = _rfc3339(notification.at)
        items.insert(0, ended)
    return items


def alertmanager_alert(
    notification: Notification, settings: AlertmanagerSettings
) -> dict[str, Any]:
    """The postableAlert for one alert notification."""
    alert = notification.alert
    if alert is None:
        raise ValueError("a digest is not an Alertmanager alert")
    item: dict[str, Any] = {
        "labels": _labels(alert),
        "annotations": _annotations(alert),
        "startsAt": _rfc3339(alert.fired_at or alert.since or notification.at),
    }
    if notification.event is Event.RESOLVED:
        item["endsAt"] = _rfc3339(alert.resolved_at or notification.at)
    elif settings.firing_ends_after is not None:
        item["endsAt"] = _rfc3339(notification.at + settings.firing_ends_after)
    if settings.external_url:
        item["generatorURL"] = settings.external_url
    return item


def _labels(alert: Alert) -> dict[str, str]:
    # Alertmanager refuses the whole post for one label name outside its pattern or an
    # empty value; extra labels come from configuration, so they are made to fit.
    out: dict[str, str] = {}
    for name, value in alert.all_labels().items():
        if not value:
            continue
        if not _LABEL_NAME.fullmatch(name):
            name = _NOT_IN_LABEL_NAME.sub("_", name)  # noqa: PLW2901
            if not _LABEL_NAME.fullmatch(name):
                name = "_" + name  # noqa: PLW2901
        out.setdefault(name, value)
    return out


def _annotations(alert: Alert) -> dict[str, str]:
    out = {"summary": alert.summary, "description": _description(alert)}
    if alert.value is not None:
        out["value"] = f"{alert.value:g}"
    if alert.threshold is not None:
        out["threshold"] = f"{alert.threshold:g}"
    if alert.unit:
        out["unit"] = alert.unit
    out.update({name: text for name, text in alert.annotations.items() if text})
    if alert.acked_by:
        out["acked_by"] = alert.acked_by
        if alert.acked_at is not None:
            out["acked_at"] = alert.acked_at.isoformat()
    return out


def _description(alert: Alert) -> str:
    key = alert.key
    where = "/".join(p for p in (key.site, key.device, key.channel) if p) or "the pipeline"
    text = f"Rule {key.rule} ({alert.severity}) at {where}"
    if alert.value is not None:
        text += f": value {alert.value:g} {alert.unit}".rstrip()
        if alert.threshold is not None:
            text += f", threshold {alert.threshold:g} {alert.unit}".rstrip()
    if alert.since is not None:
        text += f", condition holding since {alert.since.isoformat()}"
    return text + "."


def _rfc3339(t: datetime) -> str:
    # Alertmanager needs an offset; the model's times are UTC, naive ones included.
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).isoformat()


@register_channel
class AlertmanagerChannelModel(ChannelSettings):
    """``type: alertmanager`` under ``alerts.channels``."""

    type: Literal["alertmanager"]
    url: str = Field(pattern=r"^https?://")
    external_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    ca_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)

    secret_keys = ("password", "bearer_token")

    def build(self, context: ChannelContext) -> AlertmanagerChannel:
        return AlertmanagerChannel(self.name, plain_settings(AlertmanagerSettings, self))
