"""One bad record does not hide the good ones: the records that pass are stored, the refused
ones are quarantined with the whole raw message and their positions, and a replay after a
fix stores just those records. What makes a whole message unusable still refuses all of it.

The pipeline tests run on both stores (the ``store`` fixture), as ``test_pipeline.py``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from devices.codecs import DecodeLimits, Decoder, ReadingRejected, RejectReason
from devices.registry import Registry, parse_registry
from devices.topics import TopicScheme
from ingest.anomaly import LimitCheck
from ingest.batch import ReadingBatch, Rejection
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.pipeline import Pipeline
from ingest.quarantine import Quarantine
from ingest.stores.base import ReadingQuery
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.registry import REGISTRY_YAML, sample_registry
from tests.support.stores import LocalStore, StoreRig

NOW_S = 1_780_000_000
NOW_NS = NOW_S * 10**9
EVERYTHING = (0, NOW_NS * 2)
T0 = NOW_S - 7200  # whole seconds: VictoriaMetrics keeps milliseconds
BRIDGE = "stadtpuls/bridge/b1/sg1"
ROOM = "stadtpuls/school/s1/room-1"  # co2 narrowed to 5000 ppm by the registry
BAD = 17


def fixed_registry() -> Registry:
    """The registry after the fix: room-1's co2 sensor reads up to the vocabulary's 10000."""
    narrowed = "co2: {max: 5000, warn: 1000, alarm: 2000}"
    assert narrowed in REGISTRY_YAML
    return parse_registry(REGISTRY_YAML.replace(narrowed, "co2: {warn: 1000, alarm: 2000}"))


def decoder_for(registry: Registry) -> Decoder:
    return Decoder(registry, TopicScheme(), DecodeLimits())


def sixty_co2(bad: int = BAD, value: float = 6000.0) -> bytes:
    """A minute's worth of records, one a minute; record ``bad`` over room-1's 5000 ppm."""
    return json.dumps(
        [{"n": "co2", "v": value if i == bad else 400.0 + i, "t": T0 + 60 * i} for i in range(60)]
    ).encode()


def co2_rows(store_rig: StoreRig) -> list[tuple[int, float]]:
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING, measurement="co2"))
    return [(r.ts_ns, r.value) for r in rows]


def ingest(store: LocalStore, *messages: InboundMessage) -> IngestMetrics:
    """One batch through the pipeline with the registry as it was: decoded, committed."""
    registry = sample_registry()
    metrics = IngestMetrics()
    pipeline = Pipeline(decoder_for(registry), LimitCheck(registry.series), store, metrics)
    pipeline.commit(pipeline.prepare(messages))
    return metrics


# -- the decoder ----------------------------------------------------------------------------


def test_one_bad_record_of_sixty_refuses_only_itself(registry: Registry) -> None:
    d = decoder_for(registry).decode(ROOM, sixty_co2(), NOW_NS)
    assert len(d) == 59
    assert 6000.0 not in list(d.values)
    (refused,) = d.rejected
    assert (refused.indices, refused.name, refused.reason) == (
        (BAD,),
        "co2",
        RejectReason.OUT_OF_RANGE,
    )
    assert f"record {BAD} (co2)" in refused.detail


def test_each_record_is_refused_for_its_own_reason(registry: Registry) -> None:
    records: list[dict[str, object]] = [
        {"n": "co2", "v": 800, "t": T0},
        {"n": "co2", "v": float("nan"), "t": T0 + 1},
        {"n": "temperature", "v": "21", "t": T0 + 2},
        {"n": "co2", "vs": "high", "t": T0 + 3},
        {"n": "pm10", "v": 12, "t": T0 + 4},
        {"n": "humidity", "u": "psi", "v": 40, "t": T0 + 5},
        {"n": "co2", "v": 800, "t": NOW_S + 3600},
        {"n": "co2", "v": 800, "t": NOW_S - 40 * 86400},
        {"n": "co2", "v": 800, "t": T0 + 8, "x": 1},
        {"n": "humidity", "t": T0 + 9},
        {"n": "humidity", "v": 45, "t": T0 + 10},
    ]
    d = decoder_for(registry).decode(ROOM, json.dumps(records).encode(), NOW_NS)
    assert list(d.values) == [800.0, 45.0]
    assert [(r.indices, r.reason) for r in d.rejected] == [
        ((1,), RejectReason.NOT_FINITE),
        ((2,), RejectReason.WRONG_TYPE),
        ((3,), RejectReason.UNSUPPORTED),
        ((4,), RejectReason.UNKNOWN_MEASUREMENT),
        ((5,), RejectReason.UNKNOWN_UNIT),
        ((6,), RejectReason.FUTURE_TIMESTAMP),
        ((7,), RejectReason.TOO_OLD),
        ((8,), RejectReason.UNKNOWN_FIELD),
        ((9,), RejectReason.WRONG_TYPE),
    ]
    assert all(r.detail for r in d.rejected)


def test_every_record_refused_refuses_the_message_with_each_named(registry: Registry) -> None:
    records = [{"n": "co2", "v": 6000 + i, "t": T0 + i} for i in range(3)]
    with pytest.raises(ReadingRejected) as info:
        decoder_for(registry).decode(ROOM, json.dumps(records).encode(), NOW_NS)
    assert info.value.reason is RejectReason.OUT_OF_RANGE
    assert "all 3 records refused" in info.value.detail
    assert [r.indices for r in info.value.records] == [(0,), (1,), (2,)]


@pytest.mark.parametrize(
    ("bad_record", "reason"),
    [
        pytest.param({"bn": "sg2/", "n": "g1/strain", "v": 1}, RejectReason.IDENTITY_MISMATCH,
                     id="another-device"),
        pytest.param({"bt": "soon", "n": "g1/strain", "v": 1}, RejectReason.WRONG_TYPE,
                     id="base-time-of-wrong-type"),
        pytest.param({"bver": 11, "n": "g1/strain", "v": 1}, RejectReason.UNSUPPORTED_VERSION,
                     id="newer-version"),
        pytest.param({"n": "g1/strain", "v": 1, "t": T0}, RejectReason.DUPLICATE_READING,
                     id="same-instant-as-record-0"),
    ],
)  # fmt: skip
def test_what_makes_the_message_unusable_refuses_all_of_it(
    registry: Registry, bad_record: dict[str, object], reason: RejectReason
) -> None:
    records = [
        {"bn": "sg1/", "n": "g1/strain", "v": 1.0, "t": T0},
        {"n": "g2/strain", "v": 2.0, "t": T0},
        bad_record,
    ]
    with pytest.raises(ReadingRejected) as info:
        decoder_for(registry).decode(BRIDGE, json.dumps(records).encode(), NOW_NS)
    assert info.value.reason is reason
    assert info.value.records == ()


def test_a_block_stores_its_good_samples(registry: Registry) -> None:
    block = {
        "t0": T0,
        "dt": 1,
        "series": {"g1/strain": [1.0, float("nan"), 2.0], "g2/strain": [3.0, 99999.0, 4.0]},
    }
    d = decoder_for(registry).decode(BRIDGE, json.dumps(block).encode(), NOW_NS)
    assert np.asarray(d.values).tolist() == [1.0, 2.0, 3.0, 4.0]
    # Positions count across the series in order: g2/strain[1] is the block's sample 4.
    assert [(r.indices, r.name, r.reason) for r in d.rejected] == [
        ((1,), "g1/strain", RejectReason.NOT_FINITE),
        ((4,), "g2/strain", RejectReason.OUT_OF_RANGE),
    ]
    assert "g2/strain[1]" in d.rejected[1].detail


def test_only_the_chosen_records_are_decoded(registry: Registry) -> None:
    d = decoder_for(fixed_registry()).decode(ROOM, sixty_co2(), NOW_NS, only=[BAD])
    assert (list(d.values), list(d.ts_ns)) == ([6000.0], [(T0 + 60 * BAD) * 10**9])


# -- the pipeline and the quarantine --------------------------------------------------------


def test_mixed_pack_is_stored_in_part_and_its_bad_record_quarantined(
    store: LocalStore, store_rig: StoreRig
) -> None:
    message = InboundMessage(ROOM, sixty_co2(), NOW_NS)
    metrics = ingest(store, message)
    rows = co2_rows(store_rig)
    assert len(rows) == 59
    assert (T0 + 60 * BAD) * 10**9 not in {ts for ts, _ in rows}
    (entry,) = Quarantine(store.db.path).list()
    assert entry.payload == message.payload  # the whole raw message
    assert (entry.topic, entry.reason, entry.records) == (ROOM, "out_of_range", (BAD,))
    assert entry.detail.startswith("1 record refused, the other 59 stored: ")
    assert f"record {BAD} (co2): 6000 ppm is outside [0, 5000]" in entry.detail
    sample = metrics.registry.get_sample_value
    assert sample("stadtpuls_messages_rejected_total", {"reason": "out_of_range"}) == 1
    assert sample("stadtpuls_readings_stored_total") == 59


def test_a_mixed_pack_arriving_again_counts_again_and_stores_nothing_twice(
    store: LocalStore, store_rig: StoreRig
) -> None:
    first = InboundMessage(ROOM, sixty_co2(), NOW_NS)
    again = InboundMessage(ROOM, first.payload, NOW_NS + 5 * 10**9, dup=True)
    ingest(store, first)
    ingest(store, again)
    assert len(co2_rows(store_rig)) == 59
    (entry,) = Quarantine(store.db.path).list()
    assert (entry.times, entry.records) == (2, (BAD,))


def test_replay_after_a_fix_stores_only_the_refused_record(
    store: LocalStore, store_rig: StoreRig
) -> None:
    ingest(store, InboundMessage(ROOM, sixty_co2(), NOW_NS))
    q = Quarantine(store.db.path)
    (entry,) = q.list()
    before = co2_rows(store_rig)

    old = sample_registry()
    still = q.replay(entry, decoder_for(old), LimitCheck(old.series), store)
    assert (still.reason, still.stored) == ("out_of_range", 0)
    assert q.counts() == {"out_of_range": 1}

    fixed = fixed_registry()
    result = q.replay(entry, decoder_for(fixed), LimitCheck(fixed.series), store)
    assert (result.reason, result.stored) == (None, 1)  # one record, not the 60
    assert q.counts() == {}
    rows = co2_rows(store_rig)
    assert len(rows) == 60
    assert len({ts for ts, _ in rows}) == 60
    assert sorted(set(rows) - set(before)) == [((T0 + 60 * BAD) * 10**9, 6000.0)]


def test_replay_stores_what_passes_now_and_keeps_the_rest_waiting(
    store: LocalStore, store_rig: StoreRig
) -> None:
    records = json.loads(sixty_co2())
    records[40]["u"] = "psi"  # no fix to the registry helps this one
    ingest(store, InboundMessage(ROOM, json.dumps(records).encode(), NOW_NS))
    q = Quarantine(store.db.path)
    (entry,) = q.list()
    assert (entry.reason, entry.records) == ("out_of_range", (BAD, 40))

    fixed = fixed_registry()
    result = q.replay(entry, decoder_for(fixed), LimitCheck(fixed.series), store)
    assert (result.reason, result.stored) == ("unknown_unit", 1)
    (waiting,) = q.list()
    assert (waiting.id, waiting.reason, waiting.records) == (entry.id, "unknown_unit", (40,))
    assert "record 40 (co2)" in waiting.detail
    assert len(co2_rows(store_rig)) == 59  # 58 at first, the fixed record now


def test_a_block_replay_stores_only_its_refused_samples(
    store: LocalStore, store_rig: StoreRig
) -> None:
    samples = [400.0 + i for i in range(10)]
    samples[3] = 7000.0
    block = {"t0": T0, "dt": 60, "series": {"co2": samples, "temperature": [21.0] * 10}}
    ingest(store, InboundMessage(ROOM, json.dumps(block).encode(), NOW_NS))
    q = Quarantine(store.db.path)
    (entry,) = q.list()
    assert (entry.reason, entry.records) == ("out_of_range", (3,))
    assert len(co2_rows(store_rig)) == 9

    fixed = fixed_registry()
    result = q.replay(entry, decoder_for(fixed), LimitCheck(fixed.series), store)
    assert (result.reason, result.stored) == (None, 1)
    assert co2_rows(store_rig) == [((T0 + 60 * i) * 10**9, v) for i, v in enumerate(samples)]


def test_replay_times_records_without_device_time_as_the_stored_ones(
    store: LocalStore, store_rig: StoreRig
) -> None:
    """Timed at receipt: the redelivery (DUP) and the replay reuse the first receipt time."""
    body = b'[{"n":"co2","v":6000},{"n":"temperature","v":21.5}]'
    ingest(store, InboundMessage(ROOM, body, NOW_NS))
    ingest(store, InboundMessage(ROOM, body, NOW_NS + 7 * 10**9, dup=True))
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING))
    assert [(r.measurement, r.ts_ns) for r in rows] == [("temperature", NOW_NS)]
    q = Quarantine(store.db.path)
    (entry,) = q.list()
    assert (entry.received_ns, entry.times) == (NOW_NS, 2)

    fixed = fixed_registry()
    assert q.replay(entry, decoder_for(fixed), LimitCheck(fixed.series), store).stored == 1
    rows = store_rig.stored(ReadingQuery("s1", *EVERYTHING))
    assert [(r.measurement, r.ts_ns) for r in rows] == [("co2", NOW_NS), ("temperature", NOW_NS)]


def test_a_quarantine_from_before_gets_its_records_column(tmp_path: Path) -> None:
    path = tmp_path / "stadtpuls.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received_ns INTEGER NOT NULL, "
        "topic TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT "
        "NULL, replayed_ns INTEGER, digest BLOB NOT NULL UNIQUE, times INTEGER NOT NULL "
        "DEFAULT 1, last_received_ns INTEGER NOT NULL);"
        "INSERT INTO quarantine (received_ns, topic, payload, reason, detail, digest, "
        "last_received_ns) VALUES (1, 't', x'00', 'not_utf8', 'd', x'01', 1);"
    )
    conn.commit()
    conn.close()
    (old,) = Quarantine(path).list()
    assert old.records is None
    registry = sample_registry()
    store = SqliteStore(SqliteSettings(path), registry.series)
    try:
        store.commit(
            ReadingBatch.empty(), [Rejection(ROOM, b"[]", "out_of_range", "d", NOW_NS, (2, 5))]
        )
    finally:
        store.close()
    assert [e.records for e in Quarantine(path).list()] == [(2, 5), None]
