"""Wiring of the alert parts: state, channels, dispatcher, engine, scheduled jobs and the
HTTP routes operations use to list and acknowledge alerts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from alerts.channels import ChannelContext, ServiceBroker
from alerts.digest import site_digest
from alerts.dispatch import Dispatcher
from alerts.engine import AlertEngine, PipelineHealth
from alerts.jobs import AlertJobs
from alerts.routing import SeverityRouter
from alerts.state import AlertStore
from devices.registry import Registry
from ingest.secrets import plain_settings
from ingest.stores.base import ReadingSource
from stadtpuls.settings import Settings

log = logging.getLogger(__name__)


class Alerting:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        readings: ReadingSource,
        health: Callable[[], PipelineHealth],
        maintenance: Sequence[Callable[[], None]] = (),
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``owns(site)``: whether this worker takes the site's readings now (on NATS, the
        sites of the partitions it holds); silence and digests cover those sites only."""
        cfg = settings.alerts
        self.owns = owns
        self.registry = registry
        self.readings = readings
        self.config = cfg
        self.store = AlertStore(settings.alerts_db_path)
        broker = plain_settings(ServiceBroker, settings.mqtt)
        context = ChannelContext(settings.topic_prefix, broker, settings.mqtt.protocol)
        channels = [c.build(context) for c in cfg.channels]
        self.dispatcher = Dispatcher(channels, self.store.record_delivery)
        router = SeverityRouter(self.dispatcher, {c.name: c.min_severity for c in cfg.channels})
        self.engine = AlertEngine(
            registry, cfg, self.store, router, settings.topic_prefix, health=health, owns=owns
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
            if self.owns is not None and not self.owns(site):
                continue  # another worker's site: its digest comes from there
            self.engine.digest(
                site, site_digest(self.registry, self.readings, self.store, site, end)
            )

    def maintain(self) -> None:
        removed = self.store.prune(datetime.now(UTC) - self.config.history_retention)
        log.info("alert store maintenance: %d old entries removed", removed)

    def routes(self) -> list[BaseRoute]:
        async def list_alerts(request: Request) -> Response:
            return JSONResponse({"alerts": [a.to_json(listing=True) for a in self.engine.active()]})

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
