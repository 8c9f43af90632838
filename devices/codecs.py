"""Payload codecs: SenML JSON (RFC 8428, ``devices.senml``) and the native block format
(``devices.block``), with validation.

A message is stored record by record: the decoder returns the readings of the records that
pass, with the records it refused (``Decoded.rejected``), which go to the quarantine. It
raises ``ReadingRejected`` (a reason code for counting, a sentence a person can act on)
when nothing of the message can be stored: the topic, the payload or the pack as a whole
is unusable, or every record was refused. Decoders never see the network or the store;
the receive time is passed in so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Collection

from devices.block import NativeBlock, decode_block
from devices.decoding import NS, Decoded, DecodeLimits, TimeWindow
from devices.registry import Device, Registry
from devices.rejections import ReadingRejected, RecordRejected, RejectReason
from devices.senml import SenmlDecoder, SenmlRecord
from devices.topics import TopicRejected, TopicScheme

__all__ = [
    "DecodeLimits",
    "Decoded",
    "Decoder",
    "NativeBlock",
    "ReadingRejected",
    "RecordRejected",
    "RejectReason",
    "SenmlRecord",
]


class Decoder:
    """Turns (topic, payload) into readings of registry series and refused records, or
    rejects the message."""

    def __init__(self, registry: Registry, topics: TopicScheme, limits: DecodeLimits) -> None:
        self.registry = registry
        self.topics = topics
        self.limits = limits
        self._senml = SenmlDecoder(limits.max_records)
        self._skew_ns = int(limits.max_future_skew.total_seconds() * NS)
        self._horizon_ns = int(limits.backfill_horizon.total_seconds() * NS)
        self._known_topics: dict[str, Device] = {}

    def decode(
        self, topic: str, payload: bytes, received_ns: int, only: Collection[int] | None = None
    ) -> Decoded:
        """``only``: decode just these records (SenML record or block sample positions), as
        a replay of the records refused earlier does; the message as a whole is checked."""
        device = self._known_topics.get(topic)
        if device is None:
            device = self._resolve(topic)
            # Only registered devices get here, so the cache is as big as the registry.
            self._known_topics[topic] = device
        if not payload:
            raise ReadingRejected(RejectReason.EMPTY, "empty payload")
        if len(payload) > self.limits.max_payload_bytes:
            raise ReadingRejected(
                RejectReason.OVERSIZED,
                f"payload of {len(payload)} bytes exceeds {self.limits.max_payload_bytes}",
            )
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReadingRejected(RejectReason.NOT_UTF8, f"payload is not UTF-8: {exc}") from None
        window = TimeWindow(received_ns, self._skew_ns, self._horizon_ns)
        first = payload.lstrip()[:1]
        if first == b"[":
            return self._senml.decode(device.id, device.series, payload, window, only)
        if first == b"{":
            return decode_block(
                device.id, device.series, payload, window, self.limits.max_samples, only
            )
        raise ReadingRejected(
            RejectReason.NOT_JSON, "payload is neither a SenML array nor a native block object"
        )

    def _resolve(self, topic: str) -> Device:
        try:
            tid = self.topics.parse(topic)
        except TopicRejected as exc:
            raise ReadingRejected(RejectReason.BAD_TOPIC, str(exc)) from None
        site = self.registry.sites.get(tid.site)
        if site is None:
            raise ReadingRejected(RejectReason.UNKNOWN_SITE, f"site {tid.site!r} is not registered")
        if site.kind != tid.kind:
            raise ReadingRejected(
                RejectReason.BAD_TOPIC, f"site {tid.site!r} is a {site.kind}, topic says {tid.kind}"
            )
        device = site.devices.get(tid.device)
        if device is None:
            raise ReadingRejected(
                RejectReason.UNKNOWN_DEVICE,
                f"device {tid.device!r} is not registered at site {tid.site!r}",
            )
        return device
