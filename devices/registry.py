"""The registry of sites and their devices, loaded from a YAML file.

A mistake in the file stops start-up with ``RegistryError`` naming the file, the line and
the key, so the operator can fix it without reading a traceback. The file format is
documented in the README ("Registry").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from devices.vocabulary import VOCABULARY, Measurement, SiteKind
from devices.yamlfile import YamlFileError, key_path, load_yaml

# Ids end up in MQTT topics, line-protocol tags, SQL and Flux; allowing only this alphabet
# means none of them ever needs escaping and no id can smuggle a wildcard or a separator.
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_RE = re.compile(ID_PATTERN)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

Id = Annotated[str, Field(pattern=ID_PATTERN)]


def parse_duration(value: object) -> timedelta:
    """Accept seconds as a number, or a string such as ``500ms``, ``30s``, ``30m``, ``1h``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30m'")  # noqa: TRY004 - pydantic reports ValueError as a validation error
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration: use seconds or a string like '30m'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A duration given as seconds (``30``, ``"30"``) or with a unit (``500ms``, ``30m``, ``1h``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorsModel(_Strict):
    """Anomaly detector settings (README, "Anomaly flags"); each one left out keeps the
    measurement's default. Units are the measurement's own."""

    noise_floor: float | None = Field(default=None, gt=0)
    spike_z: float | None = Field(default=None, gt=0)
    step_z: float | None = Field(default=None, gt=0)
    step_samples: int | None = Field(default=None, ge=1)
    stuck_samples: int | None = Field(default=None, ge=0, description="0 turns it off")
    max_rate: float | None = Field(default=None, gt=0, description="per second")
    gap_factor: float | None = Field(default=None, gt=1)
    drift: float | None = Field(default=None, gt=0)
    night_step: float | None = Field(
        default=None, gt=0, description="a step of the night floor (CO2, noise)"
    )

    def settings(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class OverrideModel(_Strict):
    """Per-device narrowing of a measurement's range, and its thresholds."""

    min: float | None = None
    max: float | None = None
    limit: float | None = Field(
        default=None, description="design limit of a gauge, in the measurement's unit"
    )
    warn: float | None = None
    alarm: float | None = None
    detectors: DetectorsModel | None = None


class DeviceModel(_Strict):
    name: str = ""  # how people call the room or device; any text, the id if empty
    description: str = ""
    interval: Duration = Field(default=timedelta(minutes=30))
    measurements: list[str] = Field(default_factory=list)
    channels: dict[Id, list[str]] = Field(default_factory=dict)
    overrides: dict[str, OverrideModel] = Field(default_factory=dict)


class LocationModel(_Strict):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class SiteModel(_Strict):
    kind: SiteKind
    name: str
    city: str = ""
    location: LocationModel | None = None
    devices: dict[Id, DeviceModel]


class RegistryModel(_Strict):
    # Detector settings per measurement, for every device; a device's override wins.
    detectors: dict[str, DetectorsModel] = Field(default_factory=dict)
    sites: dict[Id, SiteModel]


def _domain_problems(model: RegistryModel) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Checks that need the site's kind, each with the path of the key at fault, so the
    error points at the offending line rather than at the site."""
    for site_id, site in model.sites.items():
        vocab = VOCABULARY[site.kind]
        for dev_id, dev in site.devices.items():
            at = ("sites", site_id, "devices", dev_id)
            placed: list[tuple[tuple[Any, ...], str]] = [
                (("measurements", i), m) for i, m in enumerate(dev.measurements)
            ]
            placed += [
                (("channels", ch, i), m)
                for ch, ms in dev.channels.items()
                for i, m in enumerate(ms)
            ]
            if not placed:
                yield at, "the device has no measurements: give measurements or channels"
            for where, name in placed:
                if name not in vocab:
                    yield (
                        (*at, *where),
                        f"{name!r} is not a {site.kind} measurement "
                        f"(known: {', '.join(sorted(vocab))})",
                    )
            names = {m for _, m in placed}
            series = {
                *dev.measurements,
                *(f"{c}/{m}" for c, ms in dev.channels.items() for m in ms),
            }
            for key, ov in dev.overrides.items():
                here = (*at, "overrides", key)
                if key not in series and key not in names:
                    yield here, f"override {key!r} names no measurement of the device"
                    continue
                meas = vocab.get(key.rsplit("/", 1)[-1])
                if meas is None:
                    continue  # reported above as an unknown measurement
                lo = meas.minimum if ov.min is None else ov.min
                hi = meas.maximum if ov.max is None else ov.max
                if not meas.minimum <= lo < hi <= meas.maximum:
                    yield (
                        here,
                        f"range [{lo:g}, {hi:g}] must lie inside the physical range "
                        f"[{meas.minimum:g}, {meas.maximum:g}] {meas.unit}",
                    )
                if ov.warn is not None and ov.alarm is not None and abs(ov.warn) > abs(ov.alarm):
                    yield here, f"warn ({ov.warn:g}) must not be beyond alarm ({ov.alarm:g})"


class RegistryError(ValueError):
    """The registry file is wrong; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class SeriesKey:
    site: str
    device: str
    channel: str  # "" for a device-level measurement
    measurement: str

    @property
    def name(self) -> str:
        """The SenML record name: ``measurement`` or ``channel/measurement``."""
        return f"{self.channel}/{self.measurement}" if self.channel else self.measurement


@dataclass(frozen=True, slots=True)
class Series:
    """One time series the registry allows, with its effective range and thresholds."""

    index: int
    key: SeriesKey
    kind: SiteKind
    measurement: Measurement
    minimum: float
    maximum: float
    limit: float | None
    warn: float | None
    alarm: float | None
    interval: timedelta
    # Detector settings from the registry (measurement-wide, then the device's own).
    detectors: Mapping[str, float] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return self.measurement.unit


@dataclass(frozen=True, slots=True)
class Device:
    site: str
    id: str
    kind: SiteKind
    description: str
    interval: timedelta
    series: Mapping[str, Series]  # by record name
    name: str = ""  # the registry's display name ("Raum 101"), empty if none


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    kind: SiteKind
    name: str
    city: str
    lat: float | None
    lon: float | None
    devices: Mapping[str, Device]


@dataclass(frozen=True)
class Registry:
    sites: Mapping[str, Site]
    series: tuple[Series, ...]
    _devices: dict[tuple[str, str], Device] = field(repr=False)

    def device(self, site: str, device: str) -> Device | None:
        return self._devices.get((site, device))

    def devices(self) -> list[Device]:
        return list(self._devices.values())

    @classmethod
    def from_model(cls, model: RegistryModel) -> Registry:
        sites: dict[str, Site] = {}
        all_series: list[Series] = []
        devices: dict[tuple[str, str], Device] = {}
        for site_id, sm in model.sites.items():
            vocab = VOCABULARY[sm.kind]
            site_devices: dict[str, Device] = {}
            for dev_id, dm in sm.devices.items():
                pairs = [("", m) for m in dm.measurements]
                pairs += [(c, m) for c, ms in dm.channels.items() for m in ms]
                by_name: dict[str, Series] = {}
                for channel, meas_name in pairs:
                    meas = vocab[meas_name]
                    key = SeriesKey(site_id, dev_id, channel, meas_name)
                    ov = dm.overrides.get(key.name) or dm.overrides.get(meas_name)
                    s = Series(
                        index=len(all_series),
                        key=key,
                        kind=sm.kind,
                        measurement=meas,
                        minimum=meas.minimum if ov is None or ov.min is None else ov.min,
                        maximum=meas.maximum if ov is None or ov.max is None else ov.max,
                        limit=None if ov is None else ov.limit,
                        warn=None if ov is None else ov.warn,
                        alarm=None if ov is None else ov.alarm,
                        interval=dm.interval,
                        detectors={
                            **(
                                model.detectors[meas_name].settings()
                                if meas_name in model.detectors
                                else {}
                            ),
                            **(ov.detectors.settings() if ov and ov.detectors else {}),
                        },
                    )
                    all_series.append(s)
                    by_name[key.name] = s
                dev = Device(
                    site_id, dev_id, sm.kind, dm.description, dm.interval, by_name, dm.name
                )
                site_devices[dev_id] = dev
                devices[(site_id, dev_id)] = dev
            loc = sm.location
            sites[site_id] = Site(
                site_id,
                sm.kind,
                sm.name,
                sm.city,
                None if loc is None else loc.lat,
                None if loc is None else loc.lon,
                site_devices,
            )
        return cls(sites, tuple(all_series), devices)


def load_registry(path: Path | str) -> Registry:
    """Load and check a registry file; raise ``RegistryError`` pointing at the mistake."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read the registry: {exc}") from exc
    return parse_registry(text, str(path))


def parse_registry(text: str, source: str = "<registry>") -> Registry:
    try:
        loaded = load_yaml(text, source)
    except YamlFileError as exc:
        raise RegistryError(str(exc)) from None
    data = loaded.data
    if not isinstance(data, dict):
        raise RegistryError(f"{source}:1: the registry must be a mapping with a 'sites' key")
    try:
        model = RegistryModel.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            problems.append(f"{loaded.where(loc)}: {key_path(loc)}: {err['msg']}")
        raise RegistryError("\n".join(problems)) from exc
    domain = [
        f"{loaded.where(loc)}: {key_path(loc)}: {message}"
        for loc, message in _domain_problems(model)
    ]
    if domain:
        raise RegistryError("\n".join(domain))
    return Registry.from_model(model)


class UnknownIdError(ValueError):
    """A site or device that the registry does not have; the message says which one was
    probably meant."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """What to tell someone who wrote ``name`` where one of ``choices`` belongs: ``did you
    mean 'x'?`` for the close ones (difflib), else the choices themselves (the first ten)."""
    known = sorted(set(choices))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close:  # a case slip (Remberg) is not always close enough for difflib
        close = [c for c in known if c.lower() == name.lower()]
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not known:
        return "there are none"
    more = f", ... ({len(known)} in all)" if len(known) > 10 else ""
    return "known: " + ", ".join(known[:10]) + more


def check_site(registry: Registry, site: str) -> Site:
    """The site ``site``, or ``UnknownIdError`` with a did-you-mean."""
    found = registry.sites.get(site)
    if found is None:
        raise UnknownIdError(f"no site {site!r} in the registry; {suggest(site, registry.sites)}")
    return found


def check_device(registry: Registry, site: str, device: str) -> Device:
    """The device ``device`` of ``site``, or ``UnknownIdError`` with a did-you-mean (the
    site is checked first)."""
    found = check_site(registry, site).devices.get(device)
    if found is None:
        raise UnknownIdError(
            f"site {site!r} has no device {device!r}; "
            f"{suggest(device, registry.sites[site].devices)}"
        )
    return found


def is_valid_id(value: str) -> bool:
    return bool(_ID_RE.fullmatch(value))
