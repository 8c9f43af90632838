"""The real-data loaders on small files in the publishers' formats (written here, so the
tests need neither the network nor the excerpts), and on the excerpts when they are there."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bench.real_data import (
    LOADERS,
    MUNICH_SEGMENTS,
    NS,
    data_dir,
    load_munich,
    load_occupancy,
    read_munich_strain,
    read_munich_temperature,
    strain_file,
    temperature_file,
)

OCCUPANCY_HEADER = '"date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"\n'


def _occupancy_rows(start_row: int, minutes: list[str], quoted: bool) -> str:
    rows = []
    for i, stamp in enumerate(minutes):
        date = f'"{stamp}"' if quoted else stamp
        rows.append(f'"{start_row + i}",{date},21.5,27.2,{400 + i},{700 + 10 * i},0.0048,{i % 2}')
    return OCCUPANCY_HEADER + "\n".join(rows) + "\n"


def test_occupancy_files_join_in_utc_with_units(tmp_path: Path) -> None:
    # Two files out of time order, one gzipped, one with bare dates; a gap between them.
    (tmp_path / "datatraining.txt").write_text(
        _occupancy_rows(1, ["2015-02-04 17:51:00", "2015-02-04 17:51:59"], quoted=True)
    )
    with gzip.open(tmp_path / "datatest.txt.gz", "wt") as f:
        f.write(_occupancy_rows(140, ["2015-02-02 14:19:00", "2015-02-02 14:20:00"], quoted=True))
    (tmp_path / "datatest2.txt").write_text(
        _occupancy_rows(1, ["2015-02-11 14:48:00"], quoted=False)
    )
    data = load_occupancy(tmp_path)
    reg = data.registry()
    assert [(s.key.measurement, s.unit) for s in reg.series] == [
        ("temperature", "Cel"),
        ("humidity", "%RH"),
        ("light", "lx"),
        ("co2", "ppm"),
    ]
    assert len(data) == 4 * 5
    co2 = data.series == 3
    ts = data.ts_ns[co2]
    assert bool(np.all(np.diff(ts) > 0))
    # Mons in February is UTC+1: 14:19 local is 13:19 UTC.
    assert np.datetime64(int(ts[0]), "ns") == np.datetime64("2015-02-02T13:19:00")
    assert data.values[co2].tolist() == [700.0, 710.0, 700.0, 710.0, 700.0]
    assert data.occupied[co2].tolist() == [False, True, False, True, False]
    gaps = [w for w in data.windows if w.series == 3]
    assert [w.kind for w in gaps] == ["recording_gap", "recording_gap"]


def _strain_text(stamps: list[str], values: list[float]) -> str:
    rows = [f"{t},{v}" for t, v in zip(stamps, values, strict=True)]
    return "Time (-),DMS_CN (um/m)\n" + "\n".join(rows) + "\n"


def test_munich_strain_date_is_taken_from_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "UniBw_2022-04-11_support_load_01DMS_CNAt100Hz.csv"
    path.write_text(_strain_text(["2022-11-04 09:20:05.375", "2022-11-04 09:20:05.385"], [1, 2]))
    ts, v = read_munich_strain(path)
    # 2022-04-11 09:20:05.375 in Munich (CEST, UTC+2).
    assert np.datetime64(int(ts[0]), "ns") == np.datetime64("2022-04-11T07:20:05.375")
    assert int(ts[1] - ts[0]) == NS // 100
    assert v.tolist() == [1.0, 2.0]


def test_munich_temperature_reads_cp1252_day_first(tmp_path: Path) -> None:
    path = tmp_path / "UniBw_2022-04-11_support_load_01.csv.gz"
    text = (
        "Time (-),Air Temperature (°C),\n11.04.2022 09:20:05.818,3.4\n11.04.2022 09:20:06.8,3.5\n"
    )
    with gzip.open(path, "wb") as f:
        f.write(text.encode("cp1252"))
    ts, v = read_munich_temperature(path)
    assert np.datetime64(int(ts[0]), "ns") == np.datetime64("2022-04-11T07:20:05.818")
    assert v.tolist() == [3.4, 3.5]


def test_munich_segments_pair_strain_and_temperature(tmp_path: Path) -> None:
    for i, (seg, temp, _) in enumerate(MUNICH_SEGMENTS[:2]):
        minute = f"08:{40 + 10 * i}"
        strain = tmp_path / "strain" / strain_file(seg, rate="1hz")
        strain.parent.mkdir(exist_ok=True)
        strain.write_text(
            _strain_text([f"2022-11-04 {minute}:0{k}.000" for k in range(3)], [0.0, 0.1, 0.2])
        )
        temperature = tmp_path / "temperature" / temperature_file(temp)
        temperature.parent.mkdir(exist_ok=True)
        temperature.write_bytes(
            f"Time (-),Air Temperature (°C),\n11.04.2022 {minute}:00.500,2.1\n".encode("cp1252")
        )
    data = load_munich(tmp_path, "1hz")
    reg = data.registry()
    assert [(s.key.name, s.unit) for s in reg.series] == [
        ("cn/strain", "ue"),
        ("cn/temperature", "Cel"),
    ]
    assert int(np.sum(data.series == 0)) == 6
    assert int(np.sum(data.series == 1)) == 2
    kinds = sorted({w.kind for w in data.windows})
    assert kinds == ["load_test", "recording_gap", "settlement"]


@pytest.mark.parametrize("name", list(LOADERS))
def test_excerpt_parses(name: str) -> None:
    if data_dir(name) is None:
        pytest.skip(f"no excerpt of {name} here (see bench/data/{name}/SOURCE.md)")
    data = LOADERS[name]()
    reg = data.registry()
    assert len(data) > 1000
    expected = {
        "occupancy": {"temperature": "Cel", "humidity": "%RH", "light": "lx", "co2": "ppm"},
        "munich_1hz": {"strain": "ue", "temperature": "Cel"},
        "munich_100hz": {"strain": "ue", "temperature": "Cel"},
    }[name]
    assert {s.key.measurement: s.unit for s in reg.series} == expected
    for s in reg.series:
        mine = data.series == s.index
        assert bool(np.all(np.diff(data.ts_ns[mine]) > 0))
        v = data.values[mine]
        assert bool(np.all((v >= s.minimum) & (v <= s.maximum)))
    if name == "occupancy":
        assert len(data) == 4 * 20560
    elif name == "munich_100hz":
        assert int(np.sum(data.series == 0)) == 72000


def test_co2_rising_fast_in_an_empty_room_is_marked_implausible(tmp_path: Path) -> None:
    """The office data's own occupancy says when nobody was there: a CO2 jump of 300 ppm in
    a minute then is the sensor's; the same jump while people are in the room, or a slow
    rise, is not marked."""
    minutes = [f"2015-02-05 {h:02d}:{m:02d}:00" for h in range(0, 3) for m in range(60)]
    co2 = [450.0] * len(minutes)
    occupied = [0] * len(minutes)
    co2[100] = 750.0  # empty since midnight: implausible
    for i in range(130, 150):  # people in the room from 02:10; their jump is plausible
        occupied[i] = 1
    co2[140] = 760.0
    for i in range(160, 180):  # a slow rise, 40 ppm a minute: not marked
        co2[i] = 450.0 + 40.0 * (i - 159)
    rows = [
        f'"{i + 1}","{stamp}",21.5,27.2,0.0,{c},0.0048,{o}'
        for i, (stamp, c, o) in enumerate(zip(minutes, co2, occupied, strict=True))
    ]
    (tmp_path / "datatest.txt").write_text(OCCUPANCY_HEADER + "\n".join(rows) + "\n")
    data = load_occupancy(tmp_path)
    marked = [w for w in data.windows if w.kind == "implausible"]
    assert len(marked) == 1
    assert marked[0].start_ns < int(data.ts_ns[data.series == 3][100]) < marked[0].end_ns
