"""``make bench``: end-to-end throughput and latency on a real Mosquitto.

Method. Each subscriber under test gets the same stream, queued in its persistent session
before it connects, so the figure is how fast it drains the broker, not how fast one
publisher can feed it (on 2 cores a publisher in the same run would take CPU from the
subscriber). The bare subscriber is paho 2.x counting messages at QoS 1; the service is
``stadtpuls``' own pipeline (decode, validate, anomaly check, SQLite commit, then
acknowledgement). Rates are measured from the first to the last message (bare) or commit
(service). Latency is measured separately with a live publisher at half the measured
service rate: each reading's device time is its publish time, and a batch listener notes
the time of its commit. The last line printed is one JSON object.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.publish import DEVICES, GAUGES
from bench.workers import measure as measure_workers
from devices.registry import parse_registry
from devices.topics import TopicScheme
from ingest.batch import ReadingBatch
from stadtpuls.broker import MosquittoBroker
from stadtpuls.service import Service
from stadtpuls.settings import load_settings

SINGLE_MESSAGES = 150_000
BLOCK_MESSAGES = 4_000
LIVE_SECONDS = 12.0
TOPICS = TopicScheme().subscriptions()  # the service's own filters


def registry_yaml() -> str:
    channels = ", ".join(f"g{g}: [strain]" for g in range(1, GAUGES + 1))
    devices = "\n".join(
        f"      sg{d:02d}:\n        interval: 1s\n        channels: {{{channels}}}"
        for d in range(DEVICES)
    )
    return f"sites:\n  bench:\n    kind: bridge\n    name: Bench bridge\n    devices:\n{devices}\n"


def session(port: int, client_id: str) -> None:
    """Create a persistent session with the service's subscriptions, then leave."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe([(t, 1) for t in TOPICS])[1]
    info = client.publish("bench/ping", b"", qos=1)  # a round trip: the SUBSCRIBE is done
    info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def publish(port: int, mode: str, count: int, rate: float = 0.0) -> dict[str, Any]:
    base_s = time.time() - 3600
    out = subprocess.run(
        [sys.executable, "-m", "bench.publish", "--port", str(port), "--mode", mode,
         "--count", str(count), "--rate", str(rate), "--base-s", str(base_s)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bare_rate(port: int, expected: int) -> float:
    times: list[float] = []
    done = threading.Event()

    def on_message(*_: object) -> None:
        times.append(time.perf_counter())
        if len(times) >= expected:
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"bare subscriber got {len(times)} of {expected}")
    client.disconnect()
    client.loop_stop()
    return (len(times) - 1) / (times[-1] - times[0])


class Recorder:
    """A batch listener noting commit times, and latencies from the readings' device time."""

    def __init__(self) -> None:
        self.commits: list[tuple[float, int]] = []
        self.latencies: list[np.ndarray] = []
        self.total = 0
        self.lock = threading.Condition()

    def batch_committed(self, batch: ReadingBatch) -> None:
        now_ns = time.time_ns()
        with self.lock:
            self.commits.append((time.perf_counter(), len(batch)))
            self.latencies.append((now_ns - batch.ts_ns) / 1e9)
            self.total += len(batch)
            self.lock.notify_all()

    def wait_for(self, n: int, timeout: float) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: self.total >= n, timeout):
                raise RuntimeError(f"service stored {self.total} of {n}")

    def rate(self) -> float:
        (t0, n0), (t1, _) = self.commits[0], self.commits[-1]
        return (self.total - n0) / (t1 - t0)


def service(workdir: Path, port: int, client_id: str, recorder: Recorder) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "registry.yaml").write_text(registry_yaml())
    settings = load_settings(
        None,
        registry=workdir / "registry.yaml",
        data_dir=workdir / "data",
        log_level="WARNING",
        mqtt={"host": "127.0.0.1", "port": port, "client_id": client_id},
        http={"host": "127.0.0.1", "port": 0},
    )
    registry = parse_registry(registry_yaml())
    svc = Service(settings, registry, listeners=[recorder])
    svc.start()
    return svc


def main() -> None:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="stadtpuls-bench-") as tmp:
        root = Path(tmp)
        with MosquittoBroker(root / "broker", persistence=False) as broker:
            port = broker.port
            for cid in ("bench-bare", "bench-single"):
                session(port, cid)

            print(f"queueing {SINGLE_MESSAGES} single-reading messages ...", flush=True)
            publish(port, "single", SINGLE_MESSAGES)
            bare = bare_rate(port, SINGLE_MESSAGES)
            print(f"bare paho subscriber (QoS 1):   {bare:10,.0f} msg/s", flush=True)

            rec = Recorder()
            cpu_before = time.process_time()
            svc = service(root / "single", port, "bench-single", rec)
            rec.wait_for(SINGLE_MESSAGES, 300)
            single_rate = rec.rate()
            cpu_s = time.process_time() - cpu_before
            check_s = svc.metrics.registry.get_sample_value("stadtpuls_check_seconds_total") or 0.0
            svc.stop()
            print(
                f"stadtpuls, single readings:     {single_rate:10,.0f} readings/s "
                f"({single_rate / bare:.0%} of bare); anomaly check {check_s / cpu_s:.1%} "
                "of the process's CPU",
                flush=True,
            )

            print(f"queueing {BLOCK_MESSAGES} blocks of 100 samples ...", flush=True)
            session(port, "bench-blocks")
            publish(port, "block", BLOCK_MESSAGES)
            rec_b = Recorder()
            svc = service(root / "blocks", port, "bench-blocks", rec_b)
            rec_b.wait_for(BLOCK_MESSAGES * 100, 300)
            block_rate = rec_b.rate()
            svc.stop()
            print(f"stadtpuls, 100-sample blocks:   {block_rate:10,.0f} samples/s", flush=True)

            session(port, "bench-live")  # subscribed before the first live message
            live_rate = single_rate / 2
            count = int(live_rate * LIVE_SECONDS)
            rec_l = Recorder()
            svc = service(root / "live", port, "bench-live", rec_l)
            svc.subscriber.wait_connected(10)
            publish(port, "live", count, rate=live_rate)
            rec_l.wait_for(count, 120)
            svc.stop()
            lat = np.concatenate(rec_l.latencies)
            p50, p99 = (float(x) for x in np.percentile(lat, [50, 99]))
            print(
                f"latency at {live_rate:,.0f} msg/s:  p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms (publish to commit)",
                flush=True,
            )
        # Its own broker: the sessions above would queue the stream too.
        with MosquittoBroker(root / "broker-workers", persistence=False) as broker:
            scale_out = measure_workers(broker.port, root / "workers")
    gc.collect()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the benchmark process (service inside): {peak_mb:.0f} MB")
    results = {
        "single_readings_per_s": round(single_rate),
        "bare_msgs_per_s": round(bare),
        "single_ratio": round(single_rate / bare, 3),
        "block_samples_per_s": round(block_rate),
        "p50_commit_s": round(p50, 4),
        "p99_commit_s": round(p99, 4),
        "peak_rss_mb": round(peak_mb, 1),
        "check_cpu_share": round(check_s / cpu_s, 4),
        **scale_out,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
