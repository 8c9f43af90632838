"""The channels' pure parts (topics, message and payload rendering, signatures) and the
dispatcher's queueing and retry rules, with an in-memory channel passed in."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from alerts.channels import CHANNEL_KINDS, channel_file_keys
from alerts.channels._http import HttpAnswer, status_error
from alerts.channels.alertmanager import AlertmanagerSettings, alertmanager_alert
from alerts.channels.base import DeliveryError
from alerts.channels.email import EmailSettings, render_message
from alerts.channels.mqtt import alert_topic
from alerts.channels.webhook import WebhookSettings, sign, verify_signature
from alerts.dispatch import DeliveryRetry, Dispatcher, DispatchSettings
from alerts.model import Alert, AlertKey, Event, Notification, Severity, State
from ingest.retry import parse_retry_after
from tests.support.waiting import wait_until

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NO_WAIT = DeliveryRetry(attempts=3, base_delay=timedelta(0), max_delay=timedelta(0))


def alert(rule: str = "strain_limit", **changes: object) -> Alert:
    a = Alert(
        key=AlertKey(rule, "bridge-a", "gw1", "g2"),
        severity=Severity.CRITICAL,
        kind="bridge",
        state=State.FIRING,
        summary="strain above limit: bridge-a/gw1/g2 = 912 µε (limit 900)",
        value=912.0,
        threshold=900.0,
        unit="µε",
        since=AT - timedelta(minutes=2),
        fired_at=AT - timedelta(minutes=1),
        labels={"measurement": "strain", "bad-name": "x", "empty": ""},
    )
    for name, value in changes.items():
        setattr(a, name, value)
    return a


def note(event: Event, a: Alert | None = None) -> Notification:
    return Notification(event, AT, "stadtpuls", alert=a if a is not None else alert())


# -- rendering ------------------------------------------------------------------------------


def test_topics() -> None:
    assert alert_topic("p", note(Event.FIRING)) == "p/alerts/bridge/bridge-a/gw1"
    pipeline = Alert(AlertKey("journal_full"), Severity.WARNING, "pipeline", State.FIRING, "x")
    assert alert_topic("p", note(Event.FIRING, pipeline)) == "p/alerts/pipeline/journal_full"
    digest = Notification(Event.DIGEST, AT, "p", digest={}, site="s1", kind="school")
    assert alert_topic("p", digest) == "p/alerts/digest/school/s1"
    wild = Alert(AlertKey("r", "a+b", "d"), Severity.INFO, "bridge", State.FIRING, "x")
    with pytest.raises(DeliveryError):
        alert_topic("p", note(Event.FIRING, wild))


def test_alertmanager_payload() -> None:
    settings = AlertmanagerSettings("http://am:9093")
    firing = alertmanager_alert(note(Event.FIRING), settings)
    assert firing["labels"]["bad_name"] == "x"
    assert "empty" not in firing["labels"]
    assert firing["startsAt"] == "2024-05-01T11:59:00+00:00"
    assert "endsAt" not in firing
    assert "generatorURL" not in firing
    resolved = alert(state=State.RESOLVED, resolved_at=AT)
    assert alertmanager_alert(note(Event.RESOLVED, resolved), settings)["endsAt"] == (
        "2024-05-01T12:00:00+00:00"
    )
    refreshed = AlertmanagerSettings("http://am:9093", firing_ends_after=timedelta(hours=1))
    assert alertmanager_alert(note(Event.REPEAT), refreshed)["endsAt"] == (
        "2024-05-01T13:00:00+00:00"
    )


def test_email_threads_an_incident() -> None:
    settings = EmailSettings("smtp", "alerts@stadt.example", ("ops@stadt.example",))
    firing = render_message(note(Event.FIRING), settings)
    resolved = render_message(note(Event.RESOLVED, alert(resolved_at=AT)), settings)
    assert resolved["Subject"].startswith("[RESOLVED critical] strain above limit")
    assert resolved["In-Reply-To"] == firing["Message-ID"]
    assert firing["Message-ID"] != resolved["Message-ID"]


def test_email_header_injection_is_flattened() -> None:
    settings = EmailSettings("smtp", "alerts@stadt.example", ("ops@stadt.example",))
    message = render_message(note(Event.FIRING, alert(summary="a\r\nBcc: x@evil")), settings)
    assert message["Bcc"] is None
    assert message["Subject"] == "[FIRING critical] a Bcc: x@evil"


def test_settings_refuse_bad_configuration() -> None:
    with pytest.raises(ValueError, match="unencrypted"):
        EmailSettings("smtp", "a@b", ("c@d",), security="none", username="u", password="p")
    with pytest.raises(ValueError, match="http"):
        WebhookSettings("file:///etc/passwd", "secret")
    with pytest.raises(ValueError, match="secret"):
        WebhookSettings("https://hook.example", "")


def test_signature_checks_age_both_ways() -> None:
    body = b'{"event":"firing"}'
    header = sign("s", "1000", body)
    assert verify_signature("s", "1000", body, header, now=1100)
    assert not verify_signature("s", "1000", body, header, now=1000 + 301)
    assert not verify_signature("s", "1000", body, header, now=1000 - 301)
    assert not verify_signature("s", "x1000", body, header, now=1000)
    assert not verify_signature("s", None, body, header)


# -- the dispatcher -------------------------------------------------------------------------


@dataclass
class FakeChannel:
    """Fails with the scripted errors first, then succeeds; may be held at a gate."""

    name: str
    failures: list[DeliveryError | Exception] = field(default_factory=list)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)
    sent: list[Notification] = field(default_factory=list)
    closed: bool = False

    def send(self, notification: Notification) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(notification)

    def close(self) -> None:
        self.closed = True


@dataclass
class Log:
    rows: list[tuple[str, str, int, bool, str | None]] = field(default_factory=list)

    def __call__(
        self, name: str, n: Notification, attempt: int, ok: bool, error: str | None
    ) -> None:
        self.rows.append((name, str(n.event), attempt, ok, error))


def test_retryable_failures_are_retried_and_each_attempt_recorded() -> None:
    flaky = FakeChannel("flaky", failures=[DeliveryError("down"), DeliveryError("down")])
    log = Log()
    dispatcher = Dispatcher([flaky], log, DispatchSettings(retry=NO_WAIT))
    dispatcher.submit(note(Event.FIRING))
    assert dispatcher.wait_idle(5)
    dispatcher.close()
    assert log.rows == [
        ("flaky", "firing", 1, False, "down"),
        ("flaky", "firing", 2, False, "down"),
        ("flaky", "firing", 3, True, None),
    ]
    assert flaky.closed


def test_permanent_failures_and_bugs_are_not_retried() -> None:
    refused = FakeChannel("refused", failures=[DeliveryError("400", retry=False)])
    buggy = FakeChannel("buggy", failures=[KeyError("oops")])
    log = Log()
    dispatcher = Dispatcher([refused, buggy], log, DispatchSettings(retry=NO_WAIT))
    dispatcher.submit(note(Event.FIRING))
    dispatcher.submit(note(Event.RESOLVED))
    assert dispatcher.wait_idle(5)
    dispatcher.close()
    assert sorted(log.rows) == [
        ("buggy", "firing", 1, False, "KeyError('oops')"),
        ("buggy", "resolved", 1, True, None),
        ("refused", "firing", 1, False, "400"),
        ("refused", "resolved", 1, True, None),
    ]


def test_a_full_queue_drops_the_oldest_repeat_never_firing_or_resolved() -> None:
    gate = threading.Event()
    held = FakeChannel("held", gate=gate)
    log = Log()
    dispatcher = Dispatcher([held], log, DispatchSettings(retry=NO_WAIT, queue_size=2))
    dispatcher.submit(note(Event.FIRING, alert("in_flight")))
    # Once the worker holds it, the queue is what is submitted below.
    assert held.entered.wait(5)
    dispatcher.submit(note(Event.REPEAT, alert("old_repeat")))
    dispatcher.submit(note(Event.FIRING, alert("a")))
    dispatcher.submit(note(Event.RESOLVED, alert("b")))  # full: the repeat gives way
    dispatcher.submit(note(Event.REPEAT, alert("new_repeat")))  # full, nothing to drop: itself
    dispatcher.submit(note(Event.FIRING, alert("c")))  # kept past the bound
    gate.set()
    assert dispatcher.wait_idle(5)
    dispatcher.close()
    assert [n.alert.key.rule for n in held.sent if n.alert] == ["in_flight", "a", "b", "c"]
    drops = [(row[1], row[2], row[4]) for row in log.rows if not row[3]]
    assert drops == [("repeat", 0, "dropped: queue full"), ("repeat", 0, "dropped: queue full")]


def test_unknown_channel_and_submit_after_close() -> None:
    log = Log()
    dispatcher = Dispatcher([FakeChannel("a")], log)
    with pytest.raises(ValueError, match="no alert channel named b"):
        dispatcher.submit(note(Event.FIRING), channels=["b"])
    dispatcher.close()
    dispatcher.submit(note(Event.FIRING))
    assert log.rows == [("a", "firing", 0, False, "dropped: dispatcher closed")]


def test_close_gives_up_a_retry_wait() -> None:
    down = FakeChannel("down", failures=[DeliveryError("down")] * 5)
    log = Log()
    slow_retry = DeliveryRetry(5, timedelta(minutes=10), timedelta(minutes=10))
    settings = DispatchSettings(retry=slow_retry, close_timeout=timedelta(milliseconds=50))
    dispatcher = Dispatcher([down], log, settings)
    dispatcher.submit(note(Event.FIRING))
    wait_until(lambda: len(log.rows) == 1, 5, "the first attempt")
    dispatcher.close()
    assert [row[2:] for row in log.rows] == [
        (1, False, "down"),
        (0, False, "dropped: dispatcher closed while waiting to retry"),
    ]


def test_the_dispatcher_waits_as_long_as_the_other_side_asked() -> None:
    retry = DeliveryRetry(attempts=2, base_delay=timedelta(0), max_delay=timedelta(seconds=2))
    assert retry.delay(1) == 0
    assert retry.delay(1, retry_after=0.5) == 0.5
    assert retry.delay(1, retry_after=3600) == 2  # never past max_delay
    busy = FakeChannel("busy", failures=[DeliveryError("429", retry_after=0.3)])
    log = Log()
    dispatcher = Dispatcher([busy], log, DispatchSettings(retry=retry))
    started = time.monotonic()
    dispatcher.submit(note(Event.FIRING))
    assert dispatcher.wait_idle(5)
    waited = time.monotonic() - started
    dispatcher.close()
    assert [row[2:4] for row in log.rows] == [(1, False), (2, True)]
    assert waited >= 0.3


def test_http_errors_carry_retry_after_only_when_retryable() -> None:
    busy = status_error("http://x", HttpAnswer(429, 7.0, "slow down"))
    assert busy is not None
    assert (busy.retry, busy.retry_after) == (True, 7.0)
    refused = status_error("http://x", HttpAnswer(403, 7.0, ""))
    assert refused is not None
    assert (refused.retry, refused.retry_after) == (False, None)
    assert status_error("http://x", HttpAnswer(202, None, "")) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 77.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 77.0),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 77.0),  # obsolete asctime
        ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0),  # already past: no wait
        (None, None),
        ("", None),
        ("-5", None),
        ("soon", None),
    ],
)
def test_retry_after_in_seconds_or_as_http_date(value: str | None, seconds: float | None) -> None:
    before = 784111777.0 - 77  # 77 s before 1994-11-06 08:49:37 UTC
    assert parse_retry_after(value, now=before) == seconds


def test_every_channel_kind_is_registered_with_its_settings() -> None:
    assert set(CHANNEL_KINDS) == {"mqtt", "webhook", "email", "alertmanager", "grafana"}
    for kind, model in CHANNEL_KINDS.items():
        assert get_args(model.model_fields["type"].annotation) == (kind,)
    assert "secret_file" in CHANNEL_KINDS["webhook"].file_keys()
    assert set(channel_file_keys()) >= {"password_file", "tls_ca", "token_file", "ca_file"}
