"""An embedded MQTT broker for the demo, the benchmark and the tests.

`MosquittoBroker` runs a private ``mosquitto`` process with its own config, log and
persistence in a work directory, on a free loopback port, so it never interferes with a
system Mosquitto on 1883. `AmqttBroker` is a pure-Python fallback for machines without
Mosquitto; it speaks MQTT 3.1.1 only, which `EmbeddedBroker.mqtt_version` tells callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from amqtt.plugins.base import BaseAuthPlugin

from stadtpuls.processes import ServerProcess, StartStop

__all__ = [
    "AmqttBroker",
    "EmbeddedBroker",
    "MosquittoBroker",
    "MqttVersion",
    "find_mosquitto",
    "free_port",
    "start_embedded_broker",
]

MqttVersion = Literal["5", "3.1.1"]

LOOPBACK = "127.0.0.1"
_START_DEADLINE_S = 10.0
_STOP_DEADLINE_S = 10.0
_POLL_S = 0.02
_RUNNING_LINE = re.compile(rb"mosquitto version \S+ running")


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto(binary: str = "mosquitto") -> str | None:
    """Debian installs Mosquitto to /usr/sbin, which an ordinary user's PATH often lacks."""
    found = shutil.which(binary)
    if found is None and "/" not in binary:
        found = shutil.which(binary, path="/usr/sbin:/usr/local/sbin")
    return found


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def mqtt_version(self) -> MqttVersion: ...

    def stop(self) -> None: ...


class MosquittoBroker(ServerProcess):
    """A private Mosquitto process; `stop()` is graceful so persistence is saved."""

    name = "mosquitto"
    install_hint = "install it with `apt-get install mosquitto`"
    host = LOOPBACK
    mqtt_version: MqttVersion = "5"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        extra_config: str = "",
        binary: str = "mosquitto",
    ) -> None:
        super().__init__(workdir)
        self._port = port if port is not None else free_port()
        self.persistence = persistence
        self.extra_config = extra_config
        self.binary = binary
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._log_offset = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def log_paths(self) -> list[Path]:
        # Mosquitto writes to stdout only before its log file is open (bad config, port taken).
        return [self.output_path, self.log_path]

    def config_text(self) -> str:
        lines = [
            f"listener {self._port} {LOOPBACK}",
            "allow_anonymous true",
            # Started as root, Mosquitto switches to the 'mosquitto' user, which cannot write
            # to a work directory owned by us; naming ourselves keeps it as the current user.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        if self.persistence:
            # The trailing slash matters: Mosquitto concatenates it with the file name.
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        lines += [
            # Mosquitto's defaults (20 in flight, 1000 queued per client) throttle a subscriber
            # that acknowledges only after a batch commit, and once the queue is full further
            # QoS 1 messages are dropped without any error; 0 lifts both limits.
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            f"log_dest file {self.log_path}",
            # One type per line: Mosquitto reads only the first word of a log_type line.
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        text = "\n".join(lines) + "\n"
        if self.extra_config:
            text += self.extra_config.rstrip("\n") + "\n"
        return text

    def executable(self) -> str | None:
        return find_mosquitto(self.binary)

    def prepare(self) -> None:
        self.config_path.write_text(self.config_text())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def command(self, executable: str) -> list[str]:
        return [executable, "-c", str(self.config_path)]

    def ready(self) -> bool:
        # An open port alone could be another process's; the log line proves it is ours
        # and is written only once the listeners are open and persistence is loaded.
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                logged = _RUNNING_LINE.search(log.read()) is not None
        except FileNotFoundError:
            return False
        return logged and _accepts_connections(LOOPBACK, self._port)


class _OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """Admits every client without marking it anonymous.

    amqtt's own AnonymousAuthPlugin flags sessions as anonymous, and amqtt neither keeps
    the subscriptions of anonymous sessions nor queues QoS 1 messages for them while they
    are offline, which is the whole point of clean_session=False.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        return True


class AmqttBroker(StartStop):
    """amqtt in a background thread with its own event loop; MQTT 3.1.1 only.

    Sessions and queued messages live in memory, so they do not survive `stop()`.
    """

    host = LOOPBACK
    mqtt_version: MqttVersion = "3.1.1"

    def __init__(self, *, port: int | None = None) -> None:
        self._port = port if port is not None else free_port()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._broker: Any = None  # amqtt.broker.Broker, for tests that need to look inside

    @property
    def port(self) -> int:
        return self._port

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self._port}"}},
            # Replaces amqtt's default plugin set, whose $SYS publisher and packet loggers
            # the demo does not need.
            "plugins": {f"{__name__}.{_OpenAuthPlugin.__name__}": {}},
        }

    async def _serve(self) -> None:
        # Imported here so that only the fallback pays for loading the whole broker.
        from amqtt.broker import Broker

        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        broker = Broker(self._config(), loop=self._loop)
        self._broker = broker
        await broker.start()
        self._started.set()
        try:
            await self._stop_requested.wait()
        finally:
            await broker.shutdown()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the thread that called start()
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> None:
        if self.is_running:
            raise RuntimeError(f"amqtt is already running on port {self._port}")
        self._error = None
        self._started.clear()
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_DEADLINE_S):
            raise RuntimeError(f"amqtt did not start within {_START_DEADLINE_S:.0f} s")
        if self._error is not None or not self.is_running:
            raise RuntimeError(f"amqtt failed to start on port {self._port}") from self._error

    def stop(self) -> None:
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None or loop is None or stop_requested is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed by itself
            loop.call_soon_threadsafe(stop_requested.set)
        thread.join(_STOP_DEADLINE_S)
        if thread.is_alive():
            raise RuntimeError(f"amqtt did not shut down within {_STOP_DEADLINE_S:.0f} s")


def start_embedded_broker(
    workdir: Path, kind: Literal["auto", "mosquitto", "python"] = "auto"
) -> MosquittoBroker | AmqttBroker:
    """A started broker: Mosquitto when it is installed (``auto``), else amqtt."""
    use_mosquitto = kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None)
    broker = MosquittoBroker(workdir) if use_mosquitto else AmqttBroker()
    broker.start()
    return broker
