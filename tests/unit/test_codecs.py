"""Decoding and validation: SenML, the native block format, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devices.codecs import DecodeLimits, Decoder, ReadingRejected, RejectReason
from devices.registry import Registry
from devices.topics import TopicScheme

NOW_S = 1_780_000_000.0
NOW_NS = int(NOW_S * 1e9)
BRIDGE = "stadtpuls/bridge/b1/sg1"
SCHOOL = "stadtpuls/school/s1/room-1"


@pytest.fixture
def decoder(registry: Registry) -> Decoder:
    return Decoder(registry, TopicScheme("stadtpuls"), DecodeLimits(max_payload_bytes=4096))


def series_names(decoder: Decoder, idx: object) -> list[str]:
    return [decoder.registry.series[i].key.name for i in np.asarray(idx).tolist()]


def reject(decoder: Decoder, topic: str, payload: bytes) -> ReadingRejected:
    with pytest.raises(ReadingRejected) as info:
        decoder.decode(topic, payload, NOW_NS)
    return info.value


def test_senml_pack_with_base_fields(decoder: Decoder) -> None:
    pack = [
        {"bn": "sg1/", "bt": NOW_S - 10, "bu": "ue", "n": "g1/strain", "v": 12.5},
        {"n": "g1/temperature", "u": "Cel", "v": 8.25, "t": 1},
        {"n": "g2/strain", "v": -3.0, "t": 2},
    ]
    d = decoder.decode(BRIDGE, json.dumps(pack).encode(), NOW_NS)
    assert series_names(decoder, d.series) == ["g1/strain", "g1/temperature", "g2/strain"]
    assert np.asarray(d.values).tolist() == [12.5, 8.25, -3.0]
    base = int((NOW_S - 10) * 1e9)
    assert (np.asarray(d.ts_ns) - base).tolist() == [0, 1_000_000_000, 2_000_000_000]


def test_relative_and_missing_times_are_relative_to_receipt(decoder: Decoder) -> None:
    d = decoder.decode(SCHOOL, b'[{"n":"co2","v":800},{"n":"co2","v":810,"t":-60}]', NOW_NS)
    assert np.asarray(d.ts_ns).tolist() == [NOW_NS, NOW_NS - 60_000_000_000]


def test_units_are_converted(decoder: Decoder) -> None:
    pack = [
        {"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "u": "/", "v": 0.000125},
        {"n": "g1/temperature", "u": "K", "v": 283.15},
    ]
    d = decoder.decode(BRIDGE, json.dumps(pack).encode(), NOW_NS)
    assert d.values == pytest.approx([125.0, 10.0])


def test_native_block(decoder: Decoder) -> None:
    block = {
        "device": "sg1",
        "t0": NOW_S - 1,
        "dt": 0.01,
        "series": {"g1/strain": [1.0, 2.0, 3.0], "g2/strain": [4e-5, 5e-5]},
        "units": {"g2/strain": "/"},
    }
    d = decoder.decode(BRIDGE, json.dumps(block).encode(), NOW_NS)
    assert np.asarray(d.values).tolist() == pytest.approx([1.0, 2.0, 3.0, 40.0, 50.0])
    t0 = int((NOW_S - 1) * 1e6) * 1000
    assert (np.asarray(d.ts_ns) - t0).tolist() == [0, 10_000_000, 20_000_000, 0, 10_000_000]


def test_native_block_range_is_checked_per_sample(decoder: Decoder) -> None:
    block = {"t0": NOW_S, "dt": 0.01, "series": {"g1/strain": [1.0, 99999.0, 2.0]}}
    d = decoder.decode(BRIDGE, json.dumps(block).encode(), NOW_NS)
    assert np.asarray(d.values).tolist() == [1.0, 2.0]  # the other samples are stored
    (refused,) = d.rejected
    assert refused.reason is RejectReason.OUT_OF_RANGE
    assert refused.indices == (1,)
    assert "g1/strain[1]" in refused.detail


def test_registry_override_narrows_range(decoder: Decoder) -> None:
    # co2 is narrowed to 5000 ppm for room-1 (an SCD41), though the vocabulary allows 10000.
    err = reject(decoder, SCHOOL, b'[{"n":"co2","v":6000}]')
    assert err.reason is RejectReason.OUT_OF_RANGE


BAD_INPUTS = [
    pytest.param(BRIDGE, b"\xff\xfe not utf-8", RejectReason.NOT_UTF8, id="not-utf8"),
    pytest.param(BRIDGE, b"hello", RejectReason.NOT_JSON, id="not-json"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":1', RejectReason.NOT_JSON, id="truncated"),
    pytest.param(BRIDGE, b"", RejectReason.EMPTY, id="empty"),
    pytest.param(BRIDGE, b"[]", RejectReason.EMPTY, id="empty-pack"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":"12"}]', RejectReason.WRONG_TYPE, id="string"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":true}]', RejectReason.WRONG_TYPE, id="bool"),
    pytest.param(BRIDGE, b'[{"n":5,"v":1}]', RejectReason.WRONG_TYPE, id="name-number"),
    pytest.param(BRIDGE, b'{"n":"g1/strain","v":1}', RejectReason.WRONG_TYPE, id="object"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":NaN}]', RejectReason.NOT_FINITE, id="nan"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":Infinity}]', RejectReason.NOT_FINITE, id="inf"),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":1e309}]', RejectReason.NOT_FINITE, id="1e309"),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/strain","v":' + b"9" * 3000 + b"}]",
        RejectReason.NOT_FINITE,
        id="huge-int",
    ),
    pytest.param(BRIDGE, b'[{"n":"g1/strain","v":7000}]', RejectReason.OUT_OF_RANGE, id="range"),
    pytest.param(
        BRIDGE, b'[{"n":"g1/strain","v":1,"x":2}]', RejectReason.UNKNOWN_FIELD, id="unknown-field"
    ),
    pytest.param(
        BRIDGE, b'[{"n":"g9/strain","v":1}]', RejectReason.UNKNOWN_MEASUREMENT, id="unknown-channel"
    ),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/co2","v":1}]',
        RejectReason.UNKNOWN_MEASUREMENT,
        id="unknown-measurement",
    ),
    pytest.param(
        BRIDGE, b'[{"n":"g1/strain","u":"psi","v":1}]', RejectReason.UNKNOWN_UNIT, id="unknown-unit"
    ),
    pytest.param(
        BRIDGE,
        b'[{"bn":"sg2/","n":"g1/strain","v":1}]',
        RejectReason.IDENTITY_MISMATCH,
        id="other-device-bn",
    ),
    pytest.param(
        BRIDGE,
        b'{"device":"sg2","t0":1.78e9,"dt":1,"series":{"g1/strain":[1]}}',
        RejectReason.IDENTITY_MISMATCH,
        id="other-device-block",
    ),
    pytest.param(
        "stadtpuls/bridge/b9/sg1",
        b'[{"n":"g1/strain","v":1}]',
        RejectReason.UNKNOWN_SITE,
        id="unknown-site",
    ),
    pytest.param(
        "stadtpuls/bridge/b1/sg9",
        b'[{"n":"g1/strain","v":1}]',
        RejectReason.UNKNOWN_DEVICE,
        id="unknown-device",
    ),
    pytest.param(
        "stadtpuls/school/b1/sg1",
        b'[{"n":"g1/strain","v":1}]',
        RejectReason.BAD_TOPIC,
        id="kind-mismatch",
    ),
    pytest.param("stadtpuls/bridge/b1/sg1/extra", b"[]", RejectReason.BAD_TOPIC, id="deep-topic"),
    pytest.param("stadtpuls/bridge/b1/s g,1=x", b"[]", RejectReason.BAD_TOPIC, id="id-chars"),
    pytest.param("stadtpuls/bridge/b1/sg1\u200b", b"[]", RejectReason.BAD_TOPIC, id="zero-width"),
    pytest.param("stadtpuls/bridge/B1/sg1", b"[]", RejectReason.BAD_TOPIC, id="uppercase"),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/strain","v":1,"t":1780009000}]',
        RejectReason.FUTURE_TIMESTAMP,
        id="future",
    ),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/strain","v":1,"t":1780000000000}]',
        RejectReason.FUTURE_TIMESTAMP,
        id="milliseconds",
    ),
    pytest.param(
        BRIDGE, b'[{"n":"g1/strain","v":1,"t":1500000000}]', RejectReason.TOO_OLD, id="too-old"
    ),
    pytest.param(
        BRIDGE, b'[{"n":"g1/strain","v":1,"t":-9e18}]', RejectReason.TOO_OLD, id="before-1677"
    ),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/strain","v":1,"t":9.3e9}]',
        RejectReason.FUTURE_TIMESTAMP,
        id="after-2262",
    ),
    pytest.param(BRIDGE, b"[" * 300 + b"]" * 300, RejectReason.TOO_DEEP, id="deep"),
    pytest.param(
        BRIDGE,
        b'[{"n":"g1/strain","v":1}' + b',{"n":"g1/strain","v":1}' * 2000 + b"]",
        RejectReason.OVERSIZED,
        id="oversized",
    ),
    pytest.param(
        BRIDGE,
        b'{"t0":1.78e9,"dt":0.01,"series":{"g1/strain":[' + b"1," * 3000 + b"1]}}",
        RejectReason.OVERSIZED,
        id="big-array",
    ),
    pytest.param(
        BRIDGE, b'[{"n":"g1/strain","vs":"on"}]', RejectReason.UNSUPPORTED, id="string-value"
    ),
    pytest.param(BRIDGE, b'[{"n":"g1/strain"}]', RejectReason.WRONG_TYPE, id="no-value"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), BAD_INPUTS)
def test_bad_input_is_rejected_with_reason(
    decoder: Decoder, topic: str, payload: bytes, reason: RejectReason
) -> None:
    err = reject(decoder, topic, payload)
    assert err.reason is reason
    assert err.detail  # a sentence for the person reading the quarantine


def test_too_many_records(decoder: Decoder) -> None:
    small = Decoder(decoder.registry, decoder.topics, DecodeLimits(max_records=3))
    pack = json.dumps([{"n": "g1/strain", "v": 1}] * 4).encode()
    assert reject(small, BRIDGE, pack).reason is RejectReason.TOO_MANY_VALUES


def test_too_many_block_samples(decoder: Decoder) -> None:
    small = Decoder(decoder.registry, decoder.topics, DecodeLimits(max_samples=10))
    block = json.dumps({"t0": NOW_S, "dt": 0.01, "series": {"g1/strain": [1.0] * 11}}).encode()
    assert reject(small, BRIDGE, block).reason is RejectReason.TOO_MANY_VALUES


def test_topic_prefix_must_match(decoder: Decoder) -> None:
    assert reject(decoder, "other/bridge/b1/sg1", b"[]").reason is RejectReason.BAD_TOPIC
