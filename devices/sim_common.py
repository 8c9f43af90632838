"""Shared pieces of the simulator: seeding, per-sample noise, local time and Dortmund's climate.

Every value the simulator produces is a pure function of (seed, series identity, timestamp):
parameters come from numpy Generators seeded with a stable hash of the seed and the series'
ids (not its position in the registry, so adding a site changes no other series), and the
per-sample noise comes from a counter-based hash of the timestamp. So chunking, the start time
and the other series never change a sample, and one seed always gives the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

NS = 1_000_000_000
DAY_S = 86_400
# Dortmund city centre: where a site without a location is assumed to be.
DORTMUND_LAT = 51.514
DORTMUND_LON = 7.468

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_M53 = 2.0**-53
_GRID_S = 300.0
_SQRT3 = math.sqrt(3.0)


def stable_key(*parts: object) -> int:
    """A 64-bit key that is the same in every process (``hash()`` is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def generator(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from the given identity (seed first by convention)."""
    return np.random.default_rng(np.random.SeedSequence(stable_key(*parts)))


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # splitmix64 finaliser: unsigned array arithmetic wraps modulo 2**64, which is intended.
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(key: int, t_ns: I64) -> F64:
    """Uniform in (0, 1], a pure function of (key, timestamp)."""
    z = _mix(t_ns.astype(np.int64).view(np.uint64) * _GOLDEN + np.uint64(key & (2**64 - 1)))
    return ((z >> np.uint64(11)).astype(np.float64) + 1.0) * _TWO_POW_M53


def hash_normal(key: int, t_ns: I64) -> F64:
    """Noise with mean 0 and standard deviation 1, a pure function of (key, timestamp).

    The sum of four 16-bit uniforms (Irwin-Hall) is close to normal inside +-3.46 sigma and
    has no tails beyond: sensor noise then never makes a spike by itself, which keeps the
    ground-truth labels honest (only injected faults are outliers). It is also 3x cheaper
    than Box-Muller."""
    z = _mix(t_ns.astype(np.int64).view(np.uint64) * _GOLDEN + np.uint64(key & (2**64 - 1)))
    mask = np.uint64(0xFFFF)
    total = (
        (z & mask).astype(np.float64)
        + ((z >> np.uint64(16)) & mask).astype(np.float64)
        + ((z >> np.uint64(32)) & mask).astype(np.float64)
        + (z >> np.uint64(48)).astype(np.float64)
    )
    return np.asarray((total / 65535.0 - 2.0) * _SQRT3, dtype=np.float64)


@functools.cache
def _eu_summer_time(year: int) -> tuple[int, int]:
    """Start and end (UTC seconds) of EU summer time: last Sunday of March and of October,
    01:00 UTC both (rule in force since 1996)."""

    def last_sunday(month_last_day: str) -> int:
        day = int(np.datetime64(f"{year}-{month_last_day}", "D").astype(np.int64))
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
        return day - (weekday + 1) % 7

    return last_sunday("03-31") * DAY_S + 3600, last_sunday("10-31") * DAY_S + 3600


def _year(t_s: int) -> int:
    return int(np.datetime64(t_s, "s").astype("datetime64[Y]").astype(np.int64)) + 1970


def utc_offset_s(t_s: I64) -> I64:
    """Offset of Dortmund's local time (CET/CEST) from UTC, in seconds, per timestamp."""
    t_s = np.asarray(t_s, dtype=np.int64)
    summer = np.zeros(t_s.shape, dtype=bool)
    if t_s.size:
        for year in range(_year(int(t_s.min())), _year(int(t_s.max())) + 1):
            start, end = _eu_summer_time(year)
            summer |= (t_s >= start) & (t_s < end)
    return np.where(summer, 7200, 3600).astype(np.int64)


def local_seconds(t_ns: I64) -> I64:
    """Seconds since the epoch on Dortmund's wall clock (for time of day and weekday)."""
    t_s = t_ns // NS
    return t_s + utc_offset_s(t_s)


def local_hour(t_ns: I64) -> F64:
    local = t_ns.astype(np.float64) / NS + utc_offset_s(t_ns // NS)
    return np.asarray(np.mod(local, DAY_S) / 3600.0, dtype=np.float64)


def season_phase(t_s: F64) -> F64:
    """Phase of the year, 0 at the coldest day (mid-January), in radians."""
    return np.asarray(2.0 * np.pi * (t_s / DAY_S - 14.0) / 365.2425, dtype=np.float64)


def summerness(t_s: F64) -> F64:
    """0 in mid-January, 1 in mid-July."""
    return np.asarray(0.5 - 0.5 * np.cos(season_phase(t_s)), dtype=np.float64)


def seasonal_mean(t_s: F64) -> F64:
    """Dortmund's daily mean air temperature over the year: about 2 degC in January and
    19 degC in July (DWD climate normals, rounded)."""
    return np.asarray(10.5 - 8.5 * np.cos(season_phase(t_s)), dtype=np.float64)


def daily_shape(hour: F64) -> F64:
    """-1 at 05:00 and +1 at 15:00 local: a 10-hour warming and a 14-hour cooling half-cosine,
    smooth at both turning points (the day is not symmetric: it warms faster than it cools)."""
    h = np.mod(hour - 5.0, 24.0)
    phase = np.where(h < 10.0, np.pi * h / 10.0, np.pi + np.pi * (h - 10.0) / 14.0)
    return np.asarray(-np.cos(phase), dtype=np.float64)


def sun_elevation_sin(t_ns: I64, lat: float, lon: float) -> F64:
    """Sine of the sun's elevation (simple declination and hour-angle formula, good to about
    a degree, enough for daylight in a classroom)."""
    t_s = t_ns.astype(np.float64) / NS
    days = t_s / DAY_S
    decl = np.radians(-23.44) * np.cos(2.0 * np.pi * (np.mod(days, 365.2425) + 10.0) / 365.2425)
    solar_hour = np.mod(t_s / 3600.0 + lon / 15.0, 24.0)
    hour_angle = np.radians(15.0 * (solar_hour - 12.0))
    phi = math.radians(lat)
    return np.asarray(
        math.sin(phi) * np.sin(decl) + math.cos(phi) * np.cos(decl) * np.cos(hour_angle),
        dtype=np.float64,
    )


@dataclass(frozen=True)
class _Fourier:
    """A smooth random process as a sum of sinusoids with random periods and phases: a pure
    function of time, so any span can be evaluated without simulating what came before."""

    freq: F64  # 1/s
    amp: F64
    phase: F64

    @classmethod
    def draw(
        cls, rng: np.random.Generator, n: int, min_days: float, max_days: float, sd: float
    ) -> _Fourier:
        periods = np.exp(rng.uniform(math.log(min_days), math.log(max_days), n)) * DAY_S
        weights = np.sqrt(periods / periods.max())  # slower swings are larger, as in weather
        amp = weights * sd * math.sqrt(2.0 / float(np.sum(weights**2)))
        return cls(1.0 / periods, amp, rng.uniform(0.0, 2.0 * np.pi, n))

    def __call__(self, t_s: F64) -> F64:
        # Evaluated on a fixed 5-minute grid and interpolated: the process is smooth over
        # hours, so this costs nothing in accuracy (<1e-3 of the amplitude) and makes a week
        # at 100 Hz cheap. The grid is absolute, so the result stays a function of time only.
        t = np.asarray(t_s, dtype=np.float64)
        if t.size == 0:
            return np.zeros(0)
        lo = math.floor(float(t.min()) / _GRID_S)
        hi = math.floor(float(t.max()) / _GRID_S) + 1
        grid = np.arange(lo, hi + 1, dtype=np.float64) * _GRID_S
        # An explicit sum, not a matrix product: BLAS may sum in a different order for
        # different array sizes, and bit-identical output for any chunking is the contract.
        acc = np.zeros_like(grid)
        for f, a, p in zip(self.freq.tolist(), self.amp.tolist(), self.phase.tolist(), strict=True):
            acc += a * np.cos(2.0 * np.pi * f * grid + p)
        return np.asarray(np.interp(t, grid, acc), dtype=np.float64)


@dataclass(frozen=True)
class Weather:
    """One site's weather: temperature anomaly (about 2.5 K standard deviation over days),
    sunshine (0 overcast to 1 clear), and a factor for outdoor particulate matter."""

    temp: _Fourier
    sun: _Fourier
    pm: _Fourier
    humid: _Fourier

    @classmethod
    def for_site(cls, seed: int, site: str) -> Weather:
        rng = generator(seed, "weather", site)
        return cls(
            temp=_Fourier.draw(rng, 8, 1.5, 20.0, 2.5),
            sun=_Fourier.draw(rng, 6, 0.7, 6.0, 1.0),
            pm=_Fourier.draw(rng, 6, 1.0, 10.0, 1.0),
            humid=_Fourier.draw(rng, 5, 1.0, 8.0, 1.0),
        )

    def sunshine(self, t_s: F64) -> F64:
        return np.asarray(1.0 / (1.0 + np.exp(-1.5 * self.sun(t_s))), dtype=np.float64)

    def air_temperature(
        self, t_ns: I64, *, hour: F64 | None = None, sunshine: F64 | None = None
    ) -> F64:
        """Outdoor air temperature: seasonal mean, a daily cycle (min 05:00, max 15:00 local)
        whose half-range is 4 K in winter to 6 K in summer, larger on sunny days, and the
        weather anomaly. ``hour`` and ``sunshine`` may be passed if already computed."""
        t_s = t_ns.astype(np.float64) / NS
        hour = local_hour(t_ns) if hour is None else hour
        sunshine = self.sunshine(t_s) if sunshine is None else sunshine
        cos_season = np.cos(season_phase(t_s))
        amplitude = (5.0 - cos_season) * (0.8 + 0.4 * sunshine)
        return np.asarray(
            10.5 - 8.5 * cos_season + amplitude * daily_shape(hour) + self.temp(t_s),
            dtype=np.float64,
        )

    def mean_temperature(self, t_s: F64) -> F64:
        """Outdoor temperature without the daily cycle (what a building's mass follows)."""
        return np.asarray(seasonal_mean(t_s) + self.temp(t_s), dtype=np.float64)

    def pm25_outdoor(self, t_s: F64) -> F64:
        """Urban background PM2.5 in ug/m3: about 14 in winter (heating, inversions) and 8 in
        summer, varying with the weather by a factor of about 1.5 either way."""
        base = 11.0 + 3.0 * np.cos(season_phase(t_s))
        return np.asarray(base * np.exp(0.4 * self.pm(t_s)), dtype=np.float64)
