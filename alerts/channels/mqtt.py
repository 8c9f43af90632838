"""The MQTT channel: each notification as JSON at QoS 1, not retained, on

- ``{prefix}/alerts/{kind}/{site}/{device}`` for a device's alert,
- ``{prefix}/alerts/pipeline/{rule}`` for an alert about the pipeline itself (no site),
- ``{prefix}/alerts/digest/{kind}/{site}`` for a site's digest.

Not retained, because a retained FIRING would greet every new subscriber long after the
alert resolved. ``send`` returns once the broker acknowledged the message (PUBACK) and
raises ``DeliveryError`` otherwise. Delivery is at least once: a PUBACK that arrives after
the timeout leaves paho sending the message anyway, so a retried send can reach a
subscriber twice; the alert id, event and time in the body tell the copies apart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, SecretStr

from alerts.channels.base import (
    ChannelContext,
    ChannelSettings,
    DeliveryError,
    json_body,
    path_str,
    plain,
    register_channel,
)
from alerts.model import Notification
from devices.mqtt_client import BrokerAccess, new_client, on_connection
from devices.registry import Duration
from ingest.secrets import plain_settings

__all__ = ["MqttChannel", "MqttChannelModel", "MqttChannelSettings", "alert_topic"]

log = logging.getLogger(__name__)

# Characters that would change a topic's meaning; registry ids never contain them, so
# one here means a bug upstream, which must not turn into a publish to a wildcard.
_TOPIC_UNSAFE = frozenset("+#/\0")


@dataclass(frozen=True, slots=True)
class MqttChannelSettings(BrokerAccess):
    client_id: str = "stadtpuls-alerts"  # must differ from the ingest subscriber's
    protocol: Literal["5", "3.1.1"] = "5"
    timeout: timedelta = timedelta(seconds=5)  # to connect, and for each PUBACK
    topic_prefix: str = "stadtpuls"
    keepalive: timedelta = timedelta(seconds=30)


def alert_topic(prefix: str, notification: Notification) -> str:
    """The topic a notification is published on (see the module docstring)."""
    alert = notification.alert
    if alert is None:
        parts = ["digest", notification.kind, notification.site]
    elif not alert.key.site and not alert.key.device:
        parts = ["pipeline", alert.key.rule]
    else:
        parts = [alert.kind, alert.key.site, alert.key.device]
    for part in parts:
        if not part or not _TOPIC_UNSAFE.isdisjoint(part):
            raise DeliveryError(f"cannot build an MQTT topic from {parts!r}", retry=False)
    return "/".join([prefix, "alerts", *parts])


class MqttChannel:
    """Connects in the background when made and reconnects by itself; a send while the
    broker is away waits up to the timeout for the connection, then fails retryably."""

    def __init__(self, name: str, settings: MqttChannelSettings) -> None:
        self.name = name
        self.settings = settings
        self._connected = threading.Event()
        self._refused_lock = threading.Lock()
        self._refused: dict[int, ReasonCode] = {}  # mid -> failing PUBACK reason (MQTT 5)
        # Nothing is subscribed, and an unacknowledged alert is retried by the dispatcher,
        # so there is no session worth keeping.
        self._client = new_client(settings, settings.client_id, settings.protocol)
        c = self._client
        c.reconnect_delay_set(1, 30)
        on_connection(
            c,
            connected=self._on_connect,
            refused=self._on_refused,
            disconnected=self._on_disconnect,
            published=self._on_publish,
        )
        c.connect_async(
            settings.host, settings.port, keepalive=int(settings.keepalive.total_seconds())
        )
        c.loop_start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def send(self, notification: Notification) -> None:
        s = self.settings
        topic = alert_topic(s.topic_prefix, notification)
        timeout_s = s.timeout.total_seconds()
        deadline = time.monotonic() + timeout_s
        # Publishing while disconnected would leave the message in paho's queue, to go out
        # on reconnect on top of the dispatcher's retry of it: refuse instead.
        if not self._connected.wait(timeout_s):
            raise DeliveryError(f"not connected to the MQTT broker {s.host}:{s.port}", retry=True)
        info = self._client.publish(topic, json_body(notification), qos=1, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # MQTT_ERR_QUEUE_SIZE (paho's outgoing queue is full) and MQTT_ERR_NO_CONN
            # (the connection dropped just now) both pass.
            raise DeliveryError(
                f"publish to {topic} failed: {mqtt.error_string(info.rc)}", retry=True
            )
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (ValueError, RuntimeError) as exc:
            raise DeliveryError(f"publish to {topic} failed: {exc}", retry=True) from exc
        if not info.is_published():
            raise DeliveryError(f"no PUBACK for {topic} within {timeout_s:g} s", retry=True)
        with self._refused_lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None:
            # An MQTT 5 broker says why, e.g. 135 "Not authorized" from its ACL; that
            # does not change by trying again.
            raise DeliveryError(f"broker refused {topic}: {refused}", retry=False)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # paho callbacks: they run on paho's network thread and must not block.

    def _on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        self._connected.set()

    def _on_refused(self, reason: ReasonCode) -> None:
        log.warning(
            "MQTT broker refused the alert channel %s: %s", self.name, reason,
            extra={"channel": self.name},
        )  # fmt: skip

    def _on_disconnect(self, reason: ReasonCode) -> None:
        self._connected.clear()

    def _on_publish(self, mid: int, reason: ReasonCode) -> None:
        # Only failures are kept, so a PUBACK that comes after its send gave up leaves
        # nothing behind in the common case.
        if reason.is_failure:
            with self._refused_lock:
                self._refused[mid] = reason


@register_channel
class MqttChannelModel(ChannelSettings):
    """``type: mqtt`` under ``alerts.channels``: publishes to the service's own broker
    unless ``host`` is given."""

    type: Literal["mqtt"]
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    client_id: str = "stadtpuls-alerts"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout: Duration = timedelta(seconds=5)
    # Unset: the service's own ``mqtt.protocol`` on its broker, MQTT 5 on another host.
    protocol: Literal["5", "3.1.1"] | None = None

    secret_keys = ("password",)

    def build(self, context: ChannelContext) -> MqttChannel:
        """Without a host of its own, the channel shares the service's broker connection."""
        if self.host is None:
            broker = context.broker
            settings = MqttChannelSettings(
                host=broker.host,
                port=self.port or broker.port,
                client_id=self.client_id,
                username=self.username or broker.username,
                password=plain(self.password) or broker.password,
                tls=broker.tls,
                tls_ca=path_str(self.tls_ca) or broker.tls_ca,
                tls_cert=path_str(self.tls_cert) or broker.tls_cert,
                tls_key=path_str(self.tls_key) or broker.tls_key,
                timeout=self.timeout,
                topic_prefix=context.topic_prefix,
                protocol=self.protocol or context.mqtt_protocol,
            )
        else:
            settings = plain_settings(
                MqttChannelSettings,
                self,
                host=self.host,
                port=self.port or 1883,
                topic_prefix=context.topic_prefix,
                protocol=self.protocol or "5",
            )
        return MqttChannel(self.name, settings)
