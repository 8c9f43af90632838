"""The MQTT subscriber with paho in a process of its own.

paho's work for each PUBLISH (reading the packet, building the message and, on MQTT 5, its
properties, sending the PUBACK) is most of what a single-reading message costs. On a
thread of the service it shares one interpreter lock with decoding, checking and
committing, so everything the service does per message comes straight off paho's rate.
Here paho runs in a child process (``python -m ingest.mqtt_process``) that only receives
and acknowledges: messages reach the service in batches over a socket pair, and the
tokens of committed messages go back to be acknowledged.

The delivery guarantee is the thread subscriber's (``ingest.subscriber``), whose code the
child runs: a message is acknowledged only after the service committed it, and only on
the connection it came on. The child never acknowledges on its own. When it dies, the
service starts another; the broker redelivers what the dead one had not acknowledged, and
the tokens of the dead one's messages, which carry its incarnation, are never sent on.
When the service dies, the child reads the end of the pipe and leaves without
acknowledging anything more. The child ignores SIGINT and SIGTERM: a Ctrl-C or a
``systemctl stop`` reaches the whole process group, and the service stops it in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any, cast

import paho.mqtt.client as mqtt

from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.sources import take_counted
from ingest.subscriber import MqttSettings, MqttSubscriber, Token, topic_of

log = logging.getLogger(__name__)

# Every 2 ms what arrived goes to the service, at most 5000 messages at once: a pipe write
# per message would cost more than paho's own work, and a longer pause would hold the
# service's batches back. Waking on a timer, not per message, keeps paho's thread free.
_FORWARD_PAUSE_S = 0.002
_FORWARD_MAX = 5000
# The connection state is looked at on every change of it and at least every 0.2 s.
_STATE_EVERY = 100
# A dead child is replaced after this pause, so a child that cannot start does not spin.
_RESTART_PAUSE_S = 1.0
# How long a stopping child may take to disconnect before it is killed.
_STOP_TIMEOUT_S = 10.0

# Parent's token of a message: (incarnation of the child, generation, mid, qos).
_RemoteToken = tuple[int, int, int, int]


class MqttProcessSubscriber:
    """``MqttSubscriber``'s interface, with the client in a child process."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: Sequence[str],
        metrics: IngestMetrics,
        unsubscriptions: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.subscriptions = list(subscriptions)
        self.unsubscriptions = list(unsubscriptions)
        self.metrics = metrics
        self._queue: queue.SimpleQueue[InboundMessage] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._send_lock = threading.Lock()
        # Held while a child is started, so that a stop cannot slip in between.
        self._life_lock = threading.Lock()
        self._incarnation = 0
        self._child_backlog = 0
        self._resubscribes = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._supervisor: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="mqtt-client-process", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        with self._life_lock:
            self._stopping.set()
            self._send(("stop",))
            proc = self._proc
        if proc is not None:
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error(  # noqa: TRY400 - the timeout is the news, not its traceback
                    "the MQTT client process did not stop in %.0f s; killed", _STOP_TIMEOUT_S
                )
                proc.kill()
                proc.wait()
        if self._supervisor is not None:
            self._supervisor.join(_STOP_TIMEOUT_S)
        self._set_connected(False)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        # A process started anew, not forked: forking a process that runs threads can copy
        # a lock some other thread holds, and the child would hang on it.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ingest.mqtt_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()  # the child holds it now; ours must see the end of its copy alone
        conn = Connection(ours.detach())
        conn.send(
            (
                self.settings,
                self.subscriptions,
                self.unsubscriptions,
                logging.getLogger().getEffectiveLevel(),
            )
        )
        # Together, so that no acknowledgement meant for the last child reaches this one,
        # whose packet ids and connection count start again.
        with self._send_lock:
            self._incarnation += 1
            self._conn = conn

    def _supervise(self) -> None:
        while True:
            conn, incarnation, proc = self._conn, self._incarnation, self._proc
            assert conn is not None
            assert proc is not None
            self._read(conn, incarnation)
            conn.close()
            if self._stopping.is_set():
                return
            code = proc.wait()
            self._set_connected(False)
            self.metrics.client_restarts.inc()
            log.error(
                "the MQTT client process %d ended (exit status %s); starting another, and "
                "the broker redelivers what it had not acknowledged",
                proc.pid,
                code,
            )
            if self._stopping.wait(_RESTART_PAUSE_S):
                return
            with self._life_lock:
                if self._stopping.is_set():
                    return
                self._spawn()

    def _read(self, conn: Connection, incarnation: int) -> None:
        put = self._queue.put
        while True:
            try:
                item = conn.recv()
            except (EOFError, OSError):
                return
            kind = item[0]
            if kind == "msgs":
                _, batch, backlog = item
                for topic, payload, ns, (gen, mid, qos), dup in batch:
                    put(InboundMessage(topic, payload, ns, (incarnation, gen, mid, qos), dup))
                self._child_backlog = backlog
            elif kind == "state":
                _, connected, resubscribes = item
                self._set_connected(connected)
                if resubscribes > self._resubscribes:
                    self.metrics.resubscribes.inc(resubscribes - self._resubscribes)
                    self._resubscribes = resubscribes
            elif kind == "log":
                _, name, level, text = item
                logging.getLogger(name).log(level, "%s", text)

    def _set_connected(self, connected: bool) -> None:
        if connected:
            self._connected.set()
        else:
            self._connected.clear()
        self.metrics.broker_connected.set(1 if connected else 0)

    def _send(self, item: tuple[Any, ...]) -> None:
        conn = self._conn
        if conn is None:
            return
        # The child may be gone: the broker redelivers what it had not acknowledged, and
        # the supervisor starts another.
        with self._send_lock, contextlib.suppress(OSError):
            conn.send(item)

    # MessageSource

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        return take_counted(
            self._queue, self.metrics, max_messages, max_wait, max_bytes, self._child_backlog
        )

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        with self._send_lock:
            current, conn = self._incarnation, self._conn
            tokens: list[Token] = []
            for m in messages:
                incarnation, gen, mid, qos = cast(_RemoteToken, m.token)
                if incarnation == current:
                    tokens.append((gen, mid, qos))
            if tokens and conn is not None:
                with contextlib.suppress(OSError):  # gone: the broker redelivers them
                    conn.send(("ack", tokens))
        self.metrics.pending_messages.set(self._queue.qsize() + self._child_backlog)


class _PipeLog(logging.Handler):
    """Hands the child's log records to the service, which logs them as its own."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", record.name, record.levelno, self.format(record)))
        except Exception:  # a log line must never take the client down
            self.handleError(record)


class _Receiver(MqttSubscriber):
    """The child's subscriber: each message becomes a tuple on a deque that the forwarder
    empties, the least paho's thread can do with it."""

    def __init__(
        self,
        settings: MqttSettings,
        subscriptions: Sequence[str],
        metrics: IngestMetrics,
        unsubscriptions: Sequence[str],
    ) -> None:
        super().__init__(settings, subscriptions, metrics, unsubscriptions)
        self.arrived: deque[tuple[str, bytes, int, Token, bool]] = deque()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.arrived.append(
            (
                topic_of(msg),
                bytes(msg.payload),
                time.time_ns(),
                (self._generation, msg.mid, msg.qos),
                msg.dup,
            )
        )


def _child(conn: Connection) -> None:
    settings, subscriptions, unsubscriptions, level = conn.recv()
    assert isinstance(settings, MqttSettings)
    send_lock = threading.Lock()

    def send(item: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(item)

    root = logging.getLogger()
    root.handlers = [_PipeLog(send)]
    root.setLevel(level)
    # The child's own counters are read here and forwarded; the service owns the metrics.
    metrics = IngestMetrics()
    sub = _Receiver(settings, subscriptions, metrics, unsubscriptions)
    arrived = sub.arrived
    done = threading.Event()

    def forward() -> None:
        state: tuple[bool, int] | None = None
        rounds = 0
        try:
            while not done.wait(_FORWARD_PAUSE_S):
                rounds += 1
                if rounds % _STATE_EVERY == 0 or sub.connected != (state and state[0]):
                    resubscribes = metrics.registry.get_sample_value("stadtpuls_resubscribes_total")
                    now = (sub.connected, int(resubscribes or 0))
                    if now != state:
                        send(("state", *now))
                        state = now
                n = min(len(arrived), _FORWARD_MAX)
                if n:
                    take = arrived.popleft
                    send(("msgs", [take() for _ in range(n)], len(arrived)))
        except OSError:
            pass  # the service is gone; the main thread sees it too

    sub.start()
    forwarder = threading.Thread(target=forward, name="forward", daemon=True)
    forwarder.start()
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            break  # the service ended: acknowledge nothing more
        if item[0] == "ack":
            sub.ack_tokens(item[1])
        elif item[0] == "stop":
            break
    done.set()
    sub.stop()
    forwarder.join(1.0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    try:
        _child(conn)
    except (EOFError, OSError, pickle.UnpicklingError):
        pass  # the service went away before handing over the settings
    finally:
        conn.close()
    os._exit(0)  # no interpreter teardown: paho's thread may be mid-reconnect


if __name__ == "__main__":
    main()
