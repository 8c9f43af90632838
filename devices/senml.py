"""SenML JSON (RFC 8428): one pack per message, decoded record by record.

A record that cannot be stored (a value out of range, an unknown name, a NaN) is refused on
its own and the other records are stored. What makes the whole pack unusable refuses the
pack: it is not a JSON array of records, a base field is wrong (the records after it
depend on it), the base name names another device, the pack is of a newer SenML version,
a key repeats in one object, or two records give the same series at the same time.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Annotated, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from devices.decoding import (
    NS,
    Decoded,
    TimeWindow,
    check_plausible,
    check_unique_keys,
    senml_time_ns,
)
from devices.registry import Series
from devices.rejections import (
    ReadingRejected,
    RecordRejected,
    RejectReason,
    first_error,
    first_rejection,
    validation_reason,
)
from devices.vocabulary import UnitNotConvertible, conversion

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

# RFC 8428, 4.4: the version this reader understands; a pack of a newer one is not used.
SENML_VERSION = 10
# Fields that carry over to the records after the one that holds them.
_BASE_FIELDS = frozenset({"bn", "bt", "bu", "bv", "bver"})
# The fields of what devices send nearly always; a pack of only these takes the fast path.
_COMMON_FIELDS = frozenset({"bn", "bt", "n", "v", "t", "u"})
_NUMBERS = (float, int)
_EXACT_INT = 2**53
_UNSUPPORTED = (
    "only numeric values (v) are accepted, not string, boolean, data or sum values "
    "(vs, vb, vd, s, bs)"
)


class SenmlRecord(BaseModel):
    """One SenML record, every field RFC 8428 defines. String, boolean, data and sum values
    are recognised so they can be refused with a precise reason rather than as unknown
    fields; ``ut`` (the most time until the next reading) is accepted and ignored."""

    model_config = STRICT

    bn: str | None = None
    bt: float | None = None
    bu: str | None = None
    bv: float | None = None
    bs: float | None = None
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


def _stand_in(raw: object) -> SenmlRecord:
    """An invalid record's base fields, which the records after it still use; they passed
    validation, or the pack would have been refused."""
    if not isinstance(raw, dict):
        return SenmlRecord.model_construct()
    return SenmlRecord.model_construct(**{k: raw[k] for k in _BASE_FIELDS if k in raw})


def _check_version(bver: int, i: int) -> None:
    if bver > SENML_VERSION:
        raise ReadingRejected(
            RejectReason.UNSUPPORTED_VERSION,
            f"record {i}: the pack is SenML version {bver} (bver); this service reads "
            f"version {SENML_VERSION} and older, and RFC 8428 forbids using a newer pack",
        )
    if bver < 1:
        raise ReadingRejected(
            RejectReason.WRONG_TYPE, f"record {i}: bver {bver} is not a positive integer"
        )


class SenmlDecoder:
    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._pack = TypeAdapter(
            Annotated[list[SenmlRecord], Field(min_length=1, max_length=max_records)]
        )

    def _records(self, payload: bytes) -> tuple[list[SenmlRecord], dict[int, ReadingRejected]]:
        """The pack's records, and why each invalid one is refused."""
        try:
            return self._pack.validate_json(payload), {}
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        invalid: dict[int, ReadingRejected] = {}
        for err in errors:
            loc = err["loc"]
            # An error of the pack itself (not JSON, empty, too long) or of a base field
            # leaves nothing to decode: the records after a base field depend on it.
            if not loc or not isinstance(loc[0], int) or (len(loc) > 1 and loc[1] in _BASE_FIELDS):
                raise validation_reason(err)
            invalid.setdefault(loc[0], validation_reason(err))
        records: list[SenmlRecord] = []
        raw: list[Any] = pydantic_core.from_json(payload)  # valid JSON: only records failed
        for i, item in enumerate(raw):
            if i not in invalid:
                try:
                    records.append(SenmlRecord.model_validate(item))
                    continue
                except ValidationError as exc:  # not expected: it passed as JSON
                    invalid[i] = first_error(exc)
            records.append(_stand_in(item))
        return records, invalid

    def decode(
        self,
        device: str,
        by_name: Mapping[str, Series],
        payload: bytes,
        window: TimeWindow,
        only: Collection[int] | None = None,
    ) -> Decoded:
        """The pack's readings and its refused records; ``only``: decode just these records
        (a replay of the ones refused earlier), though the whole pack is checked."""
        if only is None:
            fast = self.common(device, by_name, payload, window)
            if fast is not None:
                return fast
        records, invalid = self._records(payload)
        prefix = f"{device}/"
        bn: str | None = None
        bt = 0.0
        bu: str | None = None
        bv = 0.0
        idx: list[int] = []
        times: list[int] = []
        values: list[float] = []
        refused: list[RecordRejected] = []
        instants: dict[tuple[str, int], int] = {}
        twice: tuple[int, int, str, int] | None = None
        receipt_timed = False
        members = 0
        for i, r in enumerate(records):
            members += len(r.model_fields_set)
            if r.bver is not None:
                _check_version(r.bver, i)
            if r.bn is not None:
                bn = r.bn
            if r.bt is not None:
                bt = r.bt
            if r.bu is not None:
                bu = r.bu
            if r.bv is not None:
                bv = r.bv
            wanted = only is None or i in only
            bad = invalid.get(i)
            if bad is not None:
                if wanted:
                    refused.append(RecordRejected((i,), r.n or "", bad.reason, bad.detail))
                continue
            name = (bn or "") + (r.n or "")
            if bn is not None:
                if not name.startswith(prefix):
                    raise ReadingRejected(
                        RejectReason.IDENTITY_MISMATCH,
                        f"record {i}: name {name!r} does not belong to device {device!r} "
                        f"of the topic (expected base name {prefix!r})",
                    )
                name = name[len(prefix) :]
            t = bt + (r.t or 0.0)
            ts: int | None = None
            late: ReadingRejected | None = None
            timed = senml_time_ns(t, window.received_ns)
            if timed is not None:
                ts, relative = timed
                receipt_timed |= relative
            else:
                try:
                    check_plausible(t, f"record {i} ({name})")
                except ReadingRejected as exc:
                    late = exc
            if ts is not None and twice is None:
                first = instants.setdefault((name, ts), i)
                if first != i:
                    twice = (first, i, name, ts)
            if not wanted:
                continue
            outcome = _value(i, r, name, by_name, device, bu, bv) if late is None else late
            if isinstance(outcome, ReadingRejected):
                refused.append(RecordRejected((i,), name, outcome.reason, outcome.detail))
                continue
            series, value = outcome
            assert ts is not None
            if not window.oldest_ns <= ts <= window.newest_ns:
                problem = window.problem(ts)
                assert problem is not None
                reason, detail = problem
                refused.append(RecordRejected((i,), name, reason, f"record {i} ({name}): {detail}"))
                continue
            idx.append(series.index)
            times.append(ts)
            values.append(value)
        # Checked last, on a pack whose records were read, to keep the count in the loop.
        check_unique_keys(payload, members)
        if twice is not None:
            first, second, name, ts = twice
            raise ReadingRejected(
                RejectReason.DUPLICATE_READING,
                f"records {first} and {second} both give {name!r} at {ts / NS:.6f} s: "
                "two values for one instant, and which one is right is unknown",
            )
        if not values and refused:
            raise first_rejection(refused, 0)
        if not values:
            raise ReadingRejected(RejectReason.EMPTY, "message carries no readings")
        return Decoded(idx, times, values, receipt_timed, refused)

    def common(
        self, device: str, by_name: Mapping[str, Series], payload: bytes, window: TimeWindow
    ) -> Decoded | None:
        """The readings of a pack that uses only the common fields and whose every record
        is stored, as ``decode`` would give them; ``None`` for any other pack, which
        ``decode`` then reads in full and refuses with its reason. Building a pydantic
        model per record costs several times the JSON parse, and at tens of thousands of
        single-reading messages a second that was most of the service's own time; the
        checks below are the model's (strict types, finite numbers, no other fields)."""
        try:
            raw = pydantic_core.from_json(payload, allow_inf_nan=False)
        except ValueError:
            return None
        if type(raw) is not list or not 0 < len(raw) <= self.max_records:
            return None
        prefix = f"{device}/"
        bn: str | None = None
        bt = 0.0
        idx: list[int] = []
        times: list[int] = []
        values: list[float] = []
        instants: set[tuple[str, int]] = set()
        receipt_timed = False
        members = 0
        for r in raw:
            if type(r) is not dict or not r.keys() <= _COMMON_FIELDS:
                return None
            members += len(r)
            n, v, t, u = r.get("n"), r.get("v"), r.get("t"), r.get("u")
            if "bn" in r:
                bn = r["bn"]
                if type(bn) is not str:
                    return None
            if "bt" in r:
                base = _finite(r["bt"])
                if base is None:
                    return None
                bt = base
            if (n is not None and type(n) is not str) or (u is not None and type(u) is not str):
                return None
            value = _finite(v)
            rel = 0.0 if t is None else _finite(t)
            if value is None or rel is None:
                return None
            name = (bn or "") + (n or "")
            if bn is not None:
                if not name.startswith(prefix):
                    return None
                name = name[len(prefix) :]
            series = by_name.get(name)
            if series is None or (u is not None and u != series.unit):
                return None
            value = 0.0 + value
            if not series.minimum <= value <= series.maximum:
                return None
            timed = senml_time_ns(bt + (rel or 0.0), window.received_ns)
            if timed is None:
                return None
            ts, relative = timed
            receipt_timed |= relative
            if not window.oldest_ns <= ts <= window.newest_ns or (name, ts) in instants:
                return None
            instants.add((name, ts))
            idx.append(series.index)
            times.append(ts)
            values.append(value)
        if payload.count(b":") > members:
            return None  # a repeated key, or a colon in a string: the full reading decides
        return Decoded(idx, times, values, receipt_timed)


def _finite(x: object) -> float | None:
    """``x`` as the strict model's float field takes it: a JSON number, not a boolean,
    finite; ``None`` otherwise."""
    if type(x) is float:
        return x if math.isfinite(x) else None
    if type(x) is int and -_EXACT_INT <= x <= _EXACT_INT:
        return float(x)
    return None


def _value(
    i: int,
    r: SenmlRecord,
    name: str,
    by_name: Mapping[str, Series],
    device: str,
    bu: str | None,
    bv: float,
) -> tuple[Series, float] | ReadingRejected:
    """The record's series and its value in the series' unit, or why it is refused."""
    if (
        r.vs is not None
        or r.vb is not None
        or r.vd is not None
        or r.s is not None
        or r.bs is not None
    ):
        return ReadingRejected(RejectReason.UNSUPPORTED, f"record {i}: {_UNSUPPORTED}")
    if r.v is None and r.bv is None:
        return ReadingRejected(
            RejectReason.WRONG_TYPE,
            f"record {i} ({name or 'no name'}) has no value: a number in v (or bv) is required",
        )
    series = by_name.get(name)
    if series is None:
        return ReadingRejected(
            RejectReason.UNKNOWN_MEASUREMENT,
            f"record {i}: device {device!r} has no series {name!r} "
            f"(known: {', '.join(sorted(by_name))})",
        )
    value = bv + (r.v or 0.0)
    unit = r.u if r.u is not None else bu
    if unit is not None and unit != series.unit:
        try:
            scale, offset = conversion(unit, series.unit)
        except UnitNotConvertible as exc:
            return ReadingRejected(RejectReason.UNKNOWN_UNIT, f"record {i} ({name}): {exc}")
        # Rounded so that a ratio of 8.885e-05 is stored as 88.85, not 88.85000000000001.
        value = round(value * scale + offset, 9)
    if not series.minimum <= value <= series.maximum:
        return ReadingRejected(
            RejectReason.OUT_OF_RANGE if math.isfinite(value) else RejectReason.NOT_FINITE,
            f"record {i} ({name}): {value:g} {series.unit} is outside "
            f"[{series.minimum:g}, {series.maximum:g}]",
        )
    return series, value
