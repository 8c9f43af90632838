"""What every MQTT client of Stadtpuls does alike (paho-mqtt 2.x): the broker it reaches
with its account and TLS, the client made for it, and paho's connection callbacks.

The publisher of the simulator, the ingest subscriber and the MQTT alert channel each
decide what a connection, a refusal or an acknowledgement means to them; the callbacks
here only turn paho's arguments into those three cases. They run on paho's network
thread and must not block.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["BrokerAccess", "new_client", "on_connection"]


@dataclass(frozen=True, slots=True)
class BrokerAccess:
    """A broker: where it is, the account to log in with, and TLS. TLS is on when ``tls``
    is set or a CA or client certificate is given; without a CA the system's trusted CAs
    verify the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None


def new_client(
    broker: BrokerAccess,
    client_id: str,
    protocol: Literal["5", "3.1.1"],
    *,
    keep_session: bool = False,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A client for ``broker`` with its account and TLS set, not connected yet.

    ``keep_session`` asks an MQTT 3.1.1 broker to keep the session (clean session off);
    MQTT 5 decides that with ``clean_start`` and the session expiry at connect instead.
    """
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else not keep_session,
        manual_ack=manual_ack,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.uses_tls:
        client.tls_set(
            ca_certs=broker.tls_ca,
            certfile=broker.tls_cert,
            keyfile=broker.tls_key,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def on_connection(
    client: mqtt.Client,
    *,
    connected: Callable[[mqtt.Client, mqtt.ConnectFlags], None],
    refused: Callable[[ReasonCode], None],
    disconnected: Callable[[ReasonCode], None],
    published: Callable[[int, ReasonCode], None] | None = None,
) -> None:
    """Sets ``client``'s paho callbacks: ``connected`` on a CONNACK that accepts,
    ``refused`` on one that refuses (its reason, e.g. a bad password or protocol version),
    ``disconnected`` when the connection ends or is lost, and ``published`` with the mid
    and reason of each acknowledgement of a publish (a failing reason from an MQTT 5
    broker, e.g. its ACL's "Not authorized")."""

    def on_connect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            refused(reason)
        else:
            connected(client, flags)

    def on_disconnect(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        disconnected(reason)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if published is not None:
        notify = published

        def on_publish(
            client: mqtt.Client,
            userdata: Any,
            mid: int,
            reason: ReasonCode,
            properties: Properties | None,
        ) -> None:
            notify(mid, reason)

        client.on_publish = on_publish
