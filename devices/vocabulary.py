"""The measurement vocabulary: what each measurement means, its unit and physical range.

Units are SenML unit names (RFC 8428, RFC 8798). SenML has no strain unit, so strain is
stored in microstrain (``ue``) and devices may send a plain ratio (``/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SiteKind(StrEnum):
    BRIDGE = "bridge"
    SCHOOL = "school"


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    unit: str
    minimum: float
    maximum: float
    description: str


# Ranges are what the sensors in use can physically report (DOMAIN.md): a value outside is
# not a reading but a fault, so it is quarantined. A registry entry may narrow a range.
_BRIDGE = (
    Measurement("strain", "ue", -5000.0, 5000.0, "strain of a gauge, microstrain (1e-6 m/m)"),
    Measurement("temperature", "Cel", -40.0, 80.0, "structure or air temperature"),
    Measurement("inclination", "deg", -30.0, 30.0, "inclination of a bearing or pier"),
    Measurement("crack_width", "mm", 0.0, 50.0, "width of a monitored crack"),
)
_SCHOOL = (
    Measurement("co2", "ppm", 0.0, 10000.0, "carbon dioxide (NDIR, SCD30 range)"),
    Measurement("temperature", "Cel", -20.0, 60.0, "room air temperature"),
    Measurement("humidity", "%RH", 0.0, 100.0, "relative humidity"),
    Measurement("pm2_5", "ug/m3", 0.0, 1000.0, "particulate matter below 2.5 um (SPS30 range)"),
    Measurement("pm10", "ug/m3", 0.0, 1000.0, "particulate matter below 10 um (SPS30 range)"),
    Measurement("noise", "dB", 0.0, 140.0, "sound pressure level, A-weighted"),
    Measurement("light", "lx", 0.0, 200000.0, "illuminance"),
)

VOCABULARY: dict[SiteKind, dict[str, Measurement]] = {
    SiteKind.BRIDGE: {m.name: m for m in _BRIDGE},
    SiteKind.SCHOOL: {m.name: m for m in _SCHOOL},
}


@dataclass(frozen=True, slots=True)
class _Linear:
    scale: float
    offset: float


# (sent unit, canonical unit) -> value * scale + offset. Only unambiguous conversions:
# anything else is rejected rather than guessed.
_CONVERSIONS: dict[tuple[str, str], _Linear] = {
    ("/", "ue"): _Linear(1e6, 0.0),
    ("ppm", "ue"): _Linear(1.0, 0.0),  # 1e-6 of a ratio is one microstrain
    ("K", "Cel"): _Linear(1.0, -273.15),
    ("m", "mm"): _Linear(1000.0, 0.0),
    ("rad", "deg"): _Linear(57.29577951308232, 0.0),
    ("%", "%RH"): _Linear(1.0, 0.0),
    ("/", "%RH"): _Linear(100.0, 0.0),
}


class UnitNotConvertible(ValueError):
    """A record names a unit that cannot be converted to the measurement's unit."""


def conversion(sent: str, canonical: str) -> tuple[float, float]:
    """Return (scale, offset) turning a value in ``sent`` units into ``canonical`` units."""
    if sent == canonical:
        return 1.0, 0.0
    lin = _CONVERSIONS.get((sent, canonical))
    if lin is None:
        raise UnitNotConvertible(f"unit {sent!r} cannot be converted to {canonical!r}")
    return lin.scale, lin.offset
