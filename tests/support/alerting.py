"""Test doubles for the alert engine, passed in (never patched in): a clock the test moves
and a sink that keeps what the engine handed it; and, for tests of a running service, a
real MQTT client that keeps the notifications the service published."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from alerts.model import Notification


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Sink:
    sent: list[Notification] = field(default_factory=list)

    def submit(self, notification: Notification) -> None:
        self.sent.append(notification)

    def events(self, rule: str | None = None) -> list[tuple[str, str]]:
        """(event, alert id) of every alert notification, of one rule if given."""
        return [
            (str(n.event), n.alert.id)
            for n in self.sent
            if n.alert is not None and (rule is None or n.alert.all_labels()["alertname"] == rule)
        ]


@dataclass
class Received:
    """What one channel's receiver got: (arrival time, notification JSON)."""

    items: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((time.time(), body))

    def events(self, alert_id: str | None = None) -> list[str]:
        with self.lock:
            return [
                b["event"]
                for _, b in self.items
                if "alert" in b and (alert_id is None or b["alert"]["id"] == alert_id)
            ]

    def sites(self) -> set[str]:
        with self.lock:
            return {b["alert"]["site"] for _, b in self.items if "alert" in b}

    def first(self, event: str, alert_id: str) -> float:
        with self.lock:
            return min(
                t for t, b in self.items if b["event"] == event and b["alert"]["id"] == alert_id
            )


class MqttListener:
    """Subscribed at QoS 1 to every alert topic under ``stadtpuls/alerts`` on ``port``."""

    def __init__(self, port: int, client_id: str = "e2e-alert-listener") -> None:
        self.got = Received()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, m: self.got.add(json.loads(m.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("stadtpuls/alerts/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the alert listener did not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
