"""Readings from a NATS JetStream cluster whose MQTT listener the devices publish to.

NATS stores every QoS 1 MQTT message in the stream ``$MQTT_msgs`` before it sends the
PUBACK. A subject mapping in the servers' configuration (``nats_subjects``) puts each
reading topic's site into one of a fixed number of partitions, and each partition has a
durable pull consumer with a "pinned client" priority group: the server hands a partition to
one worker at a time and gives it to another once the holder has not pulled for the
priority timeout. So NATS, not Stadtpuls, decides who owns what, and a site's readings go
through one process at a time, which is where its anomaly and alert state lives.

Workers are identical: each announces itself in a key-value bucket with a short time to
live, takes partitions up to its fair share (``ceil(partitions / workers)``), and gives up
what it holds beyond that share (an unpin, so another worker takes it at once). A partition
that changes hands carries its anomaly state with it: the holder checkpoints it into a
key-value bucket after its commits, and the next holder restores it before it decodes any
of the partition's messages.

A message is acknowledged after its batch is durably committed; one that is not is
delivered again, to whoever holds the partition by then. That repeat is harmless (writes
are idempotent), and a reading without device time is timed with the time the stream
stored the message, which every delivery carries, so a repeat overwrites itself.

nats-py runs on asyncio; the pipeline is threads. The client lives on a loop in a thread of
its own, and ``take``/``ack`` cross over through a queue and ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from devices.vocabulary import SiteKind
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.sources import take_from

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
_MSGS = "$MQTT.msgs"
_PIN_HEADER = "Nats-Pin-Id"
# Between two of a worker's heartbeats in the members' bucket; an entry lives three.
_HEARTBEAT_S = 1.0
_PULL_EXPIRES_S = 1.0
_PULL_BATCH = 500


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    partitions: int = 32
    consumer_prefix: str = "stadtpuls"
    group: str = "stadtpuls"
    priority_timeout: timedelta = timedelta(seconds=3)
    # Longer than a message waits in the worker before its commit: one that is not
    # acknowledged within it goes to the partition's holder again.
    ack_wait: timedelta = timedelta(seconds=30)
    state_bucket: str = "stadtpuls_state"
    workers_bucket: str = "stadtpuls_workers"
    # Messages taken from the cluster and not yet committed, across all partitions; beyond
    # it the workers stop pulling and the stream holds the rest.
    max_pending: int = 20000


def fnv1a_32(data: bytes) -> int:
    """The hash of NATS' ``partition()`` subject transform."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def topic_to_subject(topic: str) -> str:
    """How the NATS MQTT listener names a topic: levels become tokens, a ``.`` in a level
    becomes ``//`` and an empty level ``/``."""
    return ".".join(level.replace(".", "//") or "/" for level in topic.split("/"))


def subject_to_topic(tokens: Sequence[str]) -> str:
    return "/".join("" if t == "/" else t.replace("//", ".") for t in tokens)


@dataclass(frozen=True)
class NatsSubjects:
    """The subjects of one topic prefix split into ``partitions``: the servers' subject
    mapping, each consumer's filter, and the way back from a subject to the MQTT topic."""

    prefix: str
    partitions: int
    consumer_prefix: str = "stadtpuls"
    _head: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_head", (*_MSGS.split("."), *topic_to_subject(self.prefix).split("."))
        )

    @property
    def base(self) -> str:
        return ".".join(self._head)

    def mappings(self) -> dict[str, str]:
        """For the servers' ``mappings`` block: every reading topic ``{prefix}/{kind}/{site}/
        ...`` to its site's partition. Per kind, as the MQTT subscriber subscribes per kind:
        ``{prefix}/alerts/...`` (the service's own output) and unknown kinds stay unmapped
        and reach no consumer, as they reach no MQTT subscription."""
        return {
            f"{self.base}.{k.value}.*.>": (
                f"{self.base}.{{{{partition({self.partitions},1)}}}}.{k.value}.{{{{wildcard(1)}}}}.>"
            )
            for k in SiteKind
        }

    def partition_of(self, site: str) -> int:
        return fnv1a_32(topic_to_subject(site).encode()) % self.partitions

    def consumer(self, partition: int) -> str:
        return f"{self.consumer_prefix}-p{partition:03d}"

    @property
    def catch_all(self) -> str:
        """The consumer of what no partition covers: topics too short to name a site, which
        the decoder quarantines (``bad_topic``)."""
        return f"{self.consumer_prefix}-other"

    def partition_filter(self, partition: int) -> list[str]:
        return [f"{self.base}.{partition}.>"]

    def catch_all_filter(self) -> list[str]:
        return [f"{self.base}.{k.value}{tail}" for k in SiteKind for tail in ("", ".*")]

    def consumers(self) -> dict[str, list[str]]:
        """Every consumer this prefix needs, with its filter subjects."""
        out = {self.consumer(p): self.partition_filter(p) for p in range(self.partitions)}
        out[self.catch_all] = self.catch_all_filter()
        return out

    def topic(self, subject: str) -> tuple[str, int | None]:
        """The MQTT topic a stored message was published on, and its partition (None from
        the catch-all). A partition token that is not its site's hash means a device
        published on a topic that only looks partitioned: it keeps its literal topic."""
        tokens = subject.split(".")
        n = len(self._head)
        rest = tokens[n:]
        if len(rest) >= 4 and rest[0].isdigit():
            p = int(rest[0])
            if p < self.partitions and fnv1a_32(rest[2].encode()) % self.partitions == p:
                return subject_to_topic([*tokens[len(_MSGS.split(".")) : n], *rest[1:]]), p
        return subject_to_topic(tokens[len(_MSGS.split(".")) :]), None


def consumer_config(
    name: str, filters: list[str], settings: NatsSettings, replicas: int
) -> dict[str, Any]:
    """A durable pull consumer of one partition (or the catch-all), in the JetStream API's
    terms: nats-py does not know priority groups yet."""
    return {
        "durable_name": name,
        "name": name,
        "filter_subjects": filters,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": int(settings.ack_wait.total_seconds() * 1e9),
        "max_deliver": -1,
        # Enough for a few batches in flight; the stream keeps the rest.
        "max_ack_pending": 10000,
        # $MQTT_msgs requires its consumers to have its replica count.
        "num_replicas": replicas,
        "priority_policy": "pinned_client",
        "priority_groups": [settings.group],
        "priority_timeout": int(settings.priority_timeout.total_seconds() * 1e9),
    }


def connect_options(settings: NatsSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "servers": list(settings.servers),
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
    }
    if settings.user is not None:
        opts["user"] = settings.user
        opts["password"] = settings.password
    if settings.creds_file is not None:
        opts["user_credentials"] = settings.creds_file
    if settings.nkey_seed_file is not None:
        opts["nkeys_seed"] = settings.nkey_seed_file
    if settings.tls_ca or settings.tls_cert:
        import ssl

        ctx = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert:
            ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        opts["tls"] = ctx
    return opts


async def api(nc: NatsClient, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JetStream API request; raises with the server's words on an error."""
    resp = await nc.request(f"$JS.API.{subject}", json.dumps(body or {}).encode(), timeout=5)
    data: dict[str, Any] = json.loads(resp.data)
    if "error" in data:
        err = data["error"]
        raise NatsApiError(int(err.get("code", 0)), str(err.get("description", err)))
    return data


class NatsApiError(RuntimeError):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{description} ({code})")
        self.code = code


async def missing_consumers(
    nc: NatsClient, subjects: NatsSubjects, stream: str = MQTT_STREAM
) -> list[str]:
    """The consumers ``stadtpuls nats setup`` makes that the cluster does not have (all of
    them while the MQTT stream does not exist yet)."""
    try:
        names: set[str] = set()
        offset = 0
        while True:
            page = await api(nc, f"CONSUMER.NAMES.{stream}", {"offset": offset})
            names.update(page.get("consumers") or [])
            offset += len(page.get("consumers") or [])
            if not page.get("consumers") or offset >= int(page.get("total", 0)):
                break
    except NatsApiError as exc:
        if exc.code == 404:
            return list(subjects.consumers())
        raise
    return [name for name in subjects.consumers() if name not in names]


@dataclass(slots=True)
class _Token:
    reply: str
    partition: int | None


@dataclass(slots=True)
class _Partition:
    name: str
    number: int | None
    pin: str | None = None
    releasing: bool = False
    got: int = 0  # messages of the open pull request so far
    done: asyncio.Event = field(default_factory=asyncio.Event)  # that request has ended


class JetStreamSource:
    """A ``MessageSource`` over the partition consumers of ``subjects``.

    ``on_gained(partition, checkpoint)`` is called when this worker takes a partition, with
    the partition's last checkpoint (each of ``parts`` that was stored), on the client's
    thread and before any of the partition's messages is handed out; ``checkpoint(partition,
    part, data)`` stores one part. ``on_lost(partition)`` is called when the partition went
    to another worker.
    """

    def __init__(
        self,
        settings: NatsSettings,
        subjects: NatsSubjects,
        metrics: IngestMetrics,
        on_gained: Callable[[int, dict[str, bytes]], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
        parts: tuple[str, ...] = ("anomaly",),
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.subjects = subjects
        self.metrics = metrics
        self.on_gained = on_gained
        self.on_lost = on_lost
        self.parts = parts
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self._queue: queue.SimpleQueue[InboundMessage] = queue.SimpleQueue()
        self._pending = 0  # taken from the cluster, not yet acknowledged
        self._pending_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._connected = threading.Event()
        # Bound to the client's loop on first use there (asyncio events bind lazily).
        self._stopping = asyncio.Event()
        self._nc: NatsClient | None = None
        self._state_kv: KeyValue | None = None
        self._members_kv: KeyValue | None = None
        self._workers = 1
        # Set once the members' bucket was counted: a worker that took partitions before it
        # knew of the others would take them all and hand most back at once.
        self._counted = asyncio.Event()
        self.missing: list[str] = list(subjects.consumers())
        self._parts = [_Partition(subjects.consumer(p), p) for p in range(subjects.partitions)]
        self._other = _Partition(subjects.catch_all, None)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # What /metrics shows (``NatsCollector``): plain numbers, written on the client's
        # thread only.
        self.taken = 0  # partitions this worker took, over its life
        self.warm = 0  # ... and found a checkpoint of
        self.consumer_info: dict[str, dict[str, int]] = {}

    # -- life cycle ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=15)
        self._connected.clear()
        self.metrics.broker_connected.set(0)

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def held(self) -> list[int]:
        return [p.number for p in self._parts if p.pin is not None and p.number is not None]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        self._tasks = [
            asyncio.create_task(self._members(nc)),
            asyncio.create_task(self._pull(nc, self._other)),
            *(asyncio.create_task(self._pull(nc, p)) for p in self._parts),
        ]
        await self._stopping.wait()
        await self._shutdown(nc)

    async def _connect(self) -> NatsClient | None:

        async def disconnected() -> None:
            self._connected.clear()
            self.metrics.broker_connected.set(0)
            log.warning("lost the NATS connection; reconnecting")

        async def reconnected() -> None:
            self._connected.set()
            self.metrics.broker_connected.set(1)
            log.info("reconnected to NATS")

        async def error(exc: Exception) -> None:
            log.warning("NATS: %s", exc)

        while not self._stopping.is_set():
            try:
                nc = await nats.connect(
                    **connect_options(self.settings),
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
            except Exception as exc:
                log.warning(
                    "cannot connect to NATS at %s: %s; retrying", self.settings.servers, exc
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 2)
                continue
            self._nc = nc
            self.missing = await self._missing(nc)
            if self.missing:
                log.error(
                    "NATS lacks %d of Stadtpuls' consumers (first %s): run `stadtpuls nats "
                    "setup`; until then messages on their subjects are not kept",
                    len(self.missing),
                    self.missing[0],
                )
            self._connected.set()
            self.metrics.broker_connected.set(1)
            log.info(
                "connected to NATS %s as worker %s",
                nc.connected_url.netloc if nc.connected_url else "?",
                self.worker_id,
            )
            return nc
        return None

    async def _missing(self, nc: NatsClient) -> list[str]:
        try:
            return await missing_consumers(nc, self.subjects)
        except Exception as exc:
            log.warning("cannot list the consumers: %s", exc)
            return self.missing

    async def _shutdown(self, nc: NatsClient) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # What reaches us from now on (the callbacks NAK it), or was taken and not handed
        # to the pipeline, goes back at once, not after the ack wait. The requests still
        # open end within their expiry, which is waited out.
        await asyncio.sleep(_PULL_EXPIRES_S + 0.2)
        while True:
            try:
                m = self._queue.get_nowait()
            except queue.Empty:
                break
            assert isinstance(m.token, _Token)
            await nc.publish(m.token.reply, b"-NAK")
        # Leave the members at once, so the others' fair shares grow now, and hand the
        # partitions over now rather than after the priority timeout.
        if self._members_kv is not None:
            with contextlib.suppress(Exception):
                await self._members_kv.delete(self.worker_id)
        for p in [*self._parts, self._other]:
            if p.pin is not None:
                await self._unpin(nc, p)
        with contextlib.suppress(Exception):
            await nc.drain()

    # -- membership and fair shares --------------------------------------------------------

    async def _members(self, nc: NatsClient) -> None:
        js = nc.jetstream()
        kv: KeyValue | None = None
        while True:
            try:
                if kv is None:
                    kv = self._members_kv = await js.key_value(self.settings.workers_bucket)
                    self._state_kv = await js.key_value(self.settings.state_bucket)
                await kv.put(self.worker_id, str(time.time()).encode())
                if not self._counted.is_set():
                    # Workers started together see each other from their second beat on.
                    await asyncio.sleep(_HEARTBEAT_S)
                try:
                    self._workers = max(1, len(await kv.keys()))
                except NoKeysError:
                    self._workers = 1
                self._counted.set()
                self.missing = await self._missing(nc)
                await self._rebalance(nc)
                await self._watch(nc)
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                log.error(  # noqa: TRY400 - the reason is the message, not a stack
                    "NATS has no %s bucket: run `stadtpuls nats setup`",
                    self.settings.workers_bucket,
                )
            except Exception as exc:
                log.warning("worker heartbeat failed: %s", exc)
            await asyncio.sleep(_HEARTBEAT_S)

    async def _watch(self, nc: NatsClient) -> None:
        """Pending, waiting for an ack and redelivered, of the consumers this worker holds."""
        held = {p.name for p in [*self._parts, self._other] if p.pin is not None}
        info: dict[str, dict[str, int]] = {}
        for name in sorted(held):
            with contextlib.suppress(Exception):
                c = await api(nc, f"CONSUMER.INFO.{MQTT_STREAM}.{name}")
                info[name] = {
                    "pending": int(c.get("num_pending", 0)),
                    "ack_pending": int(c.get("num_ack_pending", 0)),
                    "redelivered": int(c.get("num_redelivered", 0)),
                }
        self.consumer_info = info

    @property
    def fair_share(self) -> int:
        return math.ceil(len(self._parts) / self._workers)

    def _may_take(self) -> bool:
        return len(self.held) < self.fair_share

    async def _rebalance(self, nc: NatsClient) -> None:
        keeping = [p for p in self._parts if p.pin is not None and not p.releasing]
        excess = len(keeping) - self.fair_share
        # The highest-numbered ones: which they are does not matter, only that it is few.
        # Each puller gives its partition up between two of its requests (``_release``).
        for p in reversed(keeping[len(keeping) - excess :] if excess > 0 else []):
            p.releasing = True

    async def _release(self, nc: NatsClient, p: _Partition) -> None:
        """Unpin ``p`` now that no request of ours is outstanding: with one outstanding, the
        server could pin the partition to that request again. Only if it is still pinned
        to us: an unpin takes the partition from whoever holds it."""
        pin, p.pin, p.releasing = p.pin, None, False
        if pin is not None and await self._pinned_to(nc, p) == pin:
            log.info("giving up partition %d (%d workers)", p.number, self._workers)
            await self._unpin(nc, p)
        if pin is not None:
            self._lost(p)

    def _lost(self, p: _Partition) -> None:
        if self.on_lost is None or p.number is None:
            return
        try:
            self.on_lost(p.number)
        except Exception:
            log.exception("handing over the state of partition %d failed", p.number)

    async def _pinned_to(self, nc: NatsClient, p: _Partition) -> str | None:
        try:
            info = await api(nc, f"CONSUMER.INFO.{MQTT_STREAM}.{p.name}")
        except Exception:
            return None
        for group in info.get("priority_groups") or []:
            if group.get("group") == self.settings.group:
                pinned = group.get("pinned_client_id")
                return str(pinned) if pinned else None
        return None

    async def _unpin(self, nc: NatsClient, p: _Partition) -> None:
        with contextlib.suppress(Exception):
            await api(nc, f"CONSUMER.UNPIN.{MQTT_STREAM}.{p.name}", {"group": self.settings.group})

    # -- pulling ---------------------------------------------------------------------------

    async def _pull(self, nc: NatsClient, p: _Partition) -> None:
        inbox = nc.new_inbox()

        # A callback, not next_msg(): nats-py makes a task and a uuid for every next_msg,
        # which was a third of the worker's CPU.
        async def on_message(m: Msg) -> None:
            await self._on_message(m, p)

        await nc.subscribe(inbox, cb=on_message)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{MQTT_STREAM}.{p.name}"
        await self._counted.wait()
        while True:
            if p.releasing:
                await self._release(nc, p)
                continue
            holding = p.pin is not None
            if (
                not nc.is_connected
                or p.name in self.missing
                or (not holding and p.number is not None and not self._may_take())
                or self._pending >= self.settings.max_pending
            ):
                await asyncio.sleep(0.2 if holding else 0.5)
                continue
            request: dict[str, Any] = {
                "batch": _PULL_BATCH,
                "expires": int(_PULL_EXPIRES_S * 1e9),
                "group": self.settings.group,
            }
            if p.pin is not None:
                request["id"] = p.pin
            p.got = 0
            p.done.clear()
            try:
                await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
                # Ends with the batch, a status (the request expired, the pin moved) or,
                # if the request was lost in a leader change, a second after its expiry.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.done.wait(), _PULL_EXPIRES_S + 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pulling %s failed: %s", p.name, exc)
                await asyncio.sleep(0.5)

    async def _on_message(self, m: Msg, p: _Partition) -> None:
        headers = m.headers or {}
        status = headers.get("Status")
        if status is not None or not m.reply:
            if status == "423":  # the partition is pinned to another worker now
                if p.pin is not None:
                    log.info("lost partition %s to another worker", p.name)
                    p.pin = None
                    self._lost(p)
            elif status == "409" and "Deleted" in headers.get("Description", ""):
                self.missing = [*self.missing, p.name]
            p.done.set()
            return
        if self._closing:  # the pipeline has stopped: back to the stream at once
            await m.nak()
            return
        pin = headers.get(_PIN_HEADER)
        if pin is not None and pin != p.pin:
            await self._gain(p, pin)
        self._hand_out(m, p)
        p.got += 1
        if p.got >= _PULL_BATCH:
            p.done.set()

    async def _gain(self, p: _Partition, pin: str) -> None:
        p.pin = pin
        if p.number is None:
            return
        log.info("took partition %d", p.number)
        self.taken += 1
        if self.on_gained is None:
            return
        checkpoint: dict[str, bytes] = {}
        if self._state_kv is not None:
            for part in self.parts:
                with contextlib.suppress(KeyNotFoundError):
                    entry = await self._state_kv.get(f"p{p.number}.{part}")
                    if entry.value is not None:
                        checkpoint[part] = entry.value
        if checkpoint:
            self.warm += 1
        try:
            self.on_gained(p.number, checkpoint)
        except Exception:
            log.exception("restoring the state of partition %d failed; it starts cold", p.number)

    def _hand_out(self, m: Msg, p: _Partition) -> None:
        topic, partition = self.subjects.topic(m.subject)
        # The stream's time of the message: the same in every delivery, to any worker.
        stored_ns = m.metadata.timestamp
        received_ns = int(stored_ns.timestamp() * 1e9) if stored_ns is not None else time.time_ns()
        with self._pending_lock:
            self._pending += 1
        self._queue.put(
            InboundMessage(topic, m.data, received_ns, _Token(m.reply, partition), dup=False)
        )

    # -- MessageSource ---------------------------------------------------------------------

    def take(
        self, max_messages: int, max_wait: timedelta, max_bytes: int | None = None
    ) -> list[InboundMessage]:
        out = take_from(self._queue, max_messages, max_wait, max_bytes)
        if not out:
            return out
        self.metrics.messages_received.inc(len(out))
        self.metrics.pending_messages.set(self._pending)
        return out

    def in_progress(self, messages: Sequence[InboundMessage]) -> None:
        """Restart the ack wait of ``messages``: they are committed and waiting for the
        database (``ingest.storedacks``), and must not be delivered again meanwhile."""
        self._reply(messages, b"+WPI", settled=False)

    def nak(self, messages: Sequence[InboundMessage]) -> None:
        """Hand ``messages`` back to the stream for delivery at once."""
        self._reply(messages, b"-NAK", settled=True)

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        self._reply(messages, b"+ACK", settled=True)

    def _reply(self, messages: Sequence[InboundMessage], body: bytes, settled: bool) -> None:
        replies = []
        for m in messages:
            assert isinstance(m.token, _Token)
            replies.append(m.token.reply)
        if settled:
            with self._pending_lock:
                self._pending -= len(replies)
        if self._loop.is_closed():
            return  # stopped: the unacknowledged messages go to the next holder
        fut = asyncio.run_coroutine_threadsafe(self._send(replies, body), self._loop)
        # Waited for, so a worker that stops after a commit has acknowledged it.
        with contextlib.suppress(Exception):
            fut.result(timeout=10)

    async def _send(self, replies: list[str], body: bytes) -> None:
        nc = self._nc
        if nc is None:
            return
        for reply in replies:
            await nc.publish(reply, body)
        await nc.flush(timeout=5)

    def checkpoint(self, partition: int, part: str, data: bytes) -> None:
        """Store ``data`` as that part of the partition's state (without waiting for it)."""
        kv = self._state_kv
        if kv is None or self._loop.is_closed():
            return

        async def put() -> None:
            try:
                await kv.put(f"p{partition}.{part}", data)
            except Exception as exc:
                log.warning("checkpoint of partition %d failed: %s", partition, exc)

        asyncio.run_coroutine_threadsafe(put(), self._loop)


async def setup(
    nc: NatsClient, subjects: NatsSubjects, settings: NatsSettings, stream: str = MQTT_STREAM
) -> list[str]:
    """Create (or bring up to date) every consumer and both buckets; return what it did.
    The MQTT stream must exist: NATS makes it when the first MQTT client connects."""
    info = await api(nc, f"STREAM.INFO.{stream}")
    replicas = int(info["config"].get("num_replicas", 1))
    done: list[str] = []
    for name, filters in subjects.consumers().items():
        config = consumer_config(name, filters, settings, replicas)
        try:
            current = await api(nc, f"CONSUMER.INFO.{stream}.{name}")
        except NatsApiError as exc:
            if exc.code != 404:
                raise
            await api(
                nc,
                f"CONSUMER.CREATE.{stream}.{name}",
                {"stream_name": stream, "config": config, "action": "create"},
            )
            done.append(f"created consumer {name}")
            continue
        have = current["config"].get("filter_subjects") or [current["config"].get("filter_subject")]
        if sorted(have) != sorted(filters):
            raise NatsApiError(
                0,
                f"consumer {name} exists with the subjects {have}, not {filters}: delete it, "
                "or give nats.consumer_prefix another name",
            )
        await api(
            nc,
            f"CONSUMER.CREATE.{stream}.{name}",
            {"stream_name": stream, "config": config, "action": "update"},
        )
    js = nc.jetstream()
    for bucket, ttl in (
        (settings.workers_bucket, 3 * _HEARTBEAT_S),
        (settings.state_bucket, None),
    ):
        try:
            await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=replicas)
            )
            done.append(f"created bucket {bucket}")
    return done


class NatsCollector(Collector):
    """What to watch of a NATS worker: the partitions it holds and their consumers."""

    def __init__(self, source: JetStreamSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        s = self.source
        held = GaugeMetricFamily(
            "stadtpuls_nats_partition_held",
            "1 for each partition this worker holds",
            labels=["partition"],
        )
        for p in s.held:
            held.add_metric([str(p)], 1)
        yield held
        yield GaugeMetricFamily(
            "stadtpuls_nats_workers", "workers in the members' bucket", s.workers
        )
        yield GaugeMetricFamily(
            "stadtpuls_nats_consumers_missing",
            "consumers stadtpuls nats setup makes that the cluster lacks",
            len(s.missing),
        )
        yield CounterMetricFamily(
            "stadtpuls_nats_partitions_taken", "partitions this worker took over", s.taken
        )
        yield CounterMetricFamily(
            "stadtpuls_nats_partitions_warm",
            "partitions taken over with a checkpoint of their anomaly state",
            s.warm,
        )
        for key, help_text in (
            ("pending", "messages in the stream not yet delivered to the consumer"),
            ("ack_pending", "messages delivered and not yet acknowledged"),
            ("redelivered", "messages delivered more than once and not yet acknowledged"),
        ):
            family = GaugeMetricFamily(
                f"stadtpuls_nats_consumer_{key}",
                help_text + " (held consumers)",
                labels=["consumer"],
            )
            for name, info in s.consumer_info.items():
                family.add_metric([name], info[key])
            yield family
