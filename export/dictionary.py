"""The data dictionary of an export bundle: what each column means, units, where each sensor
sits, what the anomaly flags mean, and the licence, as open-data portals publish it
(DOMAIN.md, "Open data"): ``LIESMICH.txt`` entirely in German (dates, units, measurement
names, file format), ``README.txt`` in English, ``data_dictionary.json`` for tools. Units are
written as people write them (``°C``, ``µg/m³``); the JSON also gives the SenML name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from devices.registry import Device, Registry, Series
from export.labels import measurement_label, unit_text
from export.query import (
    LOCAL_ZONE,
    NS,
    Column,
    ExportRequest,
    Layout,
    Resolution,
    Statistic,
    utc_datetime,
)
from ingest.batch import AnomalyFlag

DEFAULT_LICENCE = "Datenlizenz Deutschland - Namensnennung - Version 2.0 (dl-de/by-2-0)"

# Meaning of each anomaly bit, (German, English); README "Anomaly flags".
FLAG_MEANINGS: dict[str, tuple[str, str]] = {
    "range": ("außerhalb eines Messbereichs (Sensor)", "outside a range (sensor)"),
    "limit": ("jenseits des Grenzwerts (Bauwerk)", "beyond the design limit (structure)"),
    "spike": ("einzelner Ausreißer (Sensor)", "isolated outlier (sensor)"),
    "stuck": ("Wert hängt fest (Sensor)", "value frozen (sensor)"),
    "step": ("plötzlicher Versatz (Sensor)", "sudden offset (sensor)"),
    "drift": ("langsame Drift (Sensor)", "slow drift (sensor)"),
    "rate": ("unmöglich schnelle Änderung (Sensor)", "implausible rate of change (sensor)"),
    "gap": (
        "erster Wert nach einer Lücke: davor fehlen Messwerte",
        "first reading after a gap: readings are missing before it",
    ),
    "shift": (
        "bleibende Verschiebung, nicht durch Temperatur erklärt (Bauwerk)",
        "lasting shift not explained by temperature (structure)",
    ),
}

_COLUMN_DE = {
    "time": "Zeitpunkt in UTC (bei fester Auflösung: Beginn des Intervalls)",
    "local_time": "derselbe Zeitpunkt in deutscher Ortszeit (Europe/Berlin, mit Sommerzeit)",
    "site": "Kennung der Schule",
    "device": "Kennung des Raums bzw. Sensors",
    "channel": "Kanal des Sensors, leer wenn der Sensor nur einen hat",
    "measurement": "Kennung der Messgröße (siehe Sensoren und ihr Ort)",
    "value": "Messwert in der Einheit der Zeile",
    "unit": "Einheit",
    "anomaly": "Auffälligkeiten, mit + verbunden; leer = unauffällig",
    "score": "Stärke der Auffälligkeit",
    "mean": "Mittelwert des Intervalls, leer wenn keine Messwerte",
    "min": "kleinster Wert des Intervalls",
    "max": "größter Wert des Intervalls",
    "count": "Anzahl Messwerte im Intervall; 0 = Lücke",
    "expected": "Anzahl Messwerte, die der Sensor im Intervall liefern sollte",
}

_RESOLUTION = {  # (German, English)
    Resolution.RAW: ("Rohdaten: jede einzelne Messung", "raw: every single reading"),
    Resolution.MIN1: ("Minutenwerte", "1-minute values"),
    Resolution.MIN15: ("Viertelstundenwerte", "15-minute values"),
    Resolution.HOUR1: ("Stundenwerte", "hourly values"),
    Resolution.DAY1: (
        "Tageswerte (Kalendertage in deutscher Zeit)",
        "daily values (calendar days in German time)",
    ),
}
_STATISTIC = {
    Statistic.MEAN: ("der Mittelwert", "the mean"),
    Statistic.MIN: ("der kleinste Wert", "the smallest reading"),
    Statistic.MAX: ("der größte Wert", "the largest reading"),
}
_DIALECT = {  # excel -> (German, English)
    True: (
        "CSV für deutsches Excel: Semikolon als Trennzeichen, Dezimalkomma (812,5), UTF-8 mit "
        "BOM; Zeiten ohne Zeitzone wie 2026-11-23 07:00:00,000000. Einheiten so, wie man sie "
        "schreibt (°C, %, µg/m³).",
        "CSV for German Excel: semicolon as separator, decimal comma (812,5), UTF-8 with BOM; "
        "times without zone as 2026-11-23 07:00:00,000000. Units as people write them (°C, "
        "%, µg/m³).",
    ),
    False: (
        "CSV nach RFC 4180: Komma als Trennzeichen, Dezimalpunkt (812.5), UTF-8; Zeiten nach "
        "ISO 8601 mit Zeitzone. Einheiten als SenML-Kürzel (Cel = °C, %RH = %, ug/m3 = µg/m³).",
        "CSV after RFC 4180: comma as separator, decimal point (812.5), UTF-8; times in ISO "
        "8601 with their zone. Units as SenML names (Cel = °C, %RH = %, ug/m3 = µg/m³).",
    ),
}


def room_name(device: Device | None, device_id: str) -> str:
    """How people call the room: the registry's ``name``, else its id."""
    return device.name if device is not None and device.name else device_id


def _berlin(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns // NS, LOCAL_ZONE)


def _when_de(ts_ns: int) -> str:
    dt = _berlin(ts_ns)
    return dt.strftime("%d.%m.%Y %H:%M:%S" if dt.second else "%d.%m.%Y %H:%M")


def _when_en(ts_ns: int) -> str:
    dt = _berlin(ts_ns)
    return dt.strftime("%Y-%m-%d %H:%M:%S" if dt.second else "%Y-%m-%d %H:%M")


def _seconds_de(seconds: float) -> str:
    return f"{seconds:g}".replace(".", ",")


def _sensor_lines(registry: Registry, series: Sequence[Series]) -> tuple[list[str], list[str]]:
    """One line per series, in German and in English."""
    de, en = [], []
    for s in series:
        dev = registry.device(s.key.site, s.key.device)
        label = measurement_label(s.key.measurement, s.kind)
        unit = unit_text(s.unit)
        room = room_name(dev, s.key.device)
        where = dev.description if dev is not None and dev.description else ""
        channel_de = f", Kanal {s.key.channel}" if s.key.channel else ""
        channel_en = f", channel {s.key.channel}" if s.key.channel else ""
        seconds = s.interval.total_seconds()
        de.append(
            f"- {room} ({s.key.device}{channel_de}): {label.de} [{unit}], Kennung "
            f"{s.key.measurement}: {label.about_de}; alle {_seconds_de(seconds)} s ein "
            f"Messwert; Ort: {where or 'nicht angegeben'}"
        )
        en.append(
            f"- {room} ({s.key.device}{channel_en}): {label.en} [{unit}], id "
            f"{s.key.measurement}: {label.about_en}; one reading every {seconds:g} s; "
            f"placement: {where or 'not given'}"
        )
    return de, en


def _column_lines(
    registry: Registry, request: ExportRequest, series: Sequence[Series], cols: Sequence[Column]
) -> tuple[list[str], list[str]]:
    """What each column holds, in German and in English. The wide layout's value columns
    follow ``series`` in order, after the two time columns."""
    by_column: dict[str, Series] = {}
    if request.layout == Layout.WIDE:
        by_column = {c.name: s for c, s in zip(cols[2:], series, strict=True)}
    statistic_de, statistic_en = _STATISTIC[request.statistic]
    de, en = [], []
    for c in cols:
        s = by_column.get(c.name)
        if s is None:
            de.append(f"- {c.name}: {_COLUMN_DE.get(c.name, c.name)}")
            en.append(f"- {c.name}: {c.description or c.name}")
            continue
        label = measurement_label(s.key.measurement, s.kind)
        room = room_name(registry.device(s.key.site, s.key.device), s.key.device)
        unit = unit_text(s.unit)
        if request.resolution == Resolution.RAW:
            de.append(f"- {c.name}: {label.de} in {unit}, {room}")
            en.append(f"- {c.name}: {label.en} in {unit}, {room}")
        else:
            de.append(f"- {c.name}: {label.de} in {unit}, {room}; {statistic_de} des Intervalls")
            en.append(f"- {c.name}: {label.en} in {unit}, {room}; {statistic_en} of the bucket")
    return de, en


def dictionary_files(
    registry: Registry,
    request: ExportRequest,
    series: Sequence[Series],
    cols: Sequence[Column],
    data_name: str,
    licence: str = DEFAULT_LICENCE,
    *,
    excel: bool = True,
) -> list[tuple[str, bytes]]:
    """``LIESMICH.txt`` (German) / ``README.txt`` (English) for people and
    ``data_dictionary.json`` for tools; ``excel`` says which CSV dialect the data file is
    in, so the description of its format and its column names match it."""
    site = registry.sites[request.site]
    start = utc_datetime(request.start_ns).isoformat()
    end = utc_datetime(request.end_ns).isoformat()
    res = request.resolution
    res_de, res_en = _RESOLUTION[res]
    statistic_de, statistic_en = _STATISTIC[request.statistic]
    if request.layout == Layout.WIDE:
        layout_de = "breit (eine Spalte je Raum und Messgröße"
        layout_en = "wide (one column per room and measurement"
        if res != Resolution.RAW:
            layout_de += f"; in jeder Zelle {statistic_de} des Intervalls"
            layout_en += f"; each cell holds {statistic_en} of the bucket"
        layout_de += ")"
        layout_en += ")"
    elif res == Resolution.RAW:
        layout_de, layout_en = "lang (eine Zeile je Messwert)", "long (one row per reading)"
    else:
        layout_de = "lang (eine Zeile je Intervall und Messreihe mit Mittelwert, Minimum, Maximum)"
        layout_en = "long (one row per bucket and series with mean, min and max)"
    sensors_de, sensors_en = _sensor_lines(registry, series)
    columns_de, columns_en = _column_lines(registry, request, series, cols)
    dialect_de, dialect_en = _DIALECT[excel]
    de = [
        f"Messdaten: {site.name} ({site.city or site.id})",
        f"Zeitraum: {_when_de(request.start_ns)} bis {_when_de(request.end_ns)} deutsche "
        f"Ortszeit (Ende ausgeschlossen); in UTC: {start} bis {end}",
        f"Auflösung: {res_de}",
        f"Tabellenform: {layout_de}",
        f"Datei: {data_name}",
        f"Dateiformat: {dialect_de}",
        "",
        "Spalten:",
        *columns_de,
        "",
        "Lücken: Bei fester Auflösung steht jedes Intervall in der Datei; ohne Messwerte "
        "bleiben die Zellen leer (count 0). In Rohdaten trägt der erste Wert nach einer "
        "Lücke die Markierung gap in der Spalte anomaly.",
        "",
        "Sensoren und ihr Ort:",
        *sensors_de,
        "",
        "Auffälligkeiten (Spalte anomaly):",
        *(f"- {name}: {meaning}" for name, (meaning, _) in FLAG_MEANINGS.items()),
        "",
        f"Lizenz: {licence}",
    ]
    en = [
        f"Sensor data: {site.name} ({site.city or site.id})",
        f"Range: {_when_en(request.start_ns)} to {_when_en(request.end_ns)} German local "
        f"time (end excluded); in UTC: {start} to {end}",
        f"Resolution: {res_en}",
        f"Layout: {layout_en}",
        f"File: {data_name}",
        f"File format: {dialect_en}",
        "",
        "Columns:",
        *columns_en,
        "",
        "Gaps: at a fixed resolution every bucket is in the file; without readings its cells "
        "stay empty (count 0). In raw data the first reading after a gap carries the flag "
        "gap in the column anomaly.",
        "",
        "Sensors and their placement:",
        *sensors_en,
        "",
        "Anomaly flags (column anomaly):",
        *(f"- {name}: {meaning}" for name, (_, meaning) in FLAG_MEANINGS.items()),
        "",
        f"Licence: {licence}",
    ]
    machine = {
        "site": {"id": site.id, "name": site.name, "city": site.city},
        "start": start,
        "end": end,
        "resolution": res.value,
        "layout": request.layout.value,
        "file": data_name,
        "format": "csv-de" if excel else "csv",
        "columns": [
            {"name": c.name, "type": c.kind, "unit": c.unit, "description": c.description}
            for c in cols
        ],
        "series": [
            {
                "device": s.key.device,
                "room": room_name(d := registry.device(s.key.site, s.key.device), s.key.device),
                "channel": s.key.channel,
                "measurement": s.key.measurement,
                "label": {
                    "de": measurement_label(s.key.measurement, s.kind).de,
                    "en": measurement_label(s.key.measurement, s.kind).en,
                },
                "unit": unit_text(s.unit),
                "senml_unit": s.unit,
                "interval_s": s.interval.total_seconds(),
                "placement": d.description if d is not None else "",
            }
            for s in series
        ],
        "anomaly_flags": {
            f.name.lower(): {
                "bit": f.value,
                "de": FLAG_MEANINGS[f.name.lower()][0],
                "en": FLAG_MEANINGS[f.name.lower()][1],
            }
            for f in AnomalyFlag
            if f.value and f.name is not None
        },
        "licence": licence,
    }
    return [
        ("LIESMICH.txt", ("\r\n".join(de) + "\r\n").encode("utf-8")),
        ("README.txt", ("\r\n".join(en) + "\r\n").encode("utf-8")),
        ("data_dictionary.json", json.dumps(machine, ensure_ascii=False, indent=2).encode()),
    ]
