"""The MQTT subscriber: QoS 1, a fixed client id, a persistent session, manual acknowledgement.

paho's network thread only puts messages on a queue; the ingest loop takes batches from it
and acknowledges each message after its batch was durably committed. Acknowledgements are
tied to the connection they arrived on: after a reconnect the broker redelivers what was not
acknowledged (with the same packet ids), so an acknowledgement of a message from an earlier
connection is skipped rather than risk acknowledging a different message that reuses its id.
The redelivered copy is committed again, which is harmless because writes are idempotent.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devices.mqtt_client import BrokerAccess, new_client, on_connection
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.sources import take_counted

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttSettings(BrokerAccess):
    client_id: str = "stadtpuls-ingest"
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: timedelta = timedelta(seconds=30)
    # How long the broker keeps the session (and queues QoS 1 messages) while we are away.
    session_expiry: timedelta = timedelta(days=1)
    # MQTT 5 flow control: unacknowledged messages the broker may have in flight to us. It
    # must exceed a batch, or the broker stalls waiting for acknowledgements of a batch
    # that is waiting for messages.
    receive_maximum: int = 20000
    # paho takes whole seconds here.
    reconnect_min: timedelta = timedelta(seconds=1)
    reconnect_max: timedelta = timedelta(seconds=30)
    # paho in a process of its own (``ingest.mqtt_process``), or on a thread of the service.
    client_process: bool = True


# What acknowledges a message: the connection it arrived on (a count of connections), its
# packet id and QoS. A plain tuple, made on paho's thread for every message and cheap to
# pass to another process.
Token = tuple[int, int, int]


def topic_of(msg: mqtt.MQTTMessage) -> str:
    """The message's topic; one that is not UTF-8 (the broker should have refused it) as
    the message's repr, so the message is kept and quarantined rather than lost."""
    try:
        return msg.topic
    except UnicodeDecodeError:
        return repr(msg.info)


class MqttSubscriber:
    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: Sequence[str],
        metrics: IngestMetrics,
        unsubscriptions: Sequence[str] = (),
    ) -> None:
        """``unsubscriptions``: filters a kept session may hold that are no longer ours (a
        worker's former share); given any, a kept session is brought up to date."""
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.unsubscriptions = list(unsubscriptions)
        self.metrics = metrics
        self._queue: queue.SimpleQueue[InboundMessage] = queue.SimpleQueue()
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = False
        self._client = new_client(
            settings, settings.client_id, settings.protocol, keep_session=True, manual_ack=True
        )
        c = self._client
        c.reconnect_delay_set(
            max(1, round(settings.reconnect_min.total_seconds())),
            max(1, round(settings.reconnect_max.total_seconds())),
        )
        on_connection(
            c,
            connected=self._on_connect,
            refused=self._on_refused,
            disconnected=self._on_disconnect,
        )
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        s = self.settings
        props: Properties | None = None
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(s.session_expiry.total_seconds())
            props.ReceiveMaximum = s.receive_maximum
        self._client.connect_async(
            s.host,
            s.port,
            keepalive=int(s.keepalive.total_seconds()),
            clean_start=False if s.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self.metrics.broker_connected.set(0)

    # paho callbacks: they run on paho's network thread and must not block.

    def _on_refused(self, reason: ReasonCode) -> None:
        log.warning("broker refused the connection: %s", reason)

    def _on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        with self._ack_lock:
            self._generation += 1
        if not flags.session_present:
            self._subscribe(client)
            self.metrics.resubscribes.inc()
            log.info(
                "connected without a session; subscribed to %s",
                ", ".join(self.subscriptions),
            )
        else:
            log.info("connected; the broker kept our session")
            if self.unsubscriptions:
                # The session keeps the share it had when the worker count was last
                # changed: sites that moved away would keep arriving here and sites that
                # moved here would never come. Subscribing again to a kept filter keeps
                # its queue.
                self._subscribe(client)
                result, _ = client.unsubscribe(self.unsubscriptions)
                if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    log.error("unsubscribe failed: %s", mqtt.error_string(result))
        self._connected.set()
        self.metrics.broker_connected.set(1)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` and passes no reason; the
        # exception being handled is the reason (a refused port, a certificate that does
        # not verify), and without it a wrong CA would look like a broker that is down.
        reason = sys.exception()
        log.warning(
            "cannot connect to the broker at %s:%d%s: %s; retrying",
            self.settings.host,
            self.settings.port,
            " over TLS" if self.settings.uses_tls else "",
            reason if reason is not None else "connection failed",
        )

    def _subscribe(self, client: mqtt.Client) -> None:
        if not self.subscriptions:  # a worker whose share of the registry is empty
            log.warning("no topics to subscribe to")
            return
        result, _ = client.subscribe([(topic, 1) for topic in self.subscriptions])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for r in reasons:
            if r.is_failure:
                log.error("the broker refused a subscription: %s", r)

    def _on_disconnect(self, reason: ReasonCode) -> None:
        with self._ack_lock:
            self._generation += 1
        self._connected.clear()
        self.metrics.broker_connected.set(0)
        if self._stopping:
            log.info("disconnected from the broker")
        else:
            log.warning("lost the broker connection (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        token: Token = (self._generation, msg.mid, msg.qos)
        self._queue.put(
            InboundMessage(topic_of(msg), bytes(msg.payload), time.time_ns(), token, bool(msg.dup))
        )

    # MessageSource

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        return take_counted(self._queue, self.metrics, max_messages, max_wait, max_bytes)

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        self.ack_tokens(cast("list[Token]", [m.token for m in messages]))
        self.metrics.pending_messages.set(self._queue.qsize())

    def ack_tokens(self, tokens: Sequence[Token]) -> None:
        """Acknowledges the messages of ``tokens`` that came on the current connection."""
        client = self._client
        with self._ack_lock:
            current = self._generation
            for generation, mid, qos in tokens:
                if qos and generation == current:
                    client.ack(mid, qos)
