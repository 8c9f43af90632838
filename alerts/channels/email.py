"""The e-mail channel: one plain-text message per notification over SMTP.

The subject is the alert's state, severity and summary, e.g.
``[FIRING critical] strain above limit: bridge-a/gw1/g2 = 912 µε (limit 900)``; the body
lists what, where, value, threshold, times, who acknowledged it and the labels. The
messages of one incident share a thread: the FIRING message's Message-ID is derived from
the alert and its firing time, and the later ESCALATED, REPEAT and RESOLVED messages
refer to it. An ESCALATED message says ``ESCALATED`` or ``DE-ESCALATED`` and from which
severity; a BACKLOG message lists the episodes that fired and resolved while data was
delayed, with their reading times.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr

from alerts.channels.base import ChannelContext, ChannelSettings, DeliveryError, register_channel
from alerts.model import SEVERITY_RANK, Alert, Event, Notification
from devices.registry import Duration
from ingest.secrets import plain_settings

__all__ = ["EmailChannel", "EmailChannelModel", "EmailSettings", "render_message"]

_EVENT_WORDS = {
    Event.FIRING: "FIRING",
    Event.RESOLVED: "RESOLVED",
    Event.REPEAT: "STILL FIRING",
    Event.ESCALATED: "ESCALATED",
    Event.BACKLOG: "WHILE DATA WAS DELAYED",
    Event.DIGEST: "DIGEST",
}

# Python folds a long header that mixes ASCII with an encoded word (the µε of a unit)
# leaving two spaces where there was one; unfolded up to the hard limit of 998
# characters, a subject keeps its spacing in every client.
_POLICY = SMTP_POLICY.clone(max_line_length=998)


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str
    sender: str
    recipients: tuple[str, ...]
    port: int = 587
    # "starttls": plain connection upgraded with STARTTLS (submission, port 587);
    # "tls": TLS from the first byte (port 465); "none": no encryption at all.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # to trust a server certificate from a private CA
    allow_plaintext_auth: bool = False
    timeout: timedelta = timedelta(seconds=15)
    timezone: str = "UTC"  # the times in the message are shown in this zone

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("the e-mail channel needs at least one recipient")
        plaintext = self.security == "none" and not self.allow_plaintext_auth
        if self.username is not None and plaintext:
            raise ValueError(
                "refusing to send the SMTP password unencrypted: use security "
                "'starttls' or 'tls', or set allow_plaintext_auth"
            )
        ZoneInfo(self.timezone)  # an unknown zone is a configuration error, found now


class EmailChannel:
    def __init__(self, name: str, settings: EmailSettings) -> None:
        self.name = name
        self.settings = settings
        self._context = ssl.create_default_context(cafile=settings.ca_file)

    def send(self, notification: Notification) -> None:
        s = self.settings
        message = render_message(notification, s)
        timeout_s = s.timeout.total_seconds()
        try:
            smtp = (
                smtplib.SMTP_SSL(s.host, s.port, timeout=timeout_s, context=self._context)
                if s.security == "tls"
                else smtplib.SMTP(s.host, s.port, timeout=timeout_s)
            )
            with smtp:
                if s.security == "starttls":
                    smtp.starttls(context=self._context)
                if s.username is not None:
                    smtp.login(s.username, s.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"SMTP {s.host}: every recipient refused: {_refusals(exc.recipients)}",
                retry=all(400 <= code < 500 for code in codes),
            ) from exc
        except smtplib.SMTPResponseException as exc:
            # 5xx (a wrong password, a refused sender) stays wrong; 4xx is "try later".
            reply = exc.smtp_error
            if isinstance(reply, bytes):
                reply = reply.decode(errors="replace")
            raise DeliveryError(
                f"SMTP {s.host}: {exc.smtp_code} {reply}", retry=exc.smtp_code < 500
            ) from exc
        except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as exc:
            # No STARTTLS on offer, or a certificate we do not trust: configuration.
            raise DeliveryError(f"SMTP {s.host}: {exc}", retry=False) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {s.host}:{s.port}: {exc!r}", retry=True) from exc
        if refused:
            # The others have their copy; sending again would duplicate it for them.
            raise DeliveryError(
                f"SMTP {s.host}: refused some recipients: {_refusals(refused)}", retry=False
            )

    def close(self) -> None:
        """Nothing is kept open: each send has its own short SMTP session."""


def render_message(notification: Notification, settings: EmailSettings) -> EmailMessage:
    """The whole message, headers and body; pure, for tests and previews."""
    zone = ZoneInfo(settings.timezone)
    domain = settings.sender.rpartition("@")[2] or "stadtpuls"
    message = EmailMessage(policy=_POLICY)
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.recipients)
    message["Date"] = format_datetime(notification.at)
    alert = notification.alert
    if alert is None:
        place = " ".join(p for p in (notification.kind, notification.site) if p)
        subject = f"[DIGEST] {place}: summary of {_local(notification.at, zone):%Y-%m-%d}"
        body = _digest_body(notification, zone)
        message["Message-ID"] = make_msgid(domain=domain)
    else:
        word = _event_word(notification)
        subject = f"[{word} {alert.severity}] {alert.summary}"
        body = _alert_body(notification.event, alert, zone)
        if notification.previous is not None:
            body += f"\nBefore: {notification.previous.severity} "
            body += f"({notification.previous.all_labels()['alertname']})\n"
        if notification.episodes:
            body = _episodes_body(notification, zone)
        # Past episodes are incidents of their own, not part of the current one's thread.
        thread = None if notification.event is Event.BACKLOG else _thread_id(alert, domain)
        if notification.event is Event.FIRING and thread is not None:
            message["Message-ID"] = thread
        else:
            message["Message-ID"] = make_msgid(domain=domain)
            if thread is not None:
                message["In-Reply-To"] = thread
                message["References"] = thread
        message["X-Stadtpuls-Alert"] = _one_line(alert.id)
    message["Subject"] = _one_line(subject)
    message["X-Stadtpuls-Event"] = str(notification.event)
    # Quoted-printable keeps the body readable in its raw form and needs no 8BITMIME.
    message.set_content(body, cte="quoted-printable")
    return message


def _event_word(notification: Notification) -> str:
    previous, alert = notification.previous, notification.alert
    if (
        notification.event is Event.ESCALATED
        and previous is not None
        and alert is not None
        and SEVERITY_RANK[alert.severity] < SEVERITY_RANK[previous.severity]
    ):
        return "DE-ESCALATED"
    return _EVENT_WORDS[notification.event]


def _episodes_body(notification: Notification, zone: ZoneInfo) -> str:
    alert = notification.alert
    assert alert is not None
    place = "/".join(p for p in (alert.key.site, alert.key.device, alert.key.channel) if p)
    lines = [f"While data was delayed, {place} fired and resolved again:", ""]
    for e in notification.episodes:
        value = "" if e.value is None else f", {_quantity(e.value, alert.unit)}"
        lines.append(
            f"- {_when(e.fired_at, zone)} to {_when(e.resolved_at, zone)}: "
            f"{e.severity} ({e.rule}){value}"
        )
    lines += ["", f"Times are reading times. Alert id: {alert.id}"]
    return "\n".join(lines) + "\n"


def _alert_body(event: Event, alert: Alert, zone: ZoneInfo) -> str:
    key = alert.key
    where = ", ".join(
        f"{name} {value}"
        for name, value in (
            (alert.kind, key.site),
            ("device", key.device),
            ("channel", key.channel),
        )
        if value
    )
    rows: list[tuple[str, str | None]] = [
        ("Event", _EVENT_WORDS[event].lower()),
        ("Severity", str(alert.severity)),
        ("Rule", key.rule),
        ("Where", where or "the Stadtpuls pipeline"),
        ("Value", _quantity(alert.value, alert.unit)),
        ("Threshold", _quantity(alert.threshold, alert.unit)),
        ("Since", _when(alert.since, zone)),
        ("Fired", _when(alert.fired_at, zone)),
        ("Resolved", _when(alert.resolved_at, zone)),
    ]
    if alert.acked_by is not None:
        acked_at = _when(alert.acked_at, zone)
        rows.append(
            ("Acknowledged", f"by {alert.acked_by}" + (f", {acked_at}" if acked_at else ""))
        )
    else:
        rows.append(("Acknowledged", "not yet" if event is not Event.RESOLVED else "no"))
    labels = alert.all_labels()
    rows.append(("Labels", ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))))
    if alert.annotations.get("members"):
        rows.append(("Rules firing", alert.annotations["members"]))
    rows.append(("Alert id", alert.id))
    width = max(len(name) for name, _ in rows) + 2
    lines = [alert.summary, ""]
    lines += [f"{name + ':':<{width}}{value}" for name, value in rows if value]
    return "\n".join(lines) + "\n"


def _digest_body(notification: Notification, zone: ZoneInfo) -> str:
    place = " ".join(p for p in (notification.kind, notification.site) if p) or "Stadtpuls"
    lines = [f"Summary for {place}, made {_when(notification.at, zone)}", ""]
    _render(notification.digest or {}, 0, lines)
    return "\n".join(lines) + "\n"


def _render(value: Any, depth: int, lines: list[str]) -> None:
    """A digest's nested dicts and lists as indented ``name: value`` lines."""
    pad = "  " * depth
    if isinstance(value, Mapping):
        for name, item in value.items():
            label = str(name).replace("_", " ")
            if isinstance(item, Mapping | list | tuple) and item:
                lines.append(f"{pad}{label}:")
                _render(item, depth + 1, lines)
            else:
                lines.append(f"{pad}{label}: {_scalar(item)}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            if isinstance(item, Mapping) and item:
                lines.append(f"{pad}-")
                _render(item, depth + 1, lines)
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping | list | tuple):
        return "none"  # empty
    return str(value)


def _quantity(value: float | None, unit: str) -> str | None:
    if value is None:
        return None
    return f"{value:g} {unit}".rstrip()


def _local(t: datetime, zone: ZoneInfo) -> datetime:
    return t.astimezone(zone) if t.tzinfo is not None else t


def _when(t: datetime | None, zone: ZoneInfo) -> str | None:
    if t is None:
        return None
    return f"{_local(t, zone):%Y-%m-%d %H:%M:%S %Z}".rstrip()


def _thread_id(alert: Alert, domain: str) -> str | None:
    if alert.fired_at is None:
        return None
    digest = hashlib.sha256(f"{alert.id}@{alert.fired_at.isoformat()}".encode()).hexdigest()
    return f"<alert-{digest[:32]}@{domain}>"


def _one_line(text: str) -> str:
    # A line break in a header value would end the header (and start a forged one).
    return " ".join(text.split())


def _refusals(refused: Mapping[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{address} ({code} {reply.decode(errors='replace')})"
        for address, (code, reply) in refused.items()
    )


@register_channel
class EmailChannelModel(ChannelSettings):
    """``type: email`` under ``alerts.channels``."""

    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    ca_file: Path | None = None
    timeout: Duration = timedelta(seconds=15)
    timezone: str = "Europe/Berlin"

    secret_keys = ("password",)

    def build(self, context: ChannelContext) -> EmailChannel:
        return EmailChannel(self.name, plain_settings(EmailSettings, self))
