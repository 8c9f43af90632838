"""Wiring: builds every part once from the settings and starts and stops them in order."""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.engine import PipelineHealth
from devices.codecs import DecodeLimits, Decoder
from devices.registry import Registry
from devices.topics import TopicScheme
from export.api import ExportApi, ExportCaps
from export.tokens import TokenStore
from ingest.anomaly import Detectors
from ingest.batch import ReadingBatch
from ingest.metrics import IngestMetrics
from ingest.mqtt_process import MqttProcessSubscriber
from ingest.pipeline import BatchListener, BatchSettings, IngestLoop, MessageSource, Pipeline
from ingest.secrets import plain_settings
from ingest.storedacks import AckWhenStored
from ingest.stores.base import ReadingSource, Store, WriteStats
from ingest.stores.flux import FluxSource
from ingest.stores.influx import InfluxSettings, InfluxStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from ingest.subscriber import MqttSettings, MqttSubscriber

if TYPE_CHECKING:
    from alerts.engine import AlertEngine
    from ingest.nats_source import JetStreamSource, NatsSettings, NatsSubjects
from stadtpuls.alerting import Alerting
from stadtpuls.settings import Settings, config_warnings
from stadtpuls.web import HttpServer, build_app
from stadtpuls.workers import worker_share

log = logging.getLogger(__name__)

# How long a stopping NATS worker waits for InfluxDB to take what it committed before it
# hands the rest back to the stream for the partitions' next holders.
_HELD_ACKS_GRACE = timedelta(seconds=5)


def decode_limits(settings: Settings) -> DecodeLimits:
    return plain_settings(DecodeLimits, settings.limits)


def build_decoder(settings: Settings, registry: Registry) -> Decoder:
    return Decoder(registry, TopicScheme(settings.topic_prefix), decode_limits(settings))


def influx_settings(settings: Settings) -> InfluxSettings:
    i = settings.influxdb
    assert i.token is not None  # the settings refuse an influxdb backend without a token
    return plain_settings(InfluxSettings, i)


def build_store(settings: Settings, registry: Registry) -> Store:
    """The configured store, started (the InfluxDB store's drain runs from here on)."""
    local = SqliteSettings(settings.database_path, synchronous=settings.store.sqlite_synchronous)
    store: Store
    if settings.store.backend == "sqlite":
        store = SqliteStore(local, registry.series)
    else:
        store = InfluxStore(influx_settings(settings), local, registry.series)
    store.start()
    return store


def flux_source(settings: Settings, registry: Registry) -> FluxSource:
    """InfluxDB's readings without a store: no journal and no drain."""
    return FluxSource(influx_settings(settings), registry.series)


def export_caps(settings: Settings) -> ExportCaps:
    e = settings.export
    return ExportCaps(e.max_range, e.max_exports_per_minute, e.licence)


def mqtt_settings(settings: Settings) -> MqttSettings:
    return plain_settings(MqttSettings, settings.mqtt)


def nats_settings(settings: Settings) -> NatsSettings:
    from ingest.nats_source import NatsSettings

    return plain_settings(NatsSettings, settings.nats)


def nats_subjects(settings: Settings) -> NatsSubjects:
    from ingest.nats_source import NatsSubjects

    n = settings.nats
    return NatsSubjects(settings.topic_prefix, n.partitions, n.consumer_prefix)


class Source(MessageSource, Protocol):
    """What the service runs on: the MQTT subscriber or the JetStream source."""

    @property
    def connected(self) -> bool: ...

    def wait_connected(self, timeout: float) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class _PartitionState:
    """Checkpoints the state of the partitions a batch touched into NATS, at most once every
    ``every_s`` each: the anomaly state of their series and their sites' open alerts. A
    worker that takes a partition over restores both, so it judges the next readings as the
    last holder would have (but for what was committed after the last checkpoint), and the
    alerts carry on rather than fire again."""

    PARTS = ("anomaly", "alerts")

    def __init__(
        self, detectors: Detectors, registry: Registry, subjects: NatsSubjects, every_s: float = 1.0
    ) -> None:
        self.detectors = detectors
        self.every_s = every_s
        part = np.array(
            [subjects.partition_of(s.key.site) for s in registry.series], dtype=np.int64
        )
        self.partition_of_series = part
        self.partition_of_site = {site: subjects.partition_of(site) for site in registry.sites}
        self.sites_of: dict[int, set[str]] = {}
        for site, p in self.partition_of_site.items():
            self.sites_of.setdefault(p, set()).add(site)
        self.rows = {p: np.flatnonzero(part == p) for p in np.unique(part).tolist()}
        self._saved: dict[int, float] = {}
        self.source: JetStreamSource | None = None
        self.alerts: AlertEngine | None = None

    def owns(self, site: str) -> bool:
        """Whether this worker holds the site's partition now."""
        return self.source is not None and self.partition_of_site[site] in set(self.source.held)

    def sites(self, partition: int) -> set[str]:
        return self.sites_of.get(partition, set())

    def gained(self, partition: int, checkpoint: dict[str, bytes]) -> None:
        if "anomaly" in checkpoint:
            restored = self.detectors.restore(checkpoint["anomaly"])
            log.info("partition %d: anomaly state of %d series restored", partition, restored)
        if self.alerts is not None and "alerts" in checkpoint:
            taken = self.alerts.take_over(self.sites(partition), json.loads(checkpoint["alerts"]))
            log.info("partition %d: %d open alerts taken over", partition, taken)

    def lost(self, partition: int) -> None:
        if self.alerts is not None:
            self.alerts.hand_over(self.sites(partition))

    def batch_committed(self, batch: ReadingBatch) -> None:
        source = self.source
        if source is None or len(batch) == 0:
            return
        now = time.monotonic()
        due = [
            p
            for p in np.unique(self.partition_of_series[batch.series]).tolist()
            if now - self._saved.get(p, -math.inf) >= self.every_s
        ]
        if not due:
            return
        for p in due:
            self._saved[p] = now
        for p, snapshot in self.detectors.snapshots({p: self.rows[p] for p in due}).items():
            source.checkpoint(p, "anomaly", snapshot)
            if self.alerts is not None:
                alerts = self.alerts.export(self.sites(p))
                source.checkpoint(p, "alerts", json.dumps(alerts).encode())


class _StateSaver:
    """Saves the anomaly state a minute after the last save, so a crash loses at most a
    minute of it; it runs on the commit thread, after the acknowledgement."""

    def __init__(self, detectors: Detectors, path: Path, every_s: float = 60.0) -> None:
        self.detectors = detectors
        self.path = path
        self.every_s = every_s
        self._saved = time.monotonic()

    def batch_committed(self, batch: ReadingBatch) -> None:
        if time.monotonic() - self._saved >= self.every_s:
            self.detectors.save(self.path)
            self._saved = time.monotonic()


class _InfluxCollector(Collector):
    """Exposes the InfluxDB drain's counters, which its thread keeps as plain integers."""

    def __init__(self, stats: WriteStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily(
            "stadtpuls_influx_points_written", "points accepted by InfluxDB", s.points_written
        )
        yield CounterMetricFamily(
            "stadtpuls_influx_write_retries", "InfluxDB writes retried", s.write_retries
        )
        yield CounterMetricFamily(
            "stadtpuls_influx_points_quarantined",
            "points InfluxDB refused (400/422), quarantined",
            s.points_quarantined,
        )
        yield GaugeMetricFamily(
            "stadtpuls_influx_write_failing",
            "1 while the latest InfluxDB write failed",
            1 if s.last_write_error else 0,
        )


@dataclass
class ServiceStatus:
    received: int
    stored: int
    rejected: int
    journal_depth: int
    connected: bool


class Service:
    def __init__(
        self, settings: Settings, registry: Registry, listeners: Sequence[BatchListener] = ()
    ) -> None:
        self.settings = settings
        # Settings that work but are probably not what was meant (alerts with no channel):
        # logged here, and listed by /readyz without making the service unready.
        self.warnings = config_warnings(settings)
        for warning in self.warnings:
            log.warning("%s", warning)
        # One of several workers runs its whole pipeline over its own sites only.
        self.share = worker_share(settings, registry)
        full_registry, registry = registry, self.share.registry
        self.registry = registry
        self.metrics = IngestMetrics()
        self.store = build_store(settings, registry)
        self.detectors = Detectors(registry.series)
        restored = self.detectors.load(self.anomaly_state_path)
        if restored:
            log.info("anomaly state restored for %d series", restored)
        # On NATS the worker's partitions, and so its sites, change while it runs.
        self.partition_state: _PartitionState | None = None
        if settings.source == "nats":
            self.partition_state = _PartitionState(
                self.detectors,
                registry,
                nats_subjects(settings),
                settings.nats.checkpoint_every.total_seconds(),
            )
        # The export and the alert digest read through the store: SQLite directly,
        # InfluxDB through Flux.
        self.alerting: Alerting | None = None
        if settings.alerts.enabled:
            self.alerting = Alerting(
                settings,
                registry,
                self.store,
                self._health,
                maintenance=[self.store.maintain],
                owns=None if self.partition_state is None else self.partition_state.owns,
            )
        alert_listeners = [] if self.alerting is None else [self.alerting.engine]
        self.pipeline = Pipeline(
            build_decoder(settings, registry),
            self.detectors,
            self.store,
            self.metrics,
            [*listeners, *alert_listeners, _StateSaver(self.detectors, self.anomaly_state_path)],
        )
        if self.partition_state is not None:
            self.pipeline.listeners.append(self.partition_state)
        self.source = self._build_source(registry)
        self.held_acks: AckWhenStored | None = None
        loop_source: MessageSource = self.source
        if settings.source == "nats" and isinstance(self.store, InfluxStore):
            from ingest.nats_source import JetStreamSource

            assert isinstance(self.source, JetStreamSource)
            # The stream is the replicated journal: a message is acknowledged once InfluxDB
            # has its readings, not when the worker's own disk has them.
            self.held_acks = AckWhenStored(self.source, self.store, settings.nats.ack_wait)
            loop_source = self.held_acks
        self.loop = IngestLoop(
            loop_source,
            self.pipeline,
            BatchSettings(
                settings.batch.max_messages, settings.batch.max_wait, settings.batch.max_bytes
            ),
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        if self.store.stats is not None:
            self.metrics.registry.register(_InfluxCollector(self.store.stats))
        self.tokens = TokenStore(settings.token_db_path)
        # Every worker reads the shared InfluxDB, so any of them can export any site; a
        # worker's SQLite store holds its own sites only.
        export_registry = registry
        export_source: ReadingSource = self.store
        if settings.store.backend == "influxdb" and registry is not full_registry:
            export_registry = full_registry
            export_source = flux_source(settings, full_registry)
        export_api = ExportApi(
            export_source,
            export_registry,
            self.tokens,
            export_caps(settings),
        )
        admin_token = settings.http.admin_token
        app = build_app(
            self.readiness,
            self.metrics.registry,
            self._refresh_gauges,
            export_api.routes(),  # checks the students' read tokens itself
            admin_routes=[] if self.alerting is None else self.alerting.routes(),
            admin_token=None if admin_token is None else admin_token.get_secret_value(),
            warnings=self.warnings,
        )
        self.http = HttpServer(app, settings.http.host, settings.http.port)

    def _build_source(self, registry: Registry) -> Source:
        settings = self.settings
        if settings.source == "nats":
            from ingest.nats_source import JetStreamSource, NatsCollector

            state = self.partition_state
            assert state is not None
            source = JetStreamSource(
                nats_settings(settings),
                nats_subjects(settings),
                self.metrics,
                on_gained=state.gained,
                on_lost=state.lost,
                parts=state.PARTS,
            )
            state.source = source
            if self.alerting is not None:
                state.alerts = self.alerting.engine
                # What this worker's store holds from before its start belongs to whoever
                # holds those partitions now; it comes back with a partition's checkpoint.
                state.alerts.hand_over(
                    set(registry.sites), "left to the partition's holder at start"
                )
            self.metrics.registry.register(NatsCollector(source))
            return source
        mqtt = replace(mqtt_settings(settings), client_id=self.share.client_id)
        subscriber = MqttProcessSubscriber if mqtt.client_process else MqttSubscriber
        return subscriber(mqtt, self.share.subscriptions, self.metrics, self.share.unsubscriptions)

    @property
    def anomaly_state_path(self) -> Path:
        return self.settings.worker_dir / "anomaly-state.npz"

    def _run(self) -> None:
        try:
            self.loop.run(self._stop)
        except Exception:  # the loop retries store errors itself; anything else is a bug
            log.exception("the ingest loop stopped")
            raise

    @property
    def source_description(self) -> str:
        s = self.settings
        if s.source == "nats":
            return f"NATS {', '.join(s.nats.servers)} ({s.nats.partitions} partitions)"
        return f"broker {s.mqtt.host}:{s.mqtt.port}"

    def readiness(self) -> dict[str, bool]:
        return {
            "broker_connected": self.source.connected,
            **self._nats_ready(),
            "store_writable": self.store.writable(),
            "ingest_running": self._thread.is_alive(),
        }

    def _nats_ready(self) -> dict[str, bool]:
        # Without its consumers NATS PUBACKs a device's message and keeps it for no one.
        from ingest.nats_source import JetStreamSource

        if isinstance(self.source, JetStreamSource):
            return {"nats_consumers": not self.source.missing}
        return {}

    def _health(self) -> PipelineHealth:
        status = self.status()
        r = self.metrics.registry
        return PipelineHealth(
            status.rejected,
            status.journal_depth,
            status.connected,
            int(r.get_sample_value("stadtpuls_messages_committed_total") or 0),
            int(r.get_sample_value("stadtpuls_commit_failures_total") or 0),
        )

    def _refresh_gauges(self) -> None:
        self.metrics.journal_depth.set(self.store.journal_depth())

    def status(self) -> ServiceStatus:
        def total(counter_name: str) -> int:
            value = self.metrics.registry.get_sample_value(counter_name)
            return int(value or 0)

        rejected = sum(
            int(s.value)
            for metric in self.metrics.rejected.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        )
        return ServiceStatus(
            received=total("stadtpuls_messages_received_total"),
            stored=total("stadtpuls_readings_stored_total"),
            rejected=rejected,
            journal_depth=self.store.journal_depth(),
            connected=self.source.connected,
        )

    def caught_up(self) -> bool:
        """True when every message received so far has been committed."""
        r = self.metrics.registry
        received = r.get_sample_value("stadtpuls_messages_received_total") or 0
        committed = r.get_sample_value("stadtpuls_messages_committed_total") or 0
        return committed >= received

    def start(self) -> None:
        # Everything built at start-up lives for the whole run; keeping it out of the
        # collector's generations makes the per-batch garbage collections cheap.
        gc.collect()
        gc.freeze()
        self.http.start()
        self.source.start()
        if self.held_acks is not None:
            self.held_acks.start()
        self._thread.start()
        if self.alerting is not None:
            self.alerting.start()
        log.info(
            "stadtpuls running: %s, store %s, http %s:%d",
            self.source_description,
            self.settings.store.backend,
            self.settings.http.host,
            self.http.port,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # Saved once the loop has stopped, so no batch changes it meanwhile.
        self.detectors.save(self.anomaly_state_path)
        if self.held_acks is not None:
            self.held_acks.stop(_HELD_ACKS_GRACE)
        self.source.stop()
        if self.alerting is not None:
            self.alerting.stop()
        self.http.stop()
        self.tokens.close()
        self.store.close()
