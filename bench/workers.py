"""Several ingest workers: how throughput grows with the number of worker processes,
measured as the **drain of a queued session** (it leaves out filling the pipeline while a
publisher is still sending; ``make bench`` times 2 workers fed live).

Method. The stream (single-reading SenML messages spread round robin over ``SITES``
bridges) is published once, after every configuration's sessions exist, so each
configuration drains the same stream queued in its own persistent sessions, as
``bench.run`` does for one service. Each worker is a process of its own (threads would
share the GIL) running the full pipeline with SQLite; the workers build their service,
meet at a barrier and connect together. The rate runs from the first commit of any worker
to the last commit of all of them. Sites are shared by the hash of their id, so shares are
not exactly equal: the largest is printed, because the slowest worker sets the pace.

    python -m bench.workers            # its own broker; prints one JSON object last
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.publish import GAUGES, SITES, site_id
from devices.partition import site_owner
from devices.registry import Registry, parse_registry
from ingest.batch import ReadingBatch
from stadtpuls.broker import MosquittoBroker
from stadtpuls.service import Service
from stadtpuls.settings import Settings, load_settings
from stadtpuls.workers import worker_share

MESSAGES = 150_000
WORKER_COUNTS = (1, 2, 3)


def registry_yaml() -> str:
    channels = ", ".join(f"g{g}: [strain]" for g in range(1, GAUGES + 1))
    return "sites:\n" + "".join(
        f"  {site_id(n)}:\n    kind: bridge\n    name: Bench bridge {n}\n    devices:\n"
        f"      sg00:\n        interval: 1s\n        channels: {{{channels}}}\n"
        for n in range(SITES)
    )


def settings_for(root: Path, port: int, index: int, count: int) -> Settings:
    return load_settings(
        None,
        registry=root / "registry.yaml",
        data_dir=root / f"workers-{count}",
        log_level="WARNING",
        mqtt={"host": "127.0.0.1", "port": port, "client_id": f"bench-workers-{count}"},
        http={"host": "127.0.0.1", "port": 0},
        worker={"index": index, "count": count},
    )


def share_of_stream(index: int, count: int) -> int:
    """Messages of the stream on the sites worker ``index`` of ``count`` owns."""
    return sum(
        len(range(n, MESSAGES, SITES))
        for n in range(SITES)
        if site_owner(site_id(n), count) == index
    )


def queue_session(port: int, client_id: str, topics: list[str]) -> None:
    """Create a persistent session with a worker's subscriptions, then leave."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe([(t, 1) for t in topics])
    client.publish("bench/ping", b"", qos=1).wait_for_publish(10)  # the SUBSCRIBE is done
    client.disconnect()
    client.loop_stop()


class CommitClock:
    """A batch listener noting the first and last commit. ``time.monotonic`` is
    CLOCK_MONOTONIC on Linux, one clock for all processes, so workers' times compare."""

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0
        self.total = 0
        self.cond = threading.Condition()

    def batch_committed(self, batch: ReadingBatch) -> None:
        now = time.monotonic()
        with self.cond:
            self.first = self.first or now
            self.last = now
            self.total += len(batch)
            self.cond.notify_all()


def run_worker(
    root: Path,
    port: int,
    index: int,
    count: int,
    barrier: Any,
    results: Any,
) -> None:
    settings = settings_for(root, port, index, count)
    registry: Registry = parse_registry(registry_yaml())
    clock = CommitClock()
    service = Service(settings, registry, listeners=[clock])
    expected = share_of_stream(index, count)
    barrier.wait()
    service.start()
    with clock.cond:
        done = clock.cond.wait_for(lambda: clock.total >= expected, 300)
    service.stop()
    results.put((index, clock.first, clock.last, clock.total, expected, done))


def measure(port: int, root: Path, counts: tuple[int, ...] = WORKER_COUNTS) -> dict[str, Any]:
    """Readings/s for each worker count on a broker at ``port`` (no other subscribers)."""
    from bench.run import publish  # here: bench.run imports this module

    root.mkdir(parents=True, exist_ok=True)
    (root / "registry.yaml").write_text(registry_yaml())
    registry = parse_registry(registry_yaml())
    for count in counts:
        for index in range(count):
            share = worker_share(settings_for(root, port, index, count), registry)
            queue_session(port, share.client_id, share.subscriptions)
    print(f"queueing {MESSAGES} single-reading messages over {SITES} sites ...", flush=True)
    publish(port, "sites", MESSAGES)

    ctx = mp.get_context("spawn")  # a clean interpreter per worker, as in production
    rates: dict[int, float] = {}
    largest_share: dict[int, float] = {}
    for count in counts:
        barrier = ctx.Barrier(count)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=run_worker, args=(root, port, i, count, barrier, results))
            for i in range(count)
        ]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
        if not all(o[5] for o in outcomes):
            raise RuntimeError(f"{count} workers: some did not store their share: {outcomes}")
        total = sum(o[3] for o in outcomes)
        rates[count] = total / (max(o[2] for o in outcomes) - min(o[1] for o in outcomes))
        largest_share[count] = max(o[4] for o in outcomes) / MESSAGES
        print(
            f"{count} worker(s), draining queued sessions: {rates[count]:10,.0f} readings/s "
            f"({rates[count] / rates[counts[0]]:.2f}x of {counts[0]}; "
            f"largest share {largest_share[count]:.0%} of the stream)",
            flush=True,
        )
    return {
        "workers_readings_per_s": {str(n): round(r) for n, r in rates.items()},
        "workers_ratio": {str(n): round(r / rates[counts[0]], 2) for n, r in rates.items()},
        "workers_largest_share": {str(n): round(s, 3) for n, s in largest_share.items()},
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="stadtpuls-bench-workers-") as tmp:
        root = Path(tmp)
        with MosquittoBroker(root / "broker", persistence=False) as broker:
            results = measure(broker.port, root)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
