"""Units and measurement names as people write them, in German and English.

The store, the SenML input and the machine formats (csv, JSON, NDJSON, Parquet) keep the
SenML unit names of the vocabulary (``Cel``, ``%RH``, ``ug/m3``): they are stable and what
tools expect. People read ``°C``, ``%`` and ``µg/m³``: German Excel's CSV, the data
dictionary of a bundle and the students' page use these texts (README, "Export formats").
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.vocabulary import SiteKind

# SenML unit name -> how people write it. Every unit of the vocabulary has an entry (a unit
# test holds this), so a new measurement cannot reach a pupil as a code.
UNIT_TEXT: dict[str, str] = {
    "Cel": "°C",
    "%RH": "%",
    "ug/m3": "µg/m³",
    "ppm": "ppm",
    "lx": "lx",
    "dB": "dB",
    "ue": "µm/m",
    "deg": "°",
    "mm": "mm",
}


def unit_text(unit: str) -> str:
    """The unit as people write it; an unknown unit stays as it is."""
    return UNIT_TEXT.get(unit, unit)


@dataclass(frozen=True, slots=True)
class Label:
    """A measurement's name (``de``, ``en``) and what it is (``about_de``, ``about_en``)."""

    de: str
    en: str
    about_de: str
    about_en: str


MEASUREMENT_LABELS: dict[str, Label] = {
    "co2": Label(
        "CO₂", "CO₂", "Kohlendioxid in der Raumluft (NDIR-Sensor)",
        "carbon dioxide in the room's air (NDIR sensor)",
    ),
    "temperature": Label("Temperatur", "Temperature", "Lufttemperatur", "air temperature"),
    "humidity": Label(
        "Luftfeuchte", "Humidity", "relative Luftfeuchte", "relative humidity"
    ),
    "pm2_5": Label(
        "Feinstaub PM2,5", "Particulate matter PM2.5",
        "Feinstaub: Partikel kleiner als 2,5 µm", "particles smaller than 2.5 µm",
    ),
    "pm10": Label(
        "Feinstaub PM10", "Particulate matter PM10",
        "Feinstaub: Partikel kleiner als 10 µm", "particles smaller than 10 µm",
    ),
    "noise": Label(
        "Lautstärke", "Noise", "Schalldruckpegel, A-bewertet", "sound pressure level, A-weighted"
    ),
    "light": Label("Helligkeit", "Light", "Beleuchtungsstärke", "illuminance"),
    "strain": Label(
        "Dehnung", "Strain", "Dehnung eines Messstreifens in µm/m", "strain of a gauge in µm/m"
    ),
    "inclination": Label(
        "Neigung", "Inclination", "Neigung eines Lagers oder Pfeilers",
        "inclination of a bearing or pier",
    ),
    "crack_width": Label(
        "Rissbreite", "Crack width", "Breite eines beobachteten Risses",
        "width of a monitored crack",
    ),
}  # fmt: skip

# What a temperature is depends on where it is measured.
_ABOUT: dict[tuple[SiteKind, str], tuple[str, str]] = {
    (SiteKind.SCHOOL, "temperature"): ("Lufttemperatur im Raum", "room air temperature"),
    (SiteKind.BRIDGE, "temperature"): (
        "Temperatur des Bauwerks oder der Luft",
        "structure or air temperature",
    ),
}


def measurement_label(name: str, kind: SiteKind = SiteKind.SCHOOL) -> Label:
    """The labels of a measurement; an unknown one is called by its id in both languages."""
    label = MEASUREMENT_LABELS.get(name, Label(name, name, name, name))
    about = _ABOUT.get((kind, name))
    if about is None:
        return label
    return Label(label.de, label.en, about[0], about[1])
