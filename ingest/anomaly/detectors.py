"""The detectors over per-series state arrays, judged in reading time.

Every reading is judged against the readings of its series that precede it in device
time, whichever batch, block or backlog it arrives in. Each series' readings are cut into
segments of ``width`` consecutive readings, counted over the series' whole life (the
first segment begins with its first reading); a reading's reference is the median and MAD
of the segment before its own. So the statistics depend only on the series' own sequence
of readings, never on how that sequence was split into batches: a week of one series in
one batch is judged exactly as if it had arrived one reading at a time, and the cost is one
median per segment instead of one per reading.

Runs (of deviations, of repeated values) carry over from batch to batch; cross-series
judgements look back only (another gauge of the bridge moved within the ten seconds up to
this reading; the temperature that compensates a strain gauge is its latest reading at
that time), so they too see the same readings whatever the batching, given that readings
arrive in time order.
"""

from __future__ import annotations

import io
import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from devices.registry import Series
from ingest.anomaly.arrays import (
    I64,
    NO_TIME,
    neighbours,
    run_lengths,
    series_time_order,
)
from ingest.anomaly.drift import Drift
from ingest.anomaly.held import HeldJumps
from ingest.anomaly.moves import SHARED_Z, Moves, in_proportion, levels_passed
from ingest.anomaly.pairs import both, paired_temperature, temperature_pairs
from ingest.anomaly.params import DEFAULT_PARAMS, DetectorParams
from ingest.anomaly.segments import SegmentTrack, Trail
from ingest.anomaly.stuck import Stuck
from ingest.batch import AnomalyFlag, ReadingBatch

T = TypeVar("T", bound=np.generic)

SEGMENT = 48  # readings per segment at least: enough for a median and a MAD
SEGMENT_MAX = 1 << 15
CHUNK = 1 << 20  # readings judged in one piece
SMOOTH_S = 1.0  # at high rates a level is judged by the mean of its last second
STEEL_UE_PER_K = 12.0  # DOMAIN.md: 12.2 for steel, about 10 for concrete
_RATE_NOISE_Z = 4.0
# A change from the reading before this many times spike_z sigmas of the usual changes.
_ODD_CHANGE = 2.5


class AnomalyCheck(Protocol):
    def check(self, batch: ReadingBatch) -> None:
        """Set ``batch.flags`` bits and raise ``batch.scores`` in place."""


def _settings(series: Series) -> dict[str, Any]:
    # The registry validated names and types (devices.registry.DetectorsModel).
    return dict(series.detectors)


def _samples(seconds: float, interval_s: float) -> int:
    return math.ceil(seconds / interval_s - 1e-9) if interval_s > 0 and seconds > 0 else 0


class Detectors:
    """All detectors over per-series state arrays."""

    def __init__(
        self,
        series: Sequence[Series],
        params: dict[str, DetectorParams] | None = None,
        chunk: int = CHUNK,
    ) -> None:
        table = DEFAULT_PARAMS if params is None else params
        self.chunk = chunk
        # The registry's settings (measurement-wide, then the device's) over the defaults.
        p = [replace(table[x.key.measurement], **_settings(x)) for x in series]
        n = len(series)
        self.names = [f"{s.key.site}/{s.key.device}/{s.key.name}" for s in series]
        interval = [max(s.interval.total_seconds(), 1e-3) for s in series]
        self.limit = np.array([abs(s.limit) if s.limit else np.inf for s in series])
        self.floor = np.array([x.noise_floor for x in p])
        self.spike_z = np.array([x.spike_z for x in p])
        self.spike_tail = np.array([x.spike_tail for x in p])
        self.step_z = np.array([x.step_z for x in p])
        self.step_need = np.array(
            [
                max(x.step_samples, _samples(x.step_min_s, i))
                for x, i in zip(p, interval, strict=True)
            ],
            dtype=np.int64,
        )
        self.shift_z = np.array([x.shift_z for x in p])
        self.shift_need = np.array(
            [max(2, _samples(x.shift_min_s, i)) for x, i in zip(p, interval, strict=True)],
            dtype=np.int64,
        )
        self.width = np.array(
            [
                min(max(SEGMENT, _samples(x.segment_s, i)), SEGMENT_MAX)
                for x, i in zip(p, interval, strict=True)
            ],
            dtype=np.int64,
        )
        self.stuck = Stuck(p)
        self.held = HeldJumps(self.step_need)
        self.air = np.array(
            [x.room_air and s.kind != "bridge" for x, s in zip(p, series, strict=True)],
            dtype=bool,
        )
        self.max_rate = np.array([x.max_rate for x in p])
        self.gap_ns = np.array([x.gap_factor * i * 1e9 for x, i in zip(p, interval, strict=True)])
        self.pair = temperature_pairs(series)
        # Strain is judged after what its temperature explains (12 ue/K); inclination and
        # crack width follow temperature too little to take it off reading by reading.
        strain = np.array([x.key.measurement == "strain" for x in series], dtype=bool)
        self.coef = np.where(strain & (self.pair >= 0), STEEL_UE_PER_K, 0.0)
        self.moves = Moves(series)
        self.drift = Drift(series, p, self.pair, self.coef, self.width)
        self._lock = threading.Lock()
        # Strain is judged after what its temperature explains, and as it reads: a lasting
        # change must show in both, or a faulty thermometer would move the gauge.
        self.track = SegmentTrack(self.width, self.floor)
        self.raw = SegmentTrack(self.width, self.floor)
        self.smooth = np.array([max(1, round(SMOOTH_S / i)) for i in interval], dtype=np.int64)
        self.trail = Trail(self.smooth)
        self.raw_trail = Trail(self.smooth)
        self.first_ts = np.full(n, NO_TIME, dtype=np.int64)
        self.last_ts = np.full(n, NO_TIME, dtype=np.int64)
        self.last_value = np.full(n, np.nan)
        self.last_eff = np.full(n, np.nan)  # the last value as the detectors saw it
        self.dev_run = np.zeros(n, dtype=np.int64)  # signed run of step-sized deviations
        self.abrupt = np.zeros(n, dtype=bool)  # did that run begin with a lone jump?
        self.onset_eff = np.zeros(n)  # ... to which level, by how much
        self.onset_jump = np.zeros(n)
        self.onset_moves = np.zeros(n, dtype=np.int64)  # readings off that level since
        self.onset_before = np.zeros(n)  # the level before the run began
        self.onset_alone = np.zeros(n, dtype=bool)  # no neighbour moved at its start
        self.odd = np.zeros(n, dtype=bool)  # did the last reading change oddly?

    # -- the check -------------------------------------------------------------------------

    def check(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        with self._lock:  # a snapshot (save) must not see half a batch
            if len(batch) <= self.chunk:
                self._check(batch)
                return
            # A backlog of days: judged in slices of time. The flags are the same as in
            # one piece (every reading is judged against the readings before it), and the
            # slices' arrays stay small enough to be reused instead of mapped anew.
            order = np.argsort(batch.ts_ns, kind="stable")
            ts = batch.ts_ns[order]
            # Readings of one instant stay together: a strain gauge's temperature and its
            # neighbours of the same moment are part of its judgement.
            cuts = np.searchsorted(ts, ts[self.chunk :: self.chunk], side="left").tolist()
            for lo, hi in itertools.pairwise([0, *cuts, len(order)]):
                if lo == hi:
                    continue
                rows = order[lo:hi]
                part = ReadingBatch.unchecked(batch.series[rows], batch.ts_ns[rows],
                                              batch.values[rows])  # fmt: skip
                part.flags[:] = batch.flags[rows]
                part.scores[:] = batch.scores[rows]
                self._check(part)
                batch.flags[rows] = part.flags
                batch.scores[rows] = part.scores

    def _check(self, batch: ReadingBatch) -> None:
        order = series_time_order(batch.series, batch.ts_ns, len(self.names))
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

        def rep(per_series: npt.NDArray[T]) -> npt.NDArray[T]:
            return np.repeat(per_series[uniq], sizes)

        prev_v = np.empty(n)
        prev_v[1:] = v[:-1]
        prev_v[starts] = self.last_value[uniq]
        prev_t = np.empty(n, dtype=np.int64)
        prev_t[1:] = t[:-1]
        prev_t[starts] = self.last_ts[uniq]
        has_prev = prev_t != NO_TIME
        with np.errstate(all="ignore"):  # no previous reading: masked below
            d_ns = t - prev_t
            dv = np.abs(v - prev_v)
        self.first_ts[uniq] = np.where(
            self.first_ts[uniq] == NO_TIME, t[starts], self.first_ts[uniq]
        )

        flags = np.zeros(n, dtype=np.int32)
        ratio = np.abs(v) / rep(self.limit)
        flags[ratio > 1.0] |= AnomalyFlag.LIMIT

        # Strain is judged after removing what its temperature explains.
        temp = paired_temperature(self.pair, self.last_value, batch, s, t)
        eff = np.where(np.isfinite(temp), v - rep(self.coef) * temp, v)

        seg = self.track.advance(s, t, eff)
        z, sigma = seg.z, seg.sigma
        paired = np.flatnonzero(self.coef[s] > 0)
        raw = self.raw.advance(s[paired], t[paired], v[paired]) if len(paired) else None
        if raw is not None:
            z[paired] = both(z[paired], raw.z)
        absz = np.abs(z)
        scores = np.maximum(ratio, absz / rep(self.spike_z)).astype(np.float32)
        prev_eff = np.empty(n)
        prev_eff[1:] = eff[:-1]
        prev_eff[starts] = self.last_eff[uniq]

        # Whether a level holds is judged a second at a time at high rates (one reading at
        # 100 Hz is mostly noise), a reading at a time below.
        level_z = absz.copy()
        level_sign = np.sign(z)
        level_eff = eff.copy()
        level_before = prev_eff.copy()
        level_sigma = sigma.copy()
        shift_z = absz.copy()
        fast_rows = np.flatnonzero(self.smooth[s] > 1)
        if len(fast_rows):
            fs = s[fast_rows]
            now, before = self.trail.means(fs, eff[fast_rows])
            ref = seg.median(fast_rows)
            # The noise of a second's mean: a reading's, over the square root of how many.
            spread = np.maximum(sigma[fast_rows] / np.sqrt(self.smooth[fs]), self.floor[fs])
            with np.errstate(invalid="ignore"):
                zm = np.where(np.isfinite(ref), (now - ref) / spread, 0.0)
            level_sigma[fast_rows] = spread
            hit = np.isin(paired, fast_rows)
            if raw is not None and hit.any():
                rows = np.flatnonzero(np.isin(fast_rows, paired))
                raw_now, _ = self.raw_trail.means(s[paired[hit]], v[paired[hit]])
                rref = raw.table.median[raw.row[hit]]
                raw_spread = np.maximum(
                    raw.sigma[hit] / np.sqrt(self.smooth[s[paired[hit]]]),
                    self.floor[s[paired[hit]]],
                )
                with np.errstate(invalid="ignore"):
                    zr = np.where(np.isfinite(rref), (raw_now - rref) / raw_spread, 0.0)
                zm[rows] = both(zm[rows], zr)
            level_z[fast_rows] = np.abs(zm)
            # A structural shift is judged on a reading's own scale: a creep of a
            # microstrain a minute stands many second-means out, but it is a drift.
            shift_z[fast_rows] = np.abs(zm) * spread / sigma[fast_rows]
            level_sign[fast_rows] = np.sign(zm)
            level_eff[fast_rows] = now
            level_before[fast_rows] = before

        # Deviation runs: consecutive readings beyond step_z on one side of the reference.
        d = np.flatnonzero(level_z > rep(self.step_z))
        ds, dsign = s[d], level_sign[d].astype(np.int64)
        at_start = first[d]
        follows = np.where(at_start, np.sign(self.dev_run[ds]) == dsign, neighbours(d, first))
        follows[1:] &= at_start[1:] | (dsign[1:] == dsign[:-1])
        dev_len, head, carried = run_lengths(follows, at_start, np.abs(self.dev_run[ds]))
        # What a run is, is decided at its first reading: a lone jump (a sensor's step) or
        # not (a settlement builds up; a lesson fills a room), and whether another series
        # of the bridge or room moved with it then (a lorry, an opened window).
        onset = d[head]
        with np.errstate(invalid="ignore"):
            jump = np.abs(eff - prev_eff) / sigma
            # A paired gauge moved only if its reading moved too, not just its thermometer.
            jump[paired] = np.where(dv[paired] > SHARED_Z * sigma[paired], jump[paired], 0.0)
        # While the level moves (CO2 through a lesson) its sigma is wide, but the change
        # from one reading to the next stays regular: a change far beyond the usual ones,
        # not following another such change (the way back), is a spike too.
        with np.errstate(invalid="ignore"):
            step_sig = seg.table.step_sigma[seg.row]
            usual = np.where(np.isfinite(step_sig), step_sig, np.inf)
            change = eff - prev_eff - seg.table.step[seg.row]
            odd = np.abs(change) > _ODD_CHANGE * rep(self.spike_z) * usual
        odd_before = np.empty(n, dtype=bool)
        odd_before[1:] = odd[:-1]
        odd_before[starts] = self.odd[uniq]
        self.odd[uniq] = odd[lasts]
        cand = np.flatnonzero(odd & ~odd_before & (rep(self.spike_tail) == 0))
        # Moving is jumping from the reading before: a reading far from an old reference
        # (a room cooling through the night) has not moved with anything.
        asked = onset[~carried]
        passed = levels_passed(jump)
        # An opened window shows in a room's temperature and humidity within the minute, as
        # a change beyond their usual ones, while their level barely leaves its lesson's
        # spread.
        air = np.flatnonzero(self.air[s])
        if len(air):
            floor = self.floor[s[air]]
            aired = np.abs(change[air]) > SHARED_Z * np.maximum(usual[air], floor)
            passed[air[aired]] = np.maximum(passed[air[aired]], 1)
        na = len(asked)
        answers = self.moves.shared(
            s,
            t,
            passed,
            np.concatenate([asked, asked, cand]),
            np.concatenate(
                [np.ones(na, np.int64), in_proportion(jump[asked]), np.ones(len(cand), np.int64)]
            ),
        )
        shared, shared_odd = answers[:na], answers[2 * na :]
        shared_at = np.zeros(len(d), dtype=bool)
        shared_at[~carried] = shared
        alone_at = np.zeros(len(d), dtype=bool)
        alone_at[~carried] = ~answers[na : 2 * na]
        # A sensor's step is a jump to a new level that then holds; in an opened window the
        # reading keeps moving after its first jump. The new level is read where the run
        # is as long as the level's window (its first reading below 1 Hz, a second into it
        # at 100 Hz, once the second's mean has taken the jump in whole).
        k = np.arange(len(d))
        span = self.smooth[ds]
        carry = np.where(carried, np.abs(self.dev_run[ds]), 0)
        at = head + span - 1 - carry  # the anchor's place in d, if it is in this batch
        before_batch = at < head
        reached = before_batch | (k >= at)
        a = d[np.clip(at, 0, max(len(d) - 1, 0))]
        old_level = np.where(carried, self.onset_before[ds], level_before[onset])
        level = np.where(before_batch, self.onset_eff[ds], level_eff[a])
        size = np.where(before_batch, self.onset_jump[ds], np.abs(level - old_level))
        alone = np.where(carried, self.onset_alone[ds], alone_at[head])
        with np.errstate(invalid="ignore"):
            jumped = size > self.step_z[ds] * level_sigma[a]
        # A paired gauge jumped only if its reading jumped too, not just its thermometer.
        jumped &= ~np.isin(a, paired) | (dv[a] > SHARED_Z * sigma[a]) | (span > 1)
        moved = reached & (k > at) & (np.abs(level_eff[d] - level) > 0.5 * size)
        moves = np.cumsum(moved)
        moves -= (moves - moved)[head]
        moves += np.where(carried, self.onset_moves[ds], 0)
        # One reading off the new level (a lorry on top of it) does not undo a step.
        first_lone = jumped & alone
        lone_jump = reached & np.where(before_batch, self.abrupt[ds], first_lone) & (moves < 2)
        step = (dev_len >= self.step_need[ds]) & lone_jump
        shift = (dev_len >= self.shift_need[ds]) & (shift_z[d] > self.shift_z[ds]) & ~lone_jump
        # A spike jumps away from the reading before it, alone, beyond the series' usual
        # excursions; a reading that crept there (a room being aired) is no spike.
        lone = (absz[d] > self.spike_z[ds]) & (dev_len == 1) & ~shared_at
        lone &= jump[d] > self.spike_z[ds]
        away = eff[d] - seg.median(d)
        usual_away = seg.excursion(d, away >= 0, t[d])
        spike = lone & (np.abs(away) > self.spike_tail[ds] * usual_away)
        flags[d[spike]] |= AnomalyFlag.SPIKE
        lone_odd = cand[~shared_odd]
        flags[lone_odd] |= AnomalyFlag.SPIKE
        flags[self.held.judge(s, eff, prev_eff, first, lone_odd)] |= AnomalyFlag.STEP
        flags[d[step]] |= AnomalyFlag.STEP
        flags[d[shift]] |= AnomalyFlag.SHIFT

        self.stuck.judge(s, t, v, first, starts, has_prev, prev_v, prev_t, self.first_ts, flags)

        # Too fast for the physics, and beyond the noise: at 100 Hz a thermometer's noise
        # alone is kelvins per second.
        beyond = np.flatnonzero(has_prev & (dv > _RATE_NOISE_Z * sigma) & (d_ns > 0))
        fast = dv[beyond] / (d_ns[beyond] / 1e9) > self.max_rate[s[beyond]]
        flags[beyond[fast]] |= AnomalyFlag.RATE
        flags[has_prev & (d_ns > rep(self.gap_ns))] |= AnomalyFlag.GAP

        reset = (flags & (AnomalyFlag.STEP | AnomalyFlag.SHIFT)) != 0
        drifting, floor_step = self.drift.judge(seg.events, t, temp, reset, s, seg.own, seg.ref)
        flags[drifting] |= AnomalyFlag.DRIFT
        flags[floor_step] |= AnomalyFlag.STEP

        batch.flags[order] |= flags
        np.maximum(batch.scores[order], scores, out=scores)
        batch.scores[order] = scores

        # The state each series leaves off with: its last reading's runs.
        k = np.searchsorted(d, lasts)
        in_run = k < len(d)
        in_run[in_run] = d[k[in_run]] == lasts[in_run]
        k = k[in_run]
        self.dev_run[uniq] = 0
        self.dev_run[uniq[in_run]] = dev_len[k] * dsign[k]
        self.abrupt[uniq] = False
        self.abrupt[uniq[in_run]] = lone_jump[k]
        self.onset_eff[uniq[in_run]] = np.where(reached[k], level[k], 0.0)
        self.onset_jump[uniq[in_run]] = np.where(reached[k], size[k], 0.0)
        self.onset_moves[uniq[in_run]] = moves[k]
        self.onset_before[uniq[in_run]] = old_level[k]
        self.onset_alone[uniq[in_run]] = alone[k]
        self.last_ts[uniq] = np.maximum(self.last_ts[uniq], t[lasts])
        self.last_value[uniq] = v[lasts]
        self.last_eff[uniq] = eff[lasts]

    # -- state across restarts -----------------------------------------------------------

    _STATE = (
        "first_ts", "last_ts", "last_value", "last_eff", "dev_run", "abrupt", "onset_eff",
        "onset_jump", "onset_moves", "onset_before", "onset_alone", "odd",
    )  # fmt: skip

    def _named_state(self, rows: I64 | None) -> dict[str, Any]:
        """The state with the series' names, of every series or only of ``rows``."""
        with self._lock:
            state = {k: getattr(self, k).copy() for k in self._STATE}
            parts = (
                ("drift_", self.drift), ("stuck_", self.stuck), ("held_", self.held),
                ("moves_", self.moves), ("seg_", self.track),
                ("raw_", self.raw), ("trail_", self.trail), ("rawtrail_", self.raw_trail),
            )  # fmt: skip
            for prefix, part in parts:
                state |= {prefix + k: v for k, v in part.state().items()}
        return {"names": np.array(self.names), **state}

    def save(self, path: Path) -> None:
        """Write the state, keyed by series name, so a changed registry still maps it."""
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **self._named_state(None))
        tmp.replace(path)

    def snapshot(self, rows: I64) -> bytes:
        """The state of ``rows`` only, compressed: what one partition of several workers
        hands to the next worker that takes it (see ``ingest.nats_source``)."""
        return self.snapshots({0: rows})[0]

    def snapshots(self, groups: dict[int, I64]) -> dict[int, bytes]:
        """``snapshot`` of each group of rows, from one copy of the state."""
        state = self._named_state(None)
        names = state.pop("names")
        out = {}
        for key, rows in groups.items():
            buf = io.BytesIO()
            part: dict[str, Any] = _rows_of(state, rows, len(names))
            np.savez_compressed(buf, names=names[rows], **part)
            out[key] = buf.getvalue()
        return out

    def load(self, path: Path) -> int:
        """Restore the state of the series both the file and the registry know; return how
        many were restored. A series whose segment width changed starts a new segment."""
        if not path.exists():
            return 0
        return self._restore_from(path)

    def restore(self, snapshot: bytes) -> int:
        """``load`` from what ``snapshot`` returned."""
        return self._restore_from(io.BytesIO(snapshot))

    def _restore_from(self, source: Path | io.BytesIO) -> int:
        with np.load(source, allow_pickle=False) as data, self._lock:
            if "seg_buf" not in data:
                return 0  # written by an earlier version of the detectors
            index = {name: i for i, name in enumerate(self.names)}
            pairs = [(index[n], j) for j, n in enumerate(data["names"].tolist()) if n in index]
            if not pairs:
                return 0
            mine, theirs = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
            for key in self._STATE:
                if key in data.files:  # a newer version's state starts fresh
                    getattr(self, key)[mine] = data[key][theirs]
            parts = (
                ("drift_", self.drift), ("stuck_", self.stuck), ("held_", self.held),
                ("moves_", self.moves),
            )  # fmt: skip
            for prefix, part in parts:
                n = len(prefix)
                part.restore(
                    mine, {k[n:]: data[k][theirs] for k in data.files if k.startswith(prefix)}
                )
            tracks: tuple[tuple[str, SegmentTrack | Trail], ...] = (
                ("seg_", self.track), ("raw_", self.raw),
                ("trail_", self.trail), ("rawtrail_", self.raw_trail),
            )  # fmt: skip
            for prefix, track in tracks:
                saved = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
                track.restore(mine, theirs, saved)
        return len(pairs)


def _rows_of(state: dict[str, np.ndarray], rows: I64, n: int) -> dict[str, np.ndarray]:
    """``state`` (of ``n`` series) cut down to ``rows``: per-series arrays by row, and the
    flat buffers that keep a slice per series (``*buf`` with ``*buf_off``) slice by slice,
    with offsets into the shorter buffer."""
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("buf_off"):
            continue
        if key.endswith("buf") and key + "_off" in state:
            off = state[key + "_off"]
            size = np.diff(np.append(off, len(value)))[rows]
            start = (
                np.repeat(off[rows], size)
                + np.arange(int(size.sum()))
                - np.repeat(np.cumsum(size) - size, size)
            )
            out[key] = value[start]
            out[key + "_off"] = np.cumsum(size) - size
        elif value.ndim and len(value) == n:
            out[key] = value[rows]
        else:
            out[key] = value
    return out
