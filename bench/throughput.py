"""``make bench``: end-to-end throughput, CPU, memory and latency of the subscriber, each
part a process of its own on a real Mosquitto.

Method. For every run a fresh private Mosquitto starts (no session or queue survives from
an earlier run). The subscriber under test starts as its own process: ``python -m
stadtpuls run --config FILE`` (the full pipeline: decode, validate, anomaly check, commit,
then acknowledgement), or, as the baseline, a bare paho 2.x subscriber that only counts
QoS 1 messages (``python -m bench.baresub``). Its persistent session and subscriptions
are created on the broker beforehand, and the run waits until the process says it is
connected (Stadtpuls: ``/readyz`` answers 200; bare: it writes a ready file on CONNACK),
which with the session in place means subscribed. Only then does `bench.rawpub`, a
raw-socket QoS 1 publisher costing little CPU, start as a third process. So the
subscriber is measured while it is being fed, not while it drains a queue that was
filled beforehand.

The run ends when the store holds every reading, observed from outside: the harness polls
the SQLite database read-only (first the keys of the last message of every topic, which
FIFO delivery makes the last to arrive; then ``COUNT(*)`` to confirm), the service's count
of points VictoriaMetrics accepted (``stadtpuls_influx_points_written``: the write was
answered 204), or the bare subscriber's stamp of its last message. VictoriaMetrics' own
counter of inserted rows moves about once a second, which put up to a second of noise
into a run of four or five; what it stored is counted from its export afterwards. The time
is that moment minus the publisher's first PUBLISH, both ``time.monotonic_ns`` (one clock
for all processes). Afterwards every stored key (site, device, channel, millisecond) is
compared with what was published: lost and unexpected keys are reported. SQLite's primary
key makes a stored duplicate impossible, so for it "duplicated" is a redelivery that was
rewritten in place; the bare subscriber reports messages received beyond the count.

CPU is the subscriber process's utime+stime (``/proc/PID/stat``) from ready to done, per
100,000 readings; peak RSS is its ``VmHWM`` (with 2 workers: CPU summed, RSS of the
larger). ``check_cpu_share`` is the service's
``stadtpuls_check_seconds_total`` (thread CPU in the anomaly check) over that CPU.

Scenarios run interleaved, every scenario once per round in the same order, so slow
phases of a shared machine spread over all of them. Each ratio to bare paho is taken
within a round, against the bare run of the same MQTT version and payload shape.

Latency: the live publisher sends readings whose device time is the wall time of
publishing, at half the median Stadtpuls SQLite rate, for ``LIVE_SECONDS``. The readings
table records no commit time, so the harness polls the database every ``LATENCY_POLL_S``
for new rows and takes (time seen) - (device time): publish-to-visible-commit measured from
outside, overstated by up to one poll interval plus the query.

    python -m bench.throughput [--rounds R] [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.publish import DEVICES, GAUGES, block, single, sites
from bench.workers import registry_yaml as sites_registry_yaml
from devices.registry import parse_registry
from devices.topics import TopicScheme
from stadtpuls.broker import MosquittoBroker, free_port
from stadtpuls.processes import ServerProcess
from stadtpuls.settings import load_settings
from stadtpuls.workers import worker_share

SINGLE_MESSAGES = 100_000
BLOCK_MESSAGES = 10_000
QUICK_SINGLE = 10_000
QUICK_BLOCK = 1_000
ROUNDS = 3
LIVE_SECONDS = 12.0
QUICK_LIVE_SECONDS = 4.0
TAIL_POLL_S = 0.01
LATENCY_POLL_S = 0.005
VM_POLL_S = 0.05
STALL_S = 15.0  # no new reading for this long: the rest is lost
TOKEN = "bench-influx-token-0123456789"  # VictoriaMetrics ignores it; the settings need one
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- what is published and what should be stored ------------------------------------------


def bench_registry_yaml(interval: str = "1s") -> str:
    """The site ``bench``. ``interval`` is what the devices send at: the detectors size
    their windows by it, so a 100 Hz block stream registered at 1 s is checked more
    cheaply than a real 100 Hz gauge would be."""
    channels = ", ".join(f"g{g}: [strain]" for g in range(1, GAUGES + 1))
    devices = "\n".join(
        f"      sg{d:02d}:\n        interval: {interval}\n        channels: {{{channels}}}"
        for d in range(DEVICES)
    )
    return f"sites:\n  bench:\n    kind: bridge\n    name: Bench bridge\n    devices:\n{devices}\n"


Key = tuple[str, str, str, int]  # site, device, channel, milliseconds since the epoch


def expected_keys(mode: str, count: int, base_s: float) -> tuple[set[Key], set[Key]]:
    """All keys the stream should store, and the last key of the last message on each topic.

    Built with the publisher's own payload builders, so a change there cannot leave the
    expectation behind. Keys are in milliseconds: every stream's readings of one series
    are at least 1 ms apart, and VictoriaMetrics keeps no more than that."""
    keys: set[Key] = set()
    last_on_topic: dict[str, list[Key]] = {}
    builder = {"single": single, "sites": sites, "block": block}[mode]
    for seq in range(count):
        t, payload = builder(seq, base_s)
        site, device = t.split("/")[2:4]
        body = json.loads(payload)
        if mode == "block":
            ((name, samples),) = body["series"].items()
            channel = name.split("/")[0]
            msg = [
                (site, device, channel, math.floor((body["t0"] + i * body["dt"]) * 1000))
                for i in range(len(samples))
            ]
        else:
            rec = body[0]
            msg = [(site, device, rec["n"].split("/")[0], math.floor(rec["bt"] * 1000))]
        keys.update(msg)
        # A message's readings are committed together, so its last one stands for it.
        last_on_topic[t] = msg[-1:]
    return keys, {k for msg in last_on_topic.values() for k in msg}


# -- processes under test -------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants: Stadtpuls' MQTT client is a child process."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [pid, *(c.pid for c in children)]


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its child processes so far."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of ``pid`` plus that of each of its child processes."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def create_session(port: int, protocol: int, client_id: str, topics: list[str]) -> None:
    """A persistent session with these subscriptions, so nothing published after this is
    lost however late the subscriber's own SUBSCRIBE would have come."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    version = MQTTProtocolVersion.MQTTv5 if protocol == 5 else MQTTProtocolVersion.MQTTv311
    kwargs: dict[str, Any] = {}
    if protocol == 4:
        kwargs["clean_session"] = False
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kwargs
    )
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    if protocol == 5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
    else:
        client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe([(t, 1) for t in topics])
    if not subscribed.wait(10):
        raise RuntimeError(f"no SUBACK for the session of {client_id}")
    client.disconnect()
    client.loop_stop()


class Stadtpuls(ServerProcess):
    """``python -m stadtpuls run`` (not via ``uv run``: the pid must be the service's)."""

    name = "stadtpuls"
    stop_deadline_s = 60.0

    def __init__(self, workdir: Path, config: Path, worker: tuple[int, int] | None) -> None:
        super().__init__(workdir)
        self.config = config
        self.worker = worker
        self.http_port = free_port()
        self.extra_env = {"STADTPULS_HTTP__PORT": str(self.http_port)}
        if worker is not None:
            self.output_path = workdir / f"stadtpuls-{worker[0]}.out"

    def start(self) -> None:
        # A port free a moment ago can be taken by the next process to start (other
        # benchmarks and tests share the machine): pick another and try again.
        for attempt in range(3):
            try:
                super().start()
            except RuntimeError:
                if attempt == 2 or "port in use" not in self.log_tail():
                    raise
                self.http_port = free_port()
                self.extra_env = {"STADTPULS_HTTP__PORT": str(self.http_port)}
            else:
                return

    def executable(self) -> str | None:
        return sys.executable

    def command(self, executable: str) -> list[str]:
        cmd = [executable, "-m", "stadtpuls", "run", "--config", str(self.config)]
        if self.worker is not None:
            cmd += ["--worker-index", str(self.worker[0]), "--worker-count", str(self.worker[1])]
        return cmd

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        )


class Bare(ServerProcess):
    """The baseline subscriber (`bench.baresub`) as a process."""

    name = "bare"

    def __init__(self, workdir: Path, port: int, protocol: int, count: int) -> None:
        super().__init__(workdir)
        self.port, self.protocol, self.count = port, protocol, count
        self.client_id = f"bench-bare-{protocol}"
        self.ready_file = workdir / "bare.ready"
        self.done_file = workdir / "bare.done"
        self.final_file = workdir / "bare.final"

    def executable(self) -> str | None:
        return sys.executable

    def command(self, executable: str) -> list[str]:
        return [
            executable, "-m", "bench.baresub", "--port", str(self.port),
            "--protocol", str(self.protocol), "--count", str(self.count),
            "--client-id", self.client_id, "--dir", str(self.workdir),
        ]  # fmt: skip

    def ready(self) -> bool:
        return self.ready_file.exists()


# -- the store, seen from outside ---------------------------------------------------------


class SqliteReader:
    """Read-only views of one or more service databases (one per worker)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.conns: list[sqlite3.Connection] = []
        self.ids: list[dict[tuple[str, str, str], int]] = []

    def open(self) -> None:
        for path in self.paths:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            rows = conn.execute("SELECT id, site, device, channel FROM series").fetchall()
            self.conns.append(conn)
            self.ids.append({(s, d, c): i for i, s, d, c in rows})

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def present(self, keys: set[Key]) -> set[Key]:
        """Those of ``keys`` stored in any of the databases (one indexed statement each)."""
        found: set[Key] = set()
        for conn, ids in zip(self.conns, self.ids, strict=True):
            wanted = [(k, ids[k[:3]]) for k in keys if k[:3] in ids and k not in found]
            if not wanted:
                continue
            where = " OR ".join(["(series_id = ? AND ts_ns BETWEEN ? AND ?)"] * len(wanted))
            params: list[int] = []
            for k, sid in wanted:
                params += [sid, k[3] * 1_000_000, k[3] * 1_000_000 + 999_999]
            rows = conn.execute(
                f"SELECT series_id, ts_ns FROM readings WHERE {where}", params
            ).fetchall()
            back = {v: k for k, v in ids.items()}
            found.update((*back[sid], ts // 1_000_000) for sid, ts in rows)
        return found & keys

    def count(self) -> int:
        return sum(c.execute("SELECT COUNT(*) FROM readings").fetchone()[0] for c in self.conns)

    def keys(self) -> Counter[Key]:
        out: Counter[Key] = Counter()
        for conn in self.conns:
            rows = conn.execute(
                "SELECT s.site, s.device, s.channel, r.ts_ns FROM readings r "
                "JOIN series s ON s.id = r.series_id"
            )
            out.update((site, dev, ch, ts // 1_000_000) for site, dev, ch, ts in rows)
        return out


class Victoria:
    """The VictoriaMetrics of one InfluxDB run: a fresh process each time, so its insert
    counter and its export hold this run's readings only."""

    def __init__(self, workdir: Path) -> None:
        from tests.support.victoria import VictoriaMetrics

        self.vm = VictoriaMetrics(workdir)

    def keys(self) -> Counter[Key]:
        out: Counter[Key] = Counter()
        for item in self.vm.export('{__name__="strain_value"}'):
            m = item["metric"]
            out.update(
                (m["site"], m["device"], m.get("channel", ""), ts) for ts in item["timestamps"]
            )
        return out


# -- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # bare, sqlite, influx
    protocol: int
    mode: str
    blocks: bool = False
    workers: int = 1  # worker processes (``worker.index``/``count``), SQLite each

    @property
    def bare_peer(self) -> str:
        if self.blocks:
            return "bare-block" if self.protocol == 5 else "bare-block-mqtt3.1.1"
        return f"bare-mqtt{'5' if self.protocol == 5 else '3.1.1'}"


SCENARIOS = [
    Scenario("bare-mqtt5", "bare", 5, "single"),
    Scenario("bare-mqtt3.1.1", "bare", 4, "single"),
    Scenario("stadtpuls-sqlite-mqtt5", "sqlite", 5, "single"),
    Scenario("stadtpuls-sqlite-mqtt3.1.1", "sqlite", 4, "single"),
    Scenario("stadtpuls-influx(vm)-mqtt5", "influx", 5, "single"),
    # The same 300-bridge stream through one worker and through two: the worker ratio is
    # taken between these, in the same round.
    Scenario("stadtpuls-1worker-sqlite-mqtt5-sites", "sqlite", 5, "sites"),
    Scenario("stadtpuls-2workers-sqlite-mqtt5", "sqlite", 5, "sites", workers=2),
    Scenario("stadtpuls-1worker-sqlite-mqtt3.1.1-sites", "sqlite", 4, "sites"),
    Scenario("stadtpuls-2workers-sqlite-mqtt3.1.1", "sqlite", 4, "sites", workers=2),
    Scenario("bare-block", "bare", 5, "block", blocks=True),
    Scenario("bare-block-mqtt3.1.1", "bare", 4, "block", blocks=True),
    Scenario("stadtpuls-sqlite-block", "sqlite", 5, "block", blocks=True),
    Scenario("stadtpuls-sqlite-block-mqtt3.1.1", "sqlite", 4, "block", blocks=True),
    Scenario("stadtpuls-influx(vm)-block", "influx", 5, "block", blocks=True),
]


@dataclass
class Result:
    scenario: str
    round: int
    readings: int
    seconds: float
    rate: float
    cpu_per_100k: float
    rss_mb: float
    lost: int
    unexpected: int
    duplicated: int
    check_cpu_share: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def stadtpuls_config(
    workdir: Path, port: int, sc: Scenario, vm_url: str | None, registry: str
) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "registry.yaml").write_text(registry)
    config: dict[str, Any] = {
        "registry": "registry.yaml",
        "data_dir": "data",
        "log_level": "WARNING",
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "client_id": "bench-ingest",
            "protocol": "5" if sc.protocol == 5 else "3.1.1",
        },
        "http": {"host": "127.0.0.1", "port": 0},
    }
    if sc.kind == "influx":
        config["store"] = {"backend": "influxdb"}
        config["influxdb"] = {"url": vm_url, "org": "bench", "bucket": "bench", "token": TOKEN}
    path = workdir / "stadtpuls.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_publisher(
    port: int, sc: Scenario, count: int, base_s: float, rate: float = 0.0, inflight: int = 100
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.rawpub", "--port", str(port), "--mode", sc.mode,
         "--count", str(count), "--protocol", str(sc.protocol), "--base-s", repr(base_s),
         "--rate", repr(rate), "--inflight", str(inflight)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def await_store(
    tail: set[Key],
    expected: int,
    present: Callable[[set[Key]], set[Key]],
    count: Callable[[], float],
    poll_s: float = TAIL_POLL_S,
) -> tuple[int, int]:
    """Poll until the store holds ``expected`` readings: (monotonic ns then, count).

    The tail keys are cheap indexed look-ups; the count, a full scan, is taken only once
    they are all there. A run whose count stops growing for ``STALL_S`` ends with what
    arrived, and the loss is reported."""
    missing = set(tail)
    last_n, last_change = -1, time.monotonic()
    while True:
        if missing:
            missing -= present(missing)
        if not missing:
            now_ns = time.monotonic_ns()
            n = int(count())
            if n >= expected:
                return now_ns, n
            if n != last_n:
                last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            # The tail never came; fall back to the count to judge progress.
            n = int(count())
            if n == last_n:
                return time.monotonic_ns(), n
            last_n, last_change = n, time.monotonic()
        if last_n >= 0 and time.monotonic() - last_change > STALL_S:
            return time.monotonic_ns(), last_n
        time.sleep(poll_s)


def compare(expected: set[Key], stored: Counter[Key], redelivered: int) -> tuple[int, int, int]:
    lost = len(expected - stored.keys())
    unexpected = len(stored.keys() - expected)
    duplicated = sum(n - 1 for n in stored.values() if n > 1) + redelivered
    return lost, unexpected, duplicated


def run_once(root: Path, sc: Scenario, round_no: int, count: int) -> Result:
    workdir = root / f"r{round_no}-{sc.name}"
    # Every device time half a millisecond past a whole one: the float rounding on the
    # way to nanoseconds cannot then move a reading into the neighbouring millisecond,
    # whether a key is cut to milliseconds (VictoriaMetrics) or floored here.
    base_s = int(time.time()) - 3600 + 0.0005
    expected, tail = expected_keys(sc.mode, count, base_s)
    with (
        MosquittoBroker(workdir / "broker", persistence=False) as broker,
        victoria(workdir, sc.kind == "influx") as vm,
    ):
        if sc.kind == "bare":
            return run_bare(workdir, broker.port, sc, round_no, count, base_s, expected)
        return run_stadtpuls(workdir, broker.port, sc, round_no, count, base_s, expected, tail, vm)


def run_bare(
    workdir: Path,
    port: int,
    sc: Scenario,
    round_no: int,
    count: int,
    base_s: float,
    expected: set[Key],
) -> Result:
    bare = Bare(workdir, port, sc.protocol, count)
    create_session(port, sc.protocol, bare.client_id, ["stadtpuls/#"])
    bare.start()
    try:
        pid = bare.pid
        assert pid is not None
        cpu0 = cpu_seconds(pid)
        pub = run_publisher(port, sc, count, base_s)
        deadline = time.monotonic() + STALL_S + pub["seconds"]
        while not bare.done_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare subscriber did not receive {count} messages")
            time.sleep(TAIL_POLL_S)
        cpu = cpu_seconds(pid) - cpu0
        rss = peak_rss_mb(pid)
        done = json.loads(bare.done_file.read_text())
    finally:
        bare.stop()
    received = json.loads(bare.final_file.read_text())["received"]
    readings = len(expected)
    seconds = (done["done_ns"] - pub["first_publish_ns"]) / 1e9
    return Result(
        sc.name, round_no, readings, seconds, readings / seconds,
        cpu / readings * 1e5, rss, 0, 0, received - count,
    )  # fmt: skip


def run_stadtpuls(
    workdir: Path,
    port: int,
    sc: Scenario,
    round_no: int,
    count: int,
    base_s: float,
    expected: set[Key],
    tail: set[Key],
    vm: Victoria | None,
) -> Result:
    # bench.publish: a block is 100 samples at 100 Hz; single readings give each of the
    # 100 series one every 0.1 s of device time.
    interval = "10ms" if sc.mode == "block" else "100ms"
    registry_text = sites_registry_yaml() if sc.mode == "sites" else bench_registry_yaml(interval)
    config = stadtpuls_config(workdir, port, sc, vm.vm.url if vm else None, registry_text)
    registry = parse_registry(registry_text)
    workers = [(i, sc.workers) for i in range(sc.workers)] if sc.workers > 1 else [None]
    procs: list[Stadtpuls] = []
    for w in workers:
        overrides: dict[str, Any] = {}
        if w is not None:
            overrides["worker"] = {"index": w[0], "count": w[1]}
        settings = load_settings(config, **overrides)
        share = worker_share(settings, registry)
        create_session(port, sc.protocol, share.client_id, share.subscriptions)
        procs.append(Stadtpuls(workdir, config, w))
    data = workdir / "data"
    db_paths = (
        [data / f"worker-{i}" / "stadtpuls.db" for i in range(sc.workers)]
        if sc.workers > 1
        else [data / "stadtpuls.db"]
    )
    reader = SqliteReader(db_paths)
    try:
        for p in procs:
            p.start()
        pids = [p.pid for p in procs if p.pid is not None]
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        check0 = sum(p.metric("stadtpuls_check_seconds_total") for p in procs)
        present: Callable[[set[Key]], set[Key]]
        counter: Callable[[], float]
        if vm is None:
            reader.open()
            present, counter = reader.present, reader.count
        else:
            # No cheap key look-up there: the points the database accepted are the signal,
            # and the export afterwards shows that they are there.
            present = lambda _: set()  # noqa: E731
            counter = lambda: sum(  # noqa: E731
                p.metric("stadtpuls_influx_points_written_total") for p in procs
            )
            tail = set()
        readings = len(expected)
        pub_result: dict[str, Any] = {}
        pub_thread = threading.Thread(
            target=lambda: pub_result.update(run_publisher(port, sc, count, base_s))
        )
        pub_thread.start()
        # The service's /metrics page is rendered in its own process; polling it as often as
        # the indexed SQLite look-ups would take CPU from the service under test.
        poll_s = TAIL_POLL_S if vm is None else VM_POLL_S
        done_ns, n = await_store(tail, readings, present, counter, poll_s)
        pub_thread.join()
        cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
        check = sum(p.metric("stadtpuls_check_seconds_total") for p in procs) - check0
        rss = max(peak_rss_mb(pid) for pid in pids)
        redelivered = 0
        stored = reader.keys() if vm is None else vm.keys()
        resubscribes = sum(p.metric("stadtpuls_resubscribes_total") for p in procs)
        received = sum(p.metric("stadtpuls_messages_received_total") for p in procs)
        redelivered = max(0, int(received) - count)
    finally:
        reader.close()
        for p in procs:
            p.stop()
    lost, unexpected, duplicated = compare(expected, stored, redelivered)
    seconds = (done_ns - pub_result["first_publish_ns"]) / 1e9
    return Result(
        sc.name, round_no, n, seconds, n / seconds, cpu / readings * 1e5, rss,
        lost, unexpected, duplicated, check / cpu if cpu else None,
        {"resubscribes": resubscribes},
    )  # fmt: skip


# -- latency ------------------------------------------------------------------------------


def run_latency(root: Path, rate: float, seconds: float) -> dict[str, Any]:
    sc = Scenario("latency", "sqlite", 5, "live")
    workdir = root / "latency"
    count = max(1, int(rate * seconds))
    with MosquittoBroker(workdir / "broker", persistence=False) as broker:
        config = stadtpuls_config(workdir, broker.port, sc, None, bench_registry_yaml())
        create_session(broker.port, 5, "bench-ingest", TopicScheme().subscriptions())
        svc = Stadtpuls(workdir, config, None)
        reader = SqliteReader([workdir / "data" / "stadtpuls.db"])
        latencies: list[float] = []
        try:
            svc.start()
            reader.open()
            ids = sorted({i for ids in reader.ids for i in ids.values()})
            marks = ",".join("?" * len(ids))
            sql = f"SELECT ts_ns FROM readings WHERE series_id IN ({marks}) AND ts_ns > ?"
            stop = threading.Event()

            def publish() -> None:
                try:
                    run_publisher(broker.port, sc, count, 0.0, rate=rate)
                finally:
                    stop.set()  # a failed publisher must not leave the poll below waiting

            pub = threading.Thread(target=publish)
            pub.start()
            newest = 0
            conn = reader.conns[0]
            deadline_after_stop = None
            while len(latencies) < count:
                rows = conn.execute(sql, [*ids, newest]).fetchall()
                seen = time.time_ns()
                if rows:
                    ts = [r[0] for r in rows]
                    latencies.extend((seen - t) / 1e9 for t in ts)
                    newest = max(newest, *ts)
                if stop.is_set():
                    deadline_after_stop = deadline_after_stop or time.monotonic() + 30
                    if time.monotonic() > deadline_after_stop:
                        break
                time.sleep(LATENCY_POLL_S)
            pub.join()
        finally:
            reader.close()
            svc.stop()
    lat = np.asarray(latencies)
    p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
    return {
        "rate": rate,
        "published": count,
        "seen": len(latencies),
        "p50_commit_s": p50,
        "p99_commit_s": p99,
    }


# -- report -------------------------------------------------------------------------------


def summarise(results: list[Result]) -> list[dict[str, Any]]:
    by_round: dict[tuple[str, int], Result] = {(r.scenario, r.round): r for r in results}
    rows = []
    for sc in SCENARIOS:
        runs = [r for r in results if r.scenario == sc.name]
        if not runs:
            continue
        rates = [r.rate for r in runs]
        ratios = [
            r.rate / by_round[(sc.bare_peer, r.round)].rate
            for r in runs
            if (sc.bare_peer, r.round) in by_round
        ]
        shares = [r.check_cpu_share for r in runs if r.check_cpu_share is not None]
        one = _one_worker_peer(sc)
        per_worker = [
            r.rate / by_round[(one, r.round)].rate
            for r in runs
            if one is not None and (one, r.round) in by_round
        ]
        rows.append(
            {
                "scenario": sc.name,
                "unit": "samples/s" if sc.blocks else "readings/s",
                "runs": len(runs),
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "ratio_to_bare": statistics.median(ratios) if ratios else None,
                "bare_peer": sc.bare_peer,
                "cpu_s_per_100k": statistics.median(r.cpu_per_100k for r in runs),
                "peak_rss_mb": max(r.rss_mb for r in runs),
                "lost": sum(r.lost for r in runs),
                "unexpected": sum(r.unexpected for r in runs),
                "duplicated": sum(r.duplicated for r in runs),
                "check_cpu_share": statistics.median(shares) if shares else None,
                "ratio_to_one_worker": statistics.median(per_worker) if per_worker else None,
            }
        )
    return rows


def _one_worker_peer(sc: Scenario) -> str | None:
    """The one-worker scenario of the same stream, for a scenario with several workers."""
    if sc.workers == 1:
        return None
    return next(
        (
            o.name
            for o in SCENARIOS
            if o.workers == 1 and (o.kind, o.protocol, o.mode) == (sc.kind, sc.protocol, sc.mode)
        ),
        None,
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'scenario':34} {'median':>10} {'min..max':>19} {'unit':10} {'x bare':>6} "
        f"{'CPU s/100k':>10} {'RSS MB':>7} {'lost':>5} {'dup':>5} {'check':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio_to_bare']:.2f}" if r["ratio_to_bare"] is not None else "-"
        share = f"{r['check_cpu_share']:.1%}" if r["check_cpu_share"] is not None else "-"
        print(
            f"{r['scenario']:34} {r['median']:10,.0f} {r['min']:9,.0f}..{r['max']:<9,.0f}"
            f"{r['unit']:10} {ratio:>6} {r['cpu_s_per_100k']:10.2f} {r['peak_rss_mb']:7.0f} "
            f"{r['lost']:5d} {r['duplicated']:5d} {share:>6}"
        )
    for r in rows:
        if r["ratio_to_one_worker"] is not None:
            print(
                f"{r['scenario']}: {r['ratio_to_one_worker']:.2f} x one worker on the same "
                "stream (median of the rounds' ratios)"
            )


@contextlib.contextmanager
def victoria(root: Path, wanted: bool) -> Iterator[Victoria | None]:
    if not wanted:
        yield None
        return
    vm = Victoria(root / "victoria")
    with vm.vm:
        yield vm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    ap.add_argument("--only", nargs="*", help="scenario names to run (default: all)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--workdir", type=Path, help="keep every run's files here (for debugging)")
    args = ap.parse_args(argv)
    # A SIGTERM to the harness must still stop the broker, VictoriaMetrics and the services
    # it started: they run in sessions of their own and would otherwise be left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    singles = QUICK_SINGLE if args.quick else SINGLE_MESSAGES
    blocks = QUICK_BLOCK if args.quick else BLOCK_MESSAGES
    live_s = QUICK_LIVE_SECONDS if args.quick else LIVE_SECONDS
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    print(
        f"{args.rounds} round(s) of {len(scenarios)} scenarios; {singles:,} single messages, "
        f"{blocks:,} blocks of 100 samples; {os.cpu_count()} CPUs",
        flush=True,
    )
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stadtpuls-bench-")))
        else:
            root = args.workdir
        for round_no in range(1, args.rounds + 1):
            for sc in scenarios:
                count = blocks if sc.blocks else singles
                r = run_once(root, sc, round_no, count)
                results.append(r)
                print(
                    f"round {round_no} {sc.name:34} {r.rate:10,.0f}/s  "
                    f"{r.seconds:6.2f} s  CPU {r.cpu_per_100k:5.2f} s/100k  "
                    f"RSS {r.rss_mb:4.0f} MB  lost {r.lost} dup {r.duplicated}",
                    flush=True,
                )
        rows = summarise(results)
        latency: dict[str, Any] | None = None
        sqlite5 = [r.rate for r in results if r.scenario == "stadtpuls-sqlite-mqtt5"]
        if sqlite5 and statistics.median(sqlite5) > 0 and not args.no_latency:
            latency = run_latency(root, statistics.median(sqlite5) / 2, live_s)
    print()
    print_table(rows)
    if latency is not None:
        print(
            f"\nlatency at {latency['rate']:,.0f} readings/s for {live_s:.0f} s: "
            f"p50 {latency['p50_commit_s'] * 1000:.0f} ms, "
            f"p99 {latency['p99_commit_s'] * 1000:.0f} ms (publish to commit, seen from "
            f"outside by polling every {LATENCY_POLL_S * 1000:.0f} ms; "
            f"{latency['seen']} of {latency['published']} seen)"
        )
    summary: dict[str, Any] = {
        "method": "live-fed, subscriber in its own process, store polled from outside",
        "rounds": args.rounds,
        "quick": args.quick,
        "scenarios": {
            r["scenario"]: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in rows
        },
        "runs": [
            {
                "scenario": r.scenario,
                "round": r.round,
                "rate": round(r.rate),
                "seconds": round(r.seconds, 3),
                "readings": r.readings,
            }
            for r in results
        ],
    }
    sq = next((r for r in rows if r["scenario"] == "stadtpuls-sqlite-mqtt5"), None)
    if sq is not None:
        summary["single_readings_per_s"] = round(sq["median"])
        summary["single_ratio"] = sq["ratio_to_bare"] and round(sq["ratio_to_bare"], 3)
        summary["check_cpu_share"] = sq["check_cpu_share"] and round(sq["check_cpu_share"], 4)
    if latency is not None:
        summary["p50_commit_s"] = round(latency["p50_commit_s"], 4)
        summary["p99_commit_s"] = round(latency["p99_commit_s"], 4)
        summary["latency_rate"] = round(latency["rate"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
