"""The pipeline over a list source and a real store, once as ``SqliteStore`` and once as
``InfluxStore`` into VictoriaMetrics (the ``store`` fixture): stored or quarantined, once.
What reached the final database is read back through ``store_rig``."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest

from devices.codecs import DecodeLimits, Decoder
from devices.registry import parse_registry
from devices.topics import TopicScheme
from ingest.anomaly import LimitCheck
from ingest.batch import AnomalyFlag, ReadingBatch, Receipt, Rejection
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.pipeline import BatchSettings, IngestLoop, Pipeline
from ingest.quarantine import Quarantine
from ingest.retry import Backoff
from ingest.sources import ListSource
from ingest.stores.base import ReadingQuery, Store, StoredReading
from tests.support.registry import REGISTRY_YAML, sample_registry
from tests.support.stores import LocalStore, StoreRig
from tests.support.waiting import wait_until

NOW_S = 1_780_000_000
NOW_NS = NOW_S * 10**9
EVERYTHING = (0, NOW_NS * 2)  # a query's range that holds every reading of these tests
FAST_RETRY = Backoff(initial=timedelta(milliseconds=1), maximum=timedelta(milliseconds=5))


def msg(topic: str, payload: object, offset_s: float = 0.0) -> InboundMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return InboundMessage(topic, body, NOW_NS + int(offset_s * 1e9))


def strain(t: float, v: float) -> bytes:
    return json.dumps([{"bn": "sg1/", "bt": t, "n": "g1/strain", "v": v}]).encode()


def run(store: LocalStore, messages: list[InboundMessage], batch: int = 3) -> ListSource:
    source, _ = run_loop(store, messages, BatchSettings(max_messages=batch))
    return source


def run_loop(
    store: LocalStore, messages: list[InboundMessage], settings: BatchSettings
) -> tuple[ListSource, IngestLoop]:
    """The pipeline on ``messages`` until every one is acknowledged, then stopped."""
    registry = sample_registry()
    pipeline = Pipeline(
        Decoder(registry, TopicScheme(), DecodeLimits()),
        LimitCheck(registry.series),
        store,
        IngestMetrics(),
    )
    source = ListSource(messages)
    loop = IngestLoop(source, pipeline, settings)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    assert source.drained.wait(10)
    stop.set()
    thread.join(10)
    return source, loop


def test_good_readings_stored_bad_quarantined_all_acked_in_order(
    store: LocalStore, store_rig: StoreRig
) -> None:
    messages = [
        msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 3, 10.0)),
        msg("stadtpuls/bridge/b1/sg1", b'[{"n":"g1/strain","v":NaN}]'),
        msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 2, 950.0)),
        msg("stadtpuls/school/s1/room-1", [{"n": "co2", "v": 812, "t": NOW_S - 1}]),
        msg("stadtpuls/bridge/b1/nope", strain(NOW_S - 1, 1.0)),
    ]
    source = run(store, messages, batch=2)
    assert source.acked == messages
    rows = store_rig.stored(ReadingQuery("b1", *EVERYTHING))
    assert [(r.value, r.measurement) for r in rows] == [(10.0, "strain"), (950.0, "strain")]
    assert rows[1].anomaly == AnomalyFlag.LIMIT  # 950 > the gauge's design limit of 900
    assert rows[1].score == pytest.approx(950 / 900, rel=1e-4)
    assert [r.value for r in store_rig.stored(ReadingQuery("s1", *EVERYTHING))] == [812.0]
    q = Quarantine(store.db.path)
    assert q.counts() == {"not_finite": 1, "unknown_device": 1}
    entry = q.list(reason="unknown_device")[0]
    assert entry.payload == messages[4].payload
    assert entry.topic == "stadtpuls/bridge/b1/nope"
    assert entry.received_ns == messages[4].received_ns


def test_redelivered_message_is_stored_once(store: LocalStore, store_rig: StoreRig) -> None:
    first = msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 3, 10.0))
    again = msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 3, 10.0), offset_s=5)
    run(store, [first, first, again])
    assert store_rig.count() == 1


def test_replay_after_registry_fix(store: LocalStore, store_rig: StoreRig) -> None:
    """A room added to the registry after its sensor started sending: replay stores it."""
    early = msg("stadtpuls/school/s1/room-2", [{"n": "co2", "v": 640, "t": NOW_S - 1}])
    run(store, [early])
    q = Quarantine(store.db.path)
    assert q.counts() == {"unknown_device": 1}
    (entry,) = q.list()
    old = sample_registry()
    decoder = Decoder(old, TopicScheme(), DecodeLimits())
    still = q.replay(entry, decoder, LimitCheck(old.series), store)
    assert still.reason == "unknown_device"

    fixed = parse_registry(
        REGISTRY_YAML.replace(
            "      room-1:\n", "      room-2:\n        measurements: [co2]\n      room-1:\n"
        )
    )
    new_store = store_rig.open(fixed.series)  # the service restarted with the fixed registry
    decoder = Decoder(fixed, TopicScheme(), DecodeLimits())
    result = q.replay(entry, decoder, LimitCheck(fixed.series), new_store)
    assert (result.reason, result.stored) == (None, 1)
    assert q.counts() == {}
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING, device="room-2"))
    assert [(r.value, r.ts_ns) for r in rows] == [(640.0, NOW_NS - 10**9)]


def test_redelivered_message_without_device_time_keeps_its_receipt_time(
    store: LocalStore, store_rig: StoreRig
) -> None:
    """Committed but not acknowledged (the service died in between): the broker redelivers
    with DUP set, and the reading must overwrite itself rather than appear twice."""
    body = b'[{"n":"co2","v":901}]'
    first = msg("stadtpuls/school/s1/room-1", body)
    redelivered = InboundMessage(first.topic, body, first.received_ns + 7 * 10**9, dup=True)
    fresh = InboundMessage(first.topic, body, first.received_ns + 60 * 10**9)
    run(store, [first])
    run(store, [redelivered])
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING))
    assert [(r.ts_ns, r.value) for r in rows] == [(first.received_ns, 901.0)]
    # Without DUP it is a new message that happens to repeat itself: a new reading.
    run(store, [fresh])
    assert store_rig.count() == 2


class FlakyStore:
    """A store whose first ``failures`` commits raise, as a full or locked disk would."""

    def __init__(self, inner: Store, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.attempts = 0

    def commit(
        self,
        batch: ReadingBatch,
        rejected: Sequence[Rejection],
        receipts: Sequence[Receipt] = (),
    ) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise sqlite3.OperationalError("database or disk is full")
        self.inner.commit(batch, rejected, receipts)

    def receipt_time(self, digest: bytes) -> int | None:
        return self.inner.receipt_time(digest)

    def readings(self, query: ReadingQuery) -> Iterator[StoredReading]:
        return self.inner.readings(query)

    def journal_depth(self) -> int:
        return 0

    def writable(self) -> bool:
        return self.attempts > self.failures

    def maintain(self) -> None:
        self.inner.maintain()

    def close(self) -> None:
        self.inner.close()


def test_failed_commit_is_retried_and_nothing_is_acked_before_it(
    store: LocalStore, store_rig: StoreRig
) -> None:
    registry = sample_registry()
    flaky = FlakyStore(store, failures=3)
    metrics = IngestMetrics()
    pipeline = Pipeline(
        Decoder(registry, TopicScheme(), DecodeLimits()),
        LimitCheck(registry.series),
        flaky,
        metrics,
    )
    messages = [msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 10 + i, float(i))) for i in range(5)]
    source = ListSource(messages)
    loop = IngestLoop(source, pipeline, BatchSettings(max_messages=10, retry=FAST_RETRY))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    assert source.drained.wait(10)
    stop.set()
    thread.join(10)
    assert flaky.attempts == 4
    assert metrics.registry.get_sample_value("stadtpuls_commit_failures_total") == 3
    assert source.acked == messages
    assert [r.value for r in store_rig.stored(ReadingQuery("b1", *EVERYTHING))] == [
        0.0, 1.0, 2.0, 3.0, 4.0,
    ]  # fmt: skip


def test_stop_during_a_failing_commit_acknowledges_nothing(
    store: LocalStore, store_rig: StoreRig
) -> None:
    registry = sample_registry()
    flaky = FlakyStore(store, failures=10**9)
    pipeline = Pipeline(
        Decoder(registry, TopicScheme(), DecodeLimits()),
        LimitCheck(registry.series),
        flaky,
        IngestMetrics(),
    )
    source = ListSource([msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 1, 1.0))])
    loop = IngestLoop(source, pipeline, BatchSettings(retry=FAST_RETRY))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    wait_until(lambda: flaky.attempts >= 3, 10, "a few failed commits")
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert source.acked == []  # the broker keeps the message and redelivers it
    assert store_rig.count() == 0


class GatedStore(FlakyStore):
    """Holds its first commit until the test opens the gate: a slow disk."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner, failures=0)
        self.gate = threading.Event()

    def commit(
        self,
        batch: ReadingBatch,
        rejected: Sequence[Rejection],
        receipts: Sequence[Receipt] = (),
    ) -> None:
        assert self.gate.wait(10)
        super().commit(batch, rejected, receipts)


def test_redelivery_during_the_commit_of_its_first_copy_is_stored_once(
    store: LocalStore, store_rig: StoreRig
) -> None:
    """The connection drops while the batch holding a message commits; the broker resends
    the message (DUP) at once. Its receipt time is looked up after that commit ends."""
    registry = sample_registry()
    gated = GatedStore(store)
    decoder = Decoder(registry, TopicScheme(), DecodeLimits())
    pipeline = Pipeline(decoder, LimitCheck(registry.series), gated, IngestMetrics())
    body = b'[{"n":"co2","v":777}]'
    first = msg("stadtpuls/school/s1/room-1", body)
    again = InboundMessage(first.topic, body, first.received_ns + 3 * 10**9, dup=True)
    source = ListSource([first, again])
    loop = IngestLoop(source, pipeline, BatchSettings(max_messages=1))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    wait_until(lambda: source.untaken == 0, 10, "both copies taken")
    gated.gate.set()
    assert source.drained.wait(10)
    stop.set()
    thread.join(10)
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING))
    assert [(r.ts_ns, r.value) for r in rows] == [(first.received_ns, 777.0)]


def test_a_batch_closes_once_its_payloads_reach_max_bytes(
    store: LocalStore, store_rig: StoreRig
) -> None:
    """Blocks of a hundred samples are a thousand times a single reading's bytes: a batch
    stops growing at ``max_bytes`` as well as at ``max_messages``, so a burst of blocks is
    committed in pieces the next batch need not wait long for."""
    messages = [msg("stadtpuls/bridge/b1/sg1", strain(NOW_S - 60 + i, float(i))) for i in range(6)]
    size = len(messages[0].payload)
    settings = BatchSettings(max_messages=100, max_bytes=int(2.5 * size))
    source, loop = run_loop(store, messages, settings)
    assert loop.batches == 2  # three messages each: the third reaches the limit
    assert source.acked == messages
    assert len(store_rig.stored(ReadingQuery("b1", *EVERYTHING))) == 6
