"""The types that flow through the data path: inbound messages, columnar reading batches,
quarantine records and anomaly flags."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import numpy.typing as npt

from devices.codecs import Decoded


class AnomalyFlag(IntFlag):
    """Which detectors marked a reading; stored as an integer bit set with the reading.

    Sensor faults and structural findings are kept apart because engineers act differently
    on each: ``LIMIT`` and ``SHIFT`` are about the structure, the rest about the sensor.
    """

    NONE = 0
    RANGE = 1 << 0
    LIMIT = 1 << 1
    SPIKE = 1 << 2
    STUCK = 1 << 3
    STEP = 1 << 4
    DRIFT = 1 << 5
    RATE = 1 << 6
    GAP = 1 << 7
    SHIFT = 1 << 8

    @classmethod
    def names(cls, bits: int) -> str:
        """Detector names joined with ``+``, or an empty string for a clean reading."""
        return "+".join(
            f.name.lower() for f in cls if f.value and bits & f.value and f.name is not None
        )


def message_digest(topic: str, payload: bytes) -> bytes:
    """Identifies a message by content, for the quarantine and the receipt times."""
    return hashlib.sha256(topic.encode("utf-8", "surrogatepass") + b"\0" + payload).digest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """The receipt time given to a message without device time, kept with the commit."""

    digest: bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """One quarantined message: the raw bytes and a reason a person can read.

    ``records`` are the positions of the records that were refused while the others of
    the message were stored (``RecordRejected.indices``); ``None`` when nothing of the
    message was stored, so a replay decodes all of it.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_ns: int
    records: tuple[int, ...] | None = None


@dataclass(slots=True)
class ReadingBatch:
    """Readings of many messages, columnar; ``series`` indexes ``Registry.series``.

    ``flags`` and ``scores`` are filled by the anomaly check before the commit.
    """

    series: npt.NDArray[np.int32]
    ts_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    flags: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def empty(cls) -> ReadingBatch:
        return cls.concat([])

    @classmethod
    def concat(cls, parts: Sequence[Decoded]) -> ReadingBatch:
        """Join messages' readings; list parts (SenML) are gathered in Python first, since
        one numpy conversion per batch is far cheaper than one per message."""
        idx: list[int] = []
        ts: list[int] = []
        vals: list[float] = []
        arrays: list[Decoded] = []
        for p in parts:
            if isinstance(p.values, list):
                idx.extend(p.series)
                ts.extend(p.ts_ns)
                vals.extend(p.values)
            else:
                arrays.append(p)
        series = np.concatenate([np.array(idx, np.int32), *(np.asarray(p.series) for p in arrays)])
        ts_ns = np.concatenate([np.array(ts, np.int64), *(np.asarray(p.ts_ns) for p in arrays)])
        values = np.concatenate(
            [np.array(vals, np.float64), *(np.asarray(p.values) for p in arrays)]
        )
        return cls.unchecked(series, ts_ns, values)

    @classmethod
    def unchecked(
        cls, series: npt.ArrayLike, ts_ns: npt.ArrayLike, values: npt.ArrayLike
    ) -> ReadingBatch:
        """Readings before the anomaly check: no flags, zero scores."""
        v = np.asarray(values, dtype=np.float64)
        return cls(
            np.asarray(series, dtype=np.int32),
            np.asarray(ts_ns, dtype=np.int64),
            v,
            np.zeros(len(v), np.int32),
            np.zeros(len(v), np.float32),
        )
