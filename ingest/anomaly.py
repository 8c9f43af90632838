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


def _links(cont: npt.NDArray[np.bool_], first: npt.NDArray[np.bool_], carry: I64) -> I64:
    """For samples sorted by series: how many consecutive links end at each sample, where
    ``cont[i]`` says sample i continues the run of the sample before it (for a series'
    first sample in the batch: its last sample before the batch) and ``carry[i]`` is the
    number of links that run already had before the batch."""
    idx = np.arange(len(cont), dtype=np.int64)
    restart = ~cont | first
    start = np.maximum.accumulate(np.where(restart, idx, 0))
    # A run that reaches back before the batch starts at a series' first sample that
    # continues: one link to the sample before the batch, plus the links before that.
    before = np.where(cont[start], 1 + carry[start], 0)
    return np.where(cont, idx - start + before, 0)


def _series_time_order(series: npt.NDArray[np.int32], ts: I64) -> I64:
    """Readings sorted by series, then time. Readings usually arrive in time order per
    series, so a stable sort by series (a radix sort for int32) is enough; the full
    two-key sort runs only when some series' times go backwards."""
    order = np.argsort(series, kind="stable")
    s, t = series[order], ts[order]
    if (t[1:] < t[:-1])[s[1:] == s[:-1]].any():
        return np.lexsort((ts, series))
    return order


def _shifted(a: npt.NDArray[T]) -> npt.NDArray[T]:
    """``a`` moved one place later; the first element is left as it was (callers replace
    it with the series' state)."""
    out = a.copy()
    out[1:] = a[:-1]
    return out


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
        order = _series_time_order(batch.series, batch.ts_ns)
        s = batch.series[order].astype(np.int64)
        t = batch.ts_ns[order]
        v = batch.values[order]
        first = np.ones(len(s), dtype=bool)
        first[1:] = s[1:] != s[:-1]

        # The previous reading of each sample: in the batch, or the series' last one.
        prev_v = np.where(first, self.last_value[s], _shifted(v))
        prev_t = np.where(first, self.last_ts[s], _shifted(t))
        has_prev = prev_t != _NO_TIME
        dt_s = np.where(has_prev, (t - prev_t) / 1e9, np.nan)

        flags = np.zeros(len(s), dtype=np.int32)
        scores = np.zeros(len(s), dtype=np.float32)

        # limit: a structural finding, scored as a share of the limit.
        ratio = np.abs(v) / self.limit[s]
        flags |= np.where(ratio > 1.0, np.int32(AnomalyFlag.LIMIT), np.int32(0))
        np.maximum(scores, ratio.astype(np.float32), out=scores)

        # Window statistics, once per series present, from the state before this batch.
        uniq = s[first]
        inverse = np.cumsum(first) - 1
        med_u, mad_u = self._window_stats(uniq)
        med = med_u[inverse]
        sigma = np.maximum(1.4826 * np.nan_to_num(mad_u[inverse]), self.floor[s])
        warm = self.filled[s] >= MIN_HISTORY
        z = np.where(warm, (v - med) / sigma, 0.0)
        absz = np.abs(z)

        # step: consecutive same-sign deviations; spike: a lone big one.
        dev = np.sign(z) * (absz > self.step_z[s])
        before_dev = np.where(first, np.sign(self.dev_run[s]), _shifted(dev))
        same_dev = (dev != 0) & (before_dev == dev)
        carry_dev = np.maximum(np.abs(self.dev_run[s]) - 1, 0)
        dev_len = np.where(dev != 0, _links(same_dev, first, carry_dev) + 1, 0)
        # The environment moves several series of a device at once (a lorry loads every
        # gauge, an opened window moves CO2, temperature and humidity together); a sensor
        # fault moves one. A deviation shared with another series at that moment is not
        # the sensor's fault.
        candidate = (dev != 0) | (absz > self.spike_z[s])
        shared = self._shared(s, t, absz > _SHARED_Z, candidate)
        # A step starts with a jump; a lesson filling a room with CO2 starts gradually.
        idx = np.arange(len(s))
        series_start = np.maximum.accumulate(np.where(first, idx, 0))
        onset = idx - np.maximum(dev_len - 1, 0)
        jumped = np.abs(v - prev_v) > self.step_z[s] * sigma
        abrupt = np.where(onset >= series_start, jumped[np.maximum(onset, 0)], self.abrupt[s])
        step = (dev_len >= self.step_samples[s]) & abrupt & ~shared
        spike = (absz > self.spike_z[s]) & (dev_len == 1) & ~shared
        flags |= np.where(step, np.int32(AnomalyFlag.STEP), np.int32(0))
        flags |= np.where(spike, np.int32(AnomalyFlag.SPIKE), np.int32(0))
        np.maximum(scores, (absz / self.spike_z[s]).astype(np.float32), out=scores)

        # stuck: the same value again and again.
        same = has_prev & (v == prev_v)
        same_len = _links(same, first, self.same_run[s])
        stuck = same_len + 1 >= self.stuck_samples[s]
        flags |= np.where(stuck, np.int32(AnomalyFlag.STUCK), np.int32(0))

        # rate and gap, from the previous reading.
        with np.errstate(all="ignore"):
            rate = np.abs(v - prev_v) / dt_s
        fast = has_prev & (dt_s > 0) & (rate > self.max_rate[s])
        flags |= np.where(fast, np.int32(AnomalyFlag.RATE), np.int32(0))
        gap = has_prev & ((t - prev_t) > self.gap_ns[s])
        flags |= np.where(gap, np.int32(AnomalyFlag.GAP), np.int32(0))

        drifting = self._drift(uniq, inverse, s, t, v, step)
        flags |= np.where(drifting, np.int32(AnomalyFlag.DRIFT), np.int32(0))

        batch.flags[order] |= flags
        np.maximum(batch.scores[order], scores, out=scores)
        batch.scores[order] = scores

        self._remember(s, t, v, first, spike, same_len, dev, dev_len, abrupt)

    def _shared(
        self,
        s: I64,
        t: I64,
        deviating: npt.NDArray[np.bool_],
        candidate: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """For each candidate reading: does another series of its group deviate within
        the same ten seconds? The group is the bridge (a lorry loads all its gauges) or the
        device. Only deviating and candidate readings take part: usually a handful."""
        idx = np.flatnonzero(deviating | candidate)
        shared = np.zeros(len(s), dtype=bool)
        if len(idx) < 2:
            return shared
        ds, dt, dd = s[idx], t[idx], deviating[idx]
        # Two bucketings half a bucket apart, so that readings of unsynchronised devices
        # a few seconds apart share a bucket in at least one of them.
        half = _SHARED_BUCKET_NS // 2
        shared[idx] = self._shared_in(ds, dt // _SHARED_BUCKET_NS, dd) | self._shared_in(
            ds, (dt + half) // _SHARED_BUCKET_NS, dd
        )
        return shared & candidate

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
        inverse: I64,
        s: I64,
        t: I64,
        v: F64,
        step: npt.NDArray[np.bool_],
    ) -> npt.NDArray[np.bool_]:
        """Drift, judged once per series per batch on the batch's mean: the fast moving
        average leaves the slow one. For strain the signal is the residual after the
        gauge's thermal regression on its paired temperature; for CO2 only night batches
        count, so the floor, not the lessons, is compared."""
        counts = np.bincount(inverse)
        mean_v = np.bincount(inverse, weights=v) / counts
        mean_t = (np.bincount(inverse, weights=(t - t[0]).astype(np.float64)) / counts) + t[0]
        end_t = np.maximum.reduceat(t, np.r_[0, np.flatnonzero(np.diff(s)) + 1])
        x = mean_v.copy()

        strain = self.drift_strain[uniq] & (self.pair[uniq] >= 0)
        if strain.any():
            rows = uniq[strain]
            # The paired temperature: its mean in this batch, else its last reading.
            temp_sum = np.bincount(s, weights=v, minlength=len(self.pair))
            temp_n = np.bincount(s, minlength=len(self.pair))
            pairs = self.pair[rows]
            temp = np.where(
                temp_n[pairs] > 0,
                temp_sum[pairs] / np.maximum(temp_n[pairs], 1),
                self.last_value[pairs],
            )
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
        stepped = np.bincount(inverse, weights=step, minlength=len(uniq))[usable] > 0
        fast = np.where(stepped, xs, fast)
        slow = np.where(stepped, xs, slow)
        self.fast[rows], self.slow[rows] = fast, slow
        self.drift_ts[rows] = np.maximum(prev, te)
        self.drift_since[rows] = np.where(new, te, self.drift_since[rows])
        warm = (te - self.drift_since[rows]) / 1e9 >= DRIFT_WARM_S
        hit = np.zeros(len(uniq), dtype=bool)
        hit[np.flatnonzero(usable)] = warm & (np.abs(fast - slow) > self.drift[rows])
        return hit[inverse]

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

    def _remember(
        self,
        s: I64,
        t: I64,
        v: F64,
        first: npt.NDArray[np.bool_],
        spike: npt.NDArray[np.bool_],
        same_len: I64,
        dev: F64,
        dev_len: I64,
        abrupt: npt.NDArray[np.bool_],
    ) -> None:
        last = np.ones(len(s), dtype=bool)
        last[:-1] = s[1:] != s[:-1]
        ls = s[last]
        self.abrupt[ls] = abrupt[last]
        self.last_ts[ls] = np.maximum(self.last_ts[ls], t[last])
        self.last_value[ls] = v[last]
        self.same_run[ls] = same_len[last]
        self.dev_run[ls] = (np.sign(dev) * dev_len)[last].astype(np.int64)
        # Spikes stay out of the window, so one outlier does not move the reference.
        keep = ~spike
        ks, kv = s[keep], v[keep]
        if len(ks) == 0:
            return
        start = np.ones(len(ks), dtype=bool)
        start[1:] = ks[1:] != ks[:-1]
        group_start = np.maximum.accumulate(np.where(start, np.arange(len(ks)), 0))
        rank = np.arange(len(ks)) - group_start
        counts = np.bincount(ks, minlength=len(self.filled))
        newest = rank >= counts[ks] - WINDOW  # only the last WINDOW values of each series
        pos = (self.cursor[ks] + rank) % WINDOW
        self.window[ks[newest], pos[newest]] = kv[newest]
        self.cursor += counts
        self.cursor %= WINDOW
        self.filled = np.minimum(self.filled + counts, WINDOW)

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
