"""The simulator's publisher against real brokers: a private Mosquitto (MQTT 5) and the
demo's pure-Python amqtt (MQTT 3.1.1 only)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.publisher import publish
from devices.registry import Registry, parse_registry
from devices.simulator import Simulator
from devices.topics import TopicScheme
from stadtpuls.broker import AmqttBroker, MosquittoBroker
from tests.support.waiting import wait_until
from tests.unit.test_simulator import HOUR, MIN, NS, REGISTRY_YAML, TUESDAY_9

pytestmark = pytest.mark.integration


# The simulator tests' registry, not conftest's. Importing their fixture instead would make
# each test's parameter shadow an import (ruff F811). The ``broker`` fixture's config lifts
# Mosquitto's queue limits, so a counting subscriber that lags the publisher is queued for,
# not dropped.
@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry(REGISTRY_YAML, "test-registry")


class _Counter:
    """Counts what a QoS 1 subscription to everything under stadtpuls/ receives."""

    def __init__(self, host: str, port: int) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-counter")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(host, port)
        self.client.subscribe("stadtpuls/#", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(5), "the counting subscriber was not subscribed in 5 s"

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_publish_fast_loses_nothing_under_back_pressure(
    broker: MosquittoBroker, registry: Registry, topics: TopicScheme
) -> None:
    counter = _Counter(broker.host, broker.port)
    try:
        sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9)
        messages = list(sim.messages(TUESDAY_9 + 20 * MIN))
        stats = publish(
            messages,
            host=broker.host,
            port=broker.port,
            client_id="sim-test",
            pace="fast",
            max_inflight=5,
        )
        assert stats.published == len(messages)
        assert stats.failed == 0
        assert stats.samples == sum(m.samples for m in messages)
        assert stats.queue_full > 0  # the bounded queue was hit and nothing was dropped
        wait_until(
            lambda: counter.count >= len(messages),
            20.0,
            f"the subscriber to receive all {len(messages)} messages",
        )
        assert counter.count == len(messages)
    finally:
        counter.close()


def test_publish_realtime_paces_and_stops(
    broker: MosquittoBroker, registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, bridge_rate_hz=10)
    expected = len(list(sim.messages(TUESDAY_9 + NS)))
    offset = time.time_ns() + 200_000_000 - TUESDAY_9
    began = time.monotonic()
    stats = publish(
        sim.messages(TUESDAY_9 + NS),
        host=broker.host,
        port=broker.port,
        client_id="sim-rt",
        time_offset_ns=offset,
    )
    assert 1.0 <= time.monotonic() - began < 5.0  # the last message is due after 1.1 s
    assert expected >= 30
    assert stats.published == expected
    assert stats.failed == 0

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    stats = publish(
        sim.messages(None),  # endless
        host=broker.host,
        port=broker.port,
        client_id="sim-rt2",
        time_offset_ns=offset + HOUR,
        stop=stop,
    )
    assert time.monotonic() - began < 5.0  # the stop event cut the hour-long wait short
    assert stats.published == 0


def test_publish_falls_back_to_mqtt_311(registry: Registry, topics: TopicScheme) -> None:
    """The demo's pure-Python broker speaks MQTT 3.1.1 only and refuses an MQTT 5 CONNECT."""
    with AmqttBroker() as broker:
        assert broker.mqtt_version == "3.1.1"
        sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9)
        messages = list(sim.messages(TUESDAY_9 + 30 * NS))
        stats = publish(
            messages, host=broker.host, port=broker.port, client_id="sim-311", pace="fast"
        )
        assert stats.published == len(messages)
        assert stats.failed == 0
