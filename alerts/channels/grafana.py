"""Alerts as Grafana annotations, so engineers see on the bridge's dashboard when an alert
fired and how long it lasted, next to the strain that caused it.

A firing alert becomes an annotation tagged ``stadtpuls-alert``, ``site:<site>`` (what
the generated dashboards query), ``alert:<id>``, ``rule:<rule>`` and
``severity:<severity>``; its resolution turns that annotation into a region ending at the
resolution. The annotation is found again by its ``alert:`` tag and firing time, so a
restart in between loses nothing. An escalation or de-escalation is a point annotation at
the reading time the severity changed; a BACKLOG summary adds one region per episode that
fired and resolved while data was delayed, at its reading times. Repeats and digests are
not annotated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import niquests
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, TokenAuth
from pydantic import Field, SecretStr

from alerts.channels.base import ChannelContext, ChannelSettings, DeliveryError, register_channel
from alerts.model import Alert, Event, Notification
from devices.registry import Duration
from ingest.secrets import plain_settings

TAG = "stadtpuls-alert"


@dataclass(frozen=True, slots=True)
class GrafanaSettings:
    url: str  # e.g. http://grafana:3000
    token: str = field(repr=False)  # a service account token with the annotation writer role
    timeout: timedelta = timedelta(seconds=10)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def tags(alert: Alert) -> list[str]:
    return [
        TAG,
        f"site:{alert.key.site}" if alert.key.site else "site:pipeline",
        f"alert:{alert.id}",
        f"rule:{alert.key.rule}",
        f"severity:{alert.severity}",
    ]


def _text(alert: Alert, event: Event) -> str:
    value = "" if alert.value is None else f" ({alert.value:.4g} {alert.unit})".replace(" )", ")")
    if event is Event.ESCALATED:
        return f"SEVERITY {str(alert.severity).upper()}: {alert.summary}{value}"
    return f"{str(event).upper()}: {alert.summary}{value}"


class GrafanaAnnotationChannel:
    def __init__(self, name: str, settings: GrafanaSettings) -> None:
        self.name = name
        self.settings = settings
        self._api = GrafanaApi.from_url(
            settings.url,
            credential=TokenAuth(settings.token),  # type: ignore[no-untyped-call]
            timeout=settings.timeout.total_seconds(),
        )

    def send(self, notification: Notification) -> None:
        a = notification.alert
        if a is None or notification.event in (Event.REPEAT, Event.DIGEST):
            return
        start = a.fired_at or a.since or notification.at
        try:
            if notification.event is Event.ESCALATED:
                changed = a.annotations.get("severity_since")
                when = notification.at if changed is None else datetime.fromisoformat(changed)
                self._api.annotations.add_annotation(
                    time_from=_ms(when), tags=tags(a), text=_text(a, Event.ESCALATED)
                )
                return
            if notification.event is Event.BACKLOG:
                for e in notification.episodes:
                    self._api.annotations.add_annotation(
                        time_from=_ms(e.fired_at),
                        time_to=_ms(e.resolved_at),
                        tags=[*tags(a)[:-1], f"severity:{e.severity}", "delayed"],
                        text=f"DELAYED DATA: {e.severity} ({e.rule}), {a.summary}",
                    )
                return
            if notification.event == Event.FIRING:
                self._api.annotations.add_annotation(
                    time_from=_ms(start), tags=tags(a), text=_text(a, Event.FIRING)
                )
                return
            end = a.resolved_at or notification.at
            found: list[dict[str, Any]] = self._api.annotations.find_annotations(
                time_from=_ms(start), time_to=_ms(start) + 1, tags=[TAG, f"alert:{a.id}"]
            )
            if found:
                self._api.annotations.update_annotation(
                    found[0]["id"],
                    time_from=_ms(start),
                    time_to=_ms(end),
                    tags=tags(a),
                    text=_text(a, Event.RESOLVED),
                )
            else:
                self._api.annotations.add_annotation(
                    time_from=_ms(start),
                    time_to=_ms(end),
                    tags=tags(a),
                    text=_text(a, Event.RESOLVED),
                )
        except GrafanaClientError as exc:
            # A refused token or a malformed request stays refused; a 429 may pass later.
            raise DeliveryError(f"Grafana refused: {exc}", retry=exc.status_code == 429) from exc
        except (GrafanaException, niquests.RequestException, OSError) as exc:
            raise DeliveryError(f"Grafana unreachable: {exc}") from exc

    def close(self) -> None:
        pass


@register_channel
class GrafanaChannelModel(ChannelSettings):
    """``type: grafana`` under ``alerts.channels``: alerts as annotations on the generated
    dashboards."""

    type: Literal["grafana"]
    url: str = Field(pattern=r"^https?://")
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)

    secret_keys = required_secret_keys = ("token",)

    def build(self, context: ChannelContext) -> GrafanaAnnotationChannel:
        return GrafanaAnnotationChannel(self.name, plain_settings(GrafanaSettings, self))
