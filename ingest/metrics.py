"""Prometheus metrics of the pipeline itself, on a registry the caller owns (so tests and
several services in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "stadtpuls_messages_received", "MQTT messages handed over by the broker", registry=r
        )
        self.messages_committed = Counter(
            "stadtpuls_messages_committed",
            "messages whose readings or quarantine record were durably committed",
            registry=r,
        )
        self.readings_stored = Counter(
            "stadtpuls_readings_stored", "readings durably committed", registry=r
        )
        self.rejected = Counter(
            "stadtpuls_messages_rejected", "messages quarantined, by reason", ["reason"], registry=r
        )
        self.anomalies = Counter(
            "stadtpuls_readings_flagged", "readings with at least one anomaly flag", registry=r
        )
        self.batch_messages = Histogram(
            "stadtpuls_batch_messages",
            "messages per committed batch",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "stadtpuls_commit_seconds",
            "duration of the durable commit of one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.check_seconds = Counter(
            "stadtpuls_check_seconds", "CPU time spent in the anomaly check", registry=r
        )
        self.commit_failures = Counter(
            "stadtpuls_commit_failures", "durable commits that failed and were retried", registry=r
        )
        self.pending_messages = Gauge(
            "stadtpuls_pending_messages", "messages received, not yet acknowledged", registry=r
        )
        self.journal_depth = Gauge(
            "stadtpuls_journal_depth",
            "readings committed locally, not yet written to InfluxDB",
            registry=r,
        )
        self.broker_connected = Gauge(
            "stadtpuls_broker_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.resubscribes = Counter(
            "stadtpuls_resubscribes",
            "subscriptions made because the broker had no session for the client",
            registry=r,
        )
        self.listener_errors = Counter(
            "stadtpuls_listener_errors", "batch listeners that raised", ["listener"], registry=r
        )
