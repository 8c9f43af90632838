"""A German school as a teacher would register it, for the students' export tests: rooms
with names and German descriptions, and particulate matter in the chemistry room, so every
unit a pupil meets (ppm, °C, %, µg/m³) appears; ``fill_school`` writes minute readings."""

from __future__ import annotations

from datetime import UTC, datetime

from devices.registry import Registry, parse_registry
from ingest.batch import ReadingBatch
from ingest.stores.sqlite import SqliteStore

NS = 1_000_000_000
MIN = 60 * NS
DAY = 86_400 * NS
# Monday 2026-11-23 00:00 UTC, 01:00 in Berlin (winter time): calendar week 48.
MONDAY = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp()) * NS

SCHOOL_YAML = """\
sites:
  fbg:
    kind: school
    name: Friedrich-Bährens-Gymnasium
    city: Schwerte
    devices:
      room-101:
        name: Raum 101
        description: senseBox an der Ostwand, 1,5 m über dem Boden
        interval: 1m
        measurements: [co2, temperature, humidity]
      room-204:
        name: Chemieraum 204
        description: senseBox neben der Tür
        interval: 1m
        measurements: [co2, temperature, humidity, pm2_5]
  other:
    kind: school
    name: Andere Schule
    devices:
      room-9:
        interval: 1m
        measurements: [co2]
"""


def school_registry() -> Registry:
    return parse_registry(SCHOOL_YAML, "school-registry.yaml")


def fill_school(store: SqliteStore, registry: Registry, start_ns: int, days: int) -> None:
    """Every minute for ``days`` from ``start_ns``. Room 101: CO2 400 + minute of the day,
    21.25 °C, 45.5 %; room 204: CO2 600 + minute of the day, 20.5 °C, 50.0 %, PM2.5
    8.25 µg/m³; the other school's room 9: CO2 9999 (must never leak)."""
    index = {(s.key.site, s.key.device, s.key.measurement): s.index for s in registry.series}
    series: list[int] = []
    ts: list[int] = []
    values: list[float] = []
    for m in range(days * 1440):
        t = start_ns + m * MIN
        for key, v in (
            (("fbg", "room-101", "co2"), 400.0 + m % 1440),
            (("fbg", "room-101", "temperature"), 21.25),
            (("fbg", "room-101", "humidity"), 45.5),
            (("fbg", "room-204", "co2"), 600.0 + m % 1440),
            (("fbg", "room-204", "temperature"), 20.5),
            (("fbg", "room-204", "humidity"), 50.0),
            (("fbg", "room-204", "pm2_5"), 8.25),
            (("other", "room-9", "co2"), 9999.0),
        ):
            series.append(index[key])
            ts.append(t)
            values.append(v)
    store.commit(ReadingBatch.unchecked(series, ts, values), [])
