"""Payload codecs: SenML JSON (RFC 8428) and the native block format, with validation.

A message is atomic: it is decoded whole into readings, or rejected whole with a
``ReadingRejected`` that carries a reason code (for counting) and a sentence a person can
act on (for the quarantine). Decoders never see the network or the store; the receive time
is passed in so tests control the clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from devices.registry import Device, Registry, Series
from devices.topics import TopicRejected, TopicScheme
from devices.vocabulary import UnitNotConvertible, conversion

# RFC 8428, 4.5.3: a time below 2**28 is relative to now.
_RELATIVE_TIME_LIMIT = 2.0**28
# A "seconds since the epoch" beyond this is almost surely milliseconds (year 5138).
_MILLISECONDS_HINT = 1e11
# int64 nanoseconds end in April 2262; anything later cannot be a reading key.
_INT64_SECONDS = 9.2e9
_NS = 1_000_000_000


class RejectReason(StrEnum):
    """Why a message was quarantined; the values label the rejection counter."""

    BAD_TOPIC = "bad_topic"
    UNKNOWN_SITE = "unknown_site"
    UNKNOWN_DEVICE = "unknown_device"
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"
    DUPLICATE_KEY = "duplicate_key"
    TOO_MANY_VALUES = "too_many_values"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_FIELD = "unknown_field"
    NOT_FINITE = "not_finite"
    IDENTITY_MISMATCH = "identity_mismatch"
    UNKNOWN_MEASUREMENT = "unknown_measurement"
    UNKNOWN_UNIT = "unknown_unit"
    OUT_OF_RANGE = "out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    EMPTY = "empty"
    UNSUPPORTED = "unsupported"
    STORE_REJECTED = "store_rejected"


class ReadingRejected(ValueError):
    """A message cannot be stored; ``reason`` is the counter label, ``detail`` the sentence."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 256 * 1024
    max_records: int = 1000
    max_samples: int = 10_000
    max_future_skew: timedelta = timedelta(minutes=5)
    backfill_horizon: timedelta = timedelta(days=30)


@dataclass(slots=True)
class Decoded:
    """Readings of one message, columnar. ``series`` indexes ``Registry.series``.

    A SenML message carries a handful of readings, for which Python lists are several
    times cheaper than numpy arrays; a block carries arrays. The batch joins both.
    """

    series: list[int] | npt.NDArray[np.int32]
    ts_ns: list[int] | npt.NDArray[np.int64]
    values: list[float] | npt.NDArray[np.float64]
    # True when some reading has no device time (or a time relative to now) and so was
    # timed at receipt: a redelivery must reuse that receipt time to keep the key.
    receipt_timed: bool = False

    def __len__(self) -> int:
        return len(self.values)


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class SenmlRecord(BaseModel):
    """One SenML record. String, boolean, data and sum values are recognised so they can be
    refused with a precise reason rather than as unknown fields."""

    model_config = _STRICT

    bn: str | None = None
    bt: float | None = None
    bu: str | None = None
    bv: float | None = None
    bver: int | None = None
    n: str | None = None
    u: str | None = None
    v: float | None = None
    vs: str | None = None
    vb: bool | None = None
    vd: str | None = None
    s: float | None = None
    t: float | None = None
    ut: float | None = None


class NativeBlock(BaseModel):
    """The native block format: ``t0`` (s since the epoch), ``dt`` (s), one array per series
    (named like a SenML record), optional units per series, optional device id."""

    model_config = _STRICT

    device: str | None = None
    t0: float
    dt: float = Field(gt=0)
    series: dict[str, list[float]] = Field(min_length=1)
    units: dict[str, str] = Field(default_factory=dict)


def _error_reason(exc: ValidationError) -> ReadingRejected:
    err = exc.errors(include_url=False)[0]
    kind, msg = err["type"], err["msg"]
    where = ".".join(str(p) for p in err["loc"])
    at = f" at {where}" if where else ""
    if kind == "json_invalid":
        if "recursion limit" in msg:
            return ReadingRejected(RejectReason.TOO_DEEP, f"JSON nested too deeply: {msg}")
        if "unicode" in msg:
            return ReadingRejected(RejectReason.NOT_UTF8, msg)
        if "number out of range" in msg:
            # More than 4300 digits: as a float such a number is infinite.
            return ReadingRejected(RejectReason.NOT_FINITE, f"number too large for a float: {msg}")
        return ReadingRejected(RejectReason.NOT_JSON, msg)
    if kind == "finite_number":
        return ReadingRejected(RejectReason.NOT_FINITE, f"NaN or infinite number{at}")
    if kind == "too_short":
        return ReadingRejected(RejectReason.EMPTY, f"{msg}{at}")
    if kind == "too_long":
        return ReadingRejected(RejectReason.TOO_MANY_VALUES, f"{msg}{at}")
    if kind == "extra_forbidden":
        return ReadingRejected(RejectReason.UNKNOWN_FIELD, f"unknown field{at}")
    return ReadingRejected(RejectReason.WRONG_TYPE, f"{msg}{at}")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)


def _check_unique_keys(payload: bytes, members: int) -> None:
    """Refuse a payload that repeats a key in one object.

    The JSON parser keeps the last of duplicate keys, so ``{"v": 1, "v": 9000}`` would be
    stored as 9000 although another reader of the same bytes may well see 1. ``members``
    is how many distinct keys the validated objects hold. Every member of a JSON object has
    exactly one ``:`` outside strings, so when the payload has no more colons than that, no
    key can be repeated; only otherwise (a repeat, or a colon inside a string) is the
    payload parsed a second time to find out. The payload has passed validation by then,
    so it is shallow and its numbers are small enough for the standard library.
    """
    if payload.count(b":") <= members:
        return
    try:
        json.loads(payload, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        raise ReadingRejected(
            RejectReason.DUPLICATE_KEY,
            f"key {exc.key!r} appears twice in one object; which one counts is ambiguous",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ReadingRejected(RejectReason.NOT_JSON, f"JSON not readable: {exc}") from None


def _check_plausible(t: float, what: str) -> None:
    """Refuse times that do not fit int64 nanoseconds (years 1677-2262) before converting."""
    if -_INT64_SECONDS <= t <= _INT64_SECONDS:
        return
    if math.isinf(t):
        raise ReadingRejected(RejectReason.NOT_FINITE, f"{what}: time overflows to {t}")
    if t < 0:
        raise ReadingRejected(RejectReason.TOO_OLD, f"{what}: time {t:g} is before 1677")
    hint = (
        "; milliseconds sent where SenML wants seconds since the epoch?"
        if t > _MILLISECONDS_HINT
        else ""
    )
    raise ReadingRejected(
        RejectReason.FUTURE_TIMESTAMP, f"{what}: time {t:g} is far in the future{hint}"
    )


class Decoder:
    """Turns (topic, payload) into readings of registry series, or rejects the message."""

    def __init__(self, registry: Registry, topics: TopicScheme, limits: DecodeLimits) -> None:
        self.registry = registry
        self.topics = topics
        self.limits = limits
        self._senml = TypeAdapter(
            Annotated[list[SenmlRecord], Field(min_length=1, max_length=limits.max_records)]
        )
        self._skew_ns = int(limits.max_future_skew.total_seconds() * _NS)
        self._horizon_ns = int(limits.backfill_horizon.total_seconds() * _NS)
        self._known_topics: dict[str, Device] = {}

    def decode(self, topic: str, payload: bytes, received_ns: int) -> Decoded:
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
        first = payload.lstrip()[:1]
        if first == b"[":
            decoded = self._decode_senml(device.id, device.series, payload, received_ns)
        elif first == b"{":
            decoded = self._decode_block(device.id, device.series, payload)
        else:
            raise ReadingRejected(
                RejectReason.NOT_JSON,
                "payload is neither a SenML array nor a native block object",
            )
        self._check_times(decoded.ts_ns, received_ns)
        return decoded

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

    @staticmethod
    def _series(by_name: Mapping[str, Series], device: str, name: str) -> Series:
        s = by_name.get(name)
        if s is None:
            raise ReadingRejected(
                RejectReason.UNKNOWN_MEASUREMENT,
                f"device {device!r} has no series {name!r} (known: {', '.join(sorted(by_name))})",
            )
        return s

    def _decode_senml(
        self, device: str, by_name: Mapping[str, Series], payload: bytes, received_ns: int
    ) -> Decoded:
        try:
            records = self._senml.validate_json(payload)
        except ValidationError as exc:
            raise _error_reason(exc) from None
        prefix = f"{device}/"
        bn: str | None = None
        bt = 0.0
        bu: str | None = None
        bv = 0.0
        idx: list[int] = []
        times: list[int] = []
        values: list[float] = []
        receipt_timed = False
        members = 0
        for i, r in enumerate(records):
            members += len(r.model_fields_set)
            if r.bn is not None:
                bn = r.bn
            if r.bt is not None:
                bt = r.bt
            if r.bu is not None:
                bu = r.bu
            if r.bv is not None:
                bv = r.bv
            if r.vs is not None or r.vb is not None or r.vd is not None or r.s is not None:
                raise ReadingRejected(
                    RejectReason.UNSUPPORTED,
                    f"record {i}: only numeric values (v) are accepted, not vs/vb/vd/s",
                )
            name = (bn or "") + (r.n or "")
            if bn is not None:
                if not name.startswith(prefix):
                    raise ReadingRejected(
                        RejectReason.IDENTITY_MISMATCH,
                        f"record {i}: name {name!r} does not belong to device {device!r} "
                        f"of the topic (expected base name {prefix!r})",
                    )
                name = name[len(prefix) :]
            series = self._series(by_name, device, name)
            if r.v is None and r.bv is None:
                raise ReadingRejected(RejectReason.WRONG_TYPE, f"record {i} has no value")
            value = bv + (r.v or 0.0)
            unit = r.u if r.u is not None else bu
            if unit is not None and unit != series.unit:
                try:
                    scale, offset = conversion(unit, series.unit)
                except UnitNotConvertible as exc:
                    raise ReadingRejected(
                        RejectReason.UNKNOWN_UNIT, f"record {i} ({name}): {exc}"
                    ) from None
                # Rounded so that a ratio of 8.885e-05 is stored as 88.85, not 88.85000000000001.
                value = round(value * scale + offset, 9)
            if not series.minimum <= value <= series.maximum:
                raise ReadingRejected(
                    RejectReason.OUT_OF_RANGE if math.isfinite(value) else RejectReason.NOT_FINITE,
                    f"record {i} ({name}): {value:g} {series.unit} is outside "
                    f"[{series.minimum:g}, {series.maximum:g}]",
                )
            t = bt + (r.t or 0.0)
            if abs(t) < _RELATIVE_TIME_LIMIT:
                receipt_timed = True
                ts = received_ns + round(t * 1_000_000) * 1000
            else:
                _check_plausible(t, f"record {i}")
                # Microsecond resolution keeps float noise out of the reading key.
                ts = round(t * 1_000_000) * 1000
            idx.append(series.index)
            times.append(ts)
            values.append(value)
        # Checked last, on a pack that passed everything else, to keep the count in the loop.
        _check_unique_keys(payload, members)
        return Decoded(idx, times, values, receipt_timed)

    def _decode_block(self, device: str, by_name: Mapping[str, Series], payload: bytes) -> Decoded:
        try:
            block = NativeBlock.model_validate_json(payload)
        except ValidationError as exc:
            raise _error_reason(exc) from None
        _check_unique_keys(
            payload, len(block.model_fields_set) + len(block.series) + len(block.units)
        )
        if block.device is not None and block.device != device:
            raise ReadingRejected(
                RejectReason.IDENTITY_MISMATCH,
                f"block names device {block.device!r}, topic names {device!r}",
            )
        _check_plausible(block.t0, "t0")
        if block.dt > _INT64_SECONDS:
            raise ReadingRejected(RejectReason.WRONG_TYPE, f"dt {block.dt:g} s is implausible")
        total = sum(len(v) for v in block.series.values())
        if total > self.limits.max_samples:
            raise ReadingRejected(
                RejectReason.TOO_MANY_VALUES,
                f"block carries {total} samples, more than {self.limits.max_samples}",
            )
        longest = max(len(v) for v in block.series.values())
        _check_plausible(block.t0 + block.dt * longest, "the block's last sample")
        for name in block.units:
            if name not in block.series:
                raise ReadingRejected(
                    RejectReason.UNKNOWN_FIELD, f"units names {name!r}, which is not in series"
                )
        t0_ns = round(block.t0 * 1_000_000) * 1000
        dt_ns = round(block.dt * 1_000_000_000)
        if dt_ns <= 0:
            raise ReadingRejected(RejectReason.WRONG_TYPE, f"dt {block.dt!r} is below 1 ns")
        parts_idx = []
        parts_ts = []
        parts_val = []
        for name, samples in block.series.items():
            series = self._series(by_name, device, name)
            vals = np.asarray(samples, dtype=np.float64)
            unit = block.units.get(name)
            if unit is not None and unit != series.unit:
                try:
                    scale, offset = conversion(unit, series.unit)
                except UnitNotConvertible as exc:
                    raise ReadingRejected(RejectReason.UNKNOWN_UNIT, f"{name}: {exc}") from None
                with np.errstate(over="ignore", invalid="ignore"):
                    vals = np.round(vals * scale + offset, 9)
                if not np.isfinite(vals).all():
                    first = int(np.argmin(np.isfinite(vals)))
                    raise ReadingRejected(
                        RejectReason.NOT_FINITE,
                        f"{name}[{first}]: {samples[first]:g} {unit} overflows in {series.unit}",
                    )
            bad = (vals < series.minimum) | (vals > series.maximum)
            if bad.any():
                first = int(np.argmax(bad))
                raise ReadingRejected(
                    RejectReason.OUT_OF_RANGE,
                    f"{name}[{first}]: {vals[first]:g} {series.unit} is outside "
                    f"[{series.minimum:g}, {series.maximum:g}] ({int(bad.sum())} samples)",
                )
            n = len(vals)
            parts_idx.append(np.full(n, series.index, dtype=np.int32))
            parts_ts.append(t0_ns + np.arange(n, dtype=np.int64) * dt_ns)
            parts_val.append(vals)
        return Decoded(
            np.concatenate(parts_idx), np.concatenate(parts_ts), np.concatenate(parts_val)
        )

    def _check_times(self, ts_ns: list[int] | npt.NDArray[np.int64], received_ns: int) -> None:
        if len(ts_ns) == 0:
            raise ReadingRejected(RejectReason.EMPTY, "message carries no readings")
        if isinstance(ts_ns, list):
            newest, oldest = max(ts_ns), min(ts_ns)
        else:
            newest, oldest = int(ts_ns.max()), int(ts_ns.min())
        if newest > received_ns + self._skew_ns:
            ahead = (newest - received_ns) / _NS
            raise ReadingRejected(
                RejectReason.FUTURE_TIMESTAMP,
                f"timestamp {ahead:.0f} s ahead of the receive time (allowed "
                f"{self._skew_ns / _NS:.0f} s); is the device clock wrong?",
            )
        if oldest < received_ns - self._horizon_ns:
            behind = (received_ns - oldest) / _NS
            raise ReadingRejected(
                RejectReason.TOO_OLD,
                f"timestamp {behind / 86400:.1f} days old, beyond the backfill horizon of "
                f"{self._horizon_ns / _NS / 86400:.0f} days",
            )
