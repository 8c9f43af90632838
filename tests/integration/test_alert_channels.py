"""The alert channels against real servers on loopback: a Prometheus Alertmanager
process, an aiosmtpd SMTP server with STARTTLS and AUTH, a Mosquitto process, and a
local HTTP server that checks the webhook's signature. The dispatcher is shown keeping a
hanging channel from delaying another."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from paho.mqtt.enums import CallbackAPIVersion

from alerts.channels.alertmanager import AlertmanagerChannel, AlertmanagerSettings
from alerts.channels.base import DeliveryError
from alerts.channels.email import EmailChannel, EmailSettings
from alerts.channels.mqtt import MqttChannel, MqttChannelSettings
from alerts.channels.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    WebhookSettings,
    verify_signature,
)
from alerts.dispatch import DeliveryRetry, Dispatcher, DispatchSettings
from alerts.model import Alert, AlertKey, Event, Notification, Severity, State
from stadtpuls.broker import LOOPBACK, MosquittoBroker, free_port
from tests.support.alertmanager import Alertmanager
from tests.support.processes import BrokerFactory, Processes
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_RETRY = DeliveryRetry(
    attempts=4, base_delay=timedelta(milliseconds=10), max_delay=timedelta(milliseconds=40)
)


def strain_alert(rule: str = "strain_limit", state: State = State.FIRING) -> Alert:
    fired = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    return Alert(
        key=AlertKey(rule, "bridge-a", "gw1", "g2"),
        severity=Severity.CRITICAL,
        kind="bridge",
        state=state,
        summary="strain above limit: bridge-a/gw1/g2 = 912 µε (limit 900)",
        value=912.0,
        threshold=900.0,
        unit="µε",
        since=fired - timedelta(minutes=1),
        fired_at=fired,
        labels={"measurement": "strain"},
    )


def notify(event: Event, alert: Alert) -> Notification:
    return Notification(event, datetime.now(UTC), "stadtpuls", alert=alert)


def resolve(alert: Alert) -> Alert:
    return replace(
        alert, state=State.RESOLVED, resolved_at=datetime.now(UTC) - timedelta(seconds=1)
    )


# -- Alertmanager ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager(module_processes: Processes) -> Alertmanager:
    return module_processes.start(Alertmanager(module_processes.workdir("alertmanager")))


def test_alertmanager_lists_the_firing_alert_and_drops_it_when_resolved(
    alertmanager: Alertmanager,
) -> None:
    settings = AlertmanagerSettings(alertmanager.url, external_url="https://stadtpuls.example")
    channel = AlertmanagerChannel("am", settings)
    alert = strain_alert("am_roundtrip")

    channel.send(notify(Event.FIRING, alert))
    listed = alertmanager.alerts(active=True, alertname="am_roundtrip")
    assert len(listed) == 1
    got = listed[0]
    assert got["labels"] == {
        "alertname": "am_roundtrip",
        "severity": "critical",
        "kind": "bridge",
        "site": "bridge-a",
        "device": "gw1",
        "channel": "g2",
        "measurement": "strain",
    }
    assert got["annotations"]["summary"] == alert.summary
    assert got["annotations"]["value"] == "912"
    assert got["annotations"]["threshold"] == "900"
    assert got["annotations"]["unit"] == "µε"
    assert got["status"]["state"] == "active"
    assert got["generatorURL"] == "https://stadtpuls.example"
    assert alert.fired_at is not None
    assert datetime.fromisoformat(got["startsAt"].replace("Z", "+00:00")) == alert.fired_at

    channel.send(notify(Event.RESOLVED, resolve(alert)))
    # Alertmanager lists no alert whose endsAt has passed: resolved means gone.
    assert alertmanager.alerts(alertname="am_roundtrip") == []


def test_alertmanager_refusal_is_not_retried(alertmanager: Alertmanager) -> None:
    channel = AlertmanagerChannel("am", AlertmanagerSettings(alertmanager.url))
    alert = strain_alert("am_refused")
    assert alert.fired_at is not None
    # Ending before it started: Alertmanager answers 400.
    backwards = replace(alert, resolved_at=alert.fired_at - timedelta(hours=1))
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.RESOLVED, backwards))
    assert caught.value.retry is False
    assert "400" in str(caught.value)


def test_alertmanager_unreachable_is_retryable() -> None:
    channel = AlertmanagerChannel(
        "am", AlertmanagerSettings(f"http://{LOOPBACK}:{free_port()}", timeout=timedelta(seconds=2))
    )
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is True


# -- SMTP -----------------------------------------------------------------------------------

SMTP_USER, SMTP_PASSWORD = "stadtpuls", "correct horse"


@dataclass
class Mailbox:
    messages: list[tuple[Envelope, bool]] = field(default_factory=list)  # (envelope, was TLS)

    # aiosmtpd finds its hooks by these names.
    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        self.messages.append((envelope, session.ssl is not None))
        return "250 OK"


def check_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    # handled=False: aiosmtpd then sends the 535 itself (by default it would stay silent).
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class SmtpServer:
    port: int
    cert: Path
    mailbox: Mailbox


@pytest.fixture(scope="module")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    workdir = tmp_path_factory.mktemp("smtp")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", f"subjectAltName=IP:{LOOPBACK},DNS:localhost",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname=LOOPBACK,
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=check_login,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield SmtpServer(port, cert, mailbox)
    finally:
        controller.stop()


def mail_settings(server: SmtpServer, password: str = SMTP_PASSWORD) -> EmailSettings:
    return EmailSettings(
        host=LOOPBACK,
        port=server.port,
        sender="alerts@stadtpuls.example",
        recipients=("ops@stadt.example", "bridges@stadt.example"),
        username=SMTP_USER,
        password=password,
        ca_file=str(server.cert),
        timeout=timedelta(seconds=5),
        timezone="Europe/Berlin",
    )


def test_email_arrives_over_starttls_with_login(smtp_server: SmtpServer) -> None:
    channel = EmailChannel("mail", mail_settings(smtp_server))
    before = len(smtp_server.mailbox.messages)
    alert = replace(strain_alert(), acked_by="maria")
    channel.send(notify(Event.FIRING, alert))

    assert len(smtp_server.mailbox.messages) == before + 1
    envelope, over_tls = smtp_server.mailbox.messages[-1]
    assert over_tls
    assert envelope.mail_from == "alerts@stadtpuls.example"
    assert envelope.rcpt_tos == ["ops@stadt.example", "bridges@stadt.example"]
    assert isinstance(envelope.original_content, bytes)
    message = message_from_bytes(envelope.original_content, policy=default_policy)
    assert message["Subject"] == (
        "[FIRING critical] strain above limit: bridge-a/gw1/g2 = 912 µε (limit 900)"
    )
    body = _text(message)
    for expected in (
        "Where:        bridge bridge-a, device gw1, channel g2",
        "Value:        912 µε",
        "Threshold:    900 µε",
        "Acknowledged: by maria",
        "measurement=strain",
    ):
        assert expected in body
    assert "CET" in body or "CEST" in body  # shown in the configured zone


def test_email_digest_is_readable(smtp_server: SmtpServer) -> None:
    channel = EmailChannel("mail", mail_settings(smtp_server))
    digest = {"alerts_fired": 3, "devices": {"gw1": {"max_strain": 912.5}}, "silent": []}
    channel.send(
        Notification(
            Event.DIGEST, datetime.now(UTC), "stadtpuls", digest=digest, site="bridge-a",
            kind="bridge",
        )
    )  # fmt: skip
    message = message_from_bytes(smtp_server.mailbox.messages[-1][0].original_content or b"")
    assert str(message["Subject"]).startswith("[DIGEST] bridge bridge-a: summary of ")
    body = _text(message)
    assert "alerts fired: 3" in body
    assert "devices:\n  gw1:\n    max strain: 912.5" in body


def test_email_wrong_password_is_not_retried(smtp_server: SmtpServer) -> None:
    channel = EmailChannel("mail", mail_settings(smtp_server, password="wrong"))
    before = len(smtp_server.mailbox.messages)
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is False
    assert "535" in str(caught.value)
    assert len(smtp_server.mailbox.messages) == before


def test_email_untrusted_certificate_is_refused(smtp_server: SmtpServer) -> None:
    channel = EmailChannel("mail", replace(mail_settings(smtp_server), ca_file=None))
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is False


def _text(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(message.get_content_charset() or "utf-8").replace("\r\n", "\n")


# -- MQTT -----------------------------------------------------------------------------------


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """Conftest's broker without persistence: after a restart it knows no earlier session."""
    return broker_factory(persistence=False)


class Listener:
    """A paho subscriber on ``{prefix}/alerts/#``."""

    def __init__(self, broker: MosquittoBroker, prefix: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_connect = lambda c, *_args: c.subscribe(f"{prefix}/alerts/#", qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "the subscription was not granted"

    def next(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_channel(port: int, prefix: str, timeout_s: float = 5) -> MqttChannel:
    return MqttChannel(
        "mqtt",
        MqttChannelSettings(
            port=port,
            client_id=f"alerts-{prefix}",
            topic_prefix=prefix,
            timeout=timedelta(seconds=timeout_s),
        ),
    )


def test_mqtt_publishes_json_on_the_alert_topics(broker: MosquittoBroker) -> None:
    listener = Listener(broker, "city1")
    channel = mqtt_channel(broker.port, "city1")
    try:
        firing = notify(Event.FIRING, strain_alert())
        channel.send(firing)
        msg = listener.next()
        assert msg.topic == "city1/alerts/bridge/bridge-a/gw1"
        assert msg.qos == 1
        assert not msg.retain
        assert json.loads(msg.payload) == firing.to_json()

        pipeline = Alert(AlertKey("broker_down"), Severity.WARNING, "pipeline", State.FIRING, "x")
        channel.send(notify(Event.FIRING, pipeline))
        assert listener.next().topic == "city1/alerts/pipeline/broker_down"

        digest = Notification(
            Event.DIGEST, datetime.now(UTC), "city1", digest={"n": 1}, site="s1", kind="school"
        )
        channel.send(digest)
        msg = listener.next()
        assert msg.topic == "city1/alerts/digest/school/s1"
        assert json.loads(msg.payload)["digest"] == {"n": 1}
    finally:
        channel.close()
        listener.close()


def test_mqtt_without_a_broker_fails_within_its_timeout() -> None:
    channel = mqtt_channel(free_port(), "nobroker", timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as caught:
            channel.send(notify(Event.FIRING, strain_alert()))
        assert caught.value.retry is True
        assert time.monotonic() - started < 2
    finally:
        channel.close()


def test_mqtt_reconnects_after_the_broker_comes_back(broker: MosquittoBroker) -> None:
    channel = mqtt_channel(broker.port, "city2", timeout_s=0.5)
    try:
        wait_until(lambda: channel.connected, 5, "the channel to connect")
        broker.stop()
        wait_until(lambda: not channel.connected, 5, "the channel to notice the broker left")
        with pytest.raises(DeliveryError) as caught:
            channel.send(notify(Event.FIRING, strain_alert()))
        assert caught.value.retry is True

        broker.start()
        listener = Listener(broker, "city2")
        try:
            wait_until(lambda: channel.connected, 10, "the channel to reconnect")
            channel.send(notify(Event.RESOLVED, resolve(strain_alert())))
            assert json.loads(listener.next().payload)["event"] == "resolved"
        finally:
            listener.close()
    finally:
        channel.close()


# -- Webhook --------------------------------------------------------------------------------

SECRET = "a-shared-webhook-secret"


@dataclass
class Received:
    body: bytes
    timestamp: str | None
    signature: str | None
    verified: bool


class Receiver:
    """A local HTTP server that verifies each request's signature and answers with the
    next status of its script (200 once the script runs out), and with ``retry_after``
    as its Retry-After header when set."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.retry_after: str | None = None
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers[TIMESTAMP_HEADER]
                signature = self.headers[SIGNATURE_HEADER]
                verified = verify_signature(SECRET, timestamp, body, signature)
                receiver.requests.append(Received(body, timestamp, signature, verified))
                status = receiver.script.pop(0) if receiver.script else 200
                if not verified:
                    status = 401
                self.send_response(status)
                if receiver.retry_after is not None:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output quiet

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def webhook(url: str, *, timeout_s: float = 5) -> WebhookChannel:
    return WebhookChannel(
        "hook", WebhookSettings(url, SECRET, timeout=timedelta(seconds=timeout_s))
    )


def deliver(channel: WebhookChannel, notification: Notification) -> list[tuple[int, bool]]:
    """Sends through a dispatcher with FAST_RETRY, which does the retrying; returns the
    (attempt, ok) of each attempt."""
    attempts: list[tuple[int, bool]] = []

    def record(name: str, n: Notification, attempt: int, ok: bool, error: str | None) -> None:
        attempts.append((attempt, ok))

    dispatcher = Dispatcher([channel], record, DispatchSettings(retry=FAST_RETRY))
    try:
        dispatcher.submit(notification)
        assert dispatcher.wait_idle(10)
    finally:
        dispatcher.close()
    return attempts


def test_webhook_retries_5xx_and_signs_every_request(receiver: Receiver) -> None:
    receiver.script = [503, 503]
    channel = webhook(receiver.url)
    firing = notify(Event.FIRING, strain_alert())
    attempts = deliver(channel, firing)

    assert attempts == [(1, False), (2, False), (3, True)]
    assert [r.verified for r in receiver.requests] == [True, True, True]
    assert json.loads(receiver.requests[-1].body) == firing.to_json()


def test_webhook_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.script = [400]
    channel = webhook(receiver.url)
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is False
    assert len(receiver.requests) == 1


def test_webhook_gives_up_after_its_attempts(receiver: Receiver) -> None:
    receiver.script = [503] * 10
    channel = webhook(receiver.url)
    with pytest.raises(DeliveryError) as caught:
        channel.send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is True  # so the dispatcher tries again, up to its attempts
    receiver.requests.clear()
    attempts = deliver(channel, notify(Event.FIRING, strain_alert()))
    assert attempts == [(n, False) for n in range(1, FAST_RETRY.attempts + 1)]
    assert len(receiver.requests) == FAST_RETRY.attempts


@pytest.mark.parametrize("in_seconds", [True, False])
def test_webhook_hands_retry_after_to_the_dispatcher(receiver: Receiver, in_seconds: bool) -> None:
    """In delta-seconds or as an HTTP-date (RFC 9110); the dispatcher waits at least that
    long before its next attempt (tests/unit/test_alert_channels.py)."""
    receiver.script = [429]
    later = datetime.now(UTC) + timedelta(seconds=30)
    receiver.retry_after = "30" if in_seconds else format_datetime(later, usegmt=True)
    with pytest.raises(DeliveryError) as caught:
        webhook(receiver.url).send(notify(Event.FIRING, strain_alert()))
    assert caught.value.retry is True
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


def test_webhook_signature_detects_tampering(receiver: Receiver) -> None:
    webhook(receiver.url).send(notify(Event.FIRING, strain_alert()))
    sent = receiver.requests[-1]
    assert sent.verified
    assert sent.signature is not None
    assert sent.signature.startswith("sha256=")
    tampered = sent.body.replace(b"912", b"812")
    assert not verify_signature(SECRET, sent.timestamp, tampered, sent.signature)
    assert not verify_signature("another secret", sent.timestamp, sent.body, sent.signature)
    # A replay long after the fact is refused even with a valid signature.
    assert sent.timestamp is not None
    later = int(sent.timestamp) + 3600
    assert not verify_signature(SECRET, sent.timestamp, sent.body, sent.signature, now=later)


# -- Dispatcher -----------------------------------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that takes connections but never answers: the kernel completes the
    handshake for the listen backlog, and nothing ever reads the request."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(16)
    yield f"http://{LOOPBACK}:{sock.getsockname()[1]}/hook"
    sock.close()


@dataclass
class Record:
    channel: str
    event: str
    attempt: int
    ok: bool
    error: str | None


def test_a_hanging_channel_does_not_delay_another(receiver: Receiver, black_hole: str) -> None:
    records: list[Record] = []
    lock = threading.Lock()

    def record(name: str, n: Notification, attempt: int, ok: bool, error: str | None) -> None:
        with lock:
            records.append(Record(name, str(n.event), attempt, ok, error))

    def of(name: str) -> list[Record]:
        with lock:
            return [r for r in records if r.channel == name]

    fast = webhook(receiver.url)
    slow = WebhookChannel("slow", WebhookSettings(black_hole, SECRET, timeout=timedelta(seconds=1)))
    dispatcher = Dispatcher(
        [fast, slow],
        record,
        DispatchSettings(retry=replace(FAST_RETRY, attempts=2)),
    )
    try:
        alert = strain_alert()
        dispatcher.submit(notify(Event.FIRING, alert))
        dispatcher.submit(notify(Event.REPEAT, alert), channels=["hook"])
        dispatcher.submit(notify(Event.RESOLVED, resolve(alert)), channels=["hook"])
        wait_until(lambda: len(of("hook")) == 3, 5, "the fast channel's three deliveries")
        # The slow channel's first request is still waiting for its answer.
        assert of("slow") == []
        assert [(r.event, r.attempt, r.ok) for r in of("hook")] == [
            ("firing", 1, True),
            ("repeat", 1, True),
            ("resolved", 1, True),
        ]
        assert dispatcher.wait_idle(10)
        slow_records = of("slow")
        assert [(r.attempt, r.ok) for r in slow_records] == [(1, False), (2, False)]
        assert all("timed out" in (r.error or "") for r in slow_records)
    finally:
        dispatcher.close()
