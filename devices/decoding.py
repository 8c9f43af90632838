"""What the SenML and block decoders share: the limits, the decoded readings, and the checks
of times and repeated JSON keys."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import numpy.typing as npt

from devices.rejections import ReadingRejected, RecordRejected, RejectReason

# RFC 8428, 4.5.3: a time below 2**28 is relative to now.
RELATIVE_TIME_LIMIT = 2.0**28
# A "seconds since the epoch" beyond this is almost surely milliseconds (year 5138).
_MILLISECONDS_HINT = 1e11
# int64 nanoseconds end in April 2262; anything later cannot be a reading key.
INT64_SECONDS = 9.2e9
NS = 1_000_000_000


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
    # Records refused while the readings above are stored; they go to the quarantine.
    rejected: Sequence[RecordRejected] = ()

    def __len__(self) -> int:
        return len(self.values)


class TimeWindow:
    """The device times a reading may have, around the time its message was received."""

    __slots__ = ("horizon_ns", "newest_ns", "oldest_ns", "received_ns", "skew_ns")

    def __init__(self, received_ns: int, skew_ns: int, horizon_ns: int) -> None:
        self.received_ns = received_ns
        self.skew_ns = skew_ns
        self.horizon_ns = horizon_ns
        self.newest_ns = received_ns + skew_ns
        self.oldest_ns = received_ns - horizon_ns

    def problem(self, ts_ns: int) -> tuple[RejectReason, str] | None:
        """Why ``ts_ns`` is refused, or ``None`` when it lies inside the window."""
        if ts_ns > self.newest_ns:
            ahead = (ts_ns - self.received_ns) / NS
            return (
                RejectReason.FUTURE_TIMESTAMP,
                f"timestamp {ahead:.0f} s ahead of the receive time (allowed "
                f"{self.skew_ns / NS:.0f} s); is the device clock wrong?",
            )
        if ts_ns < self.oldest_ns:
            behind = (self.received_ns - ts_ns) / NS
            return (
                RejectReason.TOO_OLD,
                f"timestamp {behind / 86400:.1f} days old, beyond the backfill horizon of "
                f"{self.horizon_ns / NS / 86400:.0f} days",
            )
        return None


def senml_time_ns(t: float, received_ns: int) -> tuple[int, bool] | None:
    """A SenML time in ns since the epoch, and whether it counted from the receipt (a time
    below 2**28 s, RFC 8428 4.5.3); ``None`` beyond int64 nanoseconds."""
    if abs(t) < RELATIVE_TIME_LIMIT:
        return received_ns + round(t * 1_000_000) * 1000, True
    if abs(t) <= INT64_SECONDS:
        # Microsecond resolution keeps float noise out of the reading key.
        return round(t * 1_000_000) * 1000, False
    return None


def check_plausible(t: float, what: str) -> None:
    """Refuse times that do not fit int64 nanoseconds (years 1677-2262) before converting."""
    if -INT64_SECONDS <= t <= INT64_SECONDS:
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


def check_unique_keys(payload: bytes, members: int) -> None:
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
