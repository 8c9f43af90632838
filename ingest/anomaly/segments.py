"""Reference statistics per segment of a series' own sequence of readings.

Each series' readings are cut into segments of ``width`` consecutive readings, counted
over the series' whole life; a reading is judged against the median and MAD of the
segment before its own. The statistics so depend only on the series' sequence of
readings, never on how it was split into batches, and cost one median per segment.
"""

from __future__ import annotations

import numpy as np

from ingest.anomaly.arrays import F64, I64, Bool, segment_stats, series_groups

EPOCH_NS = 1_600_000_000 * 1_000_000_000  # keeps time / tau small in fading maxima
_TAIL_TAU_S = 12 * 3600.0  # usual excursions: those of the last half day


class SegmentEvents:
    """Segments completed in a batch: series, the batch position (sorted order) of the
    segment's last reading, and its median and robust sigma."""

    __slots__ = ("end", "median", "series", "sigma")

    def __init__(self, series: I64, end: I64, median: F64, sigma: F64) -> None:
        self.series, self.end, self.median, self.sigma = series, end, median, sigma


class Table:
    """Reference statistics, one row per series of a batch (as the state had them) and
    one per segment the batch completes: median, robust sigma, median and sigma of the
    change from one reading to the next, and the fading largest excursions above and below
    the median (log(size) + time / tau)."""

    __slots__ = ("above_key", "below_key", "median", "sigma", "step", "step_sigma")

    def __init__(
        self, median: F64, sigma: F64, step: F64, step_sigma: F64, above_key: F64, below_key: F64
    ) -> None:
        self.median, self.sigma, self.step, self.step_sigma = median, sigma, step, step_sigma
        self.above_key, self.below_key = above_key, below_key


class Segments:
    """Per reading: its z-score, the sigma behind it, its row of reference statistics in
    ``table``, the completed segment (in ``events``) it belongs to (-1: its segment is still
    open), and the one it is judged against (-1: that segment ended in an earlier batch)."""

    __slots__ = ("events", "own", "ref", "row", "sigma", "table", "z")

    def __init__(
        self, z: F64, sigma: F64, table: Table, row: I64, events: SegmentEvents, own: I64, ref: I64
    ) -> None:
        self.z, self.sigma, self.table, self.row = z, sigma, table, row
        self.events, self.own, self.ref = events, own, ref

    def median(self, at: I64) -> F64:
        """The reference median of the readings at ``at``."""
        out: F64 = self.table.median[self.row[at]]
        return out

    def excursion(self, at: I64, up: Bool, t: I64) -> F64:
        """The usual excursion, on the side given by ``up``, of the series of each reading
        at ``at`` (times ``t``), as it had faded by then."""
        r = self.row[at]
        key = np.where(up, self.table.above_key[r], self.table.below_key[r])
        out: F64 = np.exp(key - (t - EPOCH_NS) / 1e9 / _TAIL_TAU_S)
        return out


class Carried:
    """Each series' last readings kept between batches, in one flat buffer with a slice of
    ``size`` per series, and joined in front of the series' readings of the next batch."""

    def __init__(self, size: I64) -> None:
        self.off = np.cumsum(size) - size
        self.buf = np.zeros(int(size.sum()))
        self.fill = np.zeros(len(size), dtype=np.int64)

    def join(self, uniq: I64, sizes: I64, values: F64) -> tuple[F64, I64, I64]:
        """Each series' kept readings followed by its ``values`` (sorted by series, then
        time; ``sizes`` readings of each of ``uniq``): the joined array, where each series'
        part begins, and where each of ``values`` went."""
        fill = self.fill[uniq]
        ext_len = fill + sizes
        ext_off = np.cumsum(ext_len) - ext_len
        ext = np.empty(int(ext_len.sum()))
        held = int(fill.sum())
        if held:
            k = np.arange(held) - np.repeat(np.cumsum(fill) - fill, fill)
            ext[np.repeat(ext_off, fill) + k] = self.buf[np.repeat(self.off[uniq], fill) + k]
        starts = np.cumsum(sizes) - sizes
        pos = np.repeat(ext_off + fill, sizes) + np.arange(len(values)) - np.repeat(starts, sizes)
        ext[pos] = values
        return ext, ext_off, pos

    def keep(self, uniq: I64, ext: F64, ends: I64, left: I64) -> None:
        """Keep the ``left`` readings of each series' part of ``ext`` that end at ``ends``."""
        kept = int(left.sum())
        if kept:
            k = np.arange(kept) - np.repeat(np.cumsum(left) - left, left)
            src = np.repeat(ends - left, left) + k
            self.buf[np.repeat(self.off[uniq], left) + k] = ext[src]
        self.fill[uniq] = left

    def restore(
        self, mine: I64, theirs: I64, same: Bool, size: I64, saved: dict[str, np.ndarray]
    ) -> None:
        """Take over the kept readings of the series whose slice size did not change."""
        self.fill[mine] = np.where(same, saved["fill"][theirs], 0)
        their_off = saved["buf_off"]
        for i, j in zip(mine[same].tolist(), theirs[same].tolist(), strict=True):
            w, a, b = int(size[i]), int(self.off[i]), int(their_off[j])
            self.buf[a : a + w] = saved["buf"][b : b + w]


class SegmentTrack:
    """The segment in progress of every series (its readings so far, in one flat buffer
    with a ``width``-long slice per series) and the statistics of the segment before it."""

    def __init__(self, width: I64, floor: F64) -> None:
        n = len(width)
        self.width = width
        self.floor = floor
        self.held = Carried(width)
        self.ref_med = np.full(n, np.nan)
        self.ref_sig = np.full(n, np.nan)
        self.ref_step = np.full(n, np.nan)  # median and sigma of reading-to-reading change
        self.ref_step_sig = np.full(n, np.nan)
        # The largest recent excursions above and below the median, as log(size) + time /
        # tau, so "the largest, fading with age" is a running maximum. Kept per side: a
        # gauge under traffic bends one way, a faulty one spikes either way.
        self.above_key = np.full(n, -np.inf)
        self.below_key = np.full(n, -np.inf)

    _STATE = ("ref_med", "ref_sig", "ref_step", "ref_step_sig", "above_key", "below_key")

    def state(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k).copy() for k in self._STATE}
        held = {"fill": self.held.fill.copy(), "buf": self.held.buf.copy()}
        return out | held | {"buf_off": self.held.off, "width": self.width}

    def restore(self, mine: I64, theirs: I64, saved: dict[str, np.ndarray]) -> None:
        for k in self._STATE:
            getattr(self, k)[mine] = saved[k][theirs]
        # A series whose segment width changed (a new interval) starts a new segment.
        same = saved["width"][theirs] == self.width[mine]
        self.held.restore(mine, theirs, same, self.width, saved)

    def advance(self, s: I64, t: I64, values: F64) -> Segments:
        """Judge ``values`` (sorted by series, then time) and take them into the state."""
        n = len(s)
        starts, sizes, uniq = series_groups(s)
        inverse = np.repeat(np.arange(len(uniq)), sizes)
        rank = np.arange(n) - np.repeat(starts, sizes)
        width = self.width[uniq]
        fill = self.held.fill[uniq]
        ext, ext_off, _ = self.held.join(uniq, sizes, values)
        ext_len = fill + sizes
        j = fill[inverse] + rank  # each reading's place in its series' sequence here
        full = ext_len // width
        base = np.cumsum(full) - full
        rows = np.repeat(np.arange(len(uniq)), full)
        kth = np.arange(int(full.sum())) - np.repeat(base, full)
        med, mad, above, below, dmed, dmad = segment_stats(
            ext, ext_off[rows] + kth * width[rows], width[rows]
        )
        sig = np.maximum(1.4826 * mad, self.floor[uniq[rows]])
        dsig = np.maximum(1.4826 * dmad, self.floor[uniq[rows]])
        # The reference: the segment before the reading's own, from this batch or the state.
        # One table holds both (the state's rows first), so each statistic is one gather.
        seg = j // width[inverse]
        idx = base[inverse] + seg - 1
        own = seg > 0
        row = np.where(own, len(uniq) + idx, inverse)
        ev_s = uniq[rows]
        end = starts[rows] + (kth + 1) * width[rows] - 1 - fill[rows]
        # The usual excursions on each side of the median: the largest of a segment, the
        # largest of recent segments counting, fading with age.
        age_end = (t[end] - EPOCH_NS) / 1e9 / _TAIL_TAU_S
        sides = []
        for tail, keys in ((above, self.above_key), (below, self.below_key)):
            key = np.log(np.maximum(tail, 1e-300)) + age_end
            sides.append((keys, np.maximum(running_max_before(ev_s, key, keys[ev_s]), key)))
        table = Table(
            np.concatenate([self.ref_med[uniq], med]),
            np.concatenate([self.ref_sig[uniq], sig]),
            np.concatenate([self.ref_step[uniq], dmed]),
            np.concatenate([self.ref_step_sig[uniq], dsig]),
            np.concatenate([self.above_key[uniq], sides[0][1]]),
            np.concatenate([self.below_key[uniq], sides[1][1]]),
        )
        ref_med = table.median[row]
        ref_sig = table.sigma[row]
        with np.errstate(invalid="ignore"):
            z = np.where(np.isfinite(ref_med), (values - ref_med) / ref_sig, 0.0)
        sigma = np.where(np.isfinite(ref_sig), ref_sig, self.floor[s])
        # The state: the statistics of the last complete segment, and what is left over.
        done = full > 0
        last = base[done] + full[done] - 1
        self.ref_med[uniq[done]] = med[last]
        self.ref_sig[uniq[done]] = sig[last]
        self.ref_step[uniq[done]] = dmed[last]
        self.ref_step_sig[uniq[done]] = dsig[last]
        for keys, upto in sides:
            keys[uniq[done]] = upto[last]
        self.held.keep(uniq, ext, ext_off + ext_len, ext_len - full * width)
        # A completed segment ends at a reading of this batch (the buffer holds less than a
        # segment): its position, in the sorted batch, is where drift reads its time.
        events = SegmentEvents(ev_s, end, med, sig)
        mine = np.where(seg < full[inverse], base[inverse] + seg, -1)
        return Segments(z, sigma, table, row, events, mine, np.where(own, idx, -1))


def running_max_before(series: I64, key: F64, carry: F64) -> F64:
    """For elements sorted by series: the maximum of ``carry`` (the series' state) and the
    keys of the series' earlier elements."""
    out = np.empty(len(key))
    if len(key) == 0:
        return out
    first = np.ones(len(key), dtype=bool)
    first[1:] = series[1:] != series[:-1]
    shifted = np.empty(len(key))
    shifted[1:] = key[:-1]
    shifted[first] = carry[first]
    finite = np.isfinite(shifted)
    if not finite.any():
        return np.full(len(key), -np.inf)
    # A running maximum that restarts per series: offset each series' values so that a
    # later series always exceeds an earlier one, accumulate, and take the offset off.
    seg = np.cumsum(first) - 1
    lo = float(shifted[finite].min())
    span = float(shifted[finite].max()) - lo + 1.0
    filled = np.where(finite, shifted - lo, -0.5)
    acc = np.maximum.accumulate(filled + seg * span) - seg * span
    return np.where(acc < 0, -np.inf, acc + lo)


class Trail:
    """The last ``2 * span`` readings of each series with ``span`` > 1, so that means over
    the last ``span`` readings (and over the ``span`` before those) carry across batches:
    at 100 Hz one reading is too noisy to say whether a level holds, a second of them is
    not."""

    def __init__(self, span: I64) -> None:
        self.span = span
        self.size = np.where(span > 1, 2 * span, 0)
        self.held = Carried(self.size)

    def state(self) -> dict[str, np.ndarray]:
        held = {"fill": self.held.fill.copy(), "buf": self.held.buf.copy()}
        return held | {"buf_off": self.held.off, "span": self.span}

    def restore(self, mine: I64, theirs: I64, saved: dict[str, np.ndarray]) -> None:
        same = saved["span"][theirs] == self.span[mine]
        self.held.restore(mine, theirs, same, self.size, saved)

    def means(self, s: I64, values: F64) -> tuple[F64, F64]:
        """For ``values`` (sorted by series, then time): the mean of each reading and the
        span - 1 before it, and the mean of the span readings before those (NaN where the
        series has not had them). Series with a span of 1 get the value and the one before.
        Takes the values into the state."""
        _, sizes, uniq = series_groups(s)
        span = np.repeat(self.span[uniq], sizes)
        ext_len = self.held.fill[uniq] + sizes
        ext, ext_off, pos = self.held.join(uniq, sizes, values)
        # Sums over windows of each series' own readings, from one running sum that
        # restarts at zero before each series.
        csum = np.concatenate([[0.0], np.cumsum(ext)])
        begin = np.repeat(ext_off, sizes)  # the series' first reading here
        j = pos - begin  # readings of the series before this one, here
        now_n = np.minimum(span, j + 1)
        now = (csum[pos + 1] - csum[pos + 1 - now_n]) / now_n
        has_before = j + 1 >= 2 * span
        lo = np.where(has_before, pos + 1 - 2 * span, pos)
        # Early in a series' life the window before does not exist: its index is clamped
        # (and the mean masked), never wrapped around or past the start.
        back = np.where(has_before, pos + 1 - span, lo)
        before = np.where(has_before, (csum[back] - csum[lo]) / span, np.nan)
        self.held.keep(uniq, ext, ext_off + ext_len, np.minimum(ext_len, self.size[uniq]))
        return now, before
