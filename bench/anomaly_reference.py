"""A straightforward per-sample Python implementation of ``ingest.anomaly.Detectors``.

It is the baseline of ``bench/anomaly_speed.py`` and the oracle of
``tests/unit/test_anomaly_reference.py``: the same detectors with the same semantics, written
the obvious way, one sample at a time, with a ``collections.deque`` window and
``statistics.median`` per series, and no numpy in the loop.

Semantics (those of ``Detectors``, which the oracle test holds both to):

- A batch is processed in (series, timestamp) order; readings with equal timestamps keep
  their order in the batch.
- Each series keeps the last ``WINDOW`` values that were not spikes. Median and MAD are
  taken from the window as it stood at the start of the batch and used for all of that
  series' samples in the batch; with fewer than ``MIN_HISTORY`` values there is no z-score
  (it counts as 0). Sigma is 1.4826 x MAD, never below the measurement's noise floor.
- step: a run of consecutive samples deviating by more than ``step_z`` on the same side,
  at least ``step_samples`` long; spike: a deviation beyond ``spike_z`` that starts such a
  run (its first sample). Runs continue across batches.
- stuck: ``stuck_samples`` or more identical consecutive readings (0 disables it).
- rate: |change| / elapsed time beyond ``max_rate``, for a positive elapsed time.
- gap: more than ``gap_factor`` registry intervals since the previous reading.
- limit: |value| beyond a gauge's design limit.
- The previous reading of a series' first sample in a batch is the last one of its
  previous batch, except that its time is the latest time the series has seen, so a
  late batch neither ends a gap nor reports one.
- The score is the largest of |value| / limit and |z| / spike_z, as float32, and only ever
  raises the batch's score.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from devices.registry import Series
from ingest.anomaly import DEFAULT_PARAMS, MIN_HISTORY, WINDOW, DetectorParams
from ingest.batch import AnomalyFlag, ReadingBatch

LIMIT = int(AnomalyFlag.LIMIT)
SPIKE = int(AnomalyFlag.SPIKE)
STEP = int(AnomalyFlag.STEP)
STUCK = int(AnomalyFlag.STUCK)
RATE = int(AnomalyFlag.RATE)
GAP = int(AnomalyFlag.GAP)


@dataclass(frozen=True, slots=True)
class _Config:
    """One series' thresholds."""

    params: DetectorParams
    limit: float  # inf without a design limit
    gap_ns: float


@dataclass(slots=True)
class _State:
    """One series' memory between batches."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_ts: int | None = None  # the latest time seen
    last_value: float = math.nan  # the value of the last reading processed
    same_run: int = 0  # repeats of last_value so far
    dev_run: int = 0  # length of the current deviation run, signed by its side


class ReferenceDetectors:
    """All detectors, one sample at a time."""

    def __init__(
        self, series: Sequence[Series], params: dict[str, DetectorParams] | None = None
    ) -> None:
        table = DEFAULT_PARAMS if params is None else params
        self._config: list[_Config] = []
        for s in series:
            p = table[s.key.measurement]
            self._config.append(
                _Config(
                    params=p,
                    limit=abs(s.limit) if s.limit else math.inf,
                    gap_ns=p.gap_factor * s.interval.total_seconds() * 1e9,
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
        for k, group in groupby(order, key=lambda i: series[i]):
            cfg, st = self._config[k], self._state[k]
            p = cfg.params
            # The window as it stood before this batch: its values enter it only below.
            warm = len(st.window) >= MIN_HISTORY
            med, sigma = 0.0, 1.0
            if warm:
                med = statistics.median(st.window)
                mad = statistics.median([abs(x - med) for x in st.window])
                sigma = max(1.4826 * mad, p.noise_floor)
            prev_t, prev_v = st.last_ts, st.last_value
            same_run, dev_run = st.same_run, st.dev_run
            for i in group:
                t, v = ts[i], values[i]
                f = 0

                ratio = abs(v) / cfg.limit
                if ratio > 1.0:
                    f |= LIMIT

                z = (v - med) / sigma if warm else 0.0
                absz = abs(z)
                dev = (1 if z > 0 else -1) if absz > p.step_z else 0
                if dev == 0:
                    dev_run = 0
                elif dev_run != 0 and (dev_run > 0) == (dev > 0):
                    dev_run += dev
                else:
                    dev_run = dev
                if abs(dev_run) >= p.step_samples:
                    f |= STEP
                spike = absz > p.spike_z and abs(dev_run) == 1
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
                if not spike:  # spikes stay out of the window
                    st.window.append(v)
                prev_t, prev_v = t, v
            # The group is in time order, so its last reading has its latest time.
            st.last_ts = t if st.last_ts is None else max(st.last_ts, t)
            st.last_value = v
            st.same_run, st.dev_run = same_run, dev_run
        batch.flags |= np.array(flags, dtype=np.int32)
        np.maximum(batch.scores, np.array(scores, dtype=np.float32), out=batch.scores)
