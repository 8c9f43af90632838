"""The anomaly check between validation and the durable commit.

Checks are vectorised over the whole batch (numpy, no per-sample Python loop) and write
their results into the batch's ``flags`` and ``scores`` columns, which are stored with each
reading. Per-series state (a window of recent values, the previous reading, run lengths)
lives in arrays indexed by the registry's series index and can be saved and loaded, so a
restart neither flags everything nor nothing.

Statistics are computed once per series per batch, from the window as it stood before the
batch, and applied to every sample of the batch: the cost is a few array passes per batch
instead of a rolling median per sample.

Detectors, each a flag bit of ``AnomalyFlag`` (README, "Anomaly flags"):

- ``limit`` (structure): |value| beyond a gauge's design limit from the registry.
- ``spike`` (sensor): an isolated value far from the window's median, in robust standard
  deviations (1.4826 x MAD, never below the measurement's noise floor, so a constant
  series does not turn every change into a spike).
- ``step`` (sensor): several consecutive values on the same side of the window's median
  beyond a smaller threshold: a lasting offset rather than a single outlier.
- ``stuck`` (sensor): the same value repeated where the measurement always varies.
- ``rate`` (sensor): change between consecutive readings faster than the physics allows.
- ``gap`` (sensor): the first reading after more than ``gap_factor`` expected intervals
  of silence.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

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


# Defaults from DOMAIN.md: strain noise is about 1 microstrain and lorries add tens within
# seconds; classroom CO2 rises about 1500 ppm in a lesson and falls within minutes when a
# window opens, both far below the rate limits, which catch physically impossible jumps.
DEFAULT_PARAMS: dict[str, DetectorParams] = {
    "strain": DetectorParams(noise_floor=4.0, spike_z=10.0, step_z=5.0, max_rate=2000.0),
    "temperature": DetectorParams(noise_floor=0.1, max_rate=0.5),
    "inclination": DetectorParams(noise_floor=0.002, max_rate=0.5),
    "crack_width": DetectorParams(noise_floor=0.005, max_rate=0.5),
    "co2": DetectorParams(noise_floor=15.0, max_rate=100.0),
    "humidity": DetectorParams(noise_floor=0.5, max_rate=2.0),
    "pm2_5": DetectorParams(noise_floor=2.0, stuck_samples=30, max_rate=50.0),
    "pm10": DetectorParams(noise_floor=3.0, stuck_samples=30, max_rate=50.0),
    "noise": DetectorParams(noise_floor=1.5, max_rate=np.inf),
    "light": DetectorParams(noise_floor=5.0, stuck_samples=0, max_rate=np.inf),
}

WINDOW = 48  # recent values per series the statistics are taken from
MIN_HISTORY = 12  # spike and step need this many values first (the warm-up)
_NO_TIME = np.iinfo(np.int64).min


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
        p = [table[s.key.measurement] for s in series]
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
        self.gap_ns = np.array(
            [
                x.gap_factor * ser.interval.total_seconds() * 1e9
                for x, ser in zip(p, series, strict=True)
            ]
        )
        # State.
        self.window = np.full((n, WINDOW), np.nan)
        self.filled = np.zeros(n, dtype=np.int64)
        self.cursor = np.zeros(n, dtype=np.int64)
        self.last_ts = np.full(n, _NO_TIME, dtype=np.int64)
        self.last_value = np.full(n, np.nan)
        self.same_run = np.zeros(n, dtype=np.int64)  # repeats of last_value so far
        self.dev_run = np.zeros(n, dtype=np.int64)  # signed run of step-sized deviations

    # -- the check -------------------------------------------------------------------------

    def check(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        order = np.lexsort((batch.ts_ns, batch.series))
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
        uniq, inverse = np.unique(s, return_inverse=True)
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
        step = dev_len >= self.step_samples[s]
        spike = (absz > self.spike_z[s]) & (dev_len == 1)
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

        batch.flags[order] |= flags
        np.maximum(batch.scores[order], scores, out=scores)
        batch.scores[order] = scores

        self._remember(s, t, v, first, spike, same_len, dev, dev_len)

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
    ) -> None:
        last = np.ones(len(s), dtype=bool)
        last[:-1] = s[1:] != s[:-1]
        ls = s[last]
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

    _STATE = ("window", "filled", "cursor", "last_ts", "last_value", "same_run", "dev_run")

    def save(self, path: Path) -> None:
        """Write the state, keyed by series name, so a changed registry still maps it."""
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(self.names), **{k: getattr(self, k) for k in self._STATE})
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
