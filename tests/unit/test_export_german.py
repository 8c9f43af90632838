"""What a German pupil gets (issue 14): units as people write them in German Excel's CSV and
in the data dictionary, distinct file names for the two CSV dialects, a LIESMICH.txt
entirely in German beside an English README.txt, room names and German labels in the
page's metadata; the machine formats (csv, JSON, Parquet) keep their SenML unit names."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from devices.registry import Registry
from devices.vocabulary import VOCABULARY
from export.api import ExportApi, ExportCaps
from export.dictionary import FLAG_MEANINGS
from export.formats import ExportFormat
from export.labels import MEASUREMENT_LABELS, UNIT_TEXT, measurement_label, unit_text
from export.query import ExportRequest, Layout, Resolution
from export.stream import export_filename, export_stream
from export.tokens import TokenStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.school import DAY, MONDAY, NS, fill_school, school_registry

HOUR = 3600 * NS
# Calendar week 48 in Berlin: Monday 23.11. 00:00 to Monday 30.11. 00:00 (UTC+1).
WEEK_48 = (MONDAY - HOUR, MONDAY - HOUR + 7 * DAY)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return school_registry()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[SqliteStore]:
    path = tmp_path_factory.mktemp("german") / "stadtpuls.db"
    s = SqliteStore(SqliteSettings(path, synchronous="OFF"), registry.series)
    fill_school(s, registry, MONDAY, days=2)
    yield s
    s.close()


def export(store: SqliteStore, registry: Registry, req: ExportRequest, fmt: ExportFormat) -> bytes:
    return b"".join(export_stream(store, registry, req, fmt))


def hourly(layout: Layout = Layout.WIDE, **kw: object) -> ExportRequest:
    args: dict[str, object] = {
        "site": "fbg",
        "start_ns": MONDAY,
        "end_ns": MONDAY + 2 * HOUR,
        "devices": ("room-204",),
        "resolution": Resolution.HOUR1,
        "layout": layout,
    }
    args.update(kw)
    return ExportRequest(**args)  # type: ignore[arg-type]


# --- units ----------------------------------------------------------------------------------


def test_every_unit_and_measurement_has_a_text_for_people() -> None:
    for vocabulary in VOCABULARY.values():
        for m in vocabulary.values():
            assert m.unit in UNIT_TEXT, m.unit
            assert m.name in MEASUREMENT_LABELS, m.name
    assert [unit_text(u) for u in ("Cel", "%RH", "ug/m3", "ppm", "lx", "dB")] == [
        "°C", "%", "µg/m³", "ppm", "lx", "dB",
    ]  # fmt: skip
    assert [measurement_label(m).de for m in ("co2", "temperature", "humidity", "pm2_5")] == [
        "CO₂", "Temperatur", "Luftfeuchte", "Feinstaub PM2,5",
    ]  # fmt: skip


def test_german_csv_writes_units_as_people_write_them(
    store: SqliteStore, registry: Registry
) -> None:
    wide = export(store, registry, hourly(), ExportFormat.CSV_DE)
    header = wide.decode("utf-8-sig").splitlines()[0]
    assert header == (
        "time;local_time;room-204 co2 [ppm];room-204 humidity [%];"
        "room-204 pm2_5 [µg/m³];room-204 temperature [°C]"
    )
    frame = pd.read_csv(io.BytesIO(wide), sep=";", decimal=",", encoding="utf-8-sig")
    assert frame["room-204 pm2_5 [µg/m³]"].tolist() == [8.25, 8.25]
    assert frame["room-204 temperature [°C]"].dtype == "float64"

    long = export(store, registry, hourly(Layout.LONG), ExportFormat.CSV_DE)
    rows = list(csv.DictReader(io.StringIO(long.decode("utf-8-sig")), delimiter=";"))
    assert {r["measurement"]: r["unit"] for r in rows} == {
        "co2": "ppm",
        "humidity": "%",
        "pm2_5": "µg/m³",
        "temperature": "°C",
    }


def test_machine_formats_keep_their_senml_units(store: SqliteStore, registry: Registry) -> None:
    header = export(store, registry, hourly(), ExportFormat.CSV).decode().splitlines()[0]
    assert header == (
        "time,local_time,room-204 co2 [ppm],room-204 humidity [%RH],"
        "room-204 pm2_5 [ug/m3],room-204 temperature [Cel]"
    )
    first = json.loads(export(store, registry, hourly(), ExportFormat.JSON))[0]
    assert "room-204 temperature [Cel]" in first
    table = pq.read_table(io.BytesIO(export(store, registry, hourly(), ExportFormat.PARQUET)))
    assert table.schema.field("room-204 pm2_5 [ug/m3]").metadata == {b"unit": b"ug/m3"}
    long = export(store, registry, hourly(Layout.LONG), ExportFormat.CSV).decode()
    assert {r["unit"] for r in csv.DictReader(io.StringIO(long))} == {"ppm", "%RH", "ug/m3", "Cel"}


# --- file names -----------------------------------------------------------------------------


def test_csv_and_german_csv_get_distinct_file_names() -> None:
    req = hourly(start_ns=WEEK_48[0], end_ns=WEEK_48[1])
    names = {fmt: export_filename(req, fmt) for fmt in ExportFormat}
    assert len(set(names.values())) == len(ExportFormat)
    # The days are Berlin's: the week starts on Monday 00:00 there (Sunday 23:00 UTC).
    stem = "stadtpuls-fbg-room-204-20261123-20261129-1h-wide"
    assert names[ExportFormat.CSV] == f"{stem}.csv"
    assert names[ExportFormat.CSV_DE] == f"{stem}-excel-de.csv"
    assert names[ExportFormat.ZIP] == f"{stem}.zip"


# --- the bundle's data dictionary -----------------------------------------------------------

ENGLISH = re.compile(
    r"\b(every|reading|readings|placement|layout|raw|bucket|buckets|range|gaps?|"
    r"sensor data|file|columns|licence|outside|beyond|isolated|frozen|sudden|slow|"
    r"implausible|missing|lasting|the|of|and|in the)\b"
)


def test_liesmich_is_entirely_german_and_readme_english(
    store: SqliteStore, registry: Registry
) -> None:
    req = hourly(devices=(), start_ns=WEEK_48[0], end_ns=WEEK_48[1])
    bundle = zipfile.ZipFile(io.BytesIO(export(store, registry, req, ExportFormat.ZIP)))
    liesmich = bundle.read("LIESMICH.txt").decode("utf-8")
    # Column names, flags and ids are the file's own words; everything else must be German.
    dictionary = json.loads(bundle.read("data_dictionary.json"))
    names = [c["name"] for c in dictionary["columns"]] + list(dictionary["anomaly_flags"])
    names += [s[k] for s in dictionary["series"] for k in ("device", "measurement")]
    prose = liesmich
    for name in sorted(set(names), key=len, reverse=True):
        prose = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "", prose)
    found = ENGLISH.findall(prose.lower())
    assert found == [], found
    for de, _ in FLAG_MEANINGS.values():
        assert de in liesmich
    for text in (
        "Zeitraum: 23.11.2026 00:00 bis 30.11.2026 00:00",
        "Stundenwerte",
        "Raum 101",
        "Chemieraum 204",
        "senseBox neben der Tür",
        "Feinstaub PM2,5 [µg/m³]",
        "Temperatur [°C]",
        "Luftfeuchte [%]",
        "alle 60 s",
        "Semikolon",
        "Lizenz: Datenlizenz Deutschland",
    ):
        assert text in liesmich, text

    readme = bundle.read("README.txt").decode("utf-8")
    for _, en in FLAG_MEANINGS.values():
        assert en in readme
    for de, _ in FLAG_MEANINGS.values():
        assert de not in readme
    assert "Particulate matter PM2.5 [µg/m³]" in readme
    assert "Licence:" in readme


def test_data_dictionary_uses_units_as_people_write_them(
    store: SqliteStore, registry: Registry
) -> None:
    req = hourly(start_ns=WEEK_48[0], end_ns=WEEK_48[1])
    bundle = zipfile.ZipFile(io.BytesIO(export(store, registry, req, ExportFormat.ZIP)))
    (data_name,) = [n for n in bundle.namelist() if n.endswith(".csv")]
    assert data_name == export_filename(req, ExportFormat.CSV_DE)  # the dialect inside
    header = bundle.read(data_name).decode("utf-8-sig").splitlines()[0].split(";")
    dictionary = json.loads(bundle.read("data_dictionary.json"))
    assert [c["name"] for c in dictionary["columns"]] == header
    assert {c["name"]: c["unit"] for c in dictionary["columns"]}["room-204 pm2_5 [µg/m³]"] == (
        "µg/m³"
    )
    by_measurement = {s["measurement"]: s for s in dictionary["series"]}
    assert {m: s["unit"] for m, s in by_measurement.items()} == {
        "co2": "ppm",
        "humidity": "%",
        "pm2_5": "µg/m³",
        "temperature": "°C",
    }
    assert by_measurement["temperature"]["senml_unit"] == "Cel"
    assert by_measurement["temperature"]["label"] == {"de": "Temperatur", "en": "Temperature"}
    assert by_measurement["temperature"]["room"] == "Chemieraum 204"


# --- the page's metadata ----------------------------------------------------------------------


def test_meta_gives_room_names_german_labels_and_the_server_time(
    store: SqliteStore, registry: Registry, tmp_path: Path
) -> None:
    tokens = TokenStore(tmp_path / "tokens.sqlite")
    now = MONDAY + 5 * DAY
    _, secret = tokens.create("fbg", None, now + DAY, "7b", now)
    api = ExportApi(store, registry, tokens, ExportCaps(timedelta(days=31), 100), lambda: now)
    client = TestClient(Starlette(routes=api.routes()))
    meta = client.get("/api/v1/export/meta", headers={"Authorization": f"Bearer {secret}"}).json()
    tokens.close()
    assert meta["now"] == "2026-11-28T00:00:00+00:00"
    assert [(r["id"], r["name"]) for r in meta["rooms"]] == [
        ("room-101", "Raum 101"),
        ("room-204", "Chemieraum 204"),
    ]
    assert meta["rooms"][1]["description"] == "senseBox neben der Tür"
    pm = next(s for s in meta["rooms"][1]["series"] if s["measurement"] == "pm2_5")
    assert pm["unit"] == "ug/m3"  # as in the JSON the page's chart reads
    assert pm["unit_text"] == "µg/m³"
    assert pm["label"] == {"de": "Feinstaub PM2,5", "en": "Particulate matter PM2.5"}
    assert pm["column"] == "room-204 pm2_5 [ug/m3]"


def test_registry_rooms_may_have_a_name(registry: Registry) -> None:
    room = registry.device("fbg", "room-204")
    assert room is not None
    assert room.name == "Chemieraum 204"
    nameless = registry.device("other", "room-9")
    assert nameless is not None
    assert nameless.name == ""
