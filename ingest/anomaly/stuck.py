"""stuck: the same value again and again, for longer than the series' own longest recent
flat run allows. A 0.1 degC thermometer holds one value through a quiet night, and that is
not a stuck sensor; a thermometer that holds it through the next day's lessons is."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ingest.anomaly.arrays import F64, I64, Bool, StateArrays, neighbours, run_lengths
from ingest.anomaly.params import DetectorParams
from ingest.anomaly.segments import EPOCH_NS, running_max_before
from ingest.batch import AnomalyFlag

# How fast the memory of the longest recent flat run fades, and how much history a series
# needs before a flat run can count as stuck.
_FLAT_TAU_S = 2 * 86400.0
_STUCK_WARM_NS = 12 * 3600 * 1_000_000_000


class Stuck(StateArrays):
    def __init__(self, params: Sequence[DetectorParams]) -> None:
        n = len(params)
        self.stuck_samples = np.array(
            [x.stuck_samples if x.stuck_samples > 0 else 1 << 62 for x in params], dtype=np.int64
        )
        self.stuck_factor = np.array([x.stuck_factor for x in params])
        self.same_run = np.zeros(n, dtype=np.int64)  # repeats of the last value so far
        # Longest recent flat runs as log(length) + time / tau, so "the longest, fading
        # with age" is a running maximum: of all runs, and of those not themselves stuck.
        self.flat_all = np.full(n, -np.inf)
        self.flat_ok = np.full(n, -np.inf)

    _STATE = ("same_run", "flat_all", "flat_ok")

    def judge(
        self,
        s: I64,
        t: I64,
        v: F64,
        first: Bool,
        starts: I64,
        has_prev: Bool,
        prev_v: F64,
        prev_t: I64,
        first_ts: I64,
        flags: npt.NDArray[np.int32],
    ) -> None:
        """Mark the stuck readings of a batch sorted by series, then time (``first``:
        each series' first reading, at ``starts``; ``prev_*``: the reading before each)."""
        n = len(s)
        uniq = s[starts]
        r = np.flatnonzero(has_prev & (v == prev_v))
        at_start = first[r]
        follows = neighbours(r, first) | at_start
        same_r, head, _ = run_lengths(follows, at_start, self.same_run[s[r]])
        same = np.zeros(n, dtype=np.int64)
        same[r] = same_r
        # Flat runs of two readings or more that end in this batch (the value changed), with
        # their lengths and end times, and how the fading maximum of them stood before each.
        # Single readings cannot raise the usual above stuck_samples; leaving them out keeps
        # this to the few repeats of a noisy series.
        ends = r[np.diff(r, append=np.iinfo(np.int64).max) != 1] + 1
        ends = ends[ends < n]
        ends = ends[~first[ends]]  # a change within the series (not a repeat: r ends there)
        carried = starts[(self.same_run[s[starts]] > 0) & has_prev[starts]]
        carried = carried[v[carried] != prev_v[carried]]
        changed = np.sort(np.concatenate([ends, carried]))
        cs = s[changed]
        at_first = first[changed]
        length = np.where(at_first, self.same_run[cs], same[changed - 1 + at_first]) + 1
        key = np.log(length) + (prev_t[changed] - EPOCH_NS) / 1e9 / _FLAT_TAU_S
        all_before = running_max_before(cs, key, self.flat_all[cs])
        thresh = self._need(cs, all_before, prev_t[changed])
        ok = length < thresh  # runs that were not stuck themselves set the usual
        ok_key = np.where(ok, key, -np.inf)
        ok_before = running_max_before(cs, ok_key, self.flat_ok[cs])
        # Each repeat is judged against the usual as of its run's start.
        if len(r):
            run_start = r[head]  # the run's first repeat: the run began just before
            k = np.searchsorted(changed, run_start, side="right") - 1
            kk = np.maximum(k, 0)
            mine = (k >= 0) & (cs[kk] == s[r]) if len(changed) else np.zeros(len(r), bool)
            usual = self.flat_ok[s[r]]
            usual[mine] = np.maximum(ok_before[kk[mine]], ok_key[kk[mine]])
            need = self._need(s[r], usual, t[r])
            warm = (t[r] - first_ts[s[r]]) >= _STUCK_WARM_NS
            flags[r[(same_r + 1 >= need) & warm]] |= AnomalyFlag.STUCK
        always = self.stuck_samples[uniq] <= 1  # a setting of 1 makes every reading stuck
        if always.any():
            flags[np.repeat(always, np.diff(np.append(starts, n)))] |= AnomalyFlag.STUCK
        if len(changed):
            last = np.flatnonzero(np.append(cs[1:] != cs[:-1], True))
            self.flat_all[cs[last]] = np.maximum(all_before[last], key[last])
            self.flat_ok[cs[last]] = np.maximum(ok_before[last], ok_key[last])
        self.same_run[uniq] = same[np.append(starts[1:], n) - 1]

    def _need(self, s: I64, usual_key: F64, at: I64) -> F64:
        longest = np.exp(usual_key - (at - EPOCH_NS) / 1e9 / _FLAT_TAU_S)
        need: F64 = np.maximum(self.stuck_samples[s], self.stuck_factor[s] * longest)
        return need
