"""Every kind of bad input from DESIGN.md, published through a real Mosquitto to the service
process between good readings: each bad message is quarantined with its reason, the good
readings of the same batch are stored, and the service keeps running.

Ids with control characters (newline, NUL) are not here: Mosquitto itself refuses such
topics as malformed packets and disconnects the publisher, so they never reach the service.
"""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from ingest.quarantine import Quarantine
from stadtpuls.broker import MosquittoBroker
from tests.integration.test_delivery import count_strain
from tests.support.processes import ServiceFactory
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

B = "stadtpuls/bridge/b1/sg1"
S = "stadtpuls/school/s1/room-1"


def bad_inputs(now: float) -> list[tuple[str, str, bytes, str]]:
    """(name, topic, payload, expected reason), times relative to ``now``."""

    def rec(**fields: object) -> bytes:
        return json.dumps([{"n": "g1/strain", "v": 1.0, "t": now, **fields}]).encode()

    return [
        ("not utf-8", B, b"\xff\xfe\x00garbage", "not_utf8"),
        ("not json", B, b"strain=12", "not_json"),
        ("truncated json", B, b'[{"n":"g1/strain","v":1', "not_json"),
        ("empty", B, b"", "empty"),
        ("wrong type", B, rec(v="12.5"), "wrong_type"),
        ("nan", B, b'[{"n":"g1/strain","v":NaN}]', "not_finite"),
        ("infinity", B, b'[{"n":"g1/strain","v":-Infinity}]', "not_finite"),
        ("1e309", B, b'[{"n":"g1/strain","v":1e309}]', "not_finite"),
        ("out of range", B, rec(v=9000.0), "out_of_range"),
        ("co2 out of range", S, json.dumps([{"n": "co2", "v": -5, "t": now}]).encode(),
         "out_of_range"),
        ("unknown site", "stadtpuls/bridge/b7/sg1", rec(), "unknown_site"),
        ("unknown device", "stadtpuls/bridge/b1/sg7", rec(), "unknown_device"),
        ("identity differs", B, rec(bn="sg2/"), "identity_mismatch"),
        ("unknown measurement", B, rec(n="g1/co2"), "unknown_measurement"),
        ("unknown unit", B, rec(u="psi"), "unknown_unit"),
        ("future", B, rec(t=now + 3600), "future_timestamp"),
        ("milliseconds", B, rec(t=now * 1000), "future_timestamp"),
        ("too old", B, rec(t=now - 400 * 86400), "too_old"),
        ("oversized", B, b"[" + b'{"n":"g1/strain","v":1},' * 20000 + b"{}]", "oversized"),
        ("big array", B, json.dumps({"t0": now, "dt": 0.01, "series": {"g1/strain": [1.0] * 20000}})
         .encode(), "too_many_values"),
        ("deep nesting", B, b"[" * 1000 + b"]" * 1000, "too_deep"),
        ("unknown field", B, rec(extra=1), "unknown_field"),
        ("id with comma", "stadtpuls/bridge/b1/sg1,x=1", rec(), "bad_topic"),
        ("id with space", "stadtpuls/bridge/b1/sg 1", rec(), "bad_topic"),
        ("id with quote", 'stadtpuls/bridge/b1/sg"1', rec(), "bad_topic"),
        ("zero-width id", "stadtpuls/bridge/b1/sg1\u200b", rec(), "bad_topic"),
    ]  # fmt: skip


def good(now: float, i: int) -> bytes:
    record = {"bn": "sg1/", "bt": now - 30 + i, "n": "g1/strain", "v": float(i)}
    return json.dumps([record]).encode()


def test_bad_input_quarantined_good_stored_service_keeps_running(
    broker: MosquittoBroker, service_factory: ServiceFactory
) -> None:
    service = service_factory(broker.port, name="svc", batch={"max_wait": 0.5})
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    now = time.time()
    cases = bad_inputs(now)
    infos = []
    for i, (_, topic, payload, _) in enumerate(cases):
        infos.append(client.publish(B, good(now, i), qos=1))
        infos.append(client.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(10)
    quarantine = Quarantine(service.db)
    wait_until(
        lambda: (
            count_strain(service.db) == len(cases)
            and sum(quarantine.counts().values()) == len(cases)
        ),
        30,
        "good readings stored and bad messages quarantined",
    )
    entries = {(e.topic, e.payload): e for e in quarantine.list(limit=1000)}
    for name, topic, payload, reason in cases:
        entry = entries.get((topic, payload))
        assert entry is not None, f"{name}: not quarantined"
        assert entry.reason == reason, f"{name}: {entry.reason} ({entry.detail})"
        assert entry.detail
    assert service.metric("stadtpuls_messages_rejected_total", reason="not_finite") == 3
    # Still running: a later good reading is stored, the service is ready.
    client.publish(B, good(now, -1), qos=1).wait_for_publish(10)
    wait_until(lambda: count_strain(service.db) == len(cases) + 1, 10, "a later reading")
    assert service.ready()
    client.disconnect()
    client.loop_stop()
