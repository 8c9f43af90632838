"""The baseline subscriber of `bench.throughput`: paho 2.x, persistent session, QoS 1, and
nothing but a count of messages.

    python -m bench.baresub --port P --protocol 4|5 --count N --client-id ID --dir DIR

A module of its own so that the process imports paho and the standard library only, and
its memory and CPU are paho's, not the harness's. The harness creates the session and its
subscriptions beforehand, so being connected is being subscribed: ``DIR/bare.ready`` is
written on CONNACK. When the count is reached, ``DIR/bare.done`` gets the
``time.monotonic_ns()`` of that moment; on SIGTERM it disconnects and writes the final
count to ``DIR/bare.final`` (more than N means redeliveries).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench.baresub")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--protocol", type=int, choices=[4, 5], required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    out: Path = args.dir
    version = MQTTProtocolVersion.MQTTv5 if args.protocol == 5 else MQTTProtocolVersion.MQTTv311
    kwargs: dict[str, Any] = {}
    if args.protocol == 4:
        kwargs["clean_session"] = False
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=version, **kwargs
    )
    received = [0]

    def on_connect(*_: object) -> None:
        (out / "bare.ready").write_text("ready")

    def on_message(*_: object) -> None:
        received[0] += 1
        if received[0] == args.count:
            done = {"done_ns": time.monotonic_ns(), "received": received[0]}
            (out / "bare.done").write_text(json.dumps(done))

    def on_term(*_: object) -> None:
        client.disconnect()

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, on_term)
    if args.protocol == 5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", args.port, clean_start=False, properties=props)
    else:
        client.connect("127.0.0.1", args.port)
    client.loop_forever()
    (out / "bare.final").write_text(json.dumps({"received": received[0]}))


if __name__ == "__main__":
    main()
