"""The delivery guarantee on real parts: a real Mosquitto on a free loopback port, the
service as a real process, and a load generator in a third process. Every reading the
broker acknowledged to the publisher must end up stored exactly once, whatever is killed.
The broker and the service are the ``broker`` and ``service`` fixtures (``tests/conftest.py``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from stadtpuls.broker import MosquittoBroker
from tests.support.loadgen import reading
from tests.support.processes import ServiceFactory
from tests.support.service import ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@dataclass
class Load:
    proc: subprocess.Popen[bytes]
    out: Path
    base_ms: int
    count: int

    def finish(self, timeout: float = 180) -> list[int]:
        assert self.proc.wait(timeout) == 0
        result = json.loads(self.out.read_text())
        acked: list[int] = result["acked"]
        return acked


def start_load(tmp_path: Path, port: int, count: int, rate: float, name: str) -> Load:
    out = tmp_path / f"{name}.json"
    base_ms = time.time_ns() // 1_000_000 - 60_000  # a minute ago: inside the allowed window
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.support.loadgen", "--port", str(port),
            "--count", str(count), "--rate", str(rate), "--base-ms", str(base_ms),
            "--out", str(out),
        ]
    )  # fmt: skip
    return Load(proc, out, base_ms, count)


def stored_strain(db: Path) -> list[tuple[int, float]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT r.ts_ns, r.value FROM readings r JOIN series s ON s.id = r.series_id "
            "WHERE s.site = 'b1' AND s.device = 'sg1' AND s.channel = 'g1' "
            "AND s.measurement = 'strain' ORDER BY r.ts_ns"
        ).fetchall()
    finally:
        conn.close()


def count_strain(db: Path) -> int:
    try:
        return len(stored_strain(db))
    except sqlite3.Error:
        return 0


def assert_exactly_once(db: Path, load: Load, acked: list[int]) -> None:
    rows = stored_strain(db)
    stored = dict(rows)
    assert len(stored) == len(rows)  # one row per reading key
    expected = {reading(load.base_ms, seq).ts_ns: reading(load.base_ms, seq).value for seq in acked}
    missing = sorted(set(expected) - set(stored))
    assert not missing, f"{len(missing)} acknowledged readings lost, first {missing[:5]}"
    sent = {reading(load.base_ms, seq).ts_ns for seq in range(load.count)}
    assert set(stored) <= sent, "stored readings that were never sent"
    assert all(stored[ts] == v for ts, v in expected.items()), "a stored value was altered"


# Both MQTT versions keep the guarantee: 3.1.1 through a clean-session-off session that the
# broker keeps (Mosquitto: persistent_client_expiration), 5 through Session Expiry.
PROTOCOLS = pytest.mark.parametrize("protocol", ["5", "3.1.1"])


# paho in its own process (the default) on both versions, and on a thread of the service.
@pytest.mark.parametrize(
    ("protocol", "client_process"), [("5", True), ("3.1.1", True), ("3.1.1", False)]
)
def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path,
    broker: MosquittoBroker,
    service_factory: ServiceFactory,
    protocol: str,
    client_process: bool,
) -> None:
    service = service_factory(
        broker.port, mqtt={"protocol": protocol, "client_process": client_process}
    )
    assert len(client_processes(service)) == (1 if client_process else 0)
    load = start_load(tmp_path, broker.port, count=12_000, rate=2_000, name="kill")
    wait_until(lambda: count_strain(service.db) > 3_000, 30, "the first readings stored")
    service.kill()
    service.start()  # same client id: the broker kept the session and what was not acked
    acked = load.finish()
    assert len(acked) == load.count
    wait_until(lambda: count_strain(service.db) >= len(acked), 60, "every acked reading stored")
    assert_exactly_once(service.db, load, acked)


@PROTOCOLS
def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, service_factory: ServiceFactory, protocol: str
) -> None:
    service = service_factory(broker.port, mqtt={"protocol": protocol})
    load = start_load(tmp_path, broker.port, count=8_000, rate=1_000, name="restart")
    wait_until(lambda: count_strain(service.db) > 2_000, 30, "the first readings stored")
    broker.restart()
    acked = load.finish()
    assert len(acked) == load.count
    wait_until(lambda: count_strain(service.db) >= len(acked), 60, "every acked reading stored")
    assert_exactly_once(service.db, load, acked)
    assert service.metric("stadtpuls_broker_connected") == 1


def test_readiness_follows_the_broker(broker: MosquittoBroker, service: ServiceProcess) -> None:
    assert service.ready()
    broker.kill()
    wait_until(lambda: not service.ready(), 30, "/readyz to report the broker gone")
    assert service.metric("stadtpuls_broker_connected") == 0
    broker.start()
    wait_until(service.ready, 60, "/readyz to recover after the broker is back")
    # Killed before it could save its sessions, the broker forgot ours: subscribed again.
    assert service.metric("stadtpuls_resubscribes_total") == 2


def test_anomaly_state_survives_a_restart(
    tmp_path: Path, broker: MosquittoBroker, service: ServiceProcess
) -> None:
    load = start_load(tmp_path, broker.port, count=200, rate=400, name="state")
    acked = load.finish()
    wait_until(lambda: count_strain(service.db) >= len(acked), 30, "the readings stored")
    service.stop()
    state = service.workdir / "data" / "anomaly-state.npz"
    assert state.exists()
    service.start()
    assert "anomaly state restored for" in service.output_path.read_text()


def client_processes(service: ServiceProcess) -> list[psutil.Process]:
    """The service's MQTT client processes (``ingest.mqtt_process``) now running."""
    assert service.pid is not None
    return [
        p
        for p in psutil.Process(service.pid).children()
        if p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE
        and "ingest.mqtt_process" in p.cmdline()
    ]


def test_a_killed_client_process_is_replaced_and_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, service_factory: ServiceFactory
) -> None:
    """paho runs in a child process (``mqtt.client_process``, on by default). Killed
    mid-stream, it is replaced without the service restarting, and the broker redelivers
    what it had not acknowledged."""
    service = service_factory(broker.port, mqtt={"protocol": "3.1.1"})
    service_pid = service.pid
    (first,) = client_processes(service)
    load = start_load(tmp_path, broker.port, count=8_000, rate=1_000, name="client-kill")
    wait_until(lambda: count_strain(service.db) > 2_000, 30, "the first readings stored")
    first.kill()
    wait_until(
        lambda: (
            [p.pid for p in client_processes(service)] not in ([], [first.pid]) and service.ready()
        ),
        30,
        "a new client process, connected",
    )
    acked = load.finish()
    assert len(acked) == load.count
    wait_until(lambda: count_strain(service.db) >= len(acked), 60, "every acked reading stored")
    assert_exactly_once(service.db, load, acked)
    assert service.pid == service_pid
    assert service.is_running
    assert service.metric("stadtpuls_mqtt_client_restarts_total") == 1
    assert "the MQTT client process" in service.log_tail(200)


def test_the_client_process_leaves_with_the_service(
    broker: MosquittoBroker, service: ServiceProcess
) -> None:
    """A SIGKILLed service cannot stop its client: the client sees the end of its pipe and
    leaves, so it cannot hold the session against the service's next start."""
    (client,) = client_processes(service)
    service.kill()
    client.wait(timeout=10)  # raises psutil.TimeoutExpired if it stayed


def test_a_signal_to_the_whole_group_stops_the_service_in_order(
    broker: MosquittoBroker, service: ServiceProcess
) -> None:
    """``systemctl stop`` and a Ctrl-C signal every process of the group at once. The
    client ignores them and leaves when the service stops it, so the service neither sees
    it die first nor starts another."""
    (client,) = client_processes(service)
    assert service.pid is not None
    os.killpg(service.pid, signal.SIGTERM)
    client.wait(timeout=30)
    wait_until(lambda: not service.is_running, 30, "the service to exit")
    assert "the MQTT client process" not in service.log_tail(200)
