"""Property tests: whatever bytes and topics arrive, the decoder either returns readings
that satisfy the registry or rejects the message with a reason; it never raises anything
else, so no input can become a ``decoder_error``."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.codecs import Decoded, DecodeLimits, Decoder, ReadingRejected
from devices.topics import TopicRejected, TopicScheme
from tests.registry_fixture import test_registry

NOW_NS = 1_780_000_000 * 10**9
DECODER = Decoder(test_registry(), TopicScheme(), DecodeLimits(max_payload_bytes=8192))
BRIDGE = "stadtpuls/bridge/b1/sg1"

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


@given(st.binary(max_size=512))
def test_arbitrary_bytes(payload: bytes) -> None:
    decode_or_reject(BRIDGE, payload)


@given(json_values)
def test_arbitrary_json(value: object) -> None:
    decode_or_reject(BRIDGE, json.dumps(value).encode())


@settings(max_examples=300)
@given(st.lists(records, min_size=1, max_size=5))
def test_senml_like_packs(pack: list[dict[str, object]]) -> None:
    decode_or_reject(BRIDGE, json.dumps(pack).encode())


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
