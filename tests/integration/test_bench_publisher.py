"""The benchmark's publisher (``bench/rawpub.py``) writes MQTT by hand, so that its own cost
stays small next to the subscriber it measures. A real Mosquitto and a paho subscriber
check that it speaks both protocol versions: every message it counts as acknowledged
arrives once, with the payload ``bench.publish`` builds for it."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.publish import single
from bench.rawpub import publish
from stadtpuls.broker import MosquittoBroker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

COUNT = 3000
BASE_S = 1_780_000_000.0


@pytest.mark.parametrize("protocol", [4, 5])
def test_every_acknowledged_message_arrives_once(broker: MosquittoBroker, protocol: int) -> None:
    received: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((msg.topic, bytes(msg.payload)))

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"check-rawpub-{protocol}",
        protocol=MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe("stadtpuls/#", qos=1)
        assert subscribed.wait(10)
        result = publish(broker.port, mode="single", count=COUNT, protocol=protocol, base_s=BASE_S)
        assert result["sent"] == result["acked"] == COUNT
        wait_until(lambda: len(received) >= COUNT, 30, "every message at the subscriber")
    finally:
        client.disconnect()
        client.loop_stop()
    assert sorted(received) == sorted(single(seq, BASE_S) for seq in range(COUNT))
