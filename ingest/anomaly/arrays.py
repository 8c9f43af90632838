"""Array helpers of the anomaly check: ordering, runs, segment statistics and lookups of
the latest reading at a time, all vectorised over a whole batch."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
NO_TIME = np.iinfo(np.int64).min  # no reading yet


class StateArrays:
    """Per-series state kept in arrays named in ``_STATE``: what a restart saves and
    restores, by series (``rows`` index this registry's series)."""

    _STATE: tuple[str, ...] = ()

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).copy() for k in self._STATE}

    def restore(self, rows: I64, saved: dict[str, np.ndarray]) -> None:
        for k in self._STATE:
            if k in saved:
                getattr(self, k)[rows] = saved[k]


def series_time_order(series: npt.NDArray[np.int32], ts: I64, n_series: int) -> I64:
    """Readings sorted by series, then time. Readings usually arrive in time order per
    series, so a stable sort by series is enough (numpy radix-sorts 16-bit keys, three
    times faster than its merge sort of 32-bit ones); the full two-key sort runs only when
    some series' times go backwards."""
    key = series.astype(np.uint16) if n_series <= 1 << 16 else series
    order = np.argsort(key, kind="stable")
    s, t = series[order], ts[order]
    if (t[1:] < t[:-1])[s[1:] == s[:-1]].any():
        return np.lexsort((ts, series))
    return order


def series_groups(s: I64) -> tuple[I64, I64, I64]:
    """For readings sorted by series (``s``): where each series' readings begin, how many
    there are, and which series they belong to."""
    n = len(s)
    first = np.ones(n, dtype=bool)
    first[1:] = s[1:] != s[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, n))
    return starts, sizes, s[starts]


def run_heads(follows: Bool, at_start: Bool) -> I64:
    """For each element, the index of the first element of its run in this batch."""
    k = np.arange(len(follows), dtype=np.int64)
    head = ~follows | at_start
    return np.maximum.accumulate(np.where(head, k, 0))


def run_lengths(follows: Bool, at_start: Bool, carry: I64) -> tuple[I64, I64, Bool]:
    """Lengths of runs, counted on the few samples that can be in one.

    The elements are sorted positions (in a batch sorted by series, then time) of the
    samples that take part. ``follows[k]`` says element ``k`` continues the run of the
    element before it, or, for a series' first sample in the batch (``at_start[k]``), the
    run the series left off with, which was ``carry[k]`` long. Returns the run length up
    to and including each element, the index of its run's first element in the batch, and
    whether that run was carried over from the previous batch."""
    k = np.arange(len(follows), dtype=np.int64)
    start = run_heads(follows, at_start)
    carried = follows[start] & at_start[start]
    return k - start + 1 + np.where(carried, carry[start], 0), start, carried


def neighbours(pos: I64, first: Bool) -> Bool:
    """For sorted positions: is each the next sample of the same series after the one
    before it in ``pos``?"""
    out = np.zeros(len(pos), dtype=bool)
    out[1:] = (pos[1:] - pos[:-1]) == 1
    return out & ~first[pos]


SegmentStats = tuple[F64, F64, F64, F64, F64, F64]


def segment_stats(values: F64, row_start: I64, width: I64) -> SegmentStats:
    """For every row ``values[row_start[i]:row_start[i] + width[i]]``: median, MAD, the
    largest deviation above and below the median, and median and MAD of the changes from
    one reading to the next. Rows are grouped by width (a handful of distinct widths: one
    per sampling rate), so each group is a few 2-D partitions."""
    med = np.empty(len(row_start))
    mad = np.empty(len(row_start))
    above = np.empty(len(row_start))
    below = np.empty(len(row_start))
    step_med = np.empty(len(row_start))
    step_mad = np.empty(len(row_start))
    for w in np.unique(width).tolist():
        sel = np.flatnonzero(width == w)
        block = values[row_start[sel][:, None] + np.arange(w)]
        m = np.median(block, axis=1)
        med[sel] = m
        dev = block - m[:, None]
        mad[sel] = np.median(np.abs(dev), axis=1)
        above[sel] = dev.max(axis=1)
        below[sel] = -dev.min(axis=1)
        diff = np.diff(block, axis=1)
        dm = np.median(diff, axis=1)
        step_med[sel] = dm
        step_mad[sel] = np.median(np.abs(diff - dm[:, None]), axis=1)
    return med, mad, above, below, step_med, step_mad


def time_keys(high: I64, t: I64, base: int, unit: int) -> I64:
    """One sortable integer per (high, t): ``high`` in the upper bits, the time since
    ``base`` in units of ``unit`` ns below. Times before ``base`` count as ``base``."""
    rel: I64 = np.maximum(t - base, 0) // unit
    out: I64 = (high << 42) | rel
    return out


def key_unit(t_min: int, t_max: int) -> int:
    """The coarsest power-of-two time unit that keeps 42 bits enough for the span, so two
    readings a nanosecond apart still sort apart whenever the span allows it."""
    span = max(t_max - t_min, 1)
    return 1 << max(0, int(span).bit_length() - 42)


def latest_at(keys: I64, queries: I64) -> I64:
    """Index into sorted ``keys`` of the last key <= each query (a reading of the same
    series at or before the time), or -1; the caller checks the series matches."""
    return np.searchsorted(keys, queries, side="right").astype(np.int64) - 1
