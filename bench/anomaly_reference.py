"""A straightforward per-sample Python implementation of ``ingest.anomaly.Detectors``.

The same detectors written the obvious way, one sample at a time, with a
``collections.deque`` window and ``statistics.median``, plain floats and no numpy in the
loop. Two ways to take the window statistics:

- ``stats="batch"`` (the oracle of ``tests/unit/test_anomaly_reference.py``): median and MAD
  once per series per batch, exactly as ``Detectors`` does, so flags and scores must be
  identical.
- ``stats="sample"`` (the baseline of ``bench/anomaly_speed.py``): the textbook rolling
  robust z-score, median and MAD of the window recomputed before every sample, and the
  window updated after every sample (a lone value beyond ``spike_z`` stays out of it). This
  is what a per-sample implementation does; DESIGN.md's trade-off is that statistics once
  per batch give the same flags in all but a few cases, which the benchmark counts.

Semantics (those of ``Detectors``, which the oracle test holds both to; ``stats="sample"``
differs only in the first point about statistics):

- A batch is processed in (series, timestamp) order; readings with equal timestamps keep
  their order in the batch.
- Each series keeps the last ``WINDOW`` values that were not spikes. Median and MAD are
  taken from the window as it stood at the start of the batch and used for all of that
  series' samples in the batch; with fewer than ``MIN_HISTORY`` values there is no z-score
  (it counts as 0). Sigma is 1.4826 x MAD, never below the measurement's noise floor.
- A sample deviates when |z| > ``step_z``. Deviating samples on the same side form a run,
  which continues across batches. A sample is *shared* when another series of its group
  (a bridge site, or a school device) has a sample in the batch with |z| > 3 in the same
  10 s bucket, in either of two bucketings half a bucket apart (``t // 10 s`` and
  ``(t + 5 s) // 10 s``). The series' own readings never count.
- step: a run of at least ``step_samples``, not shared, whose first sample jumped by more
  than ``step_z`` x sigma from the reading before it. spike: beyond ``spike_z``, the first
  sample of a run, not shared.
- stuck: ``stuck_samples`` or more identical consecutive readings (0 disables it).
- rate: |change| / elapsed time beyond ``max_rate``, for a positive elapsed time.
- gap: more than ``gap_factor`` registry intervals since the previous reading.
- limit: |value| beyond a gauge's design limit.
- The previous reading of a series' first sample in a batch is the last one of its
  previous batch, except that its time is the latest time the series has seen.
- The score is the largest of |value| / limit and |z| / spike_z, as float32, and only ever
  raises the batch's score.
- drift, once per series per batch, on the batch's mean value x (the strain residual after
  the gauge's thermal regression on its paired temperature; for ``drift_mode="site"`` the
  mean less the mean of the other series of that measurement and site in the batch; for
  ``drift_mode="night"`` only batches whose mean time falls in the night hours):
  exponential fast and slow averages of x, reset to x by a step in the batch; once the
  series has ``DRIFT_WARM_S`` of drift history, all its samples of the batch are flagged
  when the averages part by more than ``drift``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import Any, Literal

import numpy as np

from devices.registry import Series
from ingest.anomaly import (
    DEFAULT_PARAMS,
    DRIFT_SLOW_S,
    DRIFT_WARM_S,
    MIN_HISTORY,
    STEEL_UE_PER_K,
    WINDOW,
    DetectorParams,
)
from ingest.batch import AnomalyFlag, ReadingBatch

LIMIT = int(AnomalyFlag.LIMIT)
SPIKE = int(AnomalyFlag.SPIKE)
STEP = int(AnomalyFlag.STEP)
STUCK = int(AnomalyFlag.STUCK)
RATE = int(AnomalyFlag.RATE)
GAP = int(AnomalyFlag.GAP)
DRIFT = int(AnomalyFlag.DRIFT)

SHARED_BUCKET_NS = 10 * 10**9
Bucket = tuple[tuple[str, ...], int, int]  # group, bucketing, bucket
SHARED_Z = 3.0  # a neighbour moving this much (in its own sigmas) moves with a sample
NIGHT_UTC_HOURS = (0, 4)
HOUR_NS = 3_600_000_000_000
THERMAL_MEMORY_S = 14 * 86400.0
THERMAL_PRIOR_VAR = 25.0


@dataclass(frozen=True, slots=True)
class _Config:
    """One series' settings."""

    params: DetectorParams
    limit: float  # inf without a design limit
    gap_ns: float
    group: tuple[str, ...]  # whose deviations are shared: the bridge site, or the device
    site: str
    measurement: str
    pair: int | None  # the temperature that compensates a strain gauge


@dataclass(slots=True)
class _State:
    """One series' memory between batches."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_ts: int | None = None  # the latest time seen
    last_value: float = math.nan  # the value of the last reading processed
    same_run: int = 0  # repeats of last_value so far
    dev_run: int = 0  # length of the current deviation run, signed by its side
    abrupt: bool = False  # did that run begin with a jump?
    fast: float = math.nan  # drift: fast and slow averages
    slow: float = math.nan
    drift_ts: int | None = None  # last drift update
    drift_since: int = 0  # first drift update
    reg: list[float] = field(default_factory=lambda: [0.0] * 5)  # sum T, e, T^2, T*e, weight


@dataclass(slots=True)
class _Batch:
    """What the drift detector needs of one series' readings in a batch."""

    samples: list[int]
    sum_v: float = 0.0
    sum_dt: float = 0.0  # of the times, relative to the batch's first sorted reading
    end_t: int = 0
    stepped: bool = False

    @property
    def mean_v(self) -> float:
        return self.sum_v / len(self.samples)


def _temperature_pair(x: Series, series: Sequence[Series]) -> int | None:
    """The same channel's temperature, else the device's own, else any of the device's."""
    if x.key.measurement != "strain":
        return None
    site, dev = x.key.site, x.key.device
    temps = [
        y
        for y in series
        if (y.key.site, y.key.device, y.key.measurement) == (site, dev, "temperature")
    ]
    for y in temps:
        if y.key.channel == x.key.channel:
            return y.index
    for y in temps:
        if y.key.channel == "":
            return y.index
    return temps[0].index if temps else None


class ReferenceDetectors:
    """All detectors, one sample at a time."""

    def __init__(
        self,
        series: Sequence[Series],
        params: dict[str, DetectorParams] | None = None,
        stats: Literal["batch", "sample"] = "batch",
    ) -> None:
        self._per_sample = stats == "sample"
        table = DEFAULT_PARAMS if params is None else params
        self._config: list[_Config] = []
        for x in series:
            settings: dict[str, Any] = dict(x.detectors)  # the registry's, over the table's
            p = replace(table[x.key.measurement], **settings)
            bridge = x.kind == "bridge"
            self._config.append(
                _Config(
                    params=p,
                    limit=abs(x.limit) if x.limit else math.inf,
                    gap_ns=p.gap_factor * x.interval.total_seconds() * 1e9,
                    group=(x.key.site,) if bridge else (x.key.site, x.key.device),
                    site=x.key.site,
                    measurement=x.key.measurement,
                    pair=_temperature_pair(x, series),
                )
            )
        self._state = [_State() for _ in series]

    def check(self, batch: ReadingBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        series: list[int] = batch.series.tolist()
        ts: list[int] = batch.ts_ns.tolist()
        values: list[float] = batch.values.tolist()
        flags = [0] * n
        scores = [0.0] * n
        order = sorted(range(n), key=lambda i: (series[i], ts[i]))  # sorted() is stable
        t0 = ts[order[0]]
        groups = {k: _Batch(list(g)) for k, g in groupby(order, key=lambda i: series[i])}

        # Statistics and deviations: from the windows as they stood before the batch, or
        # (per sample) from the window as it stands before each sample.
        sigmas = [0.0] * n
        z = [0.0] * n
        deviation = [0] * n
        for k, g in groups.items():
            p, st = self._config[k].params, self._state[k]
            med, sigma = self._stats(st.window, p.noise_floor)
            run = st.dev_run
            for i in g.samples:
                if self._per_sample:
                    med, sigma = self._stats(st.window, p.noise_floor)
                sigmas[i] = sigma
                z[i] = (values[i] - med) / sigma if len(st.window) >= MIN_HISTORY else 0.0
                if abs(z[i]) > p.step_z:
                    deviation[i] = 1 if z[i] > 0 else -1
                if self._per_sample:
                    d = deviation[i]
                    run = d if d == 0 or run == 0 or (run > 0) != (d > 0) else run + d
                    if not (abs(z[i]) > p.spike_z and abs(run) == 1):  # spikes stay out
                        st.window.append(values[i])

        # The series with a sample far off, per group and 10 s bucket (two bucketings).
        moving: dict[Bucket, set[int]] = defaultdict(set)
        for i in range(n):
            if abs(z[i]) > SHARED_Z:
                for key in self._buckets(self._config[series[i]].group, ts[i]):
                    moving[key].add(series[i])

        for k, g in groups.items():
            cfg, st = self._config[k], self._state[k]
            p = cfg.params
            prev_t, prev_v = st.last_ts, st.last_value
            same_run, dev_run, abrupt = st.same_run, st.dev_run, st.abrupt
            for i in g.samples:
                t, v = ts[i], values[i]
                f = 0

                ratio = abs(v) / cfg.limit
                if ratio > 1.0:
                    f |= LIMIT

                absz = abs(z[i])
                dev = deviation[i]
                if dev == 0:
                    dev_run = 0
                elif dev_run != 0 and (dev_run > 0) == (dev > 0):
                    dev_run += dev
                else:
                    dev_run = dev
                if abs(dev_run) <= 1:  # a run begins here (or none is under way)
                    abrupt = abs(v - prev_v) > p.step_z * sigmas[i]
                step = abs(dev_run) >= p.step_samples and abrupt
                spike = absz > p.spike_z and abs(dev_run) == 1
                if (step or spike) and self._shared(moving, cfg.group, t, k):
                    step = spike = False
                if step:
                    f |= STEP
                    g.stepped = True
                if spike:
                    f |= SPIKE

                if prev_t is not None and v == prev_v:
                    same_run += 1
                else:
                    same_run = 0
                if p.stuck_samples > 0 and same_run + 1 >= p.stuck_samples:
                    f |= STUCK

                if prev_t is not None:
                    dt_ns = t - prev_t
                    dt_s = dt_ns / 1e9
                    if dt_s > 0 and abs(v - prev_v) / dt_s > p.max_rate:
                        f |= RATE
                    # As numpy compares int64 with float64: in floating point.
                    if float(dt_ns) > cfg.gap_ns:
                        f |= GAP

                flags[i] = f
                scores[i] = max(ratio, absz / p.spike_z)
                if not spike and not self._per_sample:  # spikes stay out of the window
                    st.window.append(v)
                g.sum_v += v
                g.sum_dt += float(t - t0)
                prev_t, prev_v = t, v
            # The group is in time order, so its last reading has its latest time.
            g.end_t = t
            st.last_ts = t if st.last_ts is None else max(st.last_ts, t)
            st.last_value = v
            st.same_run, st.dev_run, st.abrupt = same_run, dev_run, abrupt

        self._drift(groups, t0, flags)
        batch.flags |= np.array(flags, dtype=np.int32)
        np.maximum(batch.scores, np.array(scores, dtype=np.float32), out=batch.scores)

    @staticmethod
    def _stats(window: deque[float], noise_floor: float) -> tuple[float, float]:
        """Median and robust sigma of a window; sigma also scales the jump that starts a
        step, so an empty window gives the noise floor."""
        if not window:
            return 0.0, noise_floor
        med = statistics.median(window)
        mad = statistics.median([abs(x - med) for x in window])
        return med, max(1.4826 * mad, noise_floor)

    @classmethod
    def _shared(
        cls, moving: dict[Bucket, set[int]], group: tuple[str, ...], t: int, me: int
    ) -> bool:
        """Is another series of the group far off in a bucket of this sample?"""
        return any(moving.get(key, set()) - {me} for key in cls._buckets(group, t))

    @staticmethod
    def _buckets(group: tuple[str, ...], t: int) -> tuple[Bucket, Bucket]:
        half = SHARED_BUCKET_NS // 2
        return (group, 0, t // SHARED_BUCKET_NS), (group, 1, (t + half) // SHARED_BUCKET_NS)

    def _drift(self, groups: dict[int, _Batch], t0: int, flags: list[int]) -> None:
        # For drift_mode "site": the sum and count of the batch means of each measurement
        # at each site.
        site_sum: dict[tuple[str, str], float] = {}
        site_count: dict[tuple[str, str], int] = {}
        for k, g in groups.items():
            cfg = self._config[k]
            if cfg.params.drift_mode == "site":
                key = (cfg.site, cfg.measurement)
                site_sum[key] = site_sum.get(key, 0.0) + g.mean_v
                site_count[key] = site_count.get(key, 0) + 1

        for k, g in groups.items():
            cfg, st = self._config[k], self._state[k]
            p = cfg.params
            x = g.mean_v
            if p.drift_mode == "strain" and cfg.pair is not None:
                pair = groups.get(cfg.pair)
                temp = pair.mean_v if pair is not None else self._state[cfg.pair].last_value
                if math.isfinite(temp):
                    x = g.mean_v - self._thermal_slope(st) * temp
                    self._learn_thermal(st, temp, g.mean_v, g.end_t)
                else:
                    x = math.nan
            elif p.drift_mode == "site" and site_count[(cfg.site, cfg.measurement)] > 1:
                key = (cfg.site, cfg.measurement)
                x = g.mean_v - (site_sum[key] - g.mean_v) / (site_count[key] - 1)

            mean_t = g.sum_dt / len(g.samples) + t0
            hour = (mean_t // HOUR_NS) % 24
            night = NIGHT_UTC_HOURS[0] <= hour < NIGHT_UTC_HOURS[1]
            if not (math.isfinite(x) and math.isfinite(p.drift)):
                continue
            if p.drift_mode == "night" and not night:
                continue
            if st.drift_ts is None:
                st.fast = st.slow = x
                st.drift_ts = st.drift_since = g.end_t
            else:
                dt = max((g.end_t - st.drift_ts) / 1e9, 0.0)
                st.fast += (1.0 - math.exp(-dt / p.drift_fast_s)) * (x - st.fast)
                st.slow += (1.0 - math.exp(-dt / DRIFT_SLOW_S)) * (x - st.slow)
                st.drift_ts = max(st.drift_ts, g.end_t)
            if g.stepped:  # after a step the new level is the reference
                st.fast = st.slow = x
            warm = (g.end_t - st.drift_since) / 1e9 >= DRIFT_WARM_S
            if warm and abs(st.fast - st.slow) > p.drift:
                for i in g.samples:
                    flags[i] |= DRIFT

    @staticmethod
    def _thermal_slope(st: _State) -> float:
        sx, sy, sxx, sxy, w = st.reg
        if not w > 0:
            return STEEL_UE_PER_K
        cov = sxy - sx * sy / w
        var = sxx - sx * sx / w
        return (cov + STEEL_UE_PER_K * THERMAL_PRIOR_VAR) / (var + THERMAL_PRIOR_VAR)

    @staticmethod
    def _learn_thermal(st: _State, temp: float, strain: float, end_t: int) -> None:
        dt = 0.0 if st.drift_ts is None else max((end_t - st.drift_ts) / 1e9, 0.0)
        keep = math.exp(-dt / THERMAL_MEMORY_S)
        obs = (temp, strain, temp * temp, temp * strain, 1.0)
        st.reg = [r * keep + o for r, o in zip(st.reg, obs, strict=True)]
