"""Arrival patterns: how the same readings reach the anomaly check in batches.

The check must judge a reading by the readings of its series before it in device time,
whatever batch it comes in; the evaluation feeds each run in every pattern below to a fresh
check and compares the flags (``bench/eval_anomaly.py`` describes the method).

- ``live``: what a live stream delivers. With ``live_tick_ns = 0``, one message per batch:
  the readings of one device at one timestamp, devices interleaved in time order. With a
  tick (the default, for runtime), all readings of one tick of device time per batch: every
  device at most once per batch when the tick is no longer than the fastest device's
  interval, so each series still gets at most one reading per batch.
- ``blocks``: devices sampling faster than ``high_rate_ns`` send blocks of
  ``block_samples`` samples of all their series (one batch per block, in the order the
  blocks complete); slower devices arrive as in ``live``.
- ``minutes``: everything sampled in windows of random length (5-10 min), as the service's
  flush interval collects a busy broker's messages, so no detector can rely on a batch size.
- ``hour``: one clock hour of all series per batch.
- ``backlog``: the whole run in one batch, as after a gateway's outage or an import.

Within a batch readings are in (time, series) order, and the batches come in the order
their last reading was taken, so every series' readings arrive in time order.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt

from bench.eval_scoring import F64, HOUR, I32, I64, MIN, NS, U8, Agreement, Trace, flag_agreement
from devices.registry import Series
from ingest.batch import AnomalyFlag, ReadingBatch

Pattern = Literal["live", "blocks", "minutes", "hour", "backlog"]
PATTERNS: Final[tuple[Pattern, ...]] = get_args(Pattern)


class Check(Protocol):
    def check(self, batch: ReadingBatch) -> None: ...


CheckFactory = Callable[[Sequence[Series]], Check]


@dataclass(frozen=True)
class Arrivals:
    """Settings of the patterns; times in ns of device time."""

    live_tick_ns: int = 10 * NS  # 0: one message (device, timestamp) per batch
    block_samples: int = 100
    high_rate_ns: int = NS  # devices with a shorter interval send blocks
    minutes_ns: tuple[int, int] = (5 * MIN, 10 * MIN)


@dataclass(frozen=True)
class Feed:
    """Batch k holds the rows ``order[bounds[k]:bounds[k + 1]]``, in that order."""

    order: I64
    bounds: I64

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def batches(self) -> Iterator[I64]:
        for a, b in itertools.pairwise(self.bounds.tolist()):
            yield self.order[a:b]


def batch_feed(key: I64, ts_ns: I64, series: I64) -> Feed:
    """One batch per distinct ``key``, in (ts_ns, series) order inside; batches ordered by
    their last timestamp (when the message is complete), ties by key."""
    n = len(key)
    if n == 0:
        return Feed(np.zeros(0, np.int64), np.zeros(1, np.int64))
    keys, inv = np.unique(key, return_inverse=True)
    last = np.full(len(keys), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inv, ts_ns)
    order = np.lexsort((series, ts_ns, inv, last[inv])).astype(np.int64)
    k = inv[order]
    bounds = np.concatenate([[0], np.flatnonzero(k[1:] != k[:-1]) + 1, [n]])
    return Feed(order, bounds.astype(np.int64))


def _live_key(ts_ns: I64, device: I64, start_ns: int, tick_ns: int) -> I64:
    if tick_ns > 0:
        return np.asarray((ts_ns - start_ns) // tick_ns, dtype=np.int64)
    _, rank = np.unique(ts_ns, return_inverse=True)
    return np.asarray(rank.astype(np.int64) * (int(device.max()) + 1) + device, dtype=np.int64)


def _block_key(ts_ns: I64, device: I64, samples: int) -> I64:
    """Per row: its device's block number, ``samples`` distinct timestamps per block,
    combined with the device."""
    n_dev = int(device.max()) + 1
    order = np.lexsort((ts_ns, device))
    d, t = device[order], ts_ns[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (d[1:] != d[:-1]) | (t[1:] != t[:-1])
    stamp = np.cumsum(new) - 1  # distinct (device, ts) index
    first_of_device = np.ones(len(order), dtype=bool)
    first_of_device[1:] = d[1:] != d[:-1]
    base = np.maximum.accumulate(np.where(first_of_device, stamp, 0))
    block = np.empty(len(order), dtype=np.int64)
    block[order] = (stamp - base) // samples
    return np.asarray(block * n_dev + device, dtype=np.int64)


def arrange(
    pattern: Pattern,
    *,
    ts_ns: I64,
    series: I64,
    device: I64,
    period_ns: I64,
    start_ns: int,
    rng: np.random.Generator,
    arrivals: Arrivals = Arrivals(),
) -> Feed:
    """The batches of one pattern over the given readings (the ones that reach the check):
    per row its timestamp, series, device (a small int) and its device's sample interval."""
    if not len(ts_ns) == len(series) == len(device) == len(period_ns):
        raise ValueError("reading columns differ in length")
    if len(ts_ns) == 0:
        return batch_feed(ts_ns, ts_ns, series)
    if pattern == "live":
        key = _live_key(ts_ns, device, start_ns, arrivals.live_tick_ns)
    elif pattern == "blocks":
        high = period_ns < arrivals.high_rate_ns
        live = _live_key(ts_ns, device, start_ns, arrivals.live_tick_ns)
        blocks = _block_key(ts_ns, device, arrivals.block_samples)
        key = np.where(high, blocks, live) * 2 + high
    elif pattern == "minutes":
        lo, hi = arrivals.minutes_ns
        span = int(ts_ns.max()) + 1 - start_ns
        lengths = rng.integers(lo, hi + 1, size=span // lo + 2)
        edges = start_ns + np.cumsum(lengths)
        key = np.searchsorted(edges, ts_ns, side="right").astype(np.int64)
    elif pattern == "hour":
        key = ts_ns // HOUR
    elif pattern == "backlog":
        key = np.zeros(len(ts_ns), dtype=np.int64)
    else:
        raise ValueError(f"unknown arrival pattern {pattern!r} (known: {PATTERNS})")
    return batch_feed(key, ts_ns, series)


@dataclass(frozen=True)
class Fed:
    flags: I32  # per row, what the check set
    batches: int
    seconds: float  # spent inside the check


def feed_check(check: Check, feed: Feed, *, series: I64, ts_ns: I64, values: F64) -> Fed:
    """Pass the rows to ``check`` batch by batch as ``feed`` says; collect its flags."""
    flags = np.zeros(len(values), dtype=np.int32)
    seconds = 0.0
    s32 = series.astype(np.int32)
    for rows in feed.batches():
        batch = ReadingBatch.unchecked(s32[rows], ts_ns[rows], values[rows])
        t0 = time.perf_counter()
        check.check(batch)
        seconds += time.perf_counter() - t0
        flags[rows] |= batch.flags
    return Fed(flags, len(feed), seconds)


@dataclass(frozen=True)
class Readings:
    """Simulated samples of one run, sorted by (series, ts_ns); gap samples left out."""

    series: I64
    ts_ns: I64
    values: F64
    labels: U8


@dataclass(frozen=True)
class PatternRun:
    """One run fed in one pattern to a fresh check: per-sample results and the cost."""

    trace: Trace  # the check's flags, plus RANGE on quarantined samples
    checked: int  # readings passed to the check
    batches: int
    seconds: float  # spent inside the check


def quarantined(series: Sequence[Series], readings: Readings) -> npt.NDArray[np.bool_]:
    """Readings outside their series' [minimum, maximum]: the decoder quarantines them, so
    they never reach the check."""
    lo = np.array([s.minimum for s in series])[readings.series]
    hi = np.array([s.maximum for s in series])[readings.series]
    return np.asarray((readings.values < lo) | (readings.values > hi))


def run_patterns(
    series: Sequence[Series],
    readings: Readings,
    factory: CheckFactory,
    patterns: Sequence[Pattern],
    *,
    start_ns: int,
    rng: np.random.Generator,
    arrivals: Arrivals = Arrivals(),
) -> dict[Pattern, PatternRun]:
    """Feed the in-range readings to a fresh check per pattern and collect the flags;
    quarantined readings get RANGE and never reach the check. A pattern whose batches are
    the same as an earlier one's (``blocks`` without any fast device is ``live``) reuses
    that run: the check is deterministic, so a second pass could only cost time."""
    out_of_range = quarantined(series, readings)
    range_flags = np.where(out_of_range, np.int32(AnomalyFlag.RANGE), np.int32(0))
    passed = np.flatnonzero(~out_of_range)
    devices: dict[tuple[str, str], int] = {}
    device_of = np.array(
        [devices.setdefault((s.key.site, s.key.device), len(devices)) for s in series], np.int64
    )
    period_of = np.array([round(s.interval.total_seconds() * 1e6) * 1000 for s in series])
    rows_series = readings.series[passed]
    ts = readings.ts_ns[passed]
    values = readings.values[passed]
    done: list[tuple[Feed, PatternRun]] = []
    out: dict[Pattern, PatternRun] = {}
    for pattern in patterns:
        feed = arrange(
            pattern,
            ts_ns=ts,
            series=rows_series,
            device=device_of[rows_series],
            period_ns=period_of[rows_series],
            start_ns=start_ns,
            rng=rng,
            arrivals=arrivals,
        )
        same = [
            run
            for f, run in done
            if np.array_equal(f.bounds, feed.bounds) and np.array_equal(f.order, feed.order)
        ]
        if same:
            out[pattern] = same[0]
            continue
        fed = feed_check(factory(series), feed, series=rows_series, ts_ns=ts, values=values)
        flags = range_flags.astype(np.int32)
        flags[passed] |= fed.flags
        trace = Trace(readings.series, readings.ts_ns, flags, readings.labels)
        out[pattern] = PatternRun(trace, len(passed), fed.batches, fed.seconds)
        done.append((feed, out[pattern]))
    return out


def agreements(runs: dict[Pattern, PatternRun]) -> dict[tuple[Pattern, Pattern], Agreement]:
    """Flag agreement (``flag_agreement``) of every pair of patterns of one run."""
    return {
        (a, b): flag_agreement(runs[a].trace.flags, runs[b].trace.flags)
        for a, b in itertools.combinations(runs, 2)
    }
