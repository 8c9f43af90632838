"""The line-protocol builder: the schema, escaping, integer suffix and float round-trip."""

from __future__ import annotations

import math
import sys

import pytest
from influxdb_client.client.write.point import Point

from ingest.stores.lineprotocol import (
    escape_measurement,
    escape_tag,
    reading_line,
    reading_prefix,
    series_prefix,
)


def _fields(line: str) -> dict[str, str]:
    """The field set of a line whose prefix needs no escaping: ``k=v,k=v``."""
    _, fields, _ = line.split(" ")
    return dict(item.split("=", 1) for item in fields.split(","))


def test_channel_series_line_has_sorted_tags_fields_and_ns_timestamp() -> None:
    prefix = reading_prefix("bridge", "b1", "sg1", "g1", "strain")
    line = reading_line(prefix, 1_700_000_000_123_456_789, 12.5, 5, 0.25)
    assert line == (
        "strain,channel=g1,device=sg1,kind=bridge,site=b1 "
        "value=12.5,anomaly=5i,score=0.25 1700000000123456789"
    )


def test_device_level_series_has_no_channel_tag() -> None:
    prefix = reading_prefix("bridge", "b1", "sg1", "", "temperature")
    assert prefix == "temperature,device=sg1,kind=bridge,site=b1"
    assert "channel" not in reading_line(prefix, 1, 3.0, 0, 0.0)


def test_anomaly_is_an_integer_field_and_value_stays_a_float() -> None:
    line = reading_line("co2,site=s", 1, 400.0, 0, 0.0)
    fields = _fields(line)
    assert fields["anomaly"] == "0i"
    # "400.0", never "400": a bare integer literal would still be a float in line protocol,
    # but the ".0" makes the type plain to anyone reading the wire.
    assert fields["value"] == "400.0"


@pytest.mark.parametrize(
    "value",
    [
        0.1,
        1 / 3,
        -0.0,
        123456.789012345,
        1e-300,
        5e-324,
        sys.float_info.max,
        -2.5e17,
        1e16,
    ],
)
def test_floats_round_trip_exactly(value: float) -> None:
    fields = _fields(reading_line("strain,site=b1", 1, value, 0, value))
    for name in ("value", "score"):
        parsed = float(fields[name])
        assert parsed == value
        assert math.copysign(1.0, parsed) == math.copysign(1.0, value)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("plain", "plain"), ("a,b", r"a\,b"), ("a b", r"a\ b"), ("a=b", r"a\=b")],
)
def test_tag_escaping(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


def test_measurement_escapes_comma_and_space_but_not_equals() -> None:
    assert escape_measurement("crack width,x=1") == r"crack\ width\,x=1"


def test_prefix_matches_influxdb_client_point_for_awkward_names() -> None:
    """influxdb-client's ``Point`` is the reference the hand-built prefix must agree with."""
    tags = {"site": "brücke, nord", "device": "g=1", "kind": "bridge", "channel": "a b"}
    # influxdb-client leaves Point's constructor and field() unannotated.
    reference = Point("str ain,x").field("value", 1.5).time(7)  # type: ignore[no-untyped-call]
    for key, value in tags.items():
        reference = reference.tag(key, value)
    expected = reference.to_line_protocol()
    prefix = series_prefix("str ain,x", tags)
    assert expected.startswith(prefix + " ")
    assert prefix == r"str\ ain\,x,channel=a\ b,device=g\=1,kind=bridge,site=brücke\,\ nord"


def test_empty_tag_values_are_left_out() -> None:
    assert series_prefix("m", {"b": "", "a": "x"}) == "m,a=x"


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there", "back\\slash", "trailing\\"])
def test_unrepresentable_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="line protocol"):
        escape_tag(bad)
    with pytest.raises(ValueError, match="line protocol"):
        escape_measurement(bad)
