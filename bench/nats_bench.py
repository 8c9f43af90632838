"""Ingest on a NATS cluster beside ingest from one Mosquitto, in one run: readings/s with
1 and 2 workers on each, and what the brokers cost per reading.

Method, as ``make bench`` (``bench.throughput``): every run gets fresh servers (one
Mosquitto, or three NATS nodes with JetStream, the MQTT listener, replicas 3 and the
partition mapping, after ``stadtpuls nats setup``) and fresh ``stadtpuls run`` processes
with SQLite, each worker with its own database. The raw-socket publisher
(``bench.rawpub``; MQTT 3.1.1, as NATS speaks no MQTT 5; QoS 1; 1,000 in flight, as many
devices together keep) sends single-reading SenML messages round robin over 300 bridge
sites to Mosquitto, or to the first NATS node, once the workers are up (on NATS: once they
have counted each other). The time runs from the first PUBLISH until the databases,
polled from outside, hold every reading; then every key is compared with what was sent.
CPU is read from /proc, of the workers and of the broker processes (Mosquitto, or the
three NATS nodes together), per 100k readings. The setups interleave over the rounds;
ratios are to the first setup (one worker on Mosquitto) in the same round.

    python -m bench.nats_bench [--rounds 2] [--count 40000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.throughput import (
    Result,
    Scenario,
    SqliteReader,
    Stadtpuls,
    await_store,
    compare,
    cpu_seconds,
    create_session,
    expected_keys,
    peak_rss_mb,
    run_publisher,
)
from bench.workers import registry_yaml
from devices.registry import parse_registry
from ingest.nats_source import NatsSubjects
from stadtpuls.broker import MosquittoBroker
from stadtpuls.cli.nats import prepare
from stadtpuls.natscluster import NatsCluster
from stadtpuls.settings import load_settings
from stadtpuls.workers import worker_share

COUNT = 40_000
ROUNDS = 2
PARTITIONS = 32
# A city's devices together keep many messages in flight; one connection stands in for
# them. With 100, NATS' replicated store (a majority's write before each PUBACK) bounds the
# rate by the round trip rather than by any process's work.
INFLIGHT = 1000


@dataclass(frozen=True)
class Setup:
    name: str
    source: str  # mqtt or nats
    workers: int


SETUPS = [
    Setup("mqtt-mosquitto-1worker", "mqtt", 1),
    Setup("mqtt-mosquitto-2workers", "mqtt", 2),
    Setup("nats-3nodes-1worker", "nats", 1),
    Setup("nats-3nodes-2workers", "nats", 2),
]


def config(workdir: Path, setup: Setup, mqtt_port: int, servers: list[str]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "registry": "../registry.yaml",
        "data_dir": "data",
        "log_level": "WARNING",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "protocol": "3.1.1",
                 "client_id": "bench-ingest"},
        "http": {"host": "127.0.0.1", "port": 0},
        "alerts": {"enabled": False},
    }  # fmt: skip
    if setup.source == "nats":
        settings["source"] = "nats"
        settings["nats"] = {"servers": servers, "partitions": PARTITIONS}
    path = workdir / "stadtpuls.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@contextlib.contextmanager
def brokers(workdir: Path, setup: Setup) -> Iterator[tuple[int, list[int], list[str]]]:
    """The MQTT port devices publish to, the broker processes' pids and NATS' URLs."""
    if setup.source == "mqtt":
        with MosquittoBroker(workdir / "broker", persistence=True) as broker:
            assert broker.pid is not None
            yield broker.port, [broker.pid], []
        return
    cluster = NatsCluster(workdir / "nats", NatsSubjects("stadtpuls", PARTITIONS))
    with cluster:
        pids = [n.pid for n in cluster.nodes if n.pid is not None]
        yield cluster.nodes[0].mqtt_port, pids, cluster.servers


def run_once(root: Path, setup: Setup, round_no: int, count: int) -> tuple[Result, float]:
    workdir = root / f"r{round_no}-{setup.name}"
    workdir.mkdir(parents=True)
    (workdir / "registry.yaml").write_text(registry_yaml())
    registry = parse_registry(registry_yaml())
    base_s = int(time.time()) - 3600 + 0.0005
    expected, tail = expected_keys("sites", count, base_s)
    sc = Scenario(setup.name, "sqlite", 4, "sites", workers=setup.workers)
    with brokers(workdir, setup) as (port, broker_pids, servers):
        procs: list[Stadtpuls] = []
        dbs: list[Path] = []
        for i in range(setup.workers):
            wdir = workdir / f"w{i}"
            path = config(wdir, setup, port, servers)
            if setup.source == "nats":
                if i == 0:
                    prepare(load_settings(path))
                procs.append(Stadtpuls(wdir, path, None))
                dbs.append(wdir / "data" / "stadtpuls.db")
            else:
                w = (i, setup.workers) if setup.workers > 1 else None
                overrides = {"worker": {"index": i, "count": setup.workers}} if w else {}
                share = worker_share(load_settings(path, **overrides), registry)
                create_session(port, 4, share.client_id, share.subscriptions)
                procs.append(Stadtpuls(wdir, path, w))
                sub = f"worker-{i}/" if w else ""
                dbs.append(wdir / "data" / f"{sub}stadtpuls.db")
        reader = SqliteReader(dbs)
        try:
            for p in procs:
                p.start()
            if setup.source == "nats":
                deadline = time.monotonic() + 30
                while any(p.metric("stadtpuls_nats_workers") < setup.workers for p in procs):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the NATS workers did not see each other")
                    time.sleep(0.1)
            pids = [p.pid for p in procs if p.pid is not None]
            cpu0 = sum(cpu_seconds(pid) for pid in pids)
            broker0 = sum(cpu_seconds(pid) for pid in broker_pids)
            reader.open()
            result: dict[str, Any] = {}
            pub = threading.Thread(
                target=lambda: result.update(
                    run_publisher(port, sc, count, base_s, inflight=INFLIGHT)
                )
            )
            pub.start()
            done_ns, n = await_store(tail, len(expected), reader.present, reader.count)
            pub.join()
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
            broker_cpu = sum(cpu_seconds(pid) for pid in broker_pids) - broker0
            rss = max(peak_rss_mb(pid) for pid in pids)
            stored = reader.keys()
            received = sum(p.metric("stadtpuls_messages_received_total") for p in procs)
        finally:
            reader.close()
            for p in procs:
                p.stop()
    lost, unexpected, duplicated = compare(expected, stored, max(0, int(received) - count))
    seconds = (done_ns - result["first_publish_ns"]) / 1e9
    readings = len(expected)
    r = Result(
        setup.name, round_no, n, seconds, n / seconds, cpu / readings * 1e5, rss,
        lost, unexpected, duplicated,
    )  # fmt: skip
    return r, broker_cpu / readings * 1e5


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench.nats_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--count", type=int, default=COUNT)
    ap.add_argument("--workdir", type=Path, help="keep every run's files here")
    ap.add_argument("--only", nargs="*", choices=[s.name for s in SETUPS], help="these setups")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setups = [s for s in SETUPS if not args.only or s.name in args.only]
    print(f"{args.rounds} round(s) of {len(setups)} setups; {args.count:,} messages", flush=True)
    runs: list[tuple[Result, float]] = []
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="stadtpuls-nats-bench-"))
        )
        for round_no in range(1, args.rounds + 1):
            for setup in setups:
                r, broker = run_once(root, setup, round_no, args.count)
                runs.append((r, broker))
                print(
                    f"round {round_no} {setup.name:26} {r.rate:9,.0f}/s {r.seconds:6.2f} s  "
                    f"workers CPU {r.cpu_per_100k:5.2f} s/100k  broker CPU {broker:5.2f} s/100k  "
                    f"lost {r.lost} dup {r.duplicated}",
                    flush=True,
                )
    base = {r.round: r.rate for r, _ in runs if r.scenario == setups[0].name}
    rows = []
    for setup in setups:
        mine = [(r, b) for r, b in runs if r.scenario == setup.name]
        rates = [r.rate for r, _ in mine]
        rows.append(
            {
                "setup": setup.name,
                "readings_per_s": round(statistics.median(rates)),
                "min": round(min(rates)),
                "max": round(max(rates)),
                "ratio_to_first": round(
                    statistics.median(r.rate / base[r.round] for r, _ in mine), 3
                ),
                "worker_cpu_s_per_100k": round(
                    statistics.median(r.cpu_per_100k for r, _ in mine), 2
                ),
                "broker_cpu_s_per_100k": round(statistics.median(b for _, b in mine), 2),
                "peak_rss_mb": round(max(r.rss_mb for r, _ in mine)),
                "lost": sum(r.lost for r, _ in mine),
                "duplicated": sum(r.duplicated for r, _ in mine),
            }
        )
    print()
    head = (
        f"{'setup':26} {'readings/s':>10} {'min..max':>17} {'x first':>9} "
        f"{'workers CPU':>11} {'broker CPU':>10} {'lost':>5} {'dup':>5}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['setup']:26} {row['readings_per_s']:10,} {row['min']:8,}..{row['max']:<8,}"
            f"{row['ratio_to_first']:9.2f} {row['worker_cpu_s_per_100k']:11.2f} "
            f"{row['broker_cpu_s_per_100k']:10.2f} {row['lost']:5d} {row['duplicated']:5d}"
        )
    print("(CPU: seconds per 100k readings; broker: Mosquitto, or the three NATS nodes together)")
    print(json.dumps({"method": "live-fed, MQTT 3.1.1 QoS 1, store polled from outside",
                      "rounds": args.rounds, "count": args.count, "setups": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
