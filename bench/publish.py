"""Benchmark publisher, run as its own process so it does not share the GIL with the
subscriber under test.

    python -m bench.publish --port P --mode single|block|live --count N [--rate R]

``single``: one SenML reading per message; ``sites``: the same spread round robin over
``SITES`` bridges (for several workers, which share the stream by site); ``block``: native
blocks of 100 samples at 100 Hz; ``live``: one reading per message whose device time is the
moment of publishing, paced at ``--rate``, so the subscriber can measure publish-to-commit
latency.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

DEVICES = 20
GAUGES = 5
SITES = 300


def site_id(n: int) -> str:
    return f"bench-{n:03d}"


def sites(seq: int, base_s: float) -> tuple[str, bytes]:
    gauge = (seq // SITES) % GAUGES + 1
    record = {"bn": "sg00/", "bt": base_s + seq / 1000, "n": f"g{gauge}/strain", "v": 1.5}
    return f"stadtpuls/bridge/{site_id(seq % SITES)}/sg00", json.dumps([record]).encode()


def topic(seq: int) -> tuple[str, str]:
    device = f"sg{seq % DEVICES:02d}"
    return f"stadtpuls/bridge/bench/{device}", device


def single(seq: int, base_s: float) -> tuple[str, bytes]:
    t, device = topic(seq)
    gauge = (seq // DEVICES) % GAUGES + 1
    record = {"bn": f"{device}/", "bt": base_s + seq / 1000, "n": f"g{gauge}/strain", "v": 1.5}
    return t, json.dumps([record]).encode()


def block(seq: int, base_s: float) -> tuple[str, bytes]:
    t, device = topic(seq)
    t0 = base_s + (seq // DEVICES) * 1.0
    samples = [round(100 + 20 * ((i * 7919) % 100) / 100, 3) for i in range(100)]
    body = {"device": device, "t0": t0, "dt": 0.01, "series": {"g1/strain": samples}}
    return t, json.dumps(body).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["single", "sites", "block", "live"], required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--base-s", type=float, default=0.0)
    args = ap.parse_args()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{args.mode}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(200)
    done = threading.Condition()
    acked = [0]

    def on_publish(*_: object) -> None:
        with done:
            acked[0] += 1
            done.notify_all()

    client.on_publish = on_publish
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    started = time.monotonic()
    seq = 0
    while seq < args.count:
        if args.mode == "live":
            due = started + seq / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the load
            t, device = topic(seq)
            record = {"bn": f"{device}/", "bt": time.time(), "n": "g1/strain", "v": 2.5}
            payload = json.dumps([record]).encode()
        elif args.mode == "single":
            t, payload = single(seq, args.base_s)
        elif args.mode == "sites":
            t, payload = sites(seq, args.base_s)
        else:
            t, payload = block(seq, args.base_s)
        info = client.publish(t, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            sent = seq
            with done:  # too many unacknowledged: wait for PUBACKs, then send it again
                done.wait_for(lambda: sent - acked[0] < 1000, timeout=5)  # noqa: B023
            continue
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SystemExit(f"publish failed: {mqtt.error_string(info.rc)}")
        seq += 1
    with done:
        if not done.wait_for(lambda: acked[0] >= args.count, timeout=120):
            raise SystemExit(f"only {acked[0]} of {args.count} acknowledged")
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": args.count, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
