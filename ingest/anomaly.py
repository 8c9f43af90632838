"""The anomaly check between validation and the durable commit.

Checks are vectorised over the whole batch (numpy, no per-sample Python loop) and write
their results into the batch's ``flags`` and ``scores`` columns, which are stored with each
reading. This module holds the contract and the design-limit check; the statistical
detectors (spike, stuck, step, drift, rate, gap) plug in behind the same contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from devices.registry import Series
from ingest.batch import AnomalyFlag, ReadingBatch


class AnomalyCheck(Protocol):
    def check(self, batch: ReadingBatch) -> None:
        """Set ``batch.flags`` bits and raise ``batch.scores`` in place."""


class LimitCheck:
    """Flags a bridge gauge beyond its design limit (a structural finding, not a sensor
    fault). The score is the reading's share of the limit, so 0.95 reads as "95 % of the
    limit", as in the alarm schemes of structural engineers."""

    def __init__(self, series: Sequence[Series]) -> None:
        self._limit = np.array(
            [abs(s.limit) if s.limit else np.inf for s in series], dtype=np.float64
        )

    def check(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        ratio = np.abs(batch.values) / self._limit[batch.series]
        batch.flags |= np.where(ratio > 1.0, np.int32(AnomalyFlag.LIMIT), np.int32(0))
        np.maximum(batch.scores, ratio.astype(np.float32), out=batch.scores)
