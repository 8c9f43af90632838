"""Prometheus metrics of the pipeline itself, on a registry the caller owns (so tests and
several services in one process never share counters)."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        self.messages_received = counter(
            "stadtpuls_messages_received", "MQTT messages handed over by the broker"
        )
        self.messages_committed = counter(
            "stadtpuls_messages_committed",
            "messages whose readings or quarantine record were durably committed",
        )
        self.readings_stored = counter("stadtpuls_readings_stored", "readings durably committed")
        self.rejected = counter(
            "stadtpuls_messages_rejected", "messages quarantined, by reason", ["reason"]
        )
        self.anomalies = counter(
            "stadtpuls_readings_flagged", "readings with at least one anomaly flag"
        )
        self.batch_messages = histogram(
            "stadtpuls_batch_messages",
            "messages per committed batch",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
        )
        self.commit_seconds = histogram(
            "stadtpuls_commit_seconds",
            "duration of the durable commit of one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.check_seconds = counter(
            "stadtpuls_check_seconds", "CPU time spent in the anomaly check"
        )
        self.commit_failures = counter(
            "stadtpuls_commit_failures", "durable commits that failed and were retried"
        )
        self.pending_messages = gauge(
            "stadtpuls_pending_messages", "messages received, not yet acknowledged"
        )
        self.journal_depth = gauge(
            "stadtpuls_journal_depth", "readings committed locally, not yet written to InfluxDB"
        )
        self.broker_connected = gauge(
            "stadtpuls_broker_connected", "1 while connected to the MQTT broker"
        )
        self.resubscribes = counter(
            "stadtpuls_resubscribes",
            "subscriptions made because the broker had no session for the client",
        )
        self.client_restarts = counter(
            "stadtpuls_mqtt_client_restarts",
            "MQTT client processes that ended on their own and were started again",
        )
        self.listener_errors = counter(
            "stadtpuls_listener_errors", "batch listeners that raised", ["listener"]
        )
