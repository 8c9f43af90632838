"""The ``Retry-After`` header of an HTTP answer, for whatever retries a request: the alert
channels that speak HTTP, and the InfluxDB store."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC

__all__ = ["parse_retry_after"]


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
