"""Topics a level too deep or too shallow, through a real Mosquitto to the service process.

The broker accepts a publish to any topic. Before, the service subscribed one level deep
(`{prefix}/{kind}/+/+`), so `stadtpuls/school/s1/room-1/extra` was accepted by the broker and
received by no one: neither stored nor quarantined. Now every depth under a kind reaches the
service and such topics are quarantined as `bad_topic`. With several workers each worker
subscribes to every depth under its own sites, and still receives only its own sites."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from devices.partition import site_owner
from ingest.quarantine import Quarantine
from stadtpuls.broker import MosquittoBroker
from tests.support.processes import ServiceFactory
from tests.support.service import ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def publish_all(broker: MosquittoBroker, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = []
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
            infos.append(info)
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def co2(t: float) -> bytes:
    return json.dumps([{"n": "co2", "v": 800, "t": t}]).encode()


def strain(t: float) -> bytes:
    return json.dumps([{"n": "g1/strain", "v": 1.0, "t": t}]).encode()


def stored(db: Path) -> int:
    try:
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the service has not created its tables yet
        return 0


def quarantined(db: Path) -> dict[str, str]:
    """topic -> reason of the waiting entries."""
    if not db.exists():
        return {}
    try:
        return {e.topic: e.reason for e in Quarantine(db).list(limit=100)}
    except sqlite3.OperationalError:
        return {}


def test_a_topic_with_a_level_too_many_or_too_few_is_quarantined(
    broker: MosquittoBroker, service: ServiceProcess
) -> None:
    now = time.time()
    deep = "stadtpuls/school/s1/room-1/extra"
    shallow = "stadtpuls/school/s1"
    unknown_and_deep = "stadtpuls/bridge/b9/sg1/x/y"
    publish_all(
        broker,
        [
            (deep, co2(now - 3)),
            (shallow, co2(now - 2)),
            (unknown_and_deep, strain(now - 1)),
            ("stadtpuls/school/s1/room-1", co2(now)),
        ],
    )
    wait_until(
        lambda: len(quarantined(service.db)) == 3 and stored(service.db) == 1,
        30,
        "three topics quarantined and the good reading stored",
    )
    assert quarantined(service.db) == {
        deep: "bad_topic",
        shallow: "bad_topic",
        unknown_and_deep: "bad_topic",
    }
    details = {e.topic: e.detail for e in Quarantine(service.db).list()}
    assert "1 level too many" in details[deep]
    assert "1 level too few" in details[shallow]
    assert "2 levels too many" in details[unknown_and_deep]
    # Each arrived once: the service's filters do not overlap.
    assert service.metric("stadtpuls_messages_received_total") == 4


def test_each_worker_quarantines_the_deep_topics_of_its_own_sites(
    broker: MosquittoBroker, service_factory: ServiceFactory
) -> None:
    # With two workers the test registry's b1 goes to worker 1, s1 and s2 to worker 0.
    assert [site_owner(s, 2) for s in ("b1", "s1", "s2")] == [1, 0, 0]
    workers = [
        service_factory(broker.port, name=f"worker-{i}", worker={"index": i, "count": 2})
        for i in range(2)
    ]
    dbs = [w.workdir / "data" / f"worker-{i}" / "stadtpuls.db" for i, w in enumerate(workers)]
    now = time.time()
    publish_all(
        broker,
        [
            ("stadtpuls/school/s1/room-1/extra", co2(now - 4)),
            ("stadtpuls/bridge/b1/sg1/extra", strain(now - 3)),
            ("stadtpuls/school/s9/room-1", co2(now - 2)),  # no site: no worker gets it
            ("stadtpuls/school/s1/room-1", co2(now)),
            ("stadtpuls/bridge/b1/sg1", strain(now)),
        ],
    )
    wait_until(
        lambda: all(stored(db) == 1 and len(quarantined(db)) == 1 for db in dbs),
        30,
        "each worker's deep topic quarantined and its good reading stored",
    )
    assert quarantined(dbs[0]) == {"stadtpuls/school/s1/room-1/extra": "bad_topic"}
    assert quarantined(dbs[1]) == {"stadtpuls/bridge/b1/sg1/extra": "bad_topic"}
    # Each worker received its own sites' two messages and nothing else.
    assert [w.metric("stadtpuls_messages_received_total") for w in workers] == [2, 2]
