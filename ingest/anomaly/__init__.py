"""The anomaly check between validation and the durable commit.

Checks are vectorised over the whole batch (numpy, no per-sample Python loop) and write
their results into the batch's ``flags`` and ``scores`` columns, which are stored with each
reading. Every reading is judged against the readings of its series that precede it in
device time, so a backlog of days in one batch gets the flags it would have got live
(``detectors`` says how). Per-series state lives in arrays indexed by the registry's
series index and is saved and loaded, so a restart neither flags everything nor nothing.

Detectors, each a flag bit of ``AnomalyFlag`` (the README's "Anomaly detection" says why
each exists and what its defaults are). Thresholds marked z are in robust standard
deviations of the series itself (1.4826 x MAD of its previous segment), never below the
measurement's noise floor:

- ``limit`` (structure): |value| beyond a gauge's design limit from the registry.
- ``shift`` (structure): strain (after temperature) beyond ``shift_z`` for ``shift_min_s``
  without having begun as one sensor's lone jump: a settlement builds up over minutes, or
  moves several gauges at once.
- ``spike`` (sensor): a lone reading beyond ``spike_z``, not shared with a neighbour.
- ``step`` (sensor): a lasting deviation beyond ``step_z`` that began with a jump of the
  series alone, for ``step_samples`` readings and ``step_min_s``: longer than a lorry.
- ``stuck`` (sensor): the same value repeated for longer than the series' own longest
  recent flat run allows (twice it by default) and at least ``stuck_samples`` times.
- ``rate`` (sensor): change between consecutive readings faster than the physics allows.
- ``gap`` (sensor): the first reading after more than ``gap_factor`` expected intervals.
- ``drift`` (sensor): a fast moving average leaving a slow one, per segment, on a signal
  without the normal cycles (``drift`` says which).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from devices.registry import Series
from ingest.anomaly.detectors import SEGMENT, AnomalyCheck, Detectors
from ingest.anomaly.params import DEFAULT_PARAMS, DetectorParams
from ingest.batch import AnomalyFlag, ReadingBatch


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


__all__ = [
    "DEFAULT_PARAMS",
    "SEGMENT",
    "AnomalyCheck",
    "DetectorParams",
    "Detectors",
    "LimitCheck",
    "build_check",
]
