"""Bridge models: structure temperature, strain, inclination and crack width (DOMAIN.md).

Domain facts used:
- Steel expands about 12 microstrain per kelvin, so a gauge reads its zero offset plus about
  12 ue/K times the temperature change since it was zeroed (each gauge's coefficient is drawn
  around 12 with a small spread); a top/bottom temperature difference bends the deck a little.
- A lorry is a transient of a few to about 20 s and tens of ue that returns to the baseline;
  lorries arrive as a Poisson process with a day/night rate, fewer on Saturdays and almost
  none on Sundays (German Sunday driving ban for lorries over 7.5 t, section 30 StVO).
- Inclination moves by hundredths of a degree, crack width is 0.1-0.5 mm; both follow the
  temperature a little. Gauge noise is 0.5-1 ue.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from devices.registry import Device, Series
from devices.sim_common import (
    DAY_S,
    F64,
    I64,
    NS,
    Weather,
    generator,
    hash_normal,
    local_hour,
    stable_key,
    summerness,
    utc_offset_s,
)

_TOP = re.compile(r"top|oben|upper|deck|ober")
_BOTTOM = re.compile(r"bot|unten|lower|under|unter|soffit")
# Relative lorry rate by local hour: morning and afternoon peaks, little at night.
_HOURLY = np.array(
    [0.12] * 5 + [0.5] + [1.3] * 3 + [1.0] * 6 + [1.2] * 3 + [0.7] * 2 + [0.35] * 2 + [0.12] * 2
)
_MAX_EVENT_S = 40.0  # longest transient plus the crossing time: how far back to look


@dataclass(frozen=True)
class TrafficEvents:
    t_s: F64  # when the lorry reaches the start of the bridge
    amp: F64  # peak strain it causes at a gauge of influence 1, ue
    dur: F64  # length of the transient at one gauge, s
    forward: npt.NDArray[np.bool_]  # direction of travel

    @staticmethod
    def concat(parts: list[TrafficEvents]) -> TrafficEvents:
        return TrafficEvents(
            np.concatenate([p.t_s for p in parts]),
            np.concatenate([p.amp for p in parts]),
            np.concatenate([p.dur for p in parts]),
            np.concatenate([p.forward for p in parts]),
        )


class Traffic:
    """Lorries crossing one bridge. Events are drawn per UTC hour from a Generator seeded with
    (seed, site, hour), so any span can be generated without the hours before it."""

    def __init__(self, seed: int, site: str) -> None:
        rng = generator(seed, "traffic", site)
        self._seed = seed
        self._site = site
        self.day_rate = float(rng.uniform(20.0, 60.0))  # lorries per hour on a weekday
        self.crossing_s = float(rng.uniform(2.0, 8.0))  # bridge length over lorry speed
        self.median_amp = float(rng.uniform(12.0, 25.0))
        # First bending mode of a road bridge of 20-60 m: 2-6 Hz, about 2 % damping. Seen in
        # 100 Hz data as ringing while a lorry crosses; at 1 Hz it only adds a little scatter.
        self.mode_hz = float(rng.uniform(2.0, 6.0))
        self._cache: dict[int, TrafficEvents] = {}

    def rates(self, hours: I64) -> F64:
        """Expected lorries in each UTC hour: the weekday profile by local hour, half on
        Saturdays, and on Sundays (00-22 h) only exempt and light lorries."""
        utc_s = hours * 3600
        local = utc_s + utc_offset_s(utc_s)
        weekday = (local // DAY_S + 3) % 7
        h = (local % DAY_S) // 3600
        factor = _HOURLY[h]
        factor = np.where(weekday == 5, 0.5 * factor, factor)
        factor = np.where((weekday == 6) & (h < 22), 0.08 * factor + 0.01, factor)
        return np.asarray(self.day_rate * factor, dtype=np.float64)

    def _hour(self, hour: int, rate: float) -> TrafficEvents:
        cached = self._cache.get(hour)
        if cached is not None:
            return cached
        rng = generator(self._seed, "lorries", self._site, hour)
        n = int(rng.poisson(rate))
        ev = TrafficEvents(
            t_s=np.sort(hour * 3600.0 + rng.uniform(0.0, 3600.0, n)),
            amp=np.minimum(rng.lognormal(math.log(self.median_amp), 0.5, n), 4 * self.median_amp),
            dur=np.clip(rng.lognormal(math.log(7.0), 0.4, n), 3.0, 20.0),
            forward=rng.random(n) < 0.5,
        )
        if len(self._cache) > 10_000:  # over a year of hours; keep memory bounded
            self._cache.clear()
        self._cache[hour] = ev
        return ev

    def events(self, ts_s: F64) -> TrafficEvents:
        """Lorries that can touch any of the sorted times ``ts_s``: only the hours holding a
        sample (or ending less than a transient before one) are drawn, so a year of hourly
        samples does not draw a year of lorries."""
        needed: set[int] = set()
        for shift in (0.0, _MAX_EVENT_S):
            hours = np.floor((ts_s - shift) / 3600.0).astype(np.int64)  # sorted, as ts_s is
            needed.update(hours[np.concatenate([[True], hours[1:] != hours[:-1]])].tolist())
        todo = np.array(sorted(needed), dtype=np.int64)
        rates = self.rates(todo).tolist()
        return TrafficEvents.concat(
            [self._hour(h, r) for h, r in zip(todo.tolist(), rates, strict=True)]
        )

    def load(self, ts_s: F64, position: float) -> F64:
        """Strain (ue, influence 1) at a gauge at ``position`` (0..1 along the bridge): each
        lorry is a sin^2 bump with a little ringing of the first mode, arriving later at
        gauges further along its direction of travel. ``ts_s`` must be sorted."""
        out = np.zeros(len(ts_s))
        if len(ts_s) == 0:
            return out
        ev = self.events(ts_s)
        along = np.where(ev.forward, position, 1.0 - position)
        arrive = ev.t_s + along * self.crossing_s
        start = np.searchsorted(ts_s, arrive, side="left")
        stop = np.searchsorted(ts_s, arrive + ev.dur, side="left")
        counts = stop - start
        total = int(counts.sum())
        if total == 0:
            return out
        which = np.repeat(np.arange(len(counts)), counts)
        first_of = np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.repeat(start, counts) + (np.arange(total) - first_of)
        tau = ts_s[idx] - arrive[which]
        envelope = np.sin(np.pi * tau / ev.dur[which])
        omega = 2.0 * np.pi * self.mode_hz
        ring = 0.08 * np.sin(omega * tau) * np.exp(-0.02 * omega * tau) * envelope
        bump = ev.amp[which] * (envelope**2 + ring)
        return np.bincount(idx, weights=bump, minlength=len(ts_s)).astype(np.float64)


@dataclass(frozen=True)
class BridgeLatent:
    """What all series of a bridge device share at the requested timestamps."""

    t_s: F64
    temp: F64  # mean structure temperature, degC
    grad: F64  # deck top minus bottom, K


@dataclass(frozen=True)
class _Params:
    noise_key: int
    offset: float  # zero offset (strain, inclination) or width at T_ref (crack)
    thermal: float  # per kelvin of mean structure temperature
    bending: float  # per kelvin of top-bottom difference
    load: float  # per ue of lorry load at influence 1
    position: float  # 0..1 along the bridge
    noise: float  # sensor noise, standard deviation


def _temperature_positions(device: Device) -> dict[str, float]:
    """Place each temperature channel between deck top (+0.5) and bottom (-0.5), by its name
    when it says so, else in registry order; a lone sensor reads the mean."""
    names = [n for n, s in device.series.items() if s.key.measurement == "temperature"]
    if len(names) <= 1:
        return dict.fromkeys(names, 0.0)
    pos: dict[str, float] = {}
    rest: list[str] = []
    for name in names:
        chan = name.rsplit("/", 1)[0].lower() if "/" in name else ""
        if _BOTTOM.search(chan):
            pos[name] = -0.5
        elif _TOP.search(chan):
            pos[name] = 0.5
        else:
            rest.append(name)
    for i, name in enumerate(rest):
        pos[name] = 0.5 - i / max(1, len(rest) - 1) if len(rest) > 1 else 0.0
    return pos


class BridgeDevice:
    """One monitoring device on a bridge (a gateway with its gauges)."""

    def __init__(
        self,
        seed: int,
        device: Device,
        weather: Weather,
        traffic: Traffic,
        *,
        noise: Mapping[str, float] | None = None,
    ) -> None:
        """``noise`` replaces the drawn noise standard deviation of series by record name."""
        rng = generator(seed, "bridge-device", device.site, device.id)
        self.device = device
        self.weather = weather
        self.traffic = traffic
        self.temp_offset = float(rng.normal(0.0, 0.7))  # shade and mass of this member
        self.t_ref = float(rng.uniform(8.0, 14.0))  # temperature when the gauges were zeroed
        # Some loggers send strain as a plain ratio (SenML has no strain unit, DOMAIN.md).
        self.strain_as_ratio = bool(rng.random() < 0.25)
        self._positions = _temperature_positions(device)
        self._params = {name: self._draw(seed, s) for name, s in device.series.items()}
        for name, sd in (noise or {}).items():
            self._params[name] = replace(self._params[name], noise=sd)

    @staticmethod
    def _draw(seed: int, s: Series) -> _Params:
        k = s.key
        rng = generator(seed, "series", k.site, k.device, k.channel, k.measurement)
        noise_key = stable_key(seed, "noise", k.site, k.device, k.channel, k.measurement)
        sign = -1.0 if rng.random() < 0.3 else 1.0  # gauges in the compression zone
        pos = float(rng.uniform(0.0, 1.0))
        m = k.measurement
        if m == "strain":
            return _Params(
                noise_key,
                offset=float(rng.normal(0.0, 60.0)),
                thermal=float(rng.normal(12.0, 0.25)),
                bending=float(rng.normal(0.0, 1.0)),
                load=sign * float(rng.uniform(0.4, 1.2)),
                position=pos,
                noise=float(rng.uniform(0.5, 1.0)),
            )
        if m == "inclination":
            return _Params(
                noise_key,
                offset=float(rng.uniform(-0.05, 0.05)),
                thermal=sign * float(rng.uniform(0.0008, 0.002)),
                bending=float(rng.normal(0.0, 0.0005)),
                load=sign * 1e-4,
                position=pos,
                noise=0.0005,
            )
        if m == "crack_width":
            return _Params(
                noise_key,
                offset=float(rng.uniform(0.15, 0.35)),
                thermal=-float(rng.uniform(0.002, 0.005)),  # a crack closes as it warms
                bending=0.0,
                load=1.5e-5,
                position=pos,
                noise=0.001,
            )
        return _Params(  # temperature
            noise_key,
            offset=float(rng.normal(0.0, 0.15)),  # calibration of the sensor
            thermal=1.0,
            bending=0.0,
            load=0.0,
            position=pos,
            noise=0.05,
        )

    def latent(self, t_ns: I64) -> BridgeLatent:
        t_s = t_ns.astype(np.float64) / NS
        hour = local_hour(t_ns)
        sunshine = self.weather.sunshine(t_s)
        temp = self.weather.air_temperature(t_ns, hour=hour, sunshine=sunshine)
        temp += self.temp_offset
        # The sun heats the deck top from mid-morning; at night the top radiates and is cooler.
        sun_bump = np.where(
            (hour >= 8.0) & (hour <= 18.0), np.sin(np.pi * (hour - 8.0) / 10.0), 0.0
        )
        reach = (2.0 + 4.0 * summerness(t_s)) * (0.3 + 0.7 * sunshine)
        return BridgeLatent(t_s, temp, reach * sun_bump - 0.7)

    def clean(self, series: Series, lat: BridgeLatent, t_ns: I64) -> F64:
        """The series' realistic value (before range clipping and faults)."""
        name = series.key.name
        p = self._params[name]
        noise = p.noise * hash_normal(p.noise_key, t_ns)
        m = series.key.measurement
        if m == "temperature":
            pos = self._positions.get(name, 0.0)
            return lat.temp + pos * lat.grad + p.offset + noise
        d_t = lat.temp - self.t_ref
        load = self.traffic.load(lat.t_s, p.position) if p.load else 0.0
        return p.offset + p.thermal * d_t + p.bending * lat.grad + p.load * load + noise
