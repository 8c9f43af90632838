"""Waiting before trying again: ``Backoff``, the exponential backoff with jitter of the
durable commit (``ingest.pipeline``), the InfluxDB drain (``ingest.stores.influx``) and
the alert channels (``alerts.dispatch``), and ``parse_retry_after``, the ``Retry-After``
header of an HTTP answer, for the alert channels that speak HTTP and the InfluxDB store."""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, timedelta

__all__ = ["Backoff", "parse_retry_after"]

# Capping the exponent keeps a days-long outage from overflowing the float.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter. Attempt *n* (counted from 0) has the ceiling
    ``min(maximum, initial * multiplier**n)`` and waits a uniformly random time between
    ``(1 - jitter) * ceiling`` and the ceiling: full jitter (``jitter=1``, the default)
    waits anything from zero, ``jitter=0.5`` at least half the ceiling."""

    initial: timedelta
    maximum: timedelta
    multiplier: float = 2.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.initial < timedelta(0) or self.maximum < self.initial:
            raise ValueError("retry backoff needs 0 <= initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("retry backoff multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry backoff jitter must be between 0 and 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """A random wait for attempt ``attempt`` (from 0; a negative one counts as 0),
        drawn from ``rng`` or else the ``random`` module."""
        exponent = min(max(attempt, 0), _MAX_EXPONENT)
        longest = self.maximum.total_seconds()
        try:
            top = min(longest, self.initial.total_seconds() * self.multiplier**exponent)
        except OverflowError:
            top = longest
        uniform = rng.uniform if rng is not None else random.uniform
        return timedelta(seconds=uniform((1.0 - self.jitter) * top, top))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After: value``, or None when there is none or it
    cannot be read.

    RFC 9110, 10.2.3 allows delta-seconds (``120``) or an HTTP-date in any of its three
    forms (``Sun, 06 Nov 1994 08:49:37 GMT``, the obsolete RFC 850 and asctime forms); a
    date is counted from ``now`` (Unix time, the clock by default), and a date already
    past means no wait. Fractional seconds are taken as given; a negative or infinite
    number is no value."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP-dates are in GMT
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)
