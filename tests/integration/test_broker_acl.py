"""The generated password file and ACL on a real Mosquitto: a private process on a free
loopback port, started with the files `dashboards.broker_acl` writes from the registry.

A device may publish to its own readings topic and to no other; the service account may
subscribe to every reading with the subscriptions the service really makes; a wrong
password and an anonymous client are refused."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from dashboards.broker_acl import (
    SERVICE_ACCOUNT,
    SIMULATOR_ACCOUNT,
    derive_password,
)
from devices.registry import Registry
from devices.topics import TopicScheme
from stadtpuls.broker import MosquittoBroker
from tests.support.processes import Processes, broker_auth_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

MASTER = "a-test-master-secret-of-some-length"
NOT_AUTHORIZED = 135  # MQTT 5 reason code, in PUBACK and CONNACK
# Reason codes below 0x80 are successes; 0x10 says the broker took it but no one subscribes.
FIRST_FAILURE = 0x80


@dataclass
class Stack:
    broker: MosquittoBroker
    registry: Registry
    topics: TopicScheme


@pytest.fixture(scope="module")
def stack(module_processes: Processes, registry: Registry, topics: TopicScheme) -> Stack:
    auth = broker_auth_config(registry, MASTER, module_processes.workdir("auth"), topics)
    # The auth lines override the embedded broker's own allow_anonymous, which the
    # anonymous test below proves. Debian's Mosquitto 2.0.11 drops an MQTT 5 client right
    # after refusing its QoS 1 publish when max_queued_messages is 0 (no limit), so these
    # tests set a finite one: the ACL's verdict, the PUBACK reason code, is what they are
    # about.
    broker = module_processes.broker(extra_config=auth + "max_queued_messages 1000\n")
    return Stack(broker, registry, topics)


class Client:
    """A paho MQTT 5 client that reports CONNACK and PUBACK reason codes."""

    def __init__(self, stack: Stack, username: str | None, password: str | None) -> None:
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(stack.broker.host, stack.broker.port)
        # The CONNACK is handled on this thread: paho resends its queued messages right
        # after on_connect returns, so a publish made from another thread in between
        # would go out twice.
        wait_until(self._handshake_done, 5, f"the CONNACK for {username}")
        if self.connack == 0:
            self.client.loop_start()

    def _handshake_done(self) -> bool:
        self.client.loop(timeout=0.05)
        return self.connack is not None

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc.value

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.pubacks[mid] = rc.value

    def connected(self) -> int:
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, b'[{"n":"co2","v":400}]', qos=1)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        wait_until(lambda: info.mid in self.pubacks, 5, f"the PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(stack: Stack) -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for c in opened:
        c.close()


def connect(stack: Stack, clients: list[Client], user: str | None, password: str | None) -> Client:
    client = Client(stack, user, password)
    clients.append(client)
    return client


def subscribed_service(
    stack: Stack, clients: list[Client], subs: list[str] | None = None
) -> Client:
    """The service account, subscribed to ``subs`` (by default the single service's)."""
    service = connect(stack, clients, SERVICE_ACCOUNT, derive_password(MASTER, SERVICE_ACCOUNT))
    assert service.connected() == 0
    done = threading.Event()
    granted: list[int] = []

    def on_subscribe(_c: Any, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any) -> None:
        granted.extend(rc.value for rc in codes)
        done.set()

    service.client.on_subscribe = on_subscribe
    subs = stack.topics.subscriptions() if subs is None else subs
    service.client.subscribe([(topic, 1) for topic in subs])
    assert done.wait(5), "the service's subscription was not acknowledged"
    assert granted == [1] * len(subs), f"subscriptions refused: {granted}"
    return service


def test_device_publishes_only_to_its_own_topic(stack: Stack, clients: list[Client]) -> None:
    service = subscribed_service(stack, clients)
    own, other = stack.registry.devices()[:2]
    user = f"{own.site}/{own.id}"
    device = connect(stack, clients, user, derive_password(MASTER, user))
    assert device.connected() == 0
    own_topic = stack.topics.readings(own.kind, own.site, own.id)
    other_topic = stack.topics.readings(other.kind, other.site, other.id)

    assert device.publish(other_topic) == NOT_AUTHORIZED
    assert device.publish(own_topic) == 0  # the service subscribes

    # The refused publish never reached the service; the accepted one did.
    received = service.messages.get(timeout=5)
    assert received.topic == own_topic
    assert service.messages.empty()


def test_every_registry_device_may_publish_its_own_topic(
    stack: Stack, clients: list[Client]
) -> None:
    for dev in stack.registry.devices():
        user = f"{dev.site}/{dev.id}"
        client = connect(stack, clients, user, derive_password(MASTER, user))
        assert client.connected() == 0, user
        rc = client.publish(stack.topics.readings(dev.kind, dev.site, dev.id))
        assert rc < FIRST_FAILURE, (user, rc)


def test_simulator_publishes_for_every_device_but_not_alerts(
    stack: Stack, clients: list[Client]
) -> None:
    sim = connect(stack, clients, SIMULATOR_ACCOUNT, derive_password(MASTER, SIMULATOR_ACCOUNT))
    assert sim.connected() == 0
    dev = stack.registry.devices()[-1]
    assert sim.publish(stack.topics.readings(dev.kind, dev.site, dev.id)) < FIRST_FAILURE
    assert sim.publish(stack.topics.alerts(dev.kind, dev.site, dev.id)) == NOT_AUTHORIZED


@pytest.mark.parametrize("share", ["single", "worker"])
def test_the_service_may_read_every_depth_under_a_kind(
    stack: Stack, clients: list[Client], share: str
) -> None:
    """The filters reach every depth, so a topic a level too deep reaches the service (to
    be quarantined) when an account may publish there; a device's own account may not."""
    subs = (
        stack.topics.subscriptions()
        if share == "single"
        else stack.topics.site_subscriptions(stack.registry.sites)
    )
    service = subscribed_service(stack, clients, subs)
    dev = stack.registry.devices()[0]
    deep = stack.topics.readings(dev.kind, dev.site, dev.id) + "/extra"
    sim = connect(stack, clients, SIMULATOR_ACCOUNT, derive_password(MASTER, SIMULATOR_ACCOUNT))
    assert sim.publish(deep) < FIRST_FAILURE
    assert service.messages.get(timeout=5).topic == deep
    user = f"{dev.site}/{dev.id}"
    device = connect(stack, clients, user, derive_password(MASTER, user))
    assert device.publish(deep) == NOT_AUTHORIZED


def test_wrong_password_and_anonymous_are_refused(stack: Stack, clients: list[Client]) -> None:
    dev = stack.registry.devices()[0]
    user = f"{dev.site}/{dev.id}"
    # Another account's password must not open this one.
    wrong = connect(stack, clients, user, derive_password(MASTER, SERVICE_ACCOUNT))
    assert wrong.connected() != 0
    anonymous = connect(stack, clients, None, None)
    assert anonymous.connected() != 0
