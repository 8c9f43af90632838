"""A load generator run as a separate process: publishes numbered strain readings at QoS 1
and writes down which ones the broker acknowledged.

Reading ``seq`` of a run has device time ``base + seq`` milliseconds and value
``seq % 4000 - 2000`` microstrain, so a checker can tell from a stored row which
message it came from.

    python -m tests.support.loadgen --port P --count N --rate R --out acked.json

``--protocol 3.1.1`` for NATS' MQTT listener, which speaks no MQTT 5.

With ``--sites a,b,c`` reading ``seq`` goes to bridge site ``seq % 3`` of that list (same
device), for tests that spread one numbered stream over several sites.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion


@dataclass(frozen=True)
class Reading:
    seq: int
    ts_ns: int
    value: float


def reading(base_ms: int, seq: int) -> Reading:
    return Reading(seq, (base_ms + seq) * 1_000_000, float(seq % 4000 - 2000))


def payload(device: str, r: Reading) -> bytes:
    record = {"bn": f"{device}/", "bt": r.ts_ns / 1e9, "n": "g1/strain", "v": r.value}
    return json.dumps([record]).encode()


def site_topic(sites: list[str], seq: int, device: str) -> str:
    return f"stadtpuls/bridge/{sites[seq % len(sites)]}/{device}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topic", default="stadtpuls/bridge/b1/sg1")
    ap.add_argument("--device", default="sg1")
    ap.add_argument("--sites", default="", help="comma-separated bridge sites, round robin")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="messages per second")
    ap.add_argument("--base-ms", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    args = ap.parse_args()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"loadgen-{args.device}-{args.base_ms}",
        protocol=MQTTProtocolVersion.MQTTv5
        if args.protocol == "5"
        else MQTTProtocolVersion.MQTTv311,
    )
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    acked_mids: set[int] = set()
    acked = threading.Condition()

    # MQTTMessageInfo.is_published() raises for a message first queued while disconnected,
    # though paho does send it after reconnecting; the PUBACK callback tells the truth.
    def on_publish(_c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        with acked:
            acked_mids.add(mid)
            acked.notify_all()

    client.on_publish = on_publish
    client.connect(args.host, args.port)
    client.loop_start()
    if args.count > 65_000:
        raise SystemExit("packet ids repeat after 65535 messages; use fewer per run")
    sites = [s for s in args.sites.split(",") if s]
    mids: list[tuple[int, int]] = []
    start = time.monotonic()
    for seq in range(args.count):
        due = start + seq / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the load, not waiting for a condition
        topic = site_topic(sites, seq, args.device) if sites else args.topic
        info = client.publish(topic, payload(args.device, reading(args.base_ms, seq)), qos=1)
        # NO_CONN still queues a QoS 1 message in paho; it goes out on reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise SystemExit(f"publish {seq} failed: {mqtt.error_string(info.rc)}")
        mids.append((seq, info.mid))
    with acked:
        acked.wait_for(lambda: len(acked_mids) >= args.count, timeout=args.drain_timeout)
        acked_seqs = [seq for seq, mid in mids if mid in acked_mids]
    client.disconnect()
    client.loop_stop()
    args.out.write_text(json.dumps({"sent": args.count, "acked": acked_seqs}))


if __name__ == "__main__":
    main()
