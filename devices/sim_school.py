"""Classroom models: CO2, temperature, humidity, particulate matter, noise and light.

Domain facts used (DOMAIN.md):
- NRW timetable: lessons of 45 minutes from 08:00 with 5-20 minute breaks until about 13:30,
  on some days afternoon lessons until about 16:00; rooms are empty at night, at weekends and
  in school holidays.
- CO2: outdoor air about 420 ppm; a pupil breathes out about 15 l/h, so an unventilated
  lesson adds about 1500 ppm and 1900-3300 ppm at lesson end are common; window airing in a
  break (not always done) drops CO2 and temperature together within minutes; overnight an
  empty room decays back toward outdoor air (infiltration 0.3-0.5 air changes per hour).
- Temperature 20-24 degC (heating setpoint with night setback), +1-2 K from the occupants,
  -1-2 K when the windows are open in winter. Relative humidity 30-55 %, lower in winter,
  rising with occupancy (breath carries moisture along with the CO2).
- PM: outdoor urban background plus dust stirred up by pupils (mostly coarse, PM10).
- Noise: 35 dB(A) in an empty room, 60-70 dB(A) in lessons, louder in short breaks.
- Light: daylight through the windows (daylight factor 1-3 %) plus 300-500 lx of lamps.

Room air is a well-mixed box: every quantity x relaxes toward an equilibrium,
dx/dt = -r (x - x_eq), with r and x_eq constant within each minute (occupancy, windows and
heating change by the minute). That is solved exactly per minute, vectorised over days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from devices.registry import Series
from devices.sim_common import (
    DAY_S,
    DORTMUND_LAT,
    DORTMUND_LON,
    F64,
    I64,
    NS,
    Weather,
    generator,
    hash_normal,
    local_seconds,
    stable_key,
    summerness,
    sun_elevation_sin,
    utc_offset_s,
)

# (start, end) of each lesson in minutes after local midnight: 5-minute changeovers, a
# 20-minute and a 15-minute break, lunch, and two afternoon lessons on long days.
LESSONS: tuple[tuple[int, int], ...] = (
    (480, 525),
    (530, 575),
    (595, 640),
    (645, 690),
    (705, 750),
    (755, 800),
    (840, 885),
    (890, 935),
)
_DAY_START_MIN = 240  # a room's day runs from 04:00 local, when it has long been empty
_GRID = 1500  # minutes per day row: 25 h covers the long day when summer time ends
_BLOCK = 60  # minutes per step of the vectorised solution (keeps exponentials small)
_HEATING = (360, 1020)
_STUFFY_MIN = 100  # heating at the day setpoint 06:00-17:00 on school days

CLOSED, TILTED, OPEN = 0, 1, 2


@dataclass(frozen=True)
class RoomState:
    """A room at the requested timestamps, before sensor noise. ``window``: 0 closed,
    1 tilted, 2 open (airing is an event, not a fault: evaluations may want to know it)."""

    persons: F64
    window: npt.NDArray[np.int8]
    co2: F64
    temperature: F64
    humidity: F64
    pm2_5: F64
    pm10: F64
    noise: F64
    light: F64


@dataclass(frozen=True)
class _LessonDraws:
    attendance: float
    cancelled: bool
    level: float  # dB(A) of this lesson
    tilt: bool  # window tilted all lesson
    mid: bool  # aired in the middle of the lesson
    mid_len: int
    airs: float  # compared with the airing chance of the following break
    delay: int  # minutes into the break before the window opens
    length: int  # minutes the window stays open


@dataclass
class _DayPlan:
    persons: F64
    window: npt.NDArray[np.int8]
    setpoint: F64
    noise: F64  # dB inside, before what comes in through the windows


def _relax(rate: F64, eq: F64, x0: F64) -> F64:
    """x at the start of each minute for dx/dt = -rate (x - eq), rate per second.

    Rows are independent sequences. Within a block of ``_BLOCK`` minutes the linear recurrence
    x[k+1] = a[k] x[k] + b[k] is summed in closed form with cumulative logs; the block length
    keeps exp(-log a) far from overflow even with the windows wide open."""
    c = -rate * 60.0
    b = eq * -np.expm1(c)
    n, m = rate.shape
    out = np.empty((n, m))
    x = x0.astype(np.float64)
    for s in range(0, m, _BLOCK):
        cc = c[:, s : s + _BLOCK]
        logs = np.cumsum(cc, axis=1)
        inflow = np.cumsum(b[:, s : s + _BLOCK] * np.exp(-logs), axis=1)
        after = np.exp(logs) * (x[:, None] + inflow)
        out[:, s] = x
        out[:, s + 1 : s + _BLOCK] = after[:, :-1]
        x = after[:, -1]
    return out


def _energetic_sum(a: F64, b: F64) -> F64:
    return np.asarray(10.0 * np.log10(10.0 ** (a / 10.0) + 10.0 ** (b / 10.0)), dtype=np.float64)


class Room:
    """One classroom (a school device, or one channel of it)."""

    def __init__(
        self,
        seed: int,
        site: str,
        device: str,
        channel: str,
        weather: Weather,
        holidays: frozenset[int],
        lat: float | None = None,
        lon: float | None = None,
    ) -> None:
        self._ids = (seed, site, device, channel)
        self.weather = weather
        self.holidays = holidays
        self.lat = DORTMUND_LAT if lat is None else lat
        self.lon = DORTMUND_LON if lon is None else lon
        rng = generator(seed, "room", site, device, channel)
        self.volume = float(rng.uniform(160.0, 230.0))  # m3: 55-75 m2 at 3 m height
        self.lam0 = float(rng.uniform(0.3, 0.5))  # air changes per hour, windows closed
        self.lam_tilt = float(rng.uniform(1.0, 2.5))
        self.lam_open = float(rng.uniform(8.0, 15.0))
        self.p_air = float(rng.uniform(0.3, 0.85))  # airs in a big break (not always)
        self.p_tilt = float(rng.uniform(0.05, 0.4))
        self.p_mid = float(rng.uniform(0.0, 0.3))  # airs in the middle of a lesson
        # ppm per hour per person: about 15 l/h of CO2 per pupil into the room's volume.
        self.co2_rate = float(rng.uniform(14.0, 18.0)) * 1000.0 / self.volume
        self.co2_out = float(generator(seed, "outdoor-air", site).uniform(410.0, 440.0))
        self.t_day = float(rng.uniform(21.0, 22.0))
        self.daylight_factor = float(rng.uniform(0.01, 0.03))
        self.lamp_lx = float(rng.uniform(300.0, 500.0))
        self.lamps_always = bool(rng.random() < 0.5)
        self.background_db = float(rng.uniform(33.0, 36.0))
        self.lesson_db = float(rng.uniform(61.0, 66.0))
        class_size = int(rng.integers(20, 31))
        # A weekly timetable: which lessons the room hosts, with how many pupils. Lessons come
        # in double periods of one class; afternoons only on this room's long days.
        self.timetable = np.zeros((5, len(LESSONS)))
        long_days = set(rng.choice(5, size=int(rng.integers(1, 3)), replace=False).tolist())
        for weekday in range(5):
            for pair in range(4):
                size = class_size if rng.random() < 0.8 else int(rng.integers(12, 19))
                used = rng.random() < (0.85 if pair < 3 else 0.9)
                for lesson in (2 * pair, 2 * pair + 1):
                    keep = rng.random() < 0.93
                    if used and keep and (pair < 3 or weekday in long_days):
                        self.timetable[weekday, lesson] = size

    # --- the day plan ------------------------------------------------------------------

    def _plan(self, day: int) -> _DayPlan:
        """Occupancy, windows, heating and inside noise per minute of one local day."""
        persons = np.zeros(_GRID)
        window = np.zeros(_GRID, dtype=np.int8)
        setpoint = np.full(_GRID, self.t_day - 1.0)  # night and weekend setback
        noise = np.full(_GRID, self.background_db)
        weekday = (day + 3) % 7
        if weekday >= 5 or day in self.holidays:
            return _DayPlan(persons, window, setpoint, noise)
        rng = generator(*self._ids, "day", day)
        season = float(summerness(np.array([day * DAY_S + 43200.0]))[0])

        def sl(a: int, b: int) -> slice:
            return slice(a - _DAY_START_MIN, b - _DAY_START_MIN)

        setpoint[sl(*_HEATING)] = self.t_day
        noise[sl(420, 1020)] = self.background_db + 5.0  # building busy around the room
        # All draws first, in a fixed order, so a rule below never shifts the random stream.
        draws = [
            _LessonDraws(
                attendance=rng.uniform(0.85, 1.0),
                cancelled=bool(rng.random() < 0.03),
                level=self.lesson_db + rng.uniform(-3.0, 3.0),
                tilt=bool(rng.random() < self.p_tilt * (0.3 + 0.7 * season)),
                mid=bool(rng.random() < self.p_mid),
                mid_len=int(rng.integers(3, 6)),
                airs=rng.random(),
                delay=int(rng.integers(0, 3)),
                length=int(rng.integers(3, 9)) + round(7 * season),  # longer when warm
            )
            for _ in LESSONS
        ]
        occupied = [
            0.0 if size == 0 or d.cancelled else round(size * d.attendance) + 1.0  # + teacher
            for size, d in zip(self.timetable[weekday].tolist(), draws, strict=True)
        ]
        stuffy = 0.0  # minutes of teaching since the windows were last opened wide
        for i, ((a, b), d) in enumerate(zip(LESSONS, draws, strict=True)):
            if occupied[i]:
                persons[sl(a, b)] = occupied[i]
                noise[sl(a, b)] = d.level
                if d.tilt:
                    window[sl(a, b)] = TILTED
                # Stale air gets noticed: after about 100 minutes of teaching without airing
                # someone opens a window during the lesson.
                if d.mid or stuffy + 20 >= _STUFFY_MIN:
                    window[sl(a + 20, a + 20 + d.mid_len)] = OPEN
                    stuffy = float(b - (a + 20 + d.mid_len))
                else:
                    stuffy += (b - a) * (0.5 if d.tilt else 1.0)
            if i + 1 == len(LESSONS):
                break
            nxt = LESSONS[i + 1][0]
            chance = self.p_air if stuffy < 45 else max(self.p_air, 0.8)
            if nxt - b <= 5:
                # A changeover: the class mostly stays; someone may open a window.
                if occupied[i] and occupied[i + 1]:
                    persons[sl(b, nxt)] = occupied[i]
                    noise[sl(b, nxt)] = 70.0
                if occupied[i] and d.airs < chance * 0.5:
                    window[sl(b, b + min(d.length, 5))] = OPEN
                    stuffy = 0.0
            elif occupied[i]:
                noise[sl(b, nxt)] = 42.0  # empty room, pupils in the corridor
                if d.airs < chance:
                    start = b + d.delay
                    window[sl(start, min(start + d.length, nxt + 2))] = OPEN
                    stuffy = 0.0
        last = max((i for i, n in enumerate(occupied) if n), default=None)
        if last is not None and rng.random() < 0.3:
            end = LESSONS[last][1]
            window[sl(end, end + 10)] = OPEN  # aired after the last lesson
        return _DayPlan(persons, window, setpoint, noise)

    # --- state over time -----------------------------------------------------------------

    def _anchor(self, day: int | I64) -> I64:
        """UTC seconds of 04:00 local on the given local day(s)."""
        d = np.atleast_1d(np.asarray(day, dtype=np.int64))
        return d * DAY_S + _DAY_START_MIN * 60 - utc_offset_s(d * DAY_S + 43200)

    def state(self, t_ns: I64) -> RoomState:
        if len(t_ns) == 0:
            empty = np.zeros(0)
            return RoomState(empty, np.zeros(0, np.int8), *([empty] * 7))
        local_day = local_seconds(t_ns) // DAY_S
        # From two days before: a sample before 04:00 belongs to the day before, and every
        # used day needs its previous day as well.
        days = np.arange(int(local_day.min()) - 2, int(local_day.max()) + 2, dtype=np.int64)
        anchors = self._anchor(days)
        t_s = t_ns // NS
        row = np.searchsorted(anchors, t_s, side="right") - 1  # row in ``days``
        used = np.unique(row)
        # Each used day is solved together with the day before it, started from that day's
        # first-minute equilibrium: a day's values then depend on the day itself only (the
        # room forgets the day before yesterday overnight), whatever span is requested.
        pairs = np.concatenate([used - 1, used])
        plan_rows = np.unique(pairs)
        plans = {int(r): self._plan(int(days[r])) for r in plan_rows}
        minute_s = np.arange(_GRID, dtype=np.int64) * 60

        def grid(attr: str, rows: npt.NDArray[np.int64]) -> F64:
            return np.stack([getattr(plans[int(r)], attr) for r in rows]).astype(np.float64)

        n = len(used)
        prev, cur = used - 1, used
        persons = np.concatenate([grid("persons", prev), grid("persons", cur)], axis=1)
        window = np.concatenate([grid("window", prev), grid("window", cur)], axis=1)
        setpoint = np.concatenate([grid("setpoint", prev), grid("setpoint", cur)], axis=1)
        times = np.concatenate(
            [anchors[prev][:, None] + minute_s, anchors[cur][:, None] + minute_s], axis=1
        )
        # Minutes past the end of the day before belong to ``cur``: freeze them (rate 0).
        day_len = (anchors[prev + 1] - anchors[prev]) // 60
        beyond = np.zeros((n, 2 * _GRID), dtype=bool)
        beyond[:, :_GRID] = np.arange(_GRID)[None, :] >= day_len[:, None]

        mid_ns = (times + 30) * NS
        flat = mid_ns.ravel()
        t_out = self.weather.air_temperature(flat).reshape(times.shape)
        t_mid_s = flat.astype(np.float64) / NS
        t_mean = self.weather.mean_temperature(t_mid_s).reshape(times.shape)
        sun = np.clip(sun_elevation_sin(flat, self.lat, self.lon), 0.0, None).reshape(times.shape)
        sunny = self.weather.sunshine(t_mid_s).reshape(times.shape)
        pm_out = self.weather.pm25_outdoor(t_mid_s).reshape(times.shape)

        lam = self.lam0 + np.where(
            window == OPEN, self.lam_open, np.where(window == TILTED, self.lam_tilt, 0.0)
        )

        def solve(rate_h: F64, eq: F64) -> F64:
            rate = np.where(beyond, 0.0, rate_h / 3600.0)
            x = _relax(rate, eq, eq[:, 0])
            return x[:, _GRID:]

        co2_eq = self.co2_out + self.co2_rate * persons / lam
        co2 = solve(lam, co2_eq)
        # Heating holds the setpoint; in warm weather the room runs above it (mass follows the
        # outdoor mean, sun through the windows). Open windows couple the air to outside
        # only partly: walls and furniture give their heat back (0.08 of the air change).
        k_heat, q_person, couple = 2.0, 2.2 * 2.0 / 26.0, 0.08
        free = 15.0 + 0.5 * t_mean + 1.5 * sunny * sun
        base = np.maximum(setpoint, free)
        t_rate = k_heat + couple * lam
        t_eq = (k_heat * base + q_person * persons + couple * lam * t_out) / t_rate
        temp = solve(t_rate, t_eq)
        # PM2.5 settles slowly (0.4/h), the coarse part of PM10 fast (2/h); pupils stir up
        # +5 (PM2.5) and +25 (coarse) ug/m3 in a closed room of 26.
        s_fine = 5.0 * (self.lam0 + 0.4) / 26.0
        s_coarse = 25.0 * (self.lam0 + 2.0) / 26.0
        fine_eq = (lam * 0.8 * pm_out + s_fine * persons) / (lam + 0.4)
        coarse_eq = (lam * 0.3 * pm_out + s_coarse * persons) / (lam + 2.0)
        fine = solve(lam + 0.4, fine_eq)
        coarse = solve(lam + 2.0, coarse_eq)

        # Per sample: its day row, minute and seconds into the minute.
        r = np.searchsorted(used, row)
        into = t_ns - anchors[row] * NS
        minute = np.minimum(into // (60 * NS), _GRID - 1)
        tau = (into - minute * 60 * NS).astype(np.float64) / NS
        col = minute + _GRID

        def at(x: F64, rate_h: F64, eq: F64) -> F64:
            xr, eqr = x[r, minute], eq[r, col]
            return np.asarray(eqr + (xr - eqr) * np.exp(-rate_h[r, col] / 3600.0 * tau))

        co2_s = at(co2, lam, co2_eq)
        temp_s = at(temp, t_rate, t_eq)
        fine_s = at(fine, lam + 0.4, fine_eq)
        coarse_s = at(coarse, lam + 2.0, coarse_eq)
        pers_s = persons[r, col]
        win_s = window[r, col].astype(np.int8)

        ts_f = t_ns.astype(np.float64) / NS
        season = summerness(ts_f)
        # Indoor RH follows outdoor absolute humidity (dry in winter) and the breath of the
        # occupants, which the windows remove together with the CO2.
        rh_base = 35.0 + 15.0 * season + 2.0 * self.weather.humid(ts_f)
        rh = rh_base + (5.0 - 1.0 * season) * (co2_s - self.co2_out) / 1500.0

        hour = np.mod((local_seconds(t_ns)).astype(np.float64), DAY_S) / 3600.0
        outside_db = np.where((hour >= 6) & (hour < 22), 52.0, 44.0)
        outside_db = outside_db - np.where(win_s == TILTED, 8.0, 0.0)
        inside_db = grid("noise", cur)[r, minute]
        noise = np.where(win_s == CLOSED, inside_db, _energetic_sum(inside_db, outside_db))

        sin_el = np.clip(sun_elevation_sin(t_ns, self.lat, self.lon), 0.0, None)
        outdoor_lx = 110_000.0 * sin_el * (0.2 + 0.8 * self.weather.sunshine(ts_f))
        daylight = self.daylight_factor * outdoor_lx
        lamps = (pers_s > 0) & (self.lamps_always | (daylight < 500.0))
        light = daylight + np.where(lamps, self.lamp_lx, 0.0)

        return RoomState(
            persons=pers_s,
            window=win_s,
            co2=co2_s,
            temperature=temp_s,
            humidity=np.asarray(rh, dtype=np.float64),
            pm2_5=fine_s,
            pm10=fine_s + coarse_s,
            noise=np.asarray(noise, dtype=np.float64),
            light=np.asarray(light, dtype=np.float64),
        )

    def measure(self, series: Series, state: RoomState, t_ns: I64) -> F64:
        """What the room's sensor for ``series`` reads: the state plus calibration offset and
        noise (NDIR CO2 about +-(5 ppm + 0.5 %), optical PM about 6 %)."""
        k = series.key
        m = k.measurement
        rng = generator(self._ids[0], "series", k.site, k.device, k.channel, m)
        key = stable_key(self._ids[0], "noise", k.site, k.device, k.channel, m)
        z = hash_normal(key, t_ns)
        if m == "co2":
            return state.co2 + float(rng.normal(0.0, 10.0)) + (5.0 + 0.005 * state.co2) * z
        if m == "temperature":
            # Sensors in a case read a little warm (self-heating, DOMAIN.md).
            return state.temperature + float(rng.uniform(0.0, 0.4)) + 0.05 * z
        if m == "humidity":
            return state.humidity + float(rng.normal(0.0, 1.5)) + 0.3 * z
        if m in ("pm2_5", "pm10"):
            # One optical sensor gives both from the same particle counts: they share the
            # noise of the fine fraction, and PM10 adds the coarse part, so PM10 >= PM2.5.
            shared = hash_normal(stable_key(*self._ids, "pm-noise"), t_ns)
            fine = state.pm2_5 * (1.0 + 0.06 * shared) + 0.2 * shared
            if m == "pm2_5":
                return np.asarray(fine, dtype=np.float64)
            coarse = (state.pm10 - state.pm2_5) * (1.0 + 0.1 * z)
            return np.asarray(fine + coarse, dtype=np.float64)
        if m == "noise":
            spread = np.where(state.persons > 0, 2.0, 0.7)
            return np.asarray(state.noise + spread * z, dtype=np.float64)
        if m == "light":
            return np.asarray(state.light * (1.0 + 0.02 * z) + z, dtype=np.float64)
        raise ValueError(f"no classroom model for measurement {m!r}")


def holidays_to_days(ranges: Iterable[tuple[dt.date, dt.date]]) -> frozenset[int]:
    """Inclusive (first, last) date ranges to a set of day numbers since the epoch."""
    days: set[int] = set()
    epoch = dt.date(1970, 1, 1)
    for first, last in ranges:
        days.update(range((first - epoch).days, (last - epoch).days + 1))
    return frozenset(days)
