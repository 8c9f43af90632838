"""The registry file: what it accepts, and errors that name the file, line and key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from devices.registry import RegistryError, parse_registry
from tests.support.registry import sample_registry


def test_series_and_overrides() -> None:
    reg = sample_registry()
    dev = reg.device("b1", "sg1")
    assert dev is not None
    assert sorted(dev.series) == ["g1/strain", "g1/temperature", "g2/strain"]
    strain = dev.series["g1/strain"]
    assert strain.limit == 900
    assert strain.unit == "ue"
    assert dev.interval == timedelta(seconds=1)
    room = reg.device("s1", "room-1")
    assert room is not None
    assert room.series["co2"].maximum == 5000
    assert room.series["co2"].warn == 1000
    assert [s.index for s in reg.series] == list(range(len(reg.series)))


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            "sites:\n  b1:\n    kind: bridge\n    name: x\n    devices:\n      d1:\n"
            "        channels:\n          g1: [strian]\n",
            8,
            "sites.b1.devices.d1.channels.g1.0: 'strian' is not a bridge measurement",
        ),
        ("sites:\n  b1:\n    kind: brige\n    name: x\n    devices: {}\n", 3, "sites.b1.kind"),
        ("sites:\n  B1:\n    kind: bridge\n    name: x\n    devices: {}\n", 2, "sites.B1"),
        (
            "sites:\n  b1:\n    kind: school\n    name: x\n    devices:\n      r1:\n"
            "        interval: soon\n        measurements: [co2]\n",
            7,
            "not a duration",
        ),
        (
            "sites:\n  b1:\n    kind: school\n    name: x\n    colour: red\n    devices: {}\n",
            5,
            "sites.b1.colour: Extra inputs",
        ),
        (
            "sites:\n  s1:\n    kind: school\n    name: x\n    devices:\n      r1:\n"
            "        measurements: [co2]\n        overrides:\n          co2: {max: 20000}\n",
            9,
            "overrides.co2: range [0, 20000] must lie inside the physical range",
        ),
        (
            "sites:\n  s1:\n    kind: school\n    name: x\n    devices:\n      r1:\n"
            "        measurements: [co2]\n        overrides:\n"
            "          co2: {warn: 2000, alarm: 1000}\n",
            9,
            "warn (2000) must not be beyond alarm (1000)",
        ),
        (
            "sites:\n  s1:\n    kind: school\n    name: x\n    devices:\n      r1:\n"
            "        interval: 1m\n",
            6,
            "sites.s1.devices.r1: the device has no measurements",
        ),
        ("sites: [\n", 2, "not valid YAML"),
    ],
)
def test_errors_name_file_line_and_key(text: str, line: int, needle: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "reg.yaml")
    message = str(info.value)
    assert message.startswith(f"reg.yaml:{line}:"), message
    assert needle in message


def test_ids_with_a_trailing_newline_are_invalid() -> None:
    # A regex '$' also matches before a final newline; ids must match whole.
    from devices.registry import is_valid_id

    assert is_valid_id("room-1")
    assert not is_valid_id("room-1\n")
    assert not is_valid_id("Room-1")
