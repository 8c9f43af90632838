"""The data dictionary of an export bundle: what each column means, units, where each sensor
sits, what the anomaly flags mean, and the licence; in German and English, as open-data
portals publish it (DOMAIN.md, "Open data")."""

from __future__ import annotations

import json
from collections.abc import Sequence

from devices.registry import Registry, Series
from export.query import Column, ExportRequest, Resolution, utc_datetime
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
    "measurement": "Messgröße",
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


def _series_lines(registry: Registry, series: Sequence[Series]) -> list[str]:
    lines = []
    for s in series:
        dev = registry.device(s.key.site, s.key.device)
        where = dev.description if dev is not None and dev.description else "-"
        lines.append(
            f"- {s.key.device} {s.key.name} [{s.unit}]: {s.measurement.description}; "
            f"every {s.interval.total_seconds():g} s; placement: {where}"
        )
    return lines


def dictionary_files(
    registry: Registry,
    request: ExportRequest,
    series: Sequence[Series],
    cols: Sequence[Column],
    data_name: str,
    licence: str = DEFAULT_LICENCE,
) -> list[tuple[str, bytes]]:
    """``LIESMICH.txt`` / ``README.txt`` for people and ``data_dictionary.json`` for tools."""
    site = registry.sites[request.site]
    start = utc_datetime(request.start_ns).isoformat()
    end = utc_datetime(request.end_ns).isoformat()
    res = request.resolution
    res_de = "Rohdaten (jede Messung)" if res == Resolution.RAW else f"Intervalle von {res.value}"
    res_en = "raw (every reading)" if res == Resolution.RAW else f"buckets of {res.value}"
    sensors = _series_lines(registry, series)
    flags = [f"- {name}: {de} / {en}" for name, (de, en) in FLAG_MEANINGS.items()]
    de = [
        f"Messdaten: {site.name} ({site.city or site.id})",
        f"Zeitraum: {start} bis {end} (UTC, Ende ausgeschlossen)",
        f"Auflösung: {res_de}; Layout: {request.layout.value}",
        f"Datei: {data_name}",
        "",
        "Spalten:",
        *(f"- {c.name}: {_COLUMN_DE.get(c.name, f'Messwert in {c.unit}')}" for c in cols),
        "",
        "Lücken: Bei fester Auflösung steht jedes Intervall in der Datei; ohne Messwerte "
        "bleiben die Zellen leer (count 0). In Rohdaten trägt der erste Wert nach einer "
        "Lücke die Markierung 'gap'.",
        "",
        "Sensoren und ihr Ort:",
        *sensors,
        "",
        "Auffälligkeiten (anomaly):",
        *flags,
        "",
        f"Lizenz: {licence}",
    ]
    en = [
        f"Sensor data: {site.name} ({site.city or site.id})",
        f"Range: {start} to {end} (UTC, end excluded)",
        f"Resolution: {res_en}; layout: {request.layout.value}",
        f"File: {data_name}",
        "",
        "Columns:",
        *(f"- {c.name}: {c.description or f'reading in {c.unit}'}" for c in cols),
        "",
        "Gaps: at a fixed resolution every bucket is in the file; without readings its cells "
        "stay empty (count 0). In raw data the first reading after a gap carries the flag "
        "'gap'.",
        "",
        "Sensors and their placement:",
        *sensors,
        "",
        "Anomaly flags:",
        *flags,
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
        "columns": [
            {"name": c.name, "type": c.kind, "unit": c.unit, "description": c.description}
            for c in cols
        ],
        "series": [
            {
                "device": s.key.device,
                "channel": s.key.channel,
                "measurement": s.key.measurement,
                "unit": s.unit,
                "interval_s": s.interval.total_seconds(),
                "placement": (
                    d.description if (d := registry.device(s.key.site, s.key.device)) else ""
                ),
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
