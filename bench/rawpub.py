"""A raw-socket MQTT QoS 1 publisher for the benchmarks, cheap in CPU.

    python -m bench.rawpub --port P --mode single|sites|block|live --count N
                           [--protocol 4|5] [--inflight 100] [--rate R]

prints one JSON line: ``sent``, ``acked``, ``first_publish_ns``, ``last_puback_ns`` and
``seconds``. The two ``*_ns`` are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for
every process on the machine), so a harness can relate the first PUBLISH to the moment a
store held the last reading.

Method. paho spends several microseconds of Python per message on its own bookkeeping;
on 2 cores that CPU is taken from the subscriber under test. Here the packets are built
by hand (MQTT 3.1.1, protocol level 4, or MQTT 5, level 5, with an empty property block),
written in batches on one non-blocking socket and PUBACKs read in the same ``select``
loop, so there is no second thread competing for the GIL. At most ``inflight`` PUBLISHes
are unacknowledged; on MQTT 5 the broker's Receive Maximum from CONNACK caps it further.
Packet ids run 1..65535 and wrap; a PUBACK for an id that is not outstanding is an error,
as is a PUBACK whose MQTT 5 reason code is a failure (>= 0x80).

Payloads come from `bench.publish` (``single``, ``sites``, ``block``); ``live`` is one
reading per message whose device time is the wall time of publishing, paced at
``--rate``, for publish-to-store latency.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bench.publish import block, single, sites, topic

__all__ = ["MODES", "publish"]

MODES = ("single", "sites", "block", "live")
MAX_PACKET_ID = 65535
_CONNACK_TIMEOUT_S = 10.0
_STALL_TIMEOUT_S = 60.0  # no PUBACK for this long while some are outstanding: give up
_RECV_BYTES = 1 << 16

# MQTT 5 property identifiers and the width of their value (-1: UTF-8 string or binary
# data with a 2-byte length, -2: string pair, 0: variable byte integer). Needed only to
# skip over the CONNACK properties we do not use.
_PROPERTY_WIDTH = {
    0x01: 1, 0x02: 4, 0x03: -1, 0x08: -1, 0x09: -1, 0x0B: 0, 0x11: 4, 0x12: -1,
    0x13: 2, 0x15: -1, 0x16: -1, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: -1, 0x1C: -1,
    0x1F: -1, 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4,
    0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip
_RECEIVE_MAXIMUM = 0x21
_MAXIMUM_QOS = 0x24


class ProtocolError(RuntimeError):
    pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _read_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if ``buf`` ends inside it."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, len(buf))):
        value |= (buf[i] & 0x7F) << shift
        if not buf[i] & 0x80:
            return value, i + 1
        shift += 7
    if len(buf) - pos >= 4:
        raise ProtocolError("malformed remaining length")
    return None


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(client_id: str, protocol: int) -> bytes:
    # Clean session/start and keep alive 0: a benchmark connection is short and busy, and
    # with keep alive off no PINGREQ has to be interleaved with the stream.
    variable = _string("MQTT") + bytes([protocol, 0x02]) + struct.pack("!H", 0)
    if protocol == 5:
        variable += b"\x00"
    body = variable + _string(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic_name: str, payload: bytes, packet_id: int, protocol: int) -> bytes:
    variable = _string(topic_name) + struct.pack("!H", packet_id)
    if protocol == 5:
        variable += b"\x00"
    return b"\x32" + _varint(len(variable) + len(payload)) + variable + payload


def _connack_properties(body: bytes, pos: int) -> dict[int, int]:
    """The integer-valued CONNACK properties; strings and pairs are skipped."""
    parsed = _read_varint(body, pos)
    if parsed is None:
        raise ProtocolError("truncated CONNACK properties")
    length, pos = parsed
    end = pos + length
    props: dict[int, int] = {}
    while pos < end:
        ident = body[pos]
        pos += 1
        width = _PROPERTY_WIDTH.get(ident)
        if width is None:
            raise ProtocolError(f"unknown CONNACK property 0x{ident:02x}")
        if width > 0:
            props[ident] = int.from_bytes(body[pos : pos + width], "big")
            pos += width
        elif width == 0:
            parsed = _read_varint(body, pos)
            if parsed is None:
                raise ProtocolError("truncated CONNACK property")
            props[ident], pos = parsed
        else:
            for _ in range(-width):
                pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    return props


def _recv_packet(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """One whole packet, read blocking; only used before the stream starts."""
    buf = bytearray()
    while True:
        if len(buf) >= 2:
            parsed = _read_varint(buf, 1)
            if parsed is not None and len(buf) >= parsed[1] + parsed[0]:
                length, start = parsed
                if len(buf) > start + length:
                    raise ProtocolError("unexpected data after CONNACK")
                return buf[0], bytes(buf[start : start + length])
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(_RECV_BYTES)
        if not chunk:
            raise ProtocolError("broker closed the connection before CONNACK")
        buf += chunk


def _handshake(sock: socket.socket, client_id: str, protocol: int) -> int:
    """Connect; the broker's Receive Maximum (65535 when it states none)."""
    sock.sendall(connect_packet(client_id, protocol))
    kind, body = _recv_packet(sock, time.monotonic() + _CONNACK_TIMEOUT_S)
    if kind != 0x20 or len(body) < 2:
        raise ProtocolError(f"expected CONNACK, got packet type 0x{kind:02x}")
    if body[1] != 0:
        raise ProtocolError(f"connection refused, reason code 0x{body[1]:02x}")
    if protocol != 5:
        return MAX_PACKET_ID
    props = _connack_properties(body, 2)
    if props.get(_MAXIMUM_QOS, 2) < 1:
        raise ProtocolError("the broker does not accept QoS 1")
    return props.get(_RECEIVE_MAXIMUM, MAX_PACKET_ID)


def _payload_for(mode: str, base_s: float) -> Callable[[int], tuple[str, bytes]]:
    if mode == "live":

        def live(seq: int) -> tuple[str, bytes]:
            t, device = topic(seq)
            record = {"bn": f"{device}/", "bt": time.time(), "n": "g1/strain", "v": 2.5}
            return t, json.dumps([record]).encode()

        return live
    builder = {"single": single, "sites": sites, "block": block}[mode]
    return lambda seq: builder(seq, base_s)


def publish(
    port: int,
    *,
    mode: str,
    count: int,
    protocol: int = 5,
    inflight: int = 100,
    host: str = "127.0.0.1",
    rate: float = 0.0,
    client_id: str = f"bench-rawpub-{os.getpid()}",
    base_s: float | None = None,
) -> dict[str, Any]:
    """Publish ``count`` messages at QoS 1 and wait for every PUBACK.

    ``rate`` > 0 paces the PUBLISHes (required for ``live``); ``base_s`` is the device
    time of message 0 for the replayed modes (an hour ago when not given, inside any
    plausibility window).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if protocol not in (4, 5):
        raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5 (MQTT 5)")
    if mode == "live" and rate <= 0:
        raise ValueError("live mode needs a rate")
    if not 1 <= inflight <= MAX_PACKET_ID:
        raise ValueError("inflight must be 1..65535")
    payload_for = _payload_for(mode, time.time() - 3600 if base_s is None else base_s)

    sock = socket.create_connection((host, port), timeout=_CONNACK_TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        window = min(inflight, _handshake(sock, client_id, protocol))
        sock.setblocking(False)
        return _stream(sock, payload_for, count, protocol, window, rate)
    finally:
        sock.close()


def _stream(
    sock: socket.socket,
    payload_for: Callable[[int], tuple[str, bytes]],
    count: int,
    protocol: int,
    window: int,
    rate: float,
) -> dict[str, Any]:
    outstanding = bytearray(MAX_PACKET_ID + 1)  # 1 where a packet id awaits its PUBACK
    out = bytearray()
    inbuf = bytearray()
    sent = acked = 0
    first_ns = last_ack_ns = 0
    started = time.monotonic()
    last_progress = started
    while acked < count:
        now = time.monotonic()
        due = count if rate <= 0 else min(count, int((now - started) * rate) + 1)
        # Packets are appended for the whole open window and written in one send: one
        # system call per batch rather than per message keeps the publisher's CPU small.
        while sent < due and sent - acked < window:
            packet_id = sent % MAX_PACKET_ID + 1
            t, payload = payload_for(sent)
            out += publish_packet(t, payload, packet_id, protocol)
            outstanding[packet_id] = 1
            sent += 1
        if out:
            if not first_ns:
                first_ns = time.monotonic_ns()
            try:
                n = sock.send(out)
            except BlockingIOError:
                n = 0
            del out[:n]
        timeout = _STALL_TIMEOUT_S
        if sent < count and rate > 0 and sent - acked < window:
            timeout = max(0.0, started + sent / rate - time.monotonic())
        readable, _, _ = select.select([sock], [sock] if out else [], [], timeout)
        if not readable:
            if sent > acked and not out and time.monotonic() - last_progress > _STALL_TIMEOUT_S:
                raise ProtocolError(f"no PUBACK for {_STALL_TIMEOUT_S:.0f} s: {acked}/{sent}")
            continue
        chunk = sock.recv(_RECV_BYTES)
        if not chunk:
            raise ProtocolError(f"broker closed the connection after {acked} PUBACKs")
        inbuf += chunk
        got = _parse_pubacks(inbuf, outstanding, protocol)
        if got:
            acked += got
            last_ack_ns = time.monotonic_ns()
            last_progress = time.monotonic()
    sock.setblocking(True)
    sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
    return {
        "sent": sent,
        "acked": acked,
        "first_publish_ns": first_ns,
        "last_puback_ns": last_ack_ns,
        "seconds": (last_ack_ns - first_ns) / 1e9,
    }


def _parse_pubacks(buf: bytearray, outstanding: bytearray, protocol: int) -> int:
    """Consume the whole packets at the head of ``buf``; the number of PUBACKs."""
    pos = got = 0
    while len(buf) - pos >= 2:
        parsed = _read_varint(buf, pos + 1)
        if parsed is None:
            break
        length, start = parsed
        if len(buf) < start + length:
            break
        kind = buf[pos]
        if kind != 0x40:
            if kind == 0xE0:
                reason = buf[start] if length else 0
                raise ProtocolError(f"the broker disconnected us, reason 0x{reason:02x}")
            raise ProtocolError(f"unexpected packet type 0x{kind:02x}")
        packet_id = (buf[start] << 8) | buf[start + 1]
        if protocol == 5 and length > 2 and buf[start + 2] >= 0x80:
            raise ProtocolError(f"PUBLISH {packet_id} refused, reason 0x{buf[start + 2]:02x}")
        if not outstanding[packet_id]:
            raise ProtocolError(f"PUBACK for packet id {packet_id}, which is not outstanding")
        outstanding[packet_id] = 0
        got += 1
        pos = start + length
    del buf[:pos]
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--protocol", type=int, choices=[4, 5], default=5)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--base-s", type=float, default=None)
    ap.add_argument("--client-id", default=f"bench-rawpub-{os.getpid()}")
    args = ap.parse_args()
    result = publish(
        args.port,
        mode=args.mode,
        count=args.count,
        protocol=args.protocol,
        inflight=args.inflight,
        host=args.host,
        rate=args.rate,
        client_id=args.client_id,
        base_s=args.base_s,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
