"""Drift: a fast moving average of a series' level leaving a slow one, updated once per
completed segment in reading time.

The level is the segment's median, on a signal without the normal cycles: strain,
inclination and crack width after the gauge's own thermal regression on its paired
temperature; temperature and humidity
against the other series of that measurement at the site (weather moves them all, a
drifting sensor only itself), or, for a sensor alone at its site, averaged over a day so
the daily cycle cancels; CO2 on the night floor only, which should sit near outdoor air.
A reading is marked when the averages had parted by more than ``drift`` at the end of the
segment before its own, so the flag of every reading depends only on earlier readings.

The night floor also shows a step that the day hides: a classroom's sound level jumps by
nature all day, so a sensor's offset is seen only when the empty room's floor moves. A
drift moves the floor a little every hour; an offset moves it once. So the floor is a step
when a night begins beyond ``night_step`` from where the night before ended and then stays
flat for ``NIGHT_STEP_SPAN_S``: within the night it moves less than ``NIGHT_STEP_FLAT`` of
that jump (a linear drift moves about a fifth as much in 3 h as between two nights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from devices.registry import Series
from ingest.anomaly.arrays import F64, I64, NO_TIME, Bool, StateArrays
from ingest.anomaly.params import DetectorParams

if TYPE_CHECKING:
    from ingest.anomaly.segments import SegmentEvents

DRIFT_SLOW_S = 3 * 86400.0  # the slow average: the level a drift departs from
DRIFT_WARM_S = 24 * 3600.0  # judged after a day: the thermal regression has seen a daily cycle
ALONE_FACTOR = 2.5
ALONE_FAST_S = 6 * 3600.0
NIGHT_WARM_S = 12 * 3600.0  # the night floor: judged from the second night on
# A record of dynamic monitoring (a load test at 100 Hz) lasts minutes to hours and has no
# daily cycle to average out: its drift is a slow creep within the record.
RECORD_FAST_S = 300.0
RECORD_SLOW_S = 3600.0
RECORD_WARM_S = 900.0
# Midnight to 05:00 in Dortmund in winter (01:00-06:00 in summer): rooms empty, CO2 at floor.
_NIGHT_UTC_HOURS = (23, 4)
NIGHT_STEP_SPAN_S = 3 * 3600.0
NIGHT_STEP_FLAT = 0.05
_HOUR_NS = 3_600_000_000_000
_PROFILE_DAYS = 7  # the daily profile averages the last week or so
_THERMAL_MEMORY_S = 14 * 86400.0  # seasons change the range, not the coefficient
_PRIOR_VAR_K2 = 25.0  # a few kelvin of spread at the steel coefficient


class Drift(StateArrays):
    def __init__(
        self,
        series: Sequence[Series],
        params: Sequence[DetectorParams],
        pair: I64,
        coef: F64,
        width: I64,
    ) -> None:
        n = len(series)
        interval_ns = np.array([s.interval.total_seconds() * 1e9 for s in series])
        self.half_span_ns = ((width - 1) * interval_ns / 2).astype(np.int64)
        modes = [x.drift_mode for x in params]
        self.threshold = np.array([x.drift for x in params])
        self.night_step = np.array([x.night_step for x in params])
        self.thermal = np.array([m == "thermal" for m in modes]) & (pair >= 0)
        # The coefficient the segment medians were compensated with, which is also the
        # regression's prior: 12 ue/K for strain, none for inclination and crack width.
        self.coef = coef
        self.night = np.array([m == "night" for m in modes])
        groups = {
            (s.key.site, s.key.measurement)
            for s, m in zip(series, modes, strict=True)
            if m == "site"
        }
        members: dict[tuple[str, str], int] = {}
        for s in series:
            g = (s.key.site, s.key.measurement)
            members[g] = members.get(g, 0) + 1
        site = np.array([m == "site" for m in modes])
        alone = np.array(
            [site[s.index] and members[(s.key.site, s.key.measurement)] < 2 for s in series],
            dtype=bool,
        )
        self.site = site & ~alone
        gid = {g: i for i, g in enumerate(sorted(groups))}
        self.group = np.array(
            [gid.get((s.key.site, s.key.measurement), -1) for s in series], dtype=np.int64
        )
        fast = np.array([x.drift_fast_s for x in params])
        self.fast_s = np.where(alone, np.maximum(fast, ALONE_FAST_S), fast)
        record = np.array([s.interval.total_seconds() < 1.0 for s in series], dtype=bool)
        self.fast_s = np.where(record, np.minimum(self.fast_s, RECORD_FAST_S), self.fast_s)
        self.slow_s = np.where(record, RECORD_SLOW_S, DRIFT_SLOW_S)
        self.warm_s = np.where(record, RECORD_WARM_S, DRIFT_WARM_S)
        self.warm_s = np.where(self.night, NIGHT_WARM_S, self.warm_s)
        # Alone, a sensor's level moves with the weather too (an office's humidity over a
        # fortnight of February): only a larger departure is a drift.
        self.threshold = np.where(alone, ALONE_FACTOR * self.threshold, self.threshold)
        # State.
        # Fast and slow averages of the reading and of its temperature (0 without one).
        self.fast = np.full((n, 2), np.nan)
        self.slow = np.full((n, 2), np.nan)
        self.ts = np.full(n, NO_TIME, dtype=np.int64)  # last update
        self.since = np.full(n, NO_TIME, dtype=np.int64)  # first update
        self.on = np.zeros(n, dtype=bool)  # parted at the last update
        self.step_open = np.zeros(n, dtype=bool)  # a step in the segment still open
        self.level = np.full(n, np.nan)  # the last segment median (for the site's mean)
        # Thermal regression of each strain gauge: exponentially weighted sums of T, e,
        # T^2, T*e and the weight (e: strain).
        self.reg = np.zeros((n, 5))
        # Each series' daily profile: the average departure from its slow level per hour
        # of the day (UTC), and how many days went into each hour.
        self.profile = np.zeros((n, 24, 2))
        self.profile_n = np.zeros((n, 24), dtype=np.int64)
        # The night floor has no daily cycle; a record of minutes or hours has no day.
        self.daily = ~self.night & ~record
        self.night_step = np.where(self.night & ~record, self.night_step, np.inf)
        # The night floor's step: which night (days since the epoch of the morning it ends
        # on), its first level and when, the level the night before ended on, and whether
        # this night was judged; ``stepped_on``: the last segment found a step.
        self.night_id = np.full(n, -1, dtype=np.int64)
        self.night_first = np.full(n, np.nan)
        self.night_first_ts = np.full(n, NO_TIME, dtype=np.int64)
        self.night_last = np.full(n, np.nan)
        self.night_before = np.full(n, np.nan)
        self.night_judged = np.zeros(n, dtype=bool)
        self.stepped_on = np.zeros(n, dtype=bool)

    _STATE = (
        "fast", "slow", "ts", "since", "on", "step_open", "level", "reg", "profile", "profile_n",
        "night_id", "night_first", "night_first_ts", "night_last", "night_before",
        "night_judged", "stepped_on",
    )  # fmt: skip

    def judge(
        self,
        ev: SegmentEvents,
        t: I64,
        temp: F64,
        reset: Bool,
        series_of: I64,
        own: I64,
        ref: I64,
    ) -> tuple[Bool, Bool]:
        """Update the averages with the segments ``ev`` completed in this batch (in their
        order: by series, then time) and return, per reading, whether it is marked as a
        drift and as a step of the night floor. ``own``/``ref``: per reading, the event of
        its own segment and of the one before it (-1: incomplete, or ended in an earlier
        batch); ``reset``: readings marked as a step or shift, after which the new level is
        the reference."""
        # Readings judged against a segment of an earlier batch see the state as it was.
        current = self.on[series_of]
        stepped_now = self.stepped_on[series_of]
        n_ev = len(ev.series)
        after = np.zeros(n_ev, dtype=bool)
        after_step = np.zeros(n_ev, dtype=bool)
        if n_ev:
            te = t[ev.end]
            stepped = np.zeros(n_ev, dtype=bool)
            stepped[own[reset & (own >= 0)]] = True
            x = ev.median.copy()
            site = self.site[ev.series]
            if site.any():
                x[site] = ev.median[site] - self._others(ev, te, site)
            # A segment is a night's when its middle is: at 10-minute readings a segment is
            # eight hours long, and its end says little.
            hour = ((te - self.half_span_ns[ev.series]) // _HOUR_NS) % 24
            night_ok = (hour >= _NIGHT_UTC_HOURS[0]) | (hour < _NIGHT_UTC_HOURS[1])
            usable = np.isfinite(self.threshold[ev.series]) & (~self.night[ev.series] | night_ok)
            tend = temp[ev.end]
            kth = np.arange(n_ev) - np.maximum.accumulate(
                np.where(np.r_[True, ev.series[1:] != ev.series[:-1]], np.arange(n_ev), 0)
            )
            # A step in a segment that began in an earlier batch counts for it too.
            first = kth == 0
            stepped[first] |= self.step_open[ev.series[first]]
            self.step_open[ev.series[first]] = False
            for k in range(int(kth.max()) + 1):
                e = np.flatnonzero(kth == k)
                rows = ev.series[e]
                floor = self._night_floor(rows, te[e], x[e], usable[e])
                after_step[e] = floor
                self.stepped_on[rows] = floor
                stepped[e] |= floor
                self._update(e, rows, te[e], x[e], tend[e], usable[e], stepped[e], after)
        open_steps = np.flatnonzero(reset & (own < 0))
        self.step_open[series_of[open_steps]] = True
        has_ref = ref >= 0
        current[has_ref] = after[ref[has_ref]]
        stepped_now[has_ref] = after_step[ref[has_ref]]
        return current, stepped_now

    def _night_floor(self, rows: I64, te: I64, x: F64, usable: Bool) -> Bool:
        """One segment of each series in ``rows``: is the night floor a step, judged once
        per night when the night has lasted ``NIGHT_STEP_SPAN_S``?"""
        out = np.zeros(len(rows), dtype=bool)
        use = usable & np.isfinite(self.night_step[rows]) & np.isfinite(x)
        if not use.any():
            return out
        r, t, level = rows[use], te[use], x[use]
        night = (t - self.half_span_ns[r] + _HOUR_NS) // (24 * _HOUR_NS)
        new = night != self.night_id[r]
        # The night before ended where its last segment was (none: no night before yet).
        self.night_before[r] = np.where(
            new, np.where(self.night_id[r] >= 0, self.night_last[r], np.nan), self.night_before[r]
        )
        self.night_id[r] = night
        self.night_first[r] = np.where(new, level, self.night_first[r])
        self.night_first_ts[r] = np.where(new, t, self.night_first_ts[r])
        self.night_judged[r] &= ~new
        self.night_last[r] = level
        due = ~self.night_judged[r] & ((t - self.night_first_ts[r]) / 1e9 >= NIGHT_STEP_SPAN_S)
        due &= np.isfinite(self.night_before[r])
        jump = self.night_first[r] - self.night_before[r]
        within = level - self.night_first[r]
        step = (
            due
            & (np.abs(jump) > self.night_step[r])
            & (np.abs(within) < NIGHT_STEP_FLAT * np.abs(jump))
        )
        self.night_judged[r] |= due
        out[use] = step
        return out

    def _update(
        self,
        e: I64,
        rows: I64,
        te: I64,
        x: F64,
        temp: F64,
        usable: Bool,
        stepped: Bool,
        after: Bool,
    ) -> None:
        """One segment of each series in ``rows``. The level is tracked as two parts, the
        reading and its temperature (zero where none applies), each with its own averages
        and daily profile; the gauge's coefficient joins them only when judging. So the
        averages never hold a coefficient from before the regression had learnt it."""
        thermal = self.thermal[rows]
        reading = x.copy()
        heat = np.zeros(len(rows))
        if thermal.any():
            sr = rows[thermal]
            tt = temp[thermal]
            known = np.isfinite(tt)
            # The segment median is of the reading less coef x temperature: add it back.
            reading[thermal] = np.where(known, x[thermal] + self.coef[sr] * tt, np.nan)
            heat[thermal] = tt
            self._learn(sr[known], tt[known], reading[thermal][known], te[thermal][known])
        ok = usable & np.isfinite(reading)
        r, to = rows[ok], te[ok]
        prev = self.ts[r]
        new = prev == NO_TIME
        dt = np.where(new, 0.0, np.maximum((to - prev) / 1e9, 0.0))
        a_fast = (1.0 - np.exp(-dt / self.fast_s[r]))[:, None]
        a_slow = (1.0 - np.exp(-dt / self.slow_s[r]))[:, None]
        both = np.stack([reading[ok], heat[ok]], axis=1)
        both = self._without_daily_cycle(r, both, to, new)
        restart = (new | stepped[ok])[:, None]
        fast = np.where(restart, both, self.fast[r] + a_fast * (both - self.fast[r]))
        slow = np.where(restart, both, self.slow[r] + a_slow * (both - self.slow[r]))
        self.fast[r], self.slow[r] = fast, slow
        self.ts[r] = np.maximum(prev, to)
        self.since[r] = np.where(new, to, self.since[r])
        b = np.where(self.thermal[r], self._slope(r), 0.0)
        apart = (fast[:, 0] - slow[:, 0]) - b * (fast[:, 1] - slow[:, 1])
        warm = (to - self.since[r]) / 1e9 >= self.warm_s[r]
        self.on[r] = warm & (np.abs(apart) > self.threshold[r])
        after[e] = self.on[rows]

    def _without_daily_cycle(self, r: I64, x: F64, te: I64, new: Bool) -> F64:
        """``x`` (a row per series: the reading and its temperature) less what the series'
        own daily profile says of that hour, and the profile learnt from it. The profile is
        centred (its mean over the day is taken off), so a level that moves at every hour
        alike, as a drift does, is never learnt into it: only the cycle is, and a drift
        stands out against a fast average that no longer needs a day to smooth the cycle
        away."""
        use = self.daily[r]
        if not use.any():
            return x
        rr, xx = r[use], x[use]
        at = np.arange(len(rr))
        hour = ((te[use] - self.half_span_ns[rr]) // _HOUR_NS) % 24
        prof, seen = self.profile[rr], self.profile_n[rr]
        known = (seen > 0)[:, :, None]
        mean = np.where(known, prof, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
        here = prof[at, hour]
        count = seen[at, hour][:, None]
        adjusted = np.where(count > 0, xx - (here - mean), xx)
        # Learn the hour's departure from the slow level, an average over the last days.
        dev = np.where(new[use][:, None], 0.0, xx - self.slow[rr])
        alpha = 1.0 / np.minimum(count + 1, _PROFILE_DAYS)
        self.profile[rr, hour] = np.where(count > 0, here + alpha * (dev - here), dev)
        self.profile_n[rr, hour] = count[:, 0] + 1
        out = x.copy()
        out[use] = adjusted
        return out

    def _others(self, ev: SegmentEvents, te: I64, site: Bool) -> F64:
        """For site-mode segments: the mean of the latest levels of the other series of the
        measurement at the site, as of the segment's end (NaN with none yet)."""
        idx = np.flatnonzero(site)
        s, m, tt = ev.series[idx], ev.median[idx], te[idx]
        g = self.group[s]
        order = np.lexsort((s, tt, g))
        s, m, tt, g = s[order], m[order], tt[order], g[order]
        # Each event replaces its series' level in the group's sum.
        prev = np.full(len(s), np.nan)
        by_series = np.lexsort((np.arange(len(s)), s))
        same = np.r_[False, s[by_series][1:] == s[by_series][:-1]]
        prev_sorted = np.where(same, np.r_[np.nan, m[by_series][:-1]], self.level[s[by_series]])
        prev[by_series] = prev_sorted
        known = np.isfinite(self.level) & (self.group >= 0)
        n_groups = int(self.group.max()) + 1
        sum0 = np.bincount(self.group[known], weights=self.level[known], minlength=n_groups)
        cnt0 = np.bincount(self.group[known], minlength=n_groups).astype(np.float64)
        delta = m - np.nan_to_num(prev)
        grow = (~np.isfinite(prev)).astype(np.float64)
        first = np.r_[True, g[1:] != g[:-1]]
        seg = np.cumsum(first) - 1
        csum = np.cumsum(delta)
        ccnt = np.cumsum(grow)
        start = np.flatnonzero(first)
        total = sum0[g] + csum - (csum[start] - delta[start])[seg]
        count = cnt0[g] + ccnt - (ccnt[start] - grow[start])[seg]
        with np.errstate(all="ignore"):
            others = np.where(count > 1, (total - m) / (count - 1), np.nan)
        out = np.empty(len(idx))
        out[order] = others
        # The levels each series leaves off with.
        last = by_series[np.r_[s[by_series][1:] != s[by_series][:-1], True]]
        self.level[s[last]] = m[last]
        return out

    def _slope(self, rows: I64) -> F64:
        sx, sy, sxx, sxy, w = self.reg[rows].T
        with np.errstate(all="ignore"):
            cov = sxy - sx * sy / w
            var = sxx - sx * sx / w
            slope = (cov + self.coef[rows] * _PRIOR_VAR_K2) / (var + _PRIOR_VAR_K2)
        return np.where(w > 0, slope, self.coef[rows])

    def _learn(self, rows: I64, temp: F64, strain: F64, ts: I64) -> None:
        prev = self.ts[rows]
        dt = np.where(prev == NO_TIME, 0.0, np.maximum((ts - prev) / 1e9, 0.0))
        keep = np.exp(-dt / _THERMAL_MEMORY_S)[:, None]
        obs = np.stack([temp, strain, temp * temp, temp * strain, np.ones_like(temp)], axis=1)
        self.reg[rows] = self.reg[rows] * keep + obs
