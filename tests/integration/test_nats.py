"""Ingest on a real 3-node NATS cluster (JetStream, an MQTT listener on every node, the
partition mapping), with ``stadtpuls run`` workers as processes writing to one
VictoriaMetrics process standing in for InfluxDB (and one worker with SQLite).

Devices publish MQTT 3.1.1 at QoS 1 to different nodes; every reading the cluster PUBACKed
must end up stored exactly once, through whichever worker held its site's partition, under
a stream leader's SIGKILL and a worker's SIGKILL alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats as nats_client
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from ingest.nats_source import MQTT_STREAM, NatsSubjects, api
from stadtpuls.natscluster import NatsCluster, NatsNode
from tests.support.alerting import MqttListener
from tests.support.loadgen import Reading, payload, reading
from tests.support.processes import Processes, ServiceFactory
from tests.support.registry import bridges_yaml
from tests.support.service import ServiceProcess
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 8
SITES = [f"n{n:02d}" for n in range(16)]
PRIORITY_TIMEOUT_S = 2.0
ACK_WAIT_S = 5.0
TOKEN = "test-token-not-a-placeholder"


@pytest.fixture
def cluster(processes: Processes) -> NatsCluster:
    return processes.start(
        NatsCluster(processes.workdir("nats"), NatsSubjects("stadtpuls", PARTITIONS))
    )


def worker(
    factory: ServiceFactory,
    cluster: NatsCluster,
    registry: Path,
    name: str,
    victoria: VictoriaMetrics | None,
    alerts: bool | dict[str, Any] = False,
    ack_wait_s: float = ACK_WAIT_S,
) -> ServiceProcess:
    store: dict[str, object] = {}
    if victoria is not None:
        store = {
            "store": {"backend": "influxdb"},
            "influxdb": {"url": victoria.url, "org": "city", "bucket": "sensors"},
        }
    return factory(
        cluster.nodes[0].mqtt_port,
        name=name,
        start=False,
        env={"STADTPULS_INFLUXDB__TOKEN": TOKEN},
        registry=str(registry),
        source="nats",
        mqtt={"protocol": "3.1.1"},
        nats={
            "servers": cluster.servers,
            "partitions": PARTITIONS,
            "priority_timeout": f"{PRIORITY_TIMEOUT_S}s",
            "ack_wait": f"{ack_wait_s}s",
            "checkpoint_every": "1s",
        },
        alerts=alerts if isinstance(alerts, dict) else {"enabled": alerts},
        **store,
    )


def setup_nats(service: ServiceProcess) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "stadtpuls", "nats", "setup", "--config", str(service.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **service.extra_env},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(bridges_yaml(SITES))
    return path


def run_workers(
    factory: ServiceFactory,
    cluster: NatsCluster,
    registry: Path,
    victoria: VictoriaMetrics,
    count: int,
    alerts: bool | dict[str, Any] = False,
    ack_wait_s: float = ACK_WAIT_S,
) -> list[ServiceProcess]:
    """``count`` workers with the InfluxDB store, started side by side after the setup."""
    procs = [
        worker(factory, cluster, registry, f"w{i}", victoria, alerts, ack_wait_s)
        for i in range(count)
    ]
    setup_nats(procs[0])
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(ServiceProcess.start, procs))
    return procs


@dataclass
class Publisher:
    proc: subprocess.Popen[bytes]
    out: Path
    base_ms: int
    count: int

    def acked(self) -> set[tuple[str, int, float]]:
        assert self.proc.wait(120) == 0
        seqs: list[int] = json.loads(self.out.read_text())["acked"]
        out = set()
        for s in seqs:
            r = reading(self.base_ms, s)
            out.add((SITES[s % len(SITES)], r.ts_ns // 1_000_000, r.value))
        return out


def publish(tmp_path: Path, nodes: list[NatsNode], total: int, rate: float) -> list[Publisher]:
    """``total`` readings (rounded up to a multiple of the publishers) over ``SITES``, split
    between publishers on ``nodes`` (one each), each with its own stretch of time so their
    readings never share a key."""
    now_ms = time.time_ns() // 1_000_000
    count = -(-total // len(nodes))
    pubs = []
    for i, node in enumerate(nodes):
        base_ms = now_ms - 600_000 + i * 100_000
        out = tmp_path / f"acked-{i}.json"
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.loadgen", "--port", str(node.mqtt_port),
                "--count", str(count), "--rate", str(rate / len(nodes)),
                "--base-ms", str(base_ms), "--sites", ",".join(SITES), "--out", str(out),
                "--protocol", "3.1.1",
            ]
        )  # fmt: skip
        pubs.append(Publisher(proc, out, base_ms, count))
    return pubs


def all_stored(
    vm: VictoriaMetrics, workers: list[ServiceProcess], expected: set[tuple[str, int, float]]
) -> list[tuple[str, int, float]]:
    wait_until(
        lambda: (
            all(w.metric("stadtpuls_journal_depth") == 0 for w in workers if w.is_running)
            and len(vm.site_points()) >= len(expected)
        ),
        90,
        "every acknowledged reading in the database",
    )
    return vm.site_points()


def assert_exactly(
    points: list[tuple[str, int, float]], expected: set[tuple[str, int, float]]
) -> None:
    assert len(points) == len(set(points)), "a reading stored twice"
    missing = sorted(expected - set(points))
    assert not missing, f"{len(missing)} acknowledged readings lost, first {missing[:5]}"
    assert set(points) == expected


def held(w: ServiceProcess) -> set[int]:
    text = httpx.get(f"{w.url}/metrics", timeout=5).text
    return {
        int(s.labels["partition"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "stadtpuls_nats_partition_held"
    }


def consumer_totals(cluster: NatsCluster) -> dict[str, int]:
    """Messages waiting for an acknowledgement, and delivered more than once, summed over
    the partition consumers, as the cluster counts them."""

    async def infos() -> dict[str, int]:
        nc = await nats_client.connect(servers=cluster.servers)
        try:
            out = {"ack_pending": 0, "redelivered": 0}
            for p in range(PARTITIONS):
                name = NatsSubjects("stadtpuls", PARTITIONS).consumer(p)
                c = await api(nc, f"CONSUMER.INFO.{MQTT_STREAM}.{name}")
                out["ack_pending"] += int(c.get("num_ack_pending", 0))
                out["redelivered"] += int(c.get("num_redelivered", 0))
            return out
        finally:
            await nc.close()

    return asyncio.run(infos())


def used_partitions() -> set[int]:
    subjects = NatsSubjects("stadtpuls", PARTITIONS)
    return {subjects.partition_of(site) for site in SITES}


def test_three_workers_share_the_partitions_and_store_every_reading_once(
    tmp_path: Path,
    cluster: NatsCluster,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    workers = run_workers(service_factory, cluster, registry_file, victoria, 3)
    pubs = publish(tmp_path, cluster.nodes, 20_000, 2_000.0)
    expected = set().union(*(p.acked() for p in pubs))
    assert len(expected) == sum(p.count for p in pubs) >= 20_000

    points = all_stored(victoria, workers, expected)
    assert_exactly(points, expected)
    # Each reading went through one worker only: no partition was handled twice.
    assert sum(w.metric("stadtpuls_readings_stored_total") for w in workers) == len(expected)
    holders = [held(w) for w in workers]
    assert all(holders), f"a worker holds no partition: {holders}"
    assert set().union(*holders) == used_partitions()
    assert sum(len(h) for h in holders) == len(used_partitions()), "a partition held twice"


def test_stream_leader_killed_mid_stream_loses_nothing(
    tmp_path: Path,
    cluster: NatsCluster,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    workers = run_workers(service_factory, cluster, registry_file, victoria, 2)
    leader = cluster.stream_leader()
    # The publishers stay off the leader's node: a publisher that loses its node waits for
    # it; the test is about the stream, not about the publisher's reconnects.
    others = [n for n in cluster.nodes if n is not leader]
    pubs = publish(tmp_path, others, 9_000, 1_500.0)
    wait_until(
        lambda: sum(w.metric("stadtpuls_readings_stored_total") for w in workers) > 2_000,
        30,
        "the first commits",
    )
    leader.kill()
    time.sleep(5)  # the outage itself, as the fault is specified: 5 s down
    leader.start()
    expected = set().union(*(p.acked() for p in pubs))
    assert len(expected) == sum(p.count for p in pubs)
    assert_exactly(all_stored(victoria, workers, expected), expected)


def test_a_killed_workers_partitions_move_warm_and_nothing_is_lost(
    tmp_path: Path,
    cluster: NatsCluster,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    # With alerts on, so their state travels with the partitions too.
    workers = run_workers(service_factory, cluster, registry_file, victoria, 2, alerts=True)
    pubs = publish(tmp_path, cluster.nodes, 8_000, 1_000.0)
    victim, survivor = workers
    wait_until(lambda: len(held(victim)) >= 2, 30, "the victim holding partitions")
    wait_until(lambda: victim.metric("stadtpuls_readings_stored_total") > 1_500, 30, "its commits")
    moved = held(victim)
    victim.kill()
    killed = time.monotonic()
    wait_until(lambda: moved <= held(survivor), 30, "the survivor taking the partitions")
    took_s = time.monotonic() - killed
    expected = set().union(*(p.acked() for p in pubs))
    assert_exactly(all_stored(victoria, [survivor], expected), expected)
    # Membership expires in 3 s; the pin moves after the priority timeout.
    assert took_s < PRIORITY_TIMEOUT_S + ACK_WAIT_S + 3.0
    # The victim had checkpointed them: the survivor judged on from its state.
    assert survivor.metric("stadtpuls_nats_partitions_warm_total") >= len(moved)


def test_one_worker_with_sqlite_quarantines_what_no_partition_covers(
    tmp_path: Path,
    cluster: NatsCluster,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    w = worker(service_factory, cluster, registry_file, "single", None)
    setup_nats(w)
    w.start()
    pubs = publish(tmp_path, cluster.nodes[:1], 2_000, 1_000.0)
    expected = pubs[0].acked()
    # Too short to name a site: under a kind, so the catch-all consumer has it.
    c = mqtt.Client(CallbackAPIVersion.VERSION2, "odd-device", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", cluster.nodes[1].mqtt_port)
    c.loop_start()
    c.publish("stadtpuls/bridge/n01", b"[]", qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()

    def rows() -> list[tuple[str, int, float]]:
        with sqlite3.connect(w.db) as conn:
            return [
                (site, ts // 1_000_000, value)
                for site, ts, value in conn.execute(
                    "SELECT s.site, r.ts_ns, r.value FROM readings r "
                    "JOIN series s ON s.id = r.series_id"
                )
            ]

    def quarantined() -> list[tuple[str, str]]:
        with sqlite3.connect(w.db) as conn:
            return list(conn.execute("SELECT topic, reason FROM quarantine"))

    wait_until(
        lambda: len(rows()) >= len(expected) and bool(quarantined()),
        60,
        "readings and quarantine",
    )
    assert sorted(rows()) == sorted(expected)
    assert quarantined() == [("stadtpuls/bridge/n01", "bad_topic")]


def test_missing_consumers_fail_check_config_and_readyz(
    cluster: NatsCluster, service_factory: ServiceFactory, registry_file: Path
) -> None:
    """Without its consumers the cluster would PUBACK devices' readings and keep them for no
    one: check-config refuses such a cluster, and a running worker turns unready when one
    of them disappears."""
    w = worker(service_factory, cluster, registry_file, "single", None)

    def check_config() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stadtpuls", "check-config", "--config", str(w.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    before = check_config()
    assert before.returncode != 0
    assert "run `stadtpuls nats setup`" in before.stderr
    first = setup_nats(w)
    assert f"created consumer stadtpuls-p{PARTITIONS - 1:03d}" in first
    assert "created" not in setup_nats(w), "setup must be idempotent"
    assert check_config().returncode == 0

    w.start()

    async def delete_one() -> None:
        nc = await nats_client.connect(servers=cluster.servers)
        try:
            await api(nc, f"CONSUMER.DELETE.{MQTT_STREAM}.stadtpuls-p003")
        finally:
            await nc.close()

    asyncio.run(delete_one())

    def readyz() -> dict[str, object]:
        r = httpx.get(f"{w.url}/readyz", timeout=5)
        body: dict[str, object] = r.json()
        return {"status": r.status_code, **body}

    wait_until(lambda: readyz()["status"] == 503, 10, "the worker turning unready")
    assert readyz()["checks"] == {
        "broker_connected": True,
        "nats_consumers": False,
        "store_writable": True,
        "ingest_running": True,
    }


def test_a_cluster_with_accounts_takes_the_settings_credentials(
    processes: Processes, service_factory: ServiceFactory, registry_file: Path, tmp_path: Path
) -> None:
    """nats.user with nats.password_file reach the cluster (and mqtt.username/password its
    MQTT listener, which setup connects to once); a wrong password is refused by name."""
    auth = 'authorization { users = [ {user: ingest, password: "ingest-pass-4711"} ] }\n'
    cluster = processes.start(
        NatsCluster(processes.workdir("nats"), NatsSubjects("stadtpuls", PARTITIONS), extra=auth)
    )
    secret = tmp_path / "nats.password"

    def configured(password: str) -> ServiceProcess:
        secret.write_text(password)
        w = worker(service_factory, cluster, registry_file, f"auth-{password[-4:]}", None)
        settings = yaml.safe_load(w.config.read_text())
        settings["nats"] |= {"user": "ingest", "password_file": str(secret)}
        settings["mqtt"] |= {"username": "ingest", "password": password}
        w.config.write_text(yaml.safe_dump(settings))
        return w

    wrong = configured("not-the-pass-0000")
    r = subprocess.run(
        [sys.executable, "-m", "stadtpuls", "check-config", "--config", str(wrong.config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode != 0
    assert "cannot reach NATS" in r.stderr
    assert "uthorization" in r.stderr, r.stderr

    right = configured("ingest-pass-4711")
    assert "created consumer" in setup_nats(right)
    right.start()
    assert httpx.get(f"{right.url}/readyz", timeout=5).json()["checks"]["nats_consumers"]


def test_a_worker_that_stops_hands_its_partitions_over_at_once(
    tmp_path: Path,
    cluster: NatsCluster,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    """SIGTERM, not a crash: the worker leaves the members, unpins its partitions and hands
    back what it had not processed, so the other takes over well within the priority
    timeout plus the ack wait that a crash costs, and nothing is lost."""
    leaving, staying = run_workers(service_factory, cluster, registry_file, victoria, 2)
    pubs = publish(tmp_path, cluster.nodes, 6_000, 900.0)
    wait_until(lambda: len(held(leaving)) >= 2, 30, "both workers holding partitions")
    wait_until(lambda: staying.metric("stadtpuls_readings_stored_total") > 500, 30, "commits")
    moved = held(leaving)
    leaving.stop()
    stopped = time.monotonic()
    wait_until(lambda: moved <= held(staying), 30, "the other worker taking the partitions")
    took_s = time.monotonic() - stopped
    expected = set().union(*(p.acked() for p in pubs))
    assert_exactly(all_stored(victoria, [staying], expected), expected)
    assert took_s < PRIORITY_TIMEOUT_S + 1.0, f"took {took_s:.1f} s"


def test_a_database_outage_holds_the_acknowledgements_and_the_stream_keeps_the_readings(
    tmp_path: Path,
    cluster: NatsCluster,
    processes: Processes,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    """On NATS the replicated stream is the journal: a message is acknowledged only once
    InfluxDB has its readings, so a worker's disk never holds the only copy. While the
    database is down for longer than the ack wait, the worker keeps its messages in
    progress, so none is delivered again; all are stored once it is back."""
    vm = processes.victoria("vm-outage")
    ack_wait_s = 2.0  # short, so that an outage longer than it is short too
    (w,) = run_workers(service_factory, cluster, registry_file, vm, 1, ack_wait_s=ack_wait_s)
    pubs = publish(tmp_path, cluster.nodes[:1], 3_000, 1_000.0)
    wait_until(
        lambda: w.metric("stadtpuls_influx_points_written_total") > 300, 30, "the first points"
    )
    vm.stop()
    wait_until(lambda: w.metric("stadtpuls_journal_depth") > 1_000, 30, "commits while down")
    time.sleep(2 * ack_wait_s)  # the outage itself: twice the ack wait
    during = consumer_totals(cluster)
    assert during["ack_pending"] >= w.metric("stadtpuls_journal_depth") > 1_000
    assert during["redelivered"] == 0
    vm.start()
    expected = pubs[0].acked()
    assert_exactly(all_stored(vm, [w], expected), expected)
    wait_until(lambda: consumer_totals(cluster)["ack_pending"] == 0, 30, "every ack")
    assert consumer_totals(cluster)["redelivered"] == 0


def test_an_open_alert_moves_with_its_partition_and_pages_once(
    cluster: NatsCluster,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
    registry_file: Path,
) -> None:
    """The people on call hear of an incident once, whichever worker holds its site: the
    worker that fired it is SIGKILLed, the other takes the partition with the checkpointed
    alert, and resolves it with no second firing on the alert channel."""
    site = SITES[0]
    rule = {
        "name": "strain-over", "measurement": "strain", "kind": "bridge", "site": site,
        "above": 2500.0, "clear": 2000.0, "magnitude": True, "severity": "critical",
    }  # fmt: skip
    alerts = {
        "enabled": True,
        "thresholds": [rule],
        "anomaly": {"severity": {}},
        "silence": {"enabled": False},
        "digest_at": None,
        "tick": "500ms",
        "channels": [{"name": "ops-mqtt", "type": "mqtt"}],
    }
    workers = run_workers(service_factory, cluster, registry_file, victoria, 2, alerts=alerts)
    listener = MqttListener(cluster.nodes[0].mqtt_port, "nats-alert-listener")
    device = mqtt.Client(CallbackAPIVersion.VERSION2, "nats-e2e-device", protocol=mqtt.MQTTv311)
    device.connect("127.0.0.1", cluster.nodes[1].mqtt_port)
    device.loop_start()
    partition = NatsSubjects("stadtpuls", PARTITIONS).partition_of(site)
    sent = 0

    def send(value: float, count: int) -> None:
        """Live readings, timed now: a backlog's notifications would be held back."""
        nonlocal sent
        for _ in range(count):
            r = Reading(sent, time.time_ns(), value)
            topic = f"stadtpuls/bridge/{site}/sg1"
            device.publish(topic, payload("sg1", r), qos=1).wait_for_publish(10)
            sent += 1
            time.sleep(0.1)  # the device's pace, ten readings a second

    def events() -> list[str]:
        return [
            b["event"]
            for _, b in list(listener.got.items)
            if b.get("alert", {}).get("site") == site
        ]

    def checkpointed_firing() -> bool:
        async def get() -> bytes:
            nc = await nats_client.connect(servers=cluster.servers)
            try:
                kv = await nc.jetstream().key_value("stadtpuls_state")
                return (await kv.get(f"p{partition}.alerts")).value or b""
            except Exception:
                return b""
            finally:
                await nc.close()

        return b"firing" in asyncio.run(get())

    try:
        send(100.0, 3)
        send(3000.0, 3)
        wait_until(lambda: events() == ["firing"], 30, "the firing notification")
        holder = next(w for w in workers if partition in held(w))
        other = next(w for w in workers if w is not holder)
        # Readings over the limit go on until the partition's checkpoint holds the alert.
        deadline = time.monotonic() + 30
        while not checkpointed_firing():
            assert time.monotonic() < deadline, "no checkpoint of the firing alert"
            send(3000.0, 1)
        holder.kill()
        # Still over the limit, the same incident: the partition goes to the other worker
        # with the next messages (a pin is given with a message).
        deadline = time.monotonic() + 30
        while partition not in held(other):
            assert time.monotonic() < deadline, "the other worker did not take the site"
            send(3000.0, 1)
        send(3000.0, 3)
        send(100.0, 3)
        wait_until(lambda: "resolved" in events(), 30, "the resolved notification")
        assert events() == ["firing", "resolved"]
    finally:
        device.loop_stop()
        device.disconnect()
        listener.close()
