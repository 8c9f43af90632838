"""The anomaly check between validation and the durable commit.

Checks are vectorised over the whole batch (numpy, no per-sample Python loop) and write
their results into the batch's ``flags`` and ``scores`` columns, which are stored with each
reading. Per-series state (a window of recent values, the previous reading, run lengths)
lives in arrays indexed by the registry's series index and can be saved and loaded, so a
restart neither flags everything nor nothing.

Statistics are computed once per series per batch, from the window as it stood before the
batch, and applied to every sample of the batch: the cost is a few array passes per batch
instead of a rolling median per sample.

Detectors, each a flag bit of ``AnomalyFlag`` (the README's "Anomaly detection" says why
each exists and what its defaults are):

- ``limit`` (structure): |value| beyond a gauge's design limit from the registry.
- ``spike`` (sensor): a lone value far from the window's median, in robust standard
  deviations (1.4826 x MAD, never below the measurement's noise floor, so a constant
  series does not turn every change into a spike).
- ``step`` (sensor): consecutive values on the same side of the window's median beyond a
  smaller threshold, the first of them a jump: a lasting offset, not a gradual rise.
- ``stuck`` (sensor): the same value repeated where the measurement always varies.
- ``rate`` (sensor): change between consecutive readings faster than the physics allows.
- ``gap`` (sensor): the first reading after more than ``gap_factor`` expected intervals.
- ``drift`` (sensor): a fast moving average leaving a slow one, on a signal without the
  normal cycles: strain after temperature compensation, temperature and humidity against
  the rest of the site, CO2 at night.

Spike and step stay quiet when another series of the same bridge or device deviates at
the same moment: the environment (a lorry, an opened window) moves several sensors, a
faulty sensor only itself.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from devices.registry import Series
from ingest.batch import AnomalyFlag, ReadingBatch

T = TypeVar("T", bound=np.generic)
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class AnomalyCheck(Protocol):
    def check(self, batch: ReadingBatch) -> None:
        """Set ``batch.flags`` bits and raise ``batch.scores`` in place."""


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Thresholds for one measurement. Units are the measurement's own."""

    noise_floor: float  # smallest robust sigma: the sensor's noise and resolution
    spike_z: float = 8.0
    step_z: float = 4.0
    step_samples: int = 3
    stuck_samples: int = 12  # identical consecutive readings that make a stuck sensor
    max_rate: float = np.inf  # units per second
    gap_factor: float = 3.0
    # drift: a fast and a slow moving average part by more than this (inf: off)
    drift: float = np.inf
    drift_fast_s: float = 12 * 3600.0  # averages out the daily cycle
    drift_mode: str = "plain"  # or "strain" (temperature-compensated), "night" (CO2 floor)


# Defaults from DOMAIN.md: strain noise is about 1 microstrain and lorries add tens within
# seconds; classroom CO2 rises about 1500 ppm in a lesson and falls within minutes when a
# window opens, both far below the rate limits, which catch physically impossible jumps.
DEFAULT_PARAMS: dict[str, DetectorParams] = {
    # Strain drift is judged on the residual after temperature compensation, which has no
    # daily cycle, so its fast average may be short.
    "strain": DetectorParams(
        noise_floor=4.0,
        spike_z=10.0,
        step_z=5.0,
        max_rate=2000.0,
        drift=15.0,
        drift_fast_s=2 * 3600.0,
        drift_mode="strain",
    ),
    # Weather moves all temperatures (and humidities) of a site together: a sensor is
    # compared with the others of its site, which leaves no daily cycle to average out.
    "temperature": DetectorParams(
        noise_floor=0.1, max_rate=0.5, drift=1.5, drift_fast_s=6 * 3600.0, drift_mode="site"
    ),
    "inclination": DetectorParams(noise_floor=0.002, max_rate=0.5, drift=0.006),
    "crack_width": DetectorParams(noise_floor=0.005, max_rate=0.5, drift=0.02),
    # CO2 drift is judged on the night floor, which should sit near outdoor air (~400 ppm).
    "co2": DetectorParams(
        noise_floor=15.0, max_rate=100.0, drift=120.0, drift_fast_s=3600.0, drift_mode="night"
    ),
    "humidity": DetectorParams(
        noise_floor=0.5, max_rate=2.0, drift=3.0, drift_fast_s=3 * 3600.0, drift_mode="site"
    ),
    "pm2_5": DetectorParams(noise_floor=2.0, stuck_samples=30, max_rate=50.0, drift=8.0),
    "pm10": DetectorParams(noise_floor=3.0, stuck_samples=30, max_rate=50.0, drift=12.0),
    # A classroom's sound level jumps by nature (a lesson starts: 35 to 65 dB): no step,
    # and a spike must stand more than 36 dB out.
    "noise": DetectorParams(noise_floor=3.0, spike_z=12.0, step_z=12.0, step_samples=1 << 30),
    "light": DetectorParams(noise_floor=5.0, stuck_samples=0, max_rate=np.inf),
}

WINDOW = 48  # recent values per series the statistics are taken from
DRIFT_SLOW_S = 3 * 86400.0  # the slow average: the level a drift departs from
DRIFT_WARM_S = 12 * 3600.0  # drift is judged once a series has this much history
STEEL_UE_PER_K = 12.0  # prior of the thermal coefficient (DOMAIN.md: 12.2 for steel)
_NIGHT_UTC_HOURS = (0, 4)  # 01:00-05:00 in Dortmund in winter: rooms empty, CO2 at floor
MIN_HISTORY = 12  # spike and step need this many values first (the warm-up)
_NO_TIME = np.iinfo(np.int64).min
_SHARED_BUCKET_NS = 10 * 1_000_000_000
# A neighbour moving this much (in its own robust sigmas) counts as moving with it: a lorry
# loads a gauge near a support far less than one at mid-span.
_SHARED_Z = 3.0


def _run_lengths(
    pos: I64, follows: npt.NDArray[np.bool_], at_start: npt.NDArray[np.bool_], carry: I64
) -> I64:
    """Lengths of runs, counted on the few samples that can be in one.

    ``pos`` are the sorted positions (in a batch sorted by series, then time) of the samples
    that take part. ``follows[k]`` says sample ``pos[k]`` continues the run of the sample
    before it: ``pos[k - 1]`` when that is its neighbour in the batch, or, for a series'
    first sample in the batch (``at_start[k]``), the run the series left off with, which
    was ``carry[k]`` long. Returns the run length up to and including each sample."""
    k = np.arange(len(pos), dtype=np.int64)
    head = ~follows | at_start
    start = np.maximum.accumulate(np.where(head, k, 0))
    return k - start + 1 + np.where(follows[start] & at_start[start], carry[start], 0)


def _neighbours(pos: I64, first: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """For sorted positions: is each the next sample of the same series after the one
    before it in ``pos``?"""
    out = np.zeros(len(pos), dtype=bool)
    out[1:] = (pos[1:] - pos[:-1]) == 1
    return out & ~first[pos]


def _series_time_order(series: npt.NDArray[np.int32], ts: I64, n_series: int) -> I64:
    """Readings sorted by series, then time. Readings usually arrive in time order per
    series, so a stable sort by series is enough (numpy radix-sorts 16-bit keys, three
    times faster than its merge sort of 32-bit ones); the full two-key sort runs only when
    some series' times go backwards."""
    key = series.astype(np.uint16) if n_series <= 1 << 16 else series
    order = np.argsort(key, kind="stable")
    s, t = series[order], ts[order]
    if (t[1:] < t[:-1])[s[1:] == s[:-1]].any():
        return np.lexsort((ts, series))
    return order


class Detectors:
    """All detectors over per-series state arrays."""

    def __init__(
        self, series: Sequence[Series], params: dict[str, DetectorParams] | None = None
    ) -> None:
        table = DEFAULT_PARAMS if params is None else params
        # The registry's settings (measurement-wide, then the device's) over the defaults.
        p = [replace(table[x.key.measurement], **_settings(x)) for x in series]
        n = len(series)
        self.names = [f"{s.key.site}/{s.key.device}/{s.key.name}" for s in series]
        self.limit = np.array([abs(s.limit) if s.limit else np.inf for s in series])
        self.floor = np.array([x.noise_floor for x in p])
        self.spike_z = np.array([x.spike_z for x in p])
        self.step_z = np.array([x.step_z for x in p])
        self.step_samples = np.array([x.step_samples for x in p], dtype=np.int64)
        self.stuck_samples = np.array(
            [x.stuck_samples if x.stuck_samples > 0 else 1 << 62 for x in p], dtype=np.int64
        )
        self.max_rate = np.array([x.max_rate for x in p])
        self.drift = np.array([x.drift for x in p])
        self.drift_fast_s = np.array([x.drift_fast_s for x in p])
        modes = [x.drift_mode for x in p]
        self.drift_strain = np.array([m == "strain" for m in modes])
        self.drift_night = np.array([m == "night" for m in modes])
        self.pair = _temperature_pairs(series)
        devices = {(x.key.site, x.key.device) for x in series}
        device_ids = {d: i for i, d in enumerate(sorted(devices))}
        self.device = np.array(
            [device_ids[(x.key.site, x.key.device)] for x in series], dtype=np.int64
        )
        sites = {x.key.site: i for i, x in enumerate(series)}
        self.site = np.array([sites[x.key.site] for x in series], dtype=np.int64)
        bridge = np.array([x.kind == "bridge" for x in series], dtype=bool)
        self.group = np.where(bridge, len(device_ids) + self.site, self.device)
        self.drift_site = np.array([m == "site" for m in modes])
        measures = {m: i for i, m in enumerate(sorted({x.key.measurement for x in series}))}
        self.measure = np.array([measures[x.key.measurement] for x in series], dtype=np.int64)
        self.gap_ns = np.array(
            [
                x.gap_factor * ser.interval.total_seconds() * 1e9
                for x, ser in zip(p, series, strict=True)
            ]
        )
        # State.
        self._lock = threading.Lock()
        self.window = np.full((n, WINDOW), np.nan)
        self.filled = np.zeros(n, dtype=np.int64)
        self.cursor = np.zeros(n, dtype=np.int64)
        self.last_ts = np.full(n, _NO_TIME, dtype=np.int64)
        self.last_value = np.full(n, np.nan)
        self.same_run = np.zeros(n, dtype=np.int64)  # repeats of last_value so far
        self.dev_run = np.zeros(n, dtype=np.int64)  # signed run of step-sized deviations
        self.abrupt = np.zeros(n, dtype=bool)  # did that run begin with a jump?
        self.fast = np.full(n, np.nan)  # drift: fast and slow moving averages
        self.slow = np.full(n, np.nan)
        self.drift_ts = np.full(n, _NO_TIME, dtype=np.int64)  # last update
        self.drift_since = np.full(n, _NO_TIME, dtype=np.int64)  # first update
        # Thermal regression of each strain gauge, exponentially weighted sums of T, e, T^2,
        # T*e, weight (e: strain); the prior enters as pseudo-observations.
        self.reg = np.zeros((n, 5))

    # -- the check -------------------------------------------------------------------------

    def check(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        with self._lock:  # a snapshot (save) must not see half a batch
            self._check(batch)

    def _check(self, batch: ReadingBatch) -> None:
        # Most detectors look at a handful of readings per batch (the deviating, the
        # repeated), so they work on those positions; whole-batch passes are kept to the few
        # every reading needs. Per-series values are expanded with np.repeat over the
        # series' contiguous blocks, cheaper than gathering by series for every reading.
        order = _series_time_order(batch.series, batch.ts_ns, len(self.names))
        s = batch.series[order].astype(np.int64)
        t = batch.ts_ns[order]
        v = batch.values[order]
        n = len(s)
        first = np.ones(n, dtype=bool)
        first[1:] = s[1:] != s[:-1]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, n))
        lasts = starts + sizes - 1
        uniq = s[starts]
        inverse = np.repeat(np.arange(len(uniq)), sizes)

        def rep(per_series: npt.NDArray[T]) -> npt.NDArray[T]:
            return np.repeat(per_series[uniq], sizes)

        # The previous reading of each sample: in the batch, or the series' last one.
        prev_v = np.empty(n)
        prev_v[1:] = v[:-1]
        prev_v[starts] = self.last_value[uniq]
        prev_t = np.empty(n, dtype=np.int64)
        prev_t[1:] = t[:-1]
        prev_t[starts] = self.last_ts[uniq]
        has_prev = prev_t != _NO_TIME
        with np.errstate(all="ignore"):  # no previous reading: masked below
            d_ns = t - prev_t
            dv = np.abs(v - prev_v)

        flags = np.zeros(n, dtype=np.int32)

        # limit: a structural finding, scored as a share of the limit.
        ratio = np.abs(v) / rep(self.limit)
        flags[ratio > 1.0] |= AnomalyFlag.LIMIT

        # Window statistics, once per series present, from the state before this batch.
        med_u, mad_u = self._window_stats(uniq)
        sigma_u = np.maximum(1.4826 * np.nan_to_num(mad_u), self.floor[uniq])
        warm_u = self.filled[uniq] >= MIN_HISTORY
        with np.errstate(invalid="ignore"):  # a cold series' median is NaN; its z is 0
            z = np.where(np.repeat(warm_u, sizes), (v - np.repeat(med_u, sizes)), 0.0)
        z /= np.repeat(sigma_u, sizes)
        absz = np.abs(z)
        spike_z = rep(self.spike_z)
        scores = np.maximum(ratio, absz / spike_z).astype(np.float32)

        # step: consecutive same-sign deviations; spike: a lone big one. Both are among the
        # deviating readings, so they are judged on those positions only.
        d = np.flatnonzero(absz > rep(self.step_z))
        ds, dsign = s[d], np.sign(z[d])
        at_start = first[d]
        state_sign = np.sign(self.dev_run[ds])
        follows = np.where(at_start, state_sign == dsign, _neighbours(d, first))
        follows[1:] &= at_start[1:] | (dsign[1:] == dsign[:-1])
        dev_len_d = _run_lengths(d, follows, at_start, np.abs(self.dev_run[ds]))
        # The environment moves several series of a device at once (a lorry loads every
        # gauge, an opened window moves CO2, temperature and humidity together); a sensor
        # fault moves one. A deviation shared with another series at that moment is not
        # the sensor's fault.
        shared_d = self._shared(s, t, absz > _SHARED_Z, d)
        # A step starts with a jump; a lesson filling a room with CO2 starts gradually.
        onset = d - (dev_len_d - 1)
        before = onset < np.repeat(starts, sizes)[d]  # the run began in an earlier batch
        o = np.where(before, d, onset)
        jumped = dv[o] > self.step_z[s[o]] * sigma_u[inverse[o]]
        abrupt_d = np.where(before, self.abrupt[ds], jumped)
        step_d = (dev_len_d >= self.step_samples[ds]) & abrupt_d & ~shared_d
        spike_d = (absz[d] > self.spike_z[ds]) & (dev_len_d == 1) & ~shared_d
        flags[d[step_d]] |= AnomalyFlag.STEP
        flags[d[spike_d]] |= AnomalyFlag.SPIKE

        # stuck: the same value again and again.
        r = np.flatnonzero(has_prev & (dv == 0))
        at_start = first[r]
        same_len_r = _run_lengths(
            r, _neighbours(r, first) | at_start, at_start, self.same_run[s[r]]
        )
        flags[r[same_len_r + 1 >= self.stuck_samples[s[r]]]] |= AnomalyFlag.STUCK
        always = self.stuck_samples[uniq] <= 1  # a setting of 1 makes every reading stuck
        if always.any():
            flags[np.repeat(always, sizes)] |= AnomalyFlag.STUCK

        # rate and gap, from the previous reading.
        with np.errstate(all="ignore"):
            fast = has_prev & (d_ns > 0) & (dv / (d_ns / 1e9) > rep(self.max_rate))
        flags[fast] |= AnomalyFlag.RATE
        flags[has_prev & (d_ns > rep(self.gap_ns))] |= AnomalyFlag.GAP

        stepped_u = np.zeros(len(uniq), dtype=bool)
        stepped_u[inverse[d[step_d]]] = True
        drifting_u = self._drift(uniq, starts, sizes, lasts, t, v, stepped_u)
        if drifting_u.any():
            flags[np.repeat(drifting_u, sizes)] |= AnomalyFlag.DRIFT

        batch.flags[order] |= flags
        np.maximum(batch.scores[order], scores, out=scores)
        batch.scores[order] = scores

        # The state each series leaves off with: its last reading's runs.
        dev_len = np.zeros(n, dtype=np.int64)
        dev_len[d] = dev_len_d * dsign.astype(np.int64)
        same_len = np.zeros(n, dtype=np.int64)
        same_len[r] = same_len_r
        abrupt = np.empty(n, dtype=bool)
        abrupt[lasts] = dv[lasts] > self.step_z[uniq] * sigma_u
        abrupt[d] = abrupt_d
        self.abrupt[uniq] = abrupt[lasts]
        self.last_ts[uniq] = np.maximum(self.last_ts[uniq], t[lasts])
        self.last_value[uniq] = v[lasts]
        self.same_run[uniq] = same_len[lasts]
        self.dev_run[uniq] = dev_len[lasts]
        self._remember_window(uniq, sizes, inverse, v, d[spike_d])

    def _shared(
        self, s: I64, t: I64, deviating: npt.NDArray[np.bool_], candidates: I64
    ) -> npt.NDArray[np.bool_]:
        """For each candidate position: does another series of its group deviate within
        the same ten seconds? The group is the bridge (a lorry loads all its gauges) or the
        device. Only deviating and candidate readings take part: usually a handful."""
        take = deviating.copy()
        take[candidates] = True
        idx = np.flatnonzero(take)
        shared = np.zeros(len(s), dtype=bool)
        if len(idx) >= 2:
            ds, dt, dd = s[idx], t[idx], deviating[idx]
            # Two bucketings half a bucket apart, so that readings of unsynchronised devices
            # a few seconds apart share a bucket in at least one of them.
            half = _SHARED_BUCKET_NS // 2
            shared[idx] = self._shared_in(ds, dt // _SHARED_BUCKET_NS, dd) | self._shared_in(
                ds, (dt + half) // _SHARED_BUCKET_NS, dd
            )
        return shared[candidates]

    def _shared_in(self, s: I64, t: I64, deviating: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        # Counted per series, not per reading: a series' own readings in the bucket (1 Hz
        # data, a redelivered copy) must not vouch for each other.
        d = self.group[s]
        order = np.lexsort((s, t, d))
        dd, tt, ss = d[order], t[order], s[order]
        new_cell = np.ones(len(order), dtype=bool)
        new_cell[1:] = (dd[1:] != dd[:-1]) | (tt[1:] != tt[:-1])
        new_series = new_cell.copy()
        new_series[1:] |= ss[1:] != ss[:-1]
        cell = np.cumsum(new_cell) - 1
        member = np.cumsum(new_series) - 1  # one per (cell, series)
        member_deviates = np.bincount(member, weights=deviating[order]) > 0
        per_cell = np.bincount(cell[new_series], weights=member_deviates)
        others = per_cell[cell] - member_deviates[member]
        shared = np.empty(len(s), dtype=bool)
        shared[order] = others > 0
        return shared

    def _drift(
        self,
        uniq: I64,
        starts: I64,
        sizes: I64,
        lasts: I64,
        t: I64,
        v: F64,
        stepped: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """Drift, judged once per series per batch on the batch's mean: the fast moving
        average leaves the slow one. For strain the signal is the residual after the
        gauge's thermal regression on its paired temperature; for CO2 only night batches
        count, so the floor, not the lessons, is compared. Returns a flag per series of
        ``uniq``."""
        mean_v = np.add.reduceat(v, starts) / sizes
        end_t = t[lasts]  # sorted by time within a series
        x = mean_v.copy()

        strain = self.drift_strain[uniq] & (self.pair[uniq] >= 0)
        if strain.any():
            rows = uniq[strain]
            # The paired temperature: its mean in this batch, else its last reading.
            batch_mean = self.last_value.copy()
            batch_mean[uniq] = mean_v
            temp = batch_mean[self.pair[rows]]
            known = np.isfinite(temp)
            b = self._thermal_slope(rows)
            x[strain] = np.where(known, mean_v[strain] - b * temp, np.nan)
            self._learn_thermal(
                rows[known], temp[known], mean_v[strain][known], end_t[strain][known]
            )

        # Compared with the other series of the same measurement at the site: weather moves
        # them all, a drifting sensor only itself.
        rel = self.drift_site[uniq]
        if rel.any():
            key = self.site[uniq] * 64 + self.measure[uniq]
            _, k = np.unique(key, return_inverse=True)
            total = np.bincount(k, weights=np.where(rel, mean_v, 0.0))
            count = np.bincount(k, weights=rel.astype(np.float64))
            others = count[k] - 1
            with np.errstate(all="ignore"):
                other_mean = (total[k] - mean_v) / others
            x = np.where(rel & (others > 0), mean_v - other_mean, x)

        night_rows = self.drift_night[uniq]
        # The batch's mean time, relative to its first reading so the sum stays exact.
        t0 = t[starts[0]]
        mean_t = np.add.reduceat((t - t0).astype(np.float64), starts) / sizes + t0
        hour = (mean_t // 3_600_000_000_000) % 24
        is_night = (hour >= _NIGHT_UTC_HOURS[0]) & (hour < _NIGHT_UTC_HOURS[1])
        usable = np.isfinite(x) & np.isfinite(self.drift[uniq]) & (~night_rows | is_night)
        rows = uniq[usable]
        xs = x[usable]
        te = end_t[usable]
        prev = self.drift_ts[rows]
        new = prev == _NO_TIME
        dt = np.where(new, 0.0, (te - prev) / 1e9)
        a_fast = 1.0 - np.exp(-np.maximum(dt, 0.0) / self.drift_fast_s[rows])
        a_slow = 1.0 - np.exp(-np.maximum(dt, 0.0) / DRIFT_SLOW_S)
        fast = np.where(new, xs, self.fast[rows] + a_fast * (xs - self.fast[rows]))
        slow = np.where(new, xs, self.slow[rows] + a_slow * (xs - self.slow[rows]))
        # After a step the new level is the reference: a step is not a drift.
        fast = np.where(stepped[usable], xs, fast)
        slow = np.where(stepped[usable], xs, slow)
        self.fast[rows], self.slow[rows] = fast, slow
        self.drift_ts[rows] = np.maximum(prev, te)
        self.drift_since[rows] = np.where(new, te, self.drift_since[rows])
        warm = (te - self.drift_since[rows]) / 1e9 >= DRIFT_WARM_S
        hit = np.zeros(len(uniq), dtype=bool)
        hit[np.flatnonzero(usable)] = warm & (np.abs(fast - slow) > self.drift[rows])
        return hit

    def _thermal_slope(self, rows: I64) -> F64:
        sx, sy, sxx, sxy, w = self.reg[rows].T
        with np.errstate(all="ignore"):
            cov = sxy - sx * sy / w
            var = sxx - sx * sx / w
            # Prior: a few kelvin of spread at the steel coefficient, so a gauge with little
            # temperature history keeps the textbook slope.
            prior_var = 25.0
            slope = (cov + STEEL_UE_PER_K * prior_var) / (var + prior_var)
        return np.where(w > 0, slope, STEEL_UE_PER_K)

    def _learn_thermal(self, rows: I64, temp: F64, strain: F64, ts: I64) -> None:
        # A memory of about two weeks: seasons change the range, not the coefficient.
        prev = self.drift_ts[rows]
        dt = np.where(prev == _NO_TIME, 0.0, np.maximum((ts - prev) / 1e9, 0.0))
        keep = np.exp(-dt / (14 * 86400.0))[:, None]
        obs = np.stack([temp, strain, temp * temp, temp * strain, np.ones_like(temp)], axis=1)
        self.reg[rows] = self.reg[rows] * keep + obs

    def _window_stats(self, rows: I64) -> tuple[F64, F64]:
        """Median and MAD of each row's window. Full windows (the usual case) take numpy's
        partition-based median; nanmedian, far slower, only serves series still filling."""
        win = self.window[rows]
        full = self.filled[rows] >= WINDOW
        med = np.empty(len(rows))
        mad = np.empty(len(rows))
        if full.any():
            w = win[full]
            med[full] = np.median(w, axis=1)
            mad[full] = np.median(np.abs(w - med[full][:, None]), axis=1)
        if not full.all():
            w = win[~full]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: new series
                m = np.nanmedian(w, axis=1)
                med[~full] = m
                mad[~full] = np.nanmedian(np.abs(w - m[:, None]), axis=1)
        return med, mad

    def _remember_window(self, uniq: I64, sizes: I64, inverse: I64, v: F64, spikes: I64) -> None:
        """Append the batch's values to each series' ring window. Spikes stay out, so one
        outlier does not move the reference."""
        if len(spikes):
            keep = np.ones(len(v), dtype=bool)
            keep[spikes] = False
            v = v[keep]
            sizes = sizes - np.bincount(inverse[spikes], minlength=len(uniq))
        # Only the last WINDOW values of each series land in its ring.
        offset = np.cumsum(sizes) - sizes
        rank = np.arange(len(v)) - np.repeat(offset, sizes)
        series = np.repeat(uniq, sizes)
        newest = np.flatnonzero(rank >= np.repeat(sizes - WINDOW, sizes))
        pos = (self.cursor[series[newest]] + rank[newest]) % WINDOW
        self.window[series[newest], pos] = v[newest]
        self.cursor[uniq] = (self.cursor[uniq] + sizes) % WINDOW
        self.filled[uniq] = np.minimum(self.filled[uniq] + sizes, WINDOW)

    # -- state across restarts -----------------------------------------------------------

    _STATE = (
        "window", "filled", "cursor", "last_ts", "last_value", "same_run", "dev_run",
        "abrupt", "fast", "slow", "drift_ts", "drift_since", "reg",
    )  # fmt: skip

    def save(self, path: Path) -> None:
        """Write the state, keyed by series name, so a changed registry still maps it."""
        tmp = path.with_suffix(".tmp.npz")
        with self._lock:
            state = {k: getattr(self, k).copy() for k in self._STATE}
        np.savez(tmp, names=np.array(self.names), **state)
        tmp.replace(path)

    def load(self, path: Path) -> int:
        """Restore the state of the series both the file and the registry know; return how
        many were restored."""
        if not path.exists():
            return 0
        with np.load(path, allow_pickle=False) as data:
            index = {name: i for i, name in enumerate(self.names)}
            pairs = [(index[n], j) for j, n in enumerate(data["names"].tolist()) if n in index]
            if not pairs:
                return 0
            mine, theirs = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
            for key in self._STATE:
                getattr(self, key)[mine] = data[key][theirs]
        return len(pairs)


def _settings(series: Series) -> dict[str, Any]:
    # The registry validated names and types (devices.registry.DetectorsModel).
    return dict(series.detectors)


def _temperature_pairs(series: Sequence[Series]) -> I64:
    """For each strain gauge the temperature that compensates it: the same channel's,
    else the device's own, else any of the device's; -1 for none or not strain."""
    by_key = {(x.key.site, x.key.device, x.key.channel, x.key.measurement): x.index for x in series}
    pair = np.full(len(series), -1, dtype=np.int64)
    for x in series:
        if x.key.measurement != "strain":
            continue
        site, dev = x.key.site, x.key.device
        candidates = [
            by_key.get((site, dev, x.key.channel, "temperature")),
            by_key.get((site, dev, "", "temperature")),
            *(
                i
                for (si, de, _, me), i in by_key.items()
                if (si, de, me) == (site, dev, "temperature")
            ),
        ]
        found = next((c for c in candidates if c is not None), None)
        if found is not None:
            pair[x.index] = found
    return pair


def build_check(series: Sequence[Series]) -> Detectors:
    return Detectors(series)


class LimitCheck:
    """Only the design-limit check; for replays, which must not disturb live state."""

    def __init__(self, series: Sequence[Series]) -> None:
        self._limit = np.array([abs(s.limit) if s.limit else np.inf for s in series])

    def check(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        ratio = np.abs(batch.values) / self._limit[batch.series]
        batch.flags |= np.where(ratio > 1.0, np.int32(AnomalyFlag.LIMIT), np.int32(0))
        np.maximum(batch.scores, ratio.astype(np.float32), out=batch.scores)
