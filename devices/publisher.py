"""Publish simulated messages to an MQTT broker (paho-mqtt 2.x, MQTT 5).

Nothing is dropped on the client side: paho's ``publish()`` refuses a QoS>0 message with
``MQTT_ERR_QUEUE_SIZE`` once its outgoing queue is full (and by mid collision once 65,535 are
unacknowledged) and then forgets it, so every return code is checked and a refused message is
retried after acknowledgements free room. The queue is bounded well below 65,535 on purpose:
that makes "queue full" the ordinary back-pressure of a fast publisher instead of unbounded
memory. The in-flight window stays small (DESIGN.md: a large window makes paho slower).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from devices.mqtt_client import BrokerAccess, new_client, on_connection
from devices.simulator import SimMessage

_CONNECT_TIMEOUT_S = 10.0
_DRAIN_TIMEOUT_S = 30.0
_RETRY_WAIT_S = 0.5


@dataclass
class PublishStats:
    """``published``: messages paho accepted; ``samples``: readings in them; ``failed``:
    messages refused for good (broker error reason, oversized) or unacknowledged when the
    drain timed out; ``seconds``: wall time; ``queue_full``: how often a publish had to wait
    for acknowledgements (back-pressure, not loss)."""

    published: int
    samples: int
    failed: int
    seconds: float
    queue_full: int = 0


class _Tracker:
    """Counts acknowledgements from paho's network thread and wakes the publishing thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.acked = 0
        self.refused = 0
        self.connected = False
        self.connect_error: str | None = None

    def on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_refused(self, reason: ReasonCode) -> None:
        with self.cond:
            self.connect_error = str(reason)
            self.cond.notify_all()

    def on_disconnect(self, reason: ReasonCode) -> None:
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def on_publish(self, mid: int, reason: ReasonCode) -> None:
        with self.cond:
            self.acked += 1
            if reason.is_failure:  # e.g. not authorised by the broker's ACL
                self.refused += 1
            self.cond.notify_all()


def publish(
    messages: Iterable[SimMessage],
    *,
    host: str,
    port: int,
    qos: int = 1,
    client_id: str,
    pace: Literal["realtime", "fast"] = "realtime",
    time_offset_ns: int = 0,
    stop: threading.Event | None = None,
    max_inflight: int = 100,
    username: str | None = None,
    password: str | None = None,
    protocol: Literal["5", "3.1.1"] = "5",
) -> PublishStats:
    """Publish ``messages`` (possibly endless) until they run out or ``stop`` is set.

    ``pace="realtime"`` publishes each message when the wall clock reaches
    ``msg.t_ns + time_offset_ns``; ``"fast"`` as fast as the broker acknowledges. Returns once
    every publish is acknowledged (or ``_DRAIN_TIMEOUT_S`` passed) and the client disconnected.
    ``protocol`` is the MQTT version to try first; a broker refusing MQTT 5 gets 3.1.1.
    Raises ``ConnectionError`` if the broker cannot be reached or refuses the connection.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2: {qos}")
    if pace not in ("realtime", "fast"):
        raise ValueError(f"pace must be 'realtime' or 'fast': {pace!r}")
    stop = stop if stop is not None else threading.Event()
    began = time.monotonic()
    options = _Options(BrokerAccess(host, port, username, password), client_id, max_inflight)
    try:
        client, track = _start(options, protocol, stop)
    except _ProtocolRefused:
        if protocol != "5":
            raise
        # A broker that speaks only MQTT 3.1.1 (the embedded amqtt of the demo) refuses an
        # MQTT 5 CONNECT: nothing in publishing needs MQTT 5, so speak its version.
        client, track = _start(options, "3.1.1", stop)
    published = samples = failed = queue_full = 0
    try:
        for msg in messages:
            if stop.is_set():
                break
            if pace == "realtime":
                delay = (msg.t_ns + time_offset_ns - time.time_ns()) / 1e9
                if delay > 0 and stop.wait(delay):
                    break
            outcome, waits = _publish_one(client, track, stop, msg, qos)
            queue_full += waits
            if outcome == "sent":
                published += 1
                samples += msg.samples
            elif outcome == "failed":
                failed += 1
            else:  # stopped while waiting for room
                break
        unacked = _drain(track, published)
        failed += unacked + track.refused
    finally:
        client.disconnect()
        client.loop_stop()
    return PublishStats(published, samples, failed, time.monotonic() - began, queue_full)


@dataclass(frozen=True)
class _Options:
    broker: BrokerAccess
    client_id: str
    max_inflight: int


class _ProtocolRefused(ConnectionError):
    """The broker does not speak the MQTT version asked for."""


def _start(
    o: _Options, protocol: Literal["5", "3.1.1"], stop: threading.Event
) -> tuple[mqtt.Client, _Tracker]:
    """A connected client with its network thread running, or ``ConnectionError``."""
    track = _Tracker()
    client = new_client(o.broker, o.client_id, protocol)
    on_connection(
        client,
        connected=track.on_connect,
        refused=track.on_refused,
        disconnected=track.on_disconnect,
        published=track.on_publish,
    )
    client.max_inflight_messages_set(o.max_inflight)
    client.max_queued_messages_set(max(1000, 10 * o.max_inflight))
    host, port = o.broker.host, o.broker.port
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        _await_connection(track, stop, host, port)
    except ConnectionError:
        client.disconnect()
        client.loop_stop()
        raise
    return client, track


def _await_connection(track: _Tracker, stop: threading.Event, host: str, port: int) -> None:
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    with track.cond:
        while not track.connected and track.connect_error is None and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionError(f"no CONNACK from MQTT broker {host}:{port}")
            track.cond.wait(min(left, _RETRY_WAIT_S))
        if track.connect_error is not None:
            refused = (
                _ProtocolRefused if "protocol version" in track.connect_error else ConnectionError
            )
            raise refused(f"MQTT broker {host}:{port} refused: {track.connect_error}")


def _publish_one(
    client: mqtt.Client,
    track: _Tracker,
    stop: threading.Event,
    msg: SimMessage,
    qos: int,
) -> tuple[Literal["sent", "failed", "stopped"], int]:
    """Publish until paho takes the message; returns the outcome and how often the queue was
    full."""
    waits = 0
    while True:
        seen = track.acked  # read before publishing, so an ack in between is not missed
        try:
            info = client.publish(msg.topic, msg.payload, qos=qos)
        except ValueError:  # payload over MQTT's 256 MB limit: no retry can help
            return "failed", waits
        rc = info.rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return "sent", waits
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
            # paho keeps QoS>0 messages queued and sends them after the reconnect.
            return "sent", waits
        if rc in (MQTTErrorCode.MQTT_ERR_QUEUE_SIZE, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Refused and forgotten by paho: wait for an acknowledgement (or the
            # reconnection) to make room, then try the same message again.
            waits += rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
            _wait_for_ack(track, stop, seen)
            if stop.is_set():
                return "stopped", waits
            continue
        return "failed", waits


def _wait_for_ack(track: _Tracker, stop: threading.Event, seen: int) -> None:
    with track.cond:
        track.cond.wait_for(lambda: track.acked != seen or stop.is_set(), timeout=_RETRY_WAIT_S)


def _drain(track: _Tracker, published: int) -> int:
    """Wait until every published message is acknowledged; return how many are not."""
    with track.cond:
        track.cond.wait_for(lambda: track.acked >= published, timeout=_DRAIN_TIMEOUT_S)
        return max(0, published - track.acked)
