"""The soak: the service for an hour at about half its maximum single-reading rate, with
faults sprinkled in, watching for anything that grows.

    python -m bench.soak [--minutes 60] [--streams 4] [--rate 1000] [--out bench-results/soak]

A private Mosquitto, the service as a real process with the SQLite store, and ``--streams``
load generators (each its own process and bridge, ``--rate`` readings/s, device time =
wall time, one run per minute back to back) publish at QoS 1. The 4,000 readings/s of the
defaults are about half of what ``make bench`` measures for single readings. A probe
publishes one reading every second and notes when it is visible in the store: the
publish-to-commit latency. Every ``--fault-every`` minutes one fault, in turn: the broker
restarted, the service killed with SIGKILL and restarted, the broker killed. Every 10 s
the service's RSS, its pending (received, unacknowledged) messages and the latency go to
``samples.csv``; at the end a plot (``soak.png``), a summary and one JSON line with the
RSS trend (MB per hour, from a least-squares line over the second half, after warm-up)
and the readings lost (acknowledged but not stored).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.faults import Load, start_load
from stadtpuls.broker import MosquittoBroker
from tests.support.service import ServiceProcess

NS = 1_000_000_000


def registry_yaml(streams: int) -> str:
    lines = ["sites:"]
    for i in range(streams + 1):  # the last one is the probe's
        lines += [
            f"  soak-{i}:", "    kind: bridge", f"    name: Soak {i}", "    devices:",
            "      sg1:", "        interval: 1s", "        channels: {g1: [strain]}",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    pending: float
    latency_s: float | None
    fault: str = ""


@dataclass
class Probe:
    """One reading a second on its own site; its latency is publish to visible in SQLite."""

    port: int
    db: Path
    site: str
    latencies: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="soak-probe", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        topic = f"stadtpuls/bridge/{self.site}/sg1"
        try:
            while not self._stop.wait(1.0):
                sent = time.time()
                ts_ms = time.time_ns() // 1_000_000  # whole milliseconds survive the float
                body = json.dumps([{"bn": "sg1/", "bt": ts_ms / 1000, "n": "g1/strain", "v": 1.0}])
                client.publish(topic, body, qos=1)
                deadline = sent + 30
                while time.time() < deadline and not self._stop.is_set():
                    if self._stored(ts_ms * 1_000_000):
                        self.latencies.append((sent, time.time() - sent))
                        break
                    time.sleep(0.05)  # polling the store, the only way to see the commit
        finally:
            client.disconnect()
            client.loop_stop()

    def _stored(self, ts_ns: int) -> bool:
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
        except sqlite3.Error:
            return False
        try:
            row = conn.execute(
                "SELECT 1 FROM readings r JOIN series s ON s.id = r.series_id "
                "WHERE s.site = ? AND r.ts_ns = ?",
                (self.site, ts_ns),
            ).fetchone()
        except sqlite3.Error:
            row = None
        finally:
            conn.close()
        return row is not None

    def stop(self) -> None:
        self._stop.set()


def stored_count(db: Path, site: str) -> int:
    conn = sqlite3.connect(db)
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM readings r JOIN series s ON s.id = r.series_id WHERE s.site = ?",
            (site,),
        ).fetchone()
        return int(n)
    finally:
        conn.close()


def plot(samples: list[Sample], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    t = [s.t_s / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(t, [s.rss_mb for s in samples])
    axes[0].set_ylabel("service RSS (MB)")
    axes[1].plot(t, [s.pending for s in samples])
    axes[1].set_ylabel("pending messages")
    axes[2].plot(t, [s.latency_s if s.latency_s is not None else np.nan for s in samples], ".")
    axes[2].set_ylabel("publish to commit (s)")
    axes[2].set_xlabel("minutes")
    for s in samples:
        if s.fault:
            for ax in axes:
                ax.axvline(s.t_s / 60, color="red", alpha=0.3)
    axes[0].set_title("Soak: red lines mark faults")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1000.0, help="readings/s per stream")
    ap.add_argument("--fault-every", type=float, default=10.0, help="minutes")
    ap.add_argument("--out", type=Path, default=Path("bench-results/soak"))
    args = ap.parse_args()
    args.out = args.out.resolve()  # the service resolves relative paths against its settings
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    registry = args.out / "registry.yaml"
    registry.write_text(registry_yaml(args.streams))
    broker = MosquittoBroker(args.out / "broker")
    broker.start()
    svc = ServiceProcess(args.out / "service", broker.port, registry=str(registry))
    svc.start()
    probe = Probe(broker.port, svc.db, f"soak-{args.streams}")
    probe_thread = threading.Thread(target=probe.run, daemon=True)
    probe_thread.start()

    began = time.monotonic()
    end = began + args.minutes * 60
    per_load = int(args.rate * 60)
    loads: dict[int, list[tuple[Load, list[int] | None]]] = {i: [] for i in range(args.streams)}
    running: dict[int, Load] = {}
    next_base = {i: time.time_ns() // 1_000_000 for i in range(args.streams)}
    samples: list[Sample] = []
    faults = ["broker restarted", "service SIGKILL", "broker SIGKILL"]
    next_fault = began + args.fault_every * 60
    fault_index = 0
    next_sample = began
    print(
        f"soak: {args.minutes:g} min, {args.streams} streams x {args.rate:g}/s, "
        f"a fault every {args.fault_every:g} min; writing to {args.out}",
        flush=True,
    )
    try:
        while time.monotonic() < end:
            for i in range(args.streams):  # keep every stream publishing, back to back
                load = running.get(i)
                if load is None or load.proc.poll() is not None:
                    if load is not None:
                        loads[i].append((load, load.finish()))
                    base = max(next_base[i], time.time_ns() // 1_000_000 - 1000)
                    running[i] = start_load(
                        args.out / f"stream-{i}", broker.port, per_load, args.rate,
                        f"load-{len(loads[i])}", base_ms=base,
                        topic=f"stadtpuls/bridge/soak-{i}/sg1",
                    )  # fmt: skip
                    next_base[i] = base + per_load
            fault = ""
            if time.monotonic() >= next_fault:
                fault = faults[fault_index % len(faults)]
                fault_index += 1
                next_fault += args.fault_every * 60
                print(f"  {time.monotonic() - began:6.0f} s  fault: {fault}", flush=True)
                if fault == "broker restarted":
                    broker.restart()
                elif fault == "broker SIGKILL":
                    broker.kill()
                    broker.start()
                else:
                    svc.kill()
                    svc.start()
            if time.monotonic() >= next_sample or fault:
                next_sample += 10
                rss = 0.0
                try:
                    rss = psutil.Process(svc.pid).memory_info().rss / 2**20
                    pending = svc.metric("stadtpuls_pending_messages")
                except Exception:
                    pending = float("nan")
                recent = [lat for t, lat in probe.latencies if t > time.time() - 10]
                samples.append(
                    Sample(
                        time.monotonic() - began,
                        rss,
                        pending,
                        max(recent) if recent else None,
                        fault,
                    )
                )
                s = samples[-1]
                lat = "-" if s.latency_s is None else f"{s.latency_s:.2f} s"
                print(f"  {s.t_s:6.0f} s  RSS {s.rss_mb:6.1f} MB  pending {s.pending:8.0f}  "
                      f"latency {lat}", flush=True)  # fmt: skip
            time.sleep(1.0)  # the soak's own pace
        for i, load in running.items():
            loads[i].append((load, load.finish()))
    finally:
        probe.stop()
        probe_thread.join(timeout=40)
    # Everything acknowledged must be stored once the backlog is in.
    acked = {i: sum(len(a or []) for _, a in loads[i]) for i in loads}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if all(stored_count(svc.db, f"soak-{i}") >= acked[i] for i in acked):
            break
        time.sleep(1.0)  # waiting for the backlog to drain
    stored = {i: stored_count(svc.db, f"soak-{i}") for i in acked}
    svc.stop()
    broker.stop()

    with (args.out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_mb", "pending", "latency_s", "fault"])
        for s in samples:
            w.writerow([round(s.t_s, 1), round(s.rss_mb, 1), s.pending, s.latency_s, s.fault])
    plot(samples, args.out / "soak.png")
    half = [s for s in samples if s.t_s >= samples[-1].t_s / 2 and s.rss_mb > 0]
    slope = 0.0
    if len(half) >= 3:
        slope = float(np.polyfit([s.t_s / 3600 for s in half], [s.rss_mb for s in half], 1)[0])
    lats = [lat for _, lat in probe.latencies]
    result = {
        "minutes": args.minutes,
        "readings_per_s": args.streams * args.rate,
        "acked": sum(acked.values()),
        "stored": sum(stored.values()),
        "lost": sum(max(acked[i] - stored[i], 0) for i in acked),
        "faults": fault_index,
        "rss_mb_first": samples[0].rss_mb if samples else None,
        "rss_mb_last": samples[-1].rss_mb if samples else None,
        "rss_mb_max": max((s.rss_mb for s in samples), default=None),
        "rss_trend_mb_per_h_second_half": round(slope, 2),
        "latency_p50_s": round(float(np.percentile(lats, 50)), 3) if lats else None,
        "latency_p99_s": round(float(np.percentile(lats, 99)), 3) if lats else None,
        "plot": str(args.out / "soak.png"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
