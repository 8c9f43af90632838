"""SenML by RFC 8428: the base version, the base sum, the update time, two values for one
instant, a record without a value, and the README's table of every SenML field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from devices.codecs import DecodeLimits, Decoder, ReadingRejected, RejectReason, SenmlRecord
from devices.registry import Registry
from devices.topics import TopicScheme

NOW_S = 1_780_000_000.0
NOW_NS = int(NOW_S * 1e9)
T = NOW_S - 60
BRIDGE = "stadtpuls/bridge/b1/sg1"
SCHOOL = "stadtpuls/school/s1/room-1"
README = Path(__file__).parents[2] / "README.md"


@pytest.fixture
def decoder(registry: Registry) -> Decoder:
    return Decoder(registry, TopicScheme("stadtpuls"), DecodeLimits())


def pack(*records: dict[str, object]) -> bytes:
    return json.dumps(list(records)).encode()


def reject(decoder: Decoder, topic: str, payload: bytes) -> ReadingRejected:
    with pytest.raises(ReadingRejected) as info:
        decoder.decode(topic, payload, NOW_NS)
    return info.value


# -- bver: RFC 8428, 4.4 --------------------------------------------------------------------


@pytest.mark.parametrize("where", [0, 1])
@pytest.mark.parametrize("bver", [11, 26])  # 26: version 10 plus RFC 9100's secondary units
def test_a_newer_version_refuses_the_whole_pack(decoder: Decoder, where: int, bver: int) -> None:
    records: list[dict[str, object]] = [
        {"n": "co2", "v": 800, "t": T},
        {"n": "temperature", "v": 21.5, "t": T},
    ]
    records[where]["bver"] = bver
    err = reject(decoder, SCHOOL, pack(*records))
    assert err.reason is RejectReason.UNSUPPORTED_VERSION
    assert f"version {bver}" in err.detail
    assert "version 10" in err.detail
    assert err.records == ()  # the pack as a whole, not its records one by one


@pytest.mark.parametrize("bver", [10, 5])
def test_version_10_and_older_are_read(decoder: Decoder, bver: int) -> None:
    d = decoder.decode(SCHOOL, pack({"bver": bver, "n": "co2", "v": 800, "t": T}), NOW_NS)
    assert list(d.values) == [800.0]


def test_a_version_below_1_is_no_version(decoder: Decoder) -> None:
    err = reject(decoder, SCHOOL, pack({"bver": 0, "n": "co2", "v": 800, "t": T}))
    assert err.reason is RejectReason.WRONG_TYPE
    assert "bver" in err.detail


# -- bs: base sum ---------------------------------------------------------------------------


def test_base_sum_is_unsupported_as_sum_is(decoder: Decoder) -> None:
    with_bs = reject(decoder, SCHOOL, pack({"n": "co2", "v": 800, "t": T, "bs": 5}))
    with_s = reject(decoder, SCHOOL, pack({"n": "co2", "v": 800, "t": T, "s": 5}))
    assert with_bs.reason is RejectReason.UNSUPPORTED  # a SenML field, not unknown_field
    assert with_bs.detail == with_s.detail
    assert "bs" in with_bs.detail


def test_base_sum_refuses_only_its_record(decoder: Decoder) -> None:
    d = decoder.decode(
        SCHOOL,
        pack({"bs": 0, "n": "co2", "v": 800, "t": T}, {"n": "temperature", "v": 21.5, "t": T}),
        NOW_NS,
    )
    assert list(d.values) == [21.5]
    (refused,) = d.rejected
    assert (refused.indices, refused.reason) == ((0,), RejectReason.UNSUPPORTED)


# -- ut: update time ------------------------------------------------------------------------


def test_update_time_is_accepted_and_ignored(decoder: Decoder) -> None:
    plain = decoder.decode(SCHOOL, pack({"n": "co2", "v": 800, "t": T}), NOW_NS)
    hinted = decoder.decode(SCHOOL, pack({"n": "co2", "v": 800, "t": T, "ut": 60}), NOW_NS)
    assert (list(hinted.values), list(hinted.ts_ns)) == (list(plain.values), list(plain.ts_ns))
    assert not hinted.rejected


# -- two values for one instant -------------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([{"n": "co2", "v": 800, "t": T}, {"n": "co2", "v": 900, "t": T}], id="same-t"),
        pytest.param(
            [{"bt": T, "n": "co2", "v": 800}, {"n": "co2", "v": 900, "t": 0}], id="base-time"
        ),
        pytest.param([{"n": "co2", "v": 800}, {"n": "co2", "v": 900}], id="both-at-receipt"),
        pytest.param(
            [{"n": "co2", "v": 800, "t": T}, {"n": "co2", "v": 800, "t": T}], id="same-value"
        ),
    ],
)
def test_two_values_for_one_instant_refuse_the_pack(
    decoder: Decoder, records: list[dict[str, object]]
) -> None:
    err = reject(decoder, SCHOOL, pack(*records))
    assert err.reason is RejectReason.DUPLICATE_READING
    assert "records 0 and 1" in err.detail
    assert "'co2'" in err.detail


def test_the_same_name_at_two_times_and_two_names_at_one_time_are_fine(decoder: Decoder) -> None:
    d = decoder.decode(
        SCHOOL,
        pack(
            {"n": "co2", "v": 800, "t": T},
            {"n": "co2", "v": 810, "t": T + 1},
            {"n": "temperature", "v": 21.5, "t": T},
        ),
        NOW_NS,
    )
    assert len(d) == 3


# -- a record without a value ---------------------------------------------------------------


def test_a_record_without_value_says_so(decoder: Decoder) -> None:
    err = reject(decoder, BRIDGE, pack({"bn": "sg1/", "bt": T}))
    assert err.reason is RejectReason.WRONG_TYPE
    assert "has no value" in err.detail
    assert "no series" not in err.detail


def test_a_named_record_without_value_says_so(decoder: Decoder) -> None:
    err = reject(decoder, BRIDGE, pack({"n": "g1/strain", "t": T}))
    assert err.reason is RejectReason.WRONG_TYPE
    assert "record 0 (g1/strain) has no value" in err.detail


def test_a_base_record_without_value_still_bases_the_records_after_it(decoder: Decoder) -> None:
    d = decoder.decode(
        BRIDGE,
        pack({"bn": "sg1/", "bt": T}, {"n": "g1/strain", "v": 12.5}, {"n": "g2/strain", "v": 3}),
        NOW_NS,
    )
    assert list(d.values) == [12.5, 3.0]
    assert np.asarray(d.ts_ns).tolist() == [int(T * 1e9)] * 2
    (refused,) = d.rejected
    assert (refused.indices, refused.reason) == ((0,), RejectReason.WRONG_TYPE)


# -- the README -----------------------------------------------------------------------------


def test_the_readme_says_what_happens_to_every_senml_field() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("### SenML JSON (RFC 8428)", 1)[1].split("\n### ", 1)[0]
    table = section.split("| field | RFC 8428 | what Stadtpuls does |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|") for line in table.strip().splitlines()[1:]]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row[1])}
    assert all(row[3].strip() for row in rows)  # and says what happens
    assert documented == set(SenmlRecord.model_fields)
    assert documented == {"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd"} | {
        "s",
        "t",
        "ut",
    }
