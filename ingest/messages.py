"""A message as a source hands it to the pipeline. A module of its own, without numpy or the
decoders, so that the MQTT client process (``ingest.mqtt_process``) starts without them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message as the broker handed it over; ``token`` lets the subscriber acknowledge it,
    ``dup`` is MQTT's flag for a redelivery."""

    topic: str
    payload: bytes
    received_ns: int
    token: object = None
    dup: bool = False
