"""Why a message, or one record of it, is not stored: the reasons (a fixed vocabulary that
labels the rejection counter and the quarantine), the exception that refuses a whole
message, and the note that refuses one record while the others of its message are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# A quarantine entry's detail names this many refused records; the entry's ``records``
# holds them all.
_DETAIL_RECORDS = 5


class RejectReason(StrEnum):
    """Why a message or a record was quarantined; the values label the rejection counter."""

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
    UNSUPPORTED_VERSION = "unsupported_version"
    DUPLICATE_READING = "duplicate_reading"
    STORE_REJECTED = "store_rejected"


class ReadingRejected(ValueError):
    """A message cannot be stored at all; ``reason`` is the counter label, ``detail`` the
    sentence. ``records`` lists the refused records when each record of the message was
    refused on its own (none could be stored); it is empty when the message as a whole is
    unusable (not JSON, another device's name, an unknown device, ...)."""

    def __init__(
        self, reason: RejectReason, detail: str, records: Sequence[RecordRejected] = ()
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.records = tuple(records)


@dataclass(frozen=True, slots=True)
class RecordRejected:
    """Records of a message refused while the rest of it is stored.

    ``indices`` say which: a SenML record's position in its pack, or a block sample's
    position counted across the block's series in the order they are written. Replay
    decodes just these again. ``name`` is the record's (or series') name, ``detail`` the
    sentence, which names the record too.
    """

    indices: tuple[int, ...]
    name: str
    reason: RejectReason
    detail: str


def summarize(refused: Sequence[RecordRejected], stored: int) -> str:
    """The quarantine detail of a message whose records were refused one by one."""
    count = sum(len(r.indices) for r in refused)
    details = [r.detail for r in refused[:_DETAIL_RECORDS]]
    if len(refused) > _DETAIL_RECORDS:
        details.append(f"and {len(refused) - _DETAIL_RECORDS} more")
    listed = "; ".join(details)
    if stored == 0:
        return listed if count == 1 else f"all {count} records refused: {listed}"
    noun = "record" if count == 1 else "records"
    return f"{count} {noun} refused, the other {stored} stored: {listed}"


def positions(refused: Sequence[RecordRejected]) -> tuple[int, ...]:
    """The positions of all refused records, in order: what a quarantine entry keeps."""
    return tuple(sorted(i for r in refused for i in r.indices))


def first_rejection(refused: Sequence[RecordRejected], stored: int) -> ReadingRejected:
    """Every record refused: the message is rejected with the first record's reason."""
    return ReadingRejected(refused[0].reason, summarize(refused, stored), refused)


def validation_reason(err: ErrorDetails) -> ReadingRejected:
    """The reason and sentence for one of pydantic's errors."""
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


def first_error(exc: ValidationError) -> ReadingRejected:
    return validation_reason(exc.errors(include_url=False)[0])
