"""The webhook channel: a signed JSON POST, retried with backoff within one send.

The body is ``Notification.to_json()`` as compact UTF-8 JSON. Two headers let the
receiver check that it came from us and is fresh::

    X-Stadtpuls-Timestamp: 1714571000
    X-Stadtpuls-Signature: sha256=<hex HMAC-SHA256 over b"1714571000." + body>

with the shared secret as the HMAC key. Signing the timestamp with the body stops a
captured request from being replayed later: a receiver rejects timestamps older than a
few minutes (``verify_signature`` does both checks).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from alerts.channels._http import build_opener, check_http_url, post, status_error
from alerts.channels.base import DeliveryError, RetrySettings, json_body
from alerts.model import Notification

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "WebhookSettings",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Stadtpuls-Timestamp"
SIGNATURE_HEADER = "X-Stadtpuls-Signature"
_SCHEME = "sha256="
# Short retries within one send: the channel's later notifications wait behind this one,
# and a longer outage is the dispatcher's to retry.
_RETRY = RetrySettings(attempts=4, base_delay=timedelta(seconds=1), max_delay=timedelta(seconds=30))


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str = field(repr=False)
    timeout: timedelta = timedelta(seconds=10)  # per HTTP request
    retry: RetrySettings = _RETRY
    ca_file: str | None = None  # for an https:// receiver with a private CA

    def __post_init__(self) -> None:
        check_http_url(self.url, "the webhook URL")
        if not self.secret:
            raise ValueError("the webhook needs a secret to sign its requests with")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The value of ``X-Stadtpuls-Signature`` for this timestamp and body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    body: bytes,
    header: str | None,
    max_age: timedelta = timedelta(minutes=5),
    *,
    now: float | None = None,
) -> bool:
    """True when ``header`` is our signature of ``body`` at ``timestamp`` and the
    timestamp is within ``max_age`` of ``now`` (the Unix time; the clock by default),
    either side, to allow for clocks a little apart."""
    if timestamp is None or header is None or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > max_age.total_seconds():
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookChannel:
    def __init__(self, name: str, settings: WebhookSettings) -> None:
        self.name = name
        self.settings = settings
        self.last_attempts = 0  # HTTP requests the last send made, for logs and tests
        self._opener = build_opener(settings.ca_file)
        self._closed = threading.Event()

    def send(self, notification: Notification) -> None:
        s = self.settings
        body = json_body(notification)
        self.last_attempts = 0
        for attempt in range(1, s.retry.attempts + 1):
            self.last_attempts = attempt
            # Signed afresh for each request, so a late retry is not refused as stale.
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(s.secret, timestamp, body),
            }
            retry_after: float | None = None
            try:
                answer = post(self._opener, s.url, body, headers, s.timeout.total_seconds())
            except DeliveryError as exc:
                error = exc
            else:
                found = status_error(s.url, answer)
                if found is None:
                    return
                error, retry_after = found, answer.retry_after_s
            if not error.retry or attempt == s.retry.attempts:
                raise error
            delay = s.retry.delay(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, s.retry.max_delay.total_seconds()))
            log.info(
                "webhook %s attempt %d failed, retrying in %.1f s: %s",
                self.name, attempt, delay, error,
                extra={"channel": self.name, "attempt": attempt},
            )  # fmt: skip
            if self._closed.wait(delay):
                raise DeliveryError(f"{error} (channel closed while retrying)", retry=True)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def close(self) -> None:
        self._closed.set()
