"""The webhook channel: a signed JSON POST, one request per send (the dispatcher retries).

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
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from alerts.channels._http import build_opener, check_http_url, post, status_error
from alerts.channels.base import ChannelContext, ChannelSettings, json_body, register_channel
from alerts.model import Notification
from devices.registry import Duration
from ingest.secrets import plain_settings

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookChannel",
    "WebhookChannelModel",
    "WebhookSettings",
    "sign",
    "verify_signature",
]

TIMESTAMP_HEADER = "X-Stadtpuls-Timestamp"
SIGNATURE_HEADER = "X-Stadtpuls-Signature"
_SCHEME = "sha256="


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str = field(repr=False)
    timeout: timedelta = timedelta(seconds=10)  # per HTTP request
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
        self._opener = build_opener(settings.ca_file)

    def send(self, notification: Notification) -> None:
        s = self.settings
        body = json_body(notification)
        # Signed at each send, so a late retry is not refused as stale.
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(s.secret, timestamp, body),
        }
        answer = post(self._opener, s.url, body, headers, s.timeout.total_seconds())
        error = status_error(s.url, answer)
        if error is not None:
            raise error

    def close(self) -> None:
        """Nothing is kept open between sends."""


@register_channel
class WebhookChannelModel(ChannelSettings):
    """``type: webhook`` under ``alerts.channels``."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)
    ca_file: Path | None = None

    # Every request is signed with the secret: a webhook cannot work without one.
    secret_keys = required_secret_keys = ("secret",)

    def build(self, context: ChannelContext) -> WebhookChannel:
        return WebhookChannel(self.name, plain_settings(WebhookSettings, self))
