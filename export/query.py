"""What an export asks for, and the rows it produces, independent of the output format.

An export is read in time chunks (a day of readings, or whole buckets), so a year costs the
memory of a day: each chunk is one ``ReadingQuery`` to the source, a ``ReadingSource`` of
``ingest`` (a store, or the Flux reader for InfluxDB).

Rows are plain tuples matching ``Column`` lists; the formats module only formats them.

Gaps are visible in two ways (README, "Export formats"):
- at a fixed resolution every bucket of the range is emitted, empty or not: an empty bucket
  has no mean, min or max and a ``count`` of 0 beside the ``expected`` count derived from the
  device's registry interval;
- in raw exports no rows are invented; the first reading after a silence carries the ``gap``
  anomaly flag the ingest check stored with it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from devices.registry import ID_PATTERN, Registry, Series
from ingest.batch import AnomalyFlag
from ingest.stores.base import ReadingQuery, ReadingSource, StoredReading

NS = 1_000_000_000
LOCAL_ZONE = ZoneInfo("Europe/Berlin")
_ID_RE = re.compile(ID_PATTERN)
_RAW_CHUNK_NS = 86_400 * NS


class Resolution(StrEnum):
    RAW = "raw"
    MIN1 = "1min"
    MIN15 = "15min"
    HOUR1 = "1h"
    DAY1 = "1d"

    @property
    def step_ns(self) -> int:
        """Bucket length; a day is a local calendar day and may last 23 or 25 hours."""
        return {"raw": 0, "1min": 60, "15min": 900, "1h": 3600, "1d": 86_400}[self.value] * NS


class Layout(StrEnum):
    LONG = "long"
    WIDE = "wide"


class Statistic(StrEnum):
    """The value a wide export shows per bucket (long exports carry all three)."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"


class ExportRefused(ValueError):
    """The request cannot be served as asked; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class ExportRequest:
    site: str
    start_ns: int
    end_ns: int
    devices: tuple[str, ...] = ()  # empty: every device of the site
    measurements: tuple[str, ...] = ()  # empty: every measurement
    resolution: Resolution = Resolution.RAW
    layout: Layout = Layout.LONG
    statistic: Statistic = Statistic.MEAN


ColumnKind = Literal["time", "local_time", "text", "float", "int"]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: ColumnKind
    unit: str = ""
    description: str = ""


def select_series(registry: Registry, request: ExportRequest) -> list[Series]:
    """The registry series a request covers, checked: unknown ids are refused, not ignored,
    so a typo never yields an empty file that looks like missing data."""
    site = registry.sites.get(request.site)
    if site is None:
        raise ExportRefused(f"unknown site {request.site!r}")
    if request.end_ns <= request.start_ns:
        raise ExportRefused("the end must lie after the start")
    for value in (*request.devices, *request.measurements):
        if not _ID_RE.fullmatch(value):
            raise ExportRefused(f"{value!r} is not a valid id")
    for dev in request.devices:
        if dev not in site.devices:
            raise ExportRefused(f"unknown room or device {dev!r} at {request.site}")
    chosen = [site.devices[d] for d in request.devices or site.devices]
    series = [s for d in chosen for s in d.series.values()]
    known = {s.key.measurement for s in series}
    for m in request.measurements:
        if m not in known:
            raise ExportRefused(f"no measurement {m!r} in the chosen rooms")
    if request.measurements:
        series = [s for s in series if s.key.measurement in request.measurements]
    return sorted(series, key=lambda s: (s.key.device, s.key.channel, s.key.measurement))


def wide_header(s: Series, units: Mapping[str, str] | None = None) -> str:
    """``device [channel] measurement [unit]``; ``units`` maps SenML unit names to the
    texts people write (German Excel's CSV), else the header carries the SenML name."""
    parts = [s.key.device, *([s.key.channel] if s.key.channel else []), s.key.measurement]
    unit = s.unit if units is None else units.get(s.unit, s.unit)
    return f"{' '.join(parts)} [{unit}]"


_TIME_COLUMNS = (
    Column("time", "time", description="UTC, start of the bucket at a fixed resolution"),
    Column("local_time", "local_time", description="the same instant in Europe/Berlin"),
)
_KEY_COLUMNS = (
    Column("site", "text", description="site (school) id"),
    Column("device", "text", description="device (room) id"),
    Column("channel", "text", description="channel id, empty for a device-level sensor"),
    Column("measurement", "text", description="measurement name"),
)


def columns(
    request: ExportRequest, series: Sequence[Series], units: Mapping[str, str] | None = None
) -> list[Column]:
    """The export's columns; with ``units`` (SenML name -> text) the wide headers and the
    columns' units are written as people write them."""
    if request.layout == Layout.WIDE:
        return [
            *_TIME_COLUMNS,
            *(
                Column(
                    wide_header(s, units),
                    "float",
                    s.unit if units is None else units.get(s.unit, s.unit),
                    s.measurement.description,
                )
                for s in series
            ),
        ]
    if request.resolution == Resolution.RAW:
        return [
            *_TIME_COLUMNS,
            *_KEY_COLUMNS,
            Column("value", "float", description="reading, in the unit of the row"),
            Column("unit", "text", description="unit of value"),
            Column("anomaly", "text", description="anomaly flags joined with +, empty if clean"),
            Column("score", "float", description="anomaly score (largest detector score)"),
        ]
    return [
        *_TIME_COLUMNS,
        *_KEY_COLUMNS,
        Column("mean", "float", description="mean of the bucket's readings, empty if none"),
        Column("min", "float", description="smallest reading of the bucket, empty if none"),
        Column("max", "float", description="largest reading of the bucket, empty if none"),
        Column("count", "int", description="readings in the bucket; 0 is a gap"),
        Column("expected", "int", description="readings the device's interval promises"),
        Column("unit", "text", description="unit of mean, min and max"),
        Column("anomaly", "text", description="anomaly flags of any reading in the bucket"),
    ]


# --- buckets ------------------------------------------------------------------------------


def _local_midnight_ns(day: date) -> int:
    return int(datetime.combine(day, time(0), LOCAL_ZONE).timestamp()) * NS


def bucket_starts(start_ns: int, end_ns: int, resolution: Resolution) -> Iterator[int]:
    """Bucket starts covering [start, end): the first bucket is the one holding ``start``.
    Minutes, quarters and hours are aligned in UTC, which is the same as in Berlin (its
    offsets are whole hours); days are Berlin calendar days, as a student reads them."""
    if resolution == Resolution.DAY1:
        day = datetime.fromtimestamp(start_ns // NS, LOCAL_ZONE).date()
        while (t := _local_midnight_ns(day)) < end_ns:
            yield t
            day += timedelta(days=1)
        return
    step = resolution.step_ns
    t = start_ns - start_ns % step
    while t < end_ns:
        yield t
        t += step


def _bucket_end(t: int, resolution: Resolution) -> int:
    if resolution == Resolution.DAY1:
        day = datetime.fromtimestamp(t // NS, LOCAL_ZONE).date()
        return _local_midnight_ns(day + timedelta(days=1))
    return t + resolution.step_ns


# --- rows ---------------------------------------------------------------------------------

# Enum iteration per reading would cost more than the rest of a row; a handful of bit sets
# occur in practice, so their names are computed once each.
flag_names = functools.cache(AnomalyFlag.names)

Row = tuple[Any, ...]  # cells: int ns for times, str, float, int, or None when empty
Progress = Callable[[int], None]  # called with the time (ns) up to which rows are out


def _query(request: ExportRequest, start_ns: int, end_ns: int) -> ReadingQuery:
    # Narrowing in the store only when one id is asked for; several are filtered here.
    device = request.devices[0] if len(request.devices) == 1 else None
    meas = request.measurements[0] if len(request.measurements) == 1 else None
    return ReadingQuery(request.site, start_ns, end_ns, device, meas)


def _raw_readings(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[tuple[int, StoredReading]]:
    """(position in ``series``, reading), chunk by chunk, in the source's order."""
    pos = {(s.key.device, s.key.channel, s.key.measurement): i for i, s in enumerate(series)}
    t = request.start_ns
    while t < request.end_ns:
        upto = min(t + _RAW_CHUNK_NS, request.end_ns)
        for r in source.readings(_query(request, t, upto)):
            i = pos.get((r.device, r.channel, r.measurement))
            # The range is checked here too: a row outside it would appear twice.
            if i is not None and t <= r.ts_ns < upto:
                yield i, r
        progress(upto)
        t = upto


def raw_long_rows(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[Row]:
    names = flag_names
    for _, r in _raw_readings(source, request, series, progress):
        yield (
            r.ts_ns,
            r.ts_ns,
            r.site,
            r.device,
            r.channel,
            r.measurement,
            r.value,
            r.unit,
            names(r.anomaly),
            round(r.score, 4),
        )


def raw_wide_rows(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[Row]:
    """One row per distinct timestamp; a series without a reading at that instant leaves its
    cell empty (devices are not synchronised, so rows are sparse: a resolution fills them)."""
    n = len(series)
    current: list[object] | None = None
    current_ts = -1
    for i, r in _raw_readings(source, request, series, progress):
        if r.ts_ns != current_ts:
            if current is not None:
                yield (current_ts, current_ts, *current)
            current = [None] * n
            current_ts = r.ts_ns
        assert current is not None
        current[i] = r.value
    if current is not None:
        yield (current_ts, current_ts, *current)


I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class _Chunk:
    """Readings of one chunk, column-wise: position in the series list, time, value, flags."""

    pos: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Buckets:
    """Per-series aggregates of consecutive buckets, flattened as series * buckets."""

    starts: I64
    count: I64
    total: F64
    low: F64
    high: F64
    flags: I64

    @classmethod
    def of(cls, starts: list[int], n_series: int, chunk: _Chunk) -> _Buckets:
        nb = len(starts)
        size = n_series * nb
        b = cls(
            np.array(starts, dtype=np.int64),
            np.zeros(size, np.int64),
            np.zeros(size, np.float64),
            np.full(size, np.inf),
            np.full(size, -np.inf),
            np.zeros(size, np.int64),
        )
        if chunk.ts:
            idx = np.searchsorted(b.starts, np.array(chunk.ts, np.int64), side="right") - 1
            key = np.array(chunk.pos, np.int64) * nb + idx
            vals = np.array(chunk.value, np.float64)
            b.count += np.bincount(key, minlength=size)
            b.total += np.bincount(key, weights=vals, minlength=size)
            np.minimum.at(b.low, key, vals)
            np.maximum.at(b.high, key, vals)
            np.bitwise_or.at(b.flags, key, np.array(chunk.flags, np.int64))
        return b


def _bucket_chunks(request: ExportRequest) -> Iterator[list[int]]:
    """Consecutive bucket starts, about a day's worth (at least one bucket) per chunk."""
    chunk: list[int] = []
    for t in bucket_starts(request.start_ns, request.end_ns, request.resolution):
        if chunk and t - chunk[0] >= _RAW_CHUNK_NS:
            yield chunk
            chunk = []
        chunk.append(t)
    if chunk:
        yield chunk


def _aggregated(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[tuple[int, int, _Buckets]]:
    """(bucket start, bucket end, aggregates) per chunk of buckets."""
    pos = {(s.key.device, s.key.channel, s.key.measurement): i for i, s in enumerate(series)}
    for starts in _bucket_chunks(request):
        lo = max(starts[0], request.start_ns)
        hi = min(_bucket_end(starts[-1], request.resolution), request.end_ns)
        got = _Chunk()
        for r in source.readings(_query(request, lo, hi)):
            i = pos.get((r.device, r.channel, r.measurement))
            if i is not None and lo <= r.ts_ns < hi:
                got.pos.append(i)
                got.ts.append(r.ts_ns)
                got.value.append(r.value)
                got.flags.append(r.anomaly)
        yield lo, hi, _Buckets.of(starts, len(series), got)
        progress(hi)


def _expected(series: Series, start_ns: int, end_ns: int) -> int:
    interval_ns = int(series.interval.total_seconds() * NS)
    # Rounded: a cut bucket holds either count of the device's grid points, by its phase.
    return max(0, (end_ns - start_ns + interval_ns // 2) // interval_ns) if interval_ns else 0


def aggregated_long_rows(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[Row]:
    names = flag_names
    res = request.resolution
    for lo, hi, b in _aggregated(source, request, series, progress):
        nb = len(b.starts)
        for j, t in enumerate(b.starts.tolist()):
            # The first and last bucket may be cut by the range; expect only what lies in it.
            t_lo, t_hi = max(t, lo), min(_bucket_end(t, res), hi)
            for i, s in enumerate(series):
                k = i * nb + j
                n = int(b.count[k])
                yield (
                    t,
                    t,
                    s.key.site,
                    s.key.device,
                    s.key.channel,
                    s.key.measurement,
                    float(b.total[k] / n) if n else None,
                    float(b.low[k]) if n else None,
                    float(b.high[k]) if n else None,
                    n,
                    _expected(s, t_lo, t_hi),
                    s.unit,
                    names(int(b.flags[k])),
                )


def aggregated_wide_rows(
    source: ReadingSource, request: ExportRequest, series: Sequence[Series], progress: Progress
) -> Iterator[Row]:
    for _, _, b in _aggregated(source, request, series, progress):
        nb = len(b.starts)
        counts = b.count.reshape(len(series), nb)
        if request.statistic == Statistic.MEAN:
            with np.errstate(invalid="ignore", divide="ignore"):
                stat = b.total.reshape(len(series), nb) / counts
        elif request.statistic == Statistic.MIN:
            stat = b.low.reshape(len(series), nb)
        else:
            stat = b.high.reshape(len(series), nb)
        values = np.where(counts > 0, stat, np.nan).T.tolist()
        for t, row in zip(b.starts.tolist(), values, strict=True):
            yield (t, t, *(None if math.isnan(v) else v for v in row))


def rows(
    source: ReadingSource,
    request: ExportRequest,
    series: Sequence[Series],
    progress: Progress = lambda _t: None,
) -> Iterator[Row]:
    """The export's rows, matching ``columns(request, series)``."""
    if request.resolution == Resolution.RAW:
        if request.layout == Layout.WIDE:
            return raw_wide_rows(source, request, series, progress)
        return raw_long_rows(source, request, series, progress)
    if request.layout == Layout.WIDE:
        return aggregated_wide_rows(source, request, series, progress)
    return aggregated_long_rows(source, request, series, progress)


def utc_datetime(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns // NS, UTC) + timedelta(microseconds=ts_ns % NS // 1000)
