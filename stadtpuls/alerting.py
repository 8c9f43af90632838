"""Wiring of the alert parts: state, channels, dispatcher, engine, scheduled jobs and the
HTTP routes operations use to list and acknowledge alerts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from alerts.digest import Readings, site_digest
from alerts.dispatch import Dispatcher
from alerts.engine import AlertEngine, PipelineHealth
from alerts.jobs import AlertJobs
from alerts.model import Alert, Notification, Severity
from alerts.state import AlertStore
from devices.registry import Registry
from stadtpuls.alert_settings import ServiceBroker, build_channel
from stadtpuls.settings import Settings

log = logging.getLogger(__name__)

_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


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
            if severity is None or _RANK[severity] >= _RANK[least]
        ]
        if names:
            self.dispatcher.submit(notification, names)


def alert_json(a: Alert) -> dict[str, Any]:
    return {
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
        "since": None if a.since is None else a.since.isoformat(),
        "fired_at": None if a.fired_at is None else a.fired_at.isoformat(),
        "acked_by": a.acked_by,
        "acked_at": None if a.acked_at is None else a.acked_at.isoformat(),
        "labels": a.all_labels(),
        "annotations": dict(a.annotations),
    }


class Alerting:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        readings: Readings,
        health: Callable[[], PipelineHealth],
        maintenance: Sequence[Callable[[], None]] = (),
    ) -> None:
        cfg = settings.alerts
        self.registry = registry
        self.readings = readings
        self.config = cfg
        self.store = AlertStore(settings.alerts_db_path)
        m = settings.mqtt
        broker = ServiceBroker(
            m.host,
            m.port,
            m.username,
            None if m.password is None else m.password.get_secret_value(),
            m.tls,
            None if m.tls_ca is None else str(m.tls_ca),
            None if m.tls_cert is None else str(m.tls_cert),
            None if m.tls_key is None else str(m.tls_key),
        )
        channels = [build_channel(c, settings.topic_prefix, broker) for c in cfg.channels]
        self.dispatcher = Dispatcher(channels, self.store.record_delivery)
        router = SeverityRouter(self.dispatcher, {c.name: c.min_severity for c in cfg.channels})
        self.engine = AlertEngine(
            registry, cfg, self.store, router, settings.topic_prefix, health=health
        )
        self.jobs = AlertJobs(
            cfg, self.engine.tick, self.send_digests, [self.maintain, *maintenance]
        )

    def start(self) -> None:
        self.jobs.start()

    def stop(self) -> None:
        self.jobs.stop()
        self.dispatcher.close()
        self.store.close()

    def send_digests(self) -> None:
        end = datetime.now(UTC)
        for site in self.registry.sites:
            self.engine.digest(
                site, site_digest(self.registry, self.readings, self.store, site, end)
            )

    def maintain(self) -> None:
        removed = self.store.prune(datetime.now(UTC) - self.config.history_retention)
        log.info("alert store maintenance: %d old entries removed", removed)

    def routes(self) -> list[BaseRoute]:
        async def list_alerts(request: Request) -> Response:
            return JSONResponse({"alerts": [alert_json(a) for a in self.engine.active()]})

        async def acknowledge(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                return JSONResponse({"error": "the body must be JSON"}, status_code=400)
            if not (
                isinstance(body, dict)
                and isinstance(body.get("id"), str)
                and isinstance(body.get("by"), str)
                and body["by"].strip()
            ):
                return JSONResponse(
                    {"error": 'expected {"id": "<alert id>", "by": "<who>"}'}, status_code=400
                )
            if not self.engine.acknowledge(body["id"], body["by"].strip()):
                return JSONResponse(
                    {"error": f"no pending or firing alert {body['id']!r}"}, status_code=404
                )
            return JSONResponse({"acknowledged": body["id"], "by": body["by"].strip()})

        return [
            Route("/api/v1/alerts", list_alerts, methods=["GET"]),
            Route("/api/v1/alerts/ack", acknowledge, methods=["POST"]),
        ]
