"""Property tests: whatever bytes and topics arrive, the decoder either returns readings
that satisfy the registry or rejects the message with a reason; it never raises anything
else, so no input can become a ``decoder_error``. Valid packs and blocks come back as
the readings they carry, and a repeated key is refused however it is spelled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.codecs import Decoded, DecodeLimits, Decoder, ReadingRejected, RejectReason
from devices.decoding import TimeWindow
from devices.senml import SenmlDecoder
from devices.topics import TopicRejected, TopicScheme
from tests.support.registry import sample_registry

NOW_S = 1_780_000_000
NOW_NS = NOW_S * 10**9
DECODER = Decoder(sample_registry(), TopicScheme(), DecodeLimits(max_payload_bytes=8192))
BRIDGE = "stadtpuls/bridge/b1/sg1"
SG1 = DECODER.registry.sites["b1"].devices["sg1"].series
# Wall-clock deadlines fail at random on a loaded machine; the suite's timeout still applies.
UNTIMED = settings(deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
record_keys = st.sampled_from(["bn", "bt", "bu", "bv", "n", "u", "v", "t", "vs", "s", "x"])
records = st.dictionaries(
    record_keys,
    st.none()
    | st.floats()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.sampled_from(["g1/strain", "sg1/", "g2/strain", "g1/temperature", "/", "K", "ue"]),
    max_size=6,
)


def check(decoded: Decoded) -> None:
    values = np.asarray(decoded.values, dtype=np.float64)
    assert np.isfinite(values).all()
    series = [DECODER.registry.series[i] for i in np.asarray(decoded.series).tolist()]
    for s, v in zip(series, values.tolist(), strict=True):
        assert s.key.site == "b1"
        assert s.key.device == "sg1"
        assert s.minimum <= v <= s.maximum
    ts = np.asarray(decoded.ts_ns, dtype=np.int64)
    assert (ts <= NOW_NS + 300 * 10**9).all()


def decode_or_reject(topic: str, payload: bytes) -> None:
    try:
        decoded = DECODER.decode(topic, payload, NOW_NS)
    except ReadingRejected as exc:
        detail = exc.detail
    else:
        check(decoded)
        return
    assert detail, "a rejection must say why"


@UNTIMED
@given(st.binary(max_size=512))
def test_arbitrary_bytes(payload: bytes) -> None:
    decode_or_reject(BRIDGE, payload)


@UNTIMED
@given(json_values)
def test_arbitrary_json(value: object) -> None:
    decode_or_reject(BRIDGE, json.dumps(value).encode())


@settings(UNTIMED, max_examples=300)
@given(st.lists(records, min_size=1, max_size=5))
def test_senml_like_packs(pack: list[dict[str, object]]) -> None:
    decode_or_reject(BRIDGE, json.dumps(pack).encode())


@UNTIMED
@given(
    st.fixed_dictionaries(
        {"t0": st.floats(), "dt": st.floats(), "series": st.dictionaries(
            st.sampled_from(["g1/strain", "g2/strain", "nope"]),
            st.lists(st.floats(), max_size=20),
            max_size=2,
        )},
        optional={"device": st.text(max_size=5), "units": st.dictionaries(
            st.sampled_from(["g1/strain", "g2/strain"]), st.sampled_from(["/", "ue", "K"])
        )},
    )
)  # fmt: skip
def test_block_like_objects(block: dict[str, object]) -> None:
    decode_or_reject(BRIDGE, json.dumps(block).encode())


@UNTIMED
@given(st.text(max_size=60))
def test_arbitrary_topics(topic: str) -> None:
    try:
        parsed = TopicScheme().parse(topic)
    except TopicRejected:
        return
    # A topic that parses has ids that are safe in topics, line protocol and queries.
    for part in (parsed.site, parsed.device):
        assert part
        assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in part)
    decode_or_reject(topic, b'[{"n":"g1/strain","v":1}]')


# Fragments a hostile or broken client might string together: JSON tokens, the literals
# Python's json accepts and strict JSON does not, numbers no float holds, broken escapes,
# bytes that are not UTF-8.
_FRAGMENTS = [
    b"[", b"]", b"{", b"}", b",", b":", b" ", b"\n", b'"', b'"v"', b'"n"', b'"t"', b'"bn"',
    b'"g1/strain"', b'"sg1/"', b"1", b"-0", b"1.5", b"1e309", b"-1e309", b"1780000000",
    b"1780000000000", b"NaN", b"Infinity", b"-Infinity", b"null", b"true", b"9" * 4400,
    b'"\\u0000"', b'"\\ud800"', b'"\\u0076"', b"\xff", b"\xe2\x80\x8b", b"\x00",
]  # fmt: skip


@UNTIMED
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join))
def test_hostile_token_soup(payload: bytes) -> None:
    decode_or_reject(BRIDGE, payload)


S = b'[{"n":"g1/strain","v":'  # the head of a one-record pack
DEEP = 100_000
HOSTILE = [
    ("dup-v", S + b'1,"v":2}]', RejectReason.DUPLICATE_KEY),
    ("dup-escaped", S + b'1,"\\u0076":2}]', RejectReason.DUPLICATE_KEY),
    ("dup-second-record", S + b'1},{"n":"g2/strain","n":"g1/strain","v":2}]',
     RejectReason.DUPLICATE_KEY),
    ("dup-block-field", b'{"t0":1.78e9,"t0":1.78e9,"dt":1,"series":{"g1/strain":[1]}}',
     RejectReason.DUPLICATE_KEY),
    ("dup-block-series", b'{"t0":1.78e9,"dt":1,"series":{"g1/strain":[1],"g1/strain":[9000]}}',
     RejectReason.DUPLICATE_KEY),
    ("dup-block-units", b'{"t0":1.78e9,"dt":1,"series":{"g1/strain":[1]},'
     b'"units":{"g1/strain":"ue","g1/strain":"/"}}', RejectReason.DUPLICATE_KEY),
    ("deep-lists", b"[" * DEEP + b"]" * DEEP, RejectReason.TOO_DEEP),
    ("deep-in-record", S + b"[" * DEEP + b"]" * DEEP + b"}]", RejectReason.TOO_DEEP),
    ("deep-objects", b'{"a":' * 40_000 + b"1" + b"}" * 40_000, RejectReason.TOO_DEEP),
    ("1e309", S + b"1e309}]", RejectReason.NOT_FINITE),
    ("int-5000-digits", S + b"9" * 5000 + b"}]", RejectReason.NOT_FINITE),
    ("time-5000-digits", S + b'1,"t":-' + b"9" * 5000 + b"}]", RejectReason.NOT_FINITE),
    ("time-overflows", S + b'1,"bt":1e308,"t":1e308}]', RejectReason.NOT_FINITE),
    ("block-conversion-overflows",
     b'{"t0":1.78e9,"dt":1,"series":{"g1/strain":[1e305]},"units":{"g1/strain":"/"}}',
     RejectReason.NOT_FINITE),
    ("120k-elements", b"[" + b"0," * 120_000 + b"0]", RejectReason.TOO_MANY_VALUES),
    ("million-elements", b"[" + b"0," * 1_000_000 + b"0]", RejectReason.OVERSIZED),
    ("before-1677", S + b'1,"t":-9.3e9}]', RejectReason.TOO_OLD),
    ("after-2262", S + b'1,"t":9.3e9}]', RejectReason.FUTURE_TIMESTAMP),
    ("ms-as-s", S + b'1,"t":1780000000000}]', RejectReason.FUTURE_TIMESTAMP),
    ("name-nul", b'[{"n":"g1/strain\\u0000","v":1}]', RejectReason.UNKNOWN_MEASUREMENT),
    ("name-separators", b'[{"n":"g1/str,ain=1 x","v":1}]', RejectReason.UNKNOWN_MEASUREMENT),
    ("bn-wildcard", b'[{"bn":"sg1/#","n":"","v":1}]', RejectReason.UNKNOWN_MEASUREMENT),
    ("other-device", b'[{"bn":"sg2/","n":"g1/strain","v":1}]', RejectReason.IDENTITY_MISMATCH),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "reason"), [pytest.param(p, r, id=name) for name, p, r in HOSTILE]
)
def test_hostile_payloads_are_refused_with_reason(payload: bytes, reason: RejectReason) -> None:
    decoder = Decoder(DECODER.registry, DECODER.topics, DecodeLimits())
    with pytest.raises(ReadingRejected) as info:
        decoder.decode(BRIDGE, payload, NOW_NS)
    assert info.value.reason is reason, info.value.detail
    assert info.value.detail


def in_range(name: str) -> st.SearchStrategy[float]:
    s = SG1[name]
    return st.floats(s.minimum, s.maximum, allow_nan=False, allow_infinity=False)


@st.composite
def valid_records(draw: st.DrawFn) -> tuple[str, float, float]:
    # Times on a millisecond grid: two records of one series at the same instant refuse
    # the pack (duplicate_reading), so a valid pack has distinct (name, time) pairs.
    name = draw(st.sampled_from(sorted(SG1)))
    return name, draw(in_range(name)), draw(st.integers(0, 1_000_000)) / 1000


def name_and_time(record: tuple[str, float, float]) -> tuple[str, float]:
    return record[0], record[2]


@settings(UNTIMED, max_examples=60)
@given(
    st.lists(valid_records(), min_size=1, max_size=20, unique_by=name_and_time),
    st.floats(NOW_S - 20 * 86400, NOW_S - 1000),
    st.booleans(),
    st.booleans(),
)
def test_valid_packs_round_trip(
    records: list[tuple[str, float, float]], bt: float, with_bn: bool, with_units: bool
) -> None:
    pack: list[dict[str, object]] = []
    for name, v, t in records:
        record: dict[str, object] = {"n": name, "v": v, "t": t}
        if with_units:
            record["u"] = SG1[name].unit
        pack.append(record)
    pack[0]["bt"] = bt
    if with_bn:
        pack[0]["bn"] = "sg1/"
    decoded = DECODER.decode(BRIDGE, json.dumps(pack).encode(), NOW_NS)
    assert not decoded.receipt_timed
    assert list(decoded.series) == [SG1[name].index for name, _, _ in records]
    assert list(decoded.values) == [v for _, v, _ in records]
    for ts, (_, _, t) in zip(decoded.ts_ns, records, strict=True):
        # Kept to the microsecond; at 1.7e18 ns a double is good to a quarter microsecond.
        assert abs(ts - (bt + t) * 1e9) <= 2000


@settings(UNTIMED, max_examples=40)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(SG1)), st.integers(-86_400_000, 0).map(lambda ms: ms / 1000)
        ),
        min_size=1,
        unique=True,
    )
)
def test_relative_times_count_from_receipt(records: list[tuple[str, float]]) -> None:
    pack = [{"n": name, "v": 0.0, "t": t} for name, t in records]
    decoded = DECODER.decode(BRIDGE, json.dumps(pack).encode(), NOW_NS)
    assert decoded.receipt_timed
    for ts, (_, t) in zip(decoded.ts_ns, records, strict=True):
        assert abs(ts - (NOW_NS + t * 1e9)) <= 2000


@settings(UNTIMED, max_examples=50)
@given(
    st.dictionaries(
        st.sampled_from(sorted(SG1)),
        st.lists(st.floats(-40, 80), min_size=1, max_size=50),
        min_size=1,
    ),
    st.floats(NOW_S - 20 * 86400, NOW_S - 1000),
    st.floats(0.001, 1.0),
)
def test_valid_blocks_round_trip(series: dict[str, list[float]], t0: float, dt: float) -> None:
    block = {"device": "sg1", "t0": t0, "dt": dt, "series": series}
    decoded = DECODER.decode(BRIDGE, json.dumps(block).encode(), NOW_NS)
    expected = [(SG1[n].index, i, v) for n, vs in series.items() for i, v in enumerate(vs)]
    assert np.asarray(decoded.series).tolist() == [idx for idx, _, _ in expected]
    assert np.asarray(decoded.values).tolist() == [v for _, _, v in expected]
    for ts, (_, i, _) in zip(np.asarray(decoded.ts_ns).tolist(), expected, strict=True):
        assert abs(ts - (t0 + i * dt) * 1e9) <= 2000 + i


def spell(key: str, escaped: bool) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in key) if escaped else key


@settings(UNTIMED, max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_records(), min_size=1, max_size=10), st.data())
def test_a_repeated_key_is_refused(
    records: list[tuple[str, float, float]], data: st.DataObject
) -> None:
    objects = [{"n": name, "v": v, "t": NOW_S - 100 + t} for name, v, t in records]
    target = data.draw(st.integers(0, len(objects) - 1))
    key = data.draw(st.sampled_from(sorted(objects[target])))
    escaped = data.draw(st.booleans())
    parts = []
    for i, obj in enumerate(objects):
        members = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in obj.items()]
        if i == target:
            # The same value again: the pack would pass if the repeat went unnoticed.
            members.append(f'"{spell(key, escaped)}":{json.dumps(obj[key])}')
        parts.append("{" + ",".join(members) + "}")
    with pytest.raises(ReadingRejected) as info:
        DECODER.decode(BRIDGE, ("[" + ",".join(parts) + "]").encode(), NOW_NS)
    assert info.value.reason is RejectReason.DUPLICATE_KEY
    assert repr(key) in info.value.detail


# Packs of the common fields only, with the values that make the fast path step aside:
# booleans, strings where numbers go, huge integers, unknown names and units, times at and
# beyond the window, repeated instants.
common_records = st.dictionaries(
    st.sampled_from(["bn", "bt", "n", "v", "t", "u"]),
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.sampled_from([NOW_S, NOW_S - 1, NOW_S + 400, 0, -1.5, 2.0**28, 9.3e9, 1e308])
    | st.sampled_from(["sg1/", "sg2/", "", "g1/strain", "g2/strain", "g1/temperature", "ue"])
    | st.sampled_from(["Cel", "K", "degC", "/", "strain"]),
    min_size=1,
    max_size=6,
)


def outcome(payload: bytes, *, full: bool) -> object:
    """What the decoder makes of the pack: the readings, or the rejection's reason and
    detail. ``full`` reads every record through the strict model (``only`` all of them)."""
    try:
        n = len(json.loads(payload)) if full else 0
        only = range(max(n, 1)) if full else None
        d = DECODER.decode(BRIDGE, payload, NOW_NS, only=only)
    except ReadingRejected as exc:
        return ("rejected", exc.reason, exc.detail)
    return (list(d.series), list(d.ts_ns), list(d.values), d.receipt_timed, list(d.rejected))


@settings(UNTIMED, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(common_records, min_size=1, max_size=5), st.booleans())
def test_the_fast_path_reads_a_pack_as_the_full_model_does(
    records: list[dict[str, object]], spaced: bool
) -> None:
    """Packs of the common fields skip the pydantic model (``SenmlDecoder.common``); for
    any such pack the result must be what reading every record through the model gives:
    the same readings, or the same rejection."""
    payload = json.dumps(records, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert outcome(payload, full=False) == outcome(payload, full=True)


@pytest.mark.parametrize(
    ("records", "fast"),
    [
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "v": 1.5}], True),
        ([{"bn": "sg1/", "n": "g1/strain", "v": 2, "t": -10}, {"n": "g2/strain", "v": 3}], True),
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "v": 1.5, "u": "ue"}], True),
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "bv": 1.0, "v": 0.5}], False),
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "v": True}], False),
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g9/strain", "v": 1.5}], False),
        ([{"bn": "sg1/", "bt": NOW_S, "n": "g1/strain", "v": 1.5, "v ": 2}], False),
    ],
)
def test_which_packs_take_the_fast_path(records: list[dict[str, object]], fast: bool) -> None:
    """The common shapes of real devices are read without the model; anything else (a
    base value, a boolean, an unknown name, another field) is left to the full reading."""
    window = TimeWindow(NOW_NS, 300 * 10**9, 86400 * 10**9)
    got = SenmlDecoder(100).common("sg1", SG1, json.dumps(records).encode(), window)
    assert (got is not None) == fast
    if got is not None:
        assert got.values == [float(r["v"]) for r in records]  # type: ignore[arg-type]
