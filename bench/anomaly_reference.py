"""A straightforward per-sample Python implementation of ``ingest.anomaly.Detectors``.

The same detectors with the same parameters, written the obvious way: one reading at a
time, plain Python floats, lists and ``collections.deque``, ``statistics.median``; numpy
only builds the output arrays (and, see "Exactness", evaluates ``exp`` and ``log``). Two
ways to take a reading's reference statistics:

- ``stats="segment"`` (the oracle of ``tests/unit/test_anomaly_reference.py``): those of
  the previous segment of the series, exactly as ``Detectors`` takes them, so the flags
  must be identical whatever the batching and the scores equal.
- ``stats="rolling"`` (the baseline of ``bench/anomaly_speed.py``): the textbook rolling
  robust z-score: median and MAD (and median and MAD of the changes from one reading to
  the next) of the last ``width`` readings, recomputed before every reading. Everything
  else is as in ``"segment"``; the benchmark counts the readings whose flags differ.

Semantics (those of ``Detectors``; its module docstrings say why):

- Order. A batch is taken in (series, time) order; readings of a series with equal times
  keep their order in the batch (a stable sort). Each series' readings form one sequence
  over its whole life, the concatenation of these per-batch runs.
- Reference. The sequence is cut into segments of ``width`` consecutive readings
  (``max(SEGMENT, segment_s / interval)``, at most ``SEGMENT_MAX``). A reading is judged
  against the segment before its own: its median, robust sigma (1.4826 x MAD, never below
  the noise floor), and median and robust sigma of its reading-to-reading changes. Before
  the first segment is complete the z-score is 0 and sigma the noise floor.
- Strain with a paired temperature (``_pairs``) is judged after 12 ue/K times that
  temperature's latest reading at or before the strain reading's time: among the batch's
  readings of it (equal times: the last in batch order), else the last one of the earlier
  batches. It keeps a second segment track of the raw readings, and its z-score counts
  only as far as the raw z-score agrees (same sign; the smaller of the two).
- Usual excursions. At the end of every segment the largest deviation above and below its
  median enter two fading maxima, stored as keys ``log(size) + t_end / 12 h`` so that
  "the largest, fading with age" is a plain running maximum; a reading's usual excursion
  on its side of the median is ``exp(key - t / 12 h)``.
- The level. Below 1 Hz a reading's level is the reading: its z-score, sigma, value and
  the value before it. At higher rates (``span = round(SMOOTH_S / interval)`` > 1) it is
  the mean of the reading and the ``span - 1`` before it in the series' life (of all so
  far while fewer), its sigma ``max(sigma / sqrt(span), noise floor)``, its z-score that
  mean's distance from the reference median in that sigma (0 before the first segment;
  for paired strain only as far as the raw readings' mean agrees, as above), and the
  level before it the mean of the ``span`` readings before those (NaN while fewer).
  ``shift_z`` is the level's z-score on a single reading's sigma (``|z| x spread /
  sigma``).
- Deviation runs: consecutive readings of a series whose level is beyond ``step_z`` on one
  side; they carry across batches. At a run's first reading: the level before it and
  whether another series of its group (the strain gauges of a bridge per measurement,
  else the device) moved (jump ``|eff - prev_eff| / sigma`` > 3; for paired strain 0
  unless the raw reading moved by 3 sigma) within the 10 s up to its time (among all
  readings of the batch, whatever their place in the sorted order, and the latest move
  each series made in earlier batches); for whether the run is alone, the neighbour's
  jump must pass the largest of the levels 3, 6, 12, 24, 48 that is at most a quarter
  of the run's first jump. At the run's anchor, its ``span``-th reading
  (below 1 Hz its first): its level is the run's new level and the size its distance
  from the level before the run; the run jumped when the size exceeds ``step_z`` level
  sigmas (paired strain below 1 Hz: and the raw reading moved by 3 sigma). A reading
  after the anchor "moved" when its level is more than half the size off the new
  level; from the anchor on a run is a lone jump while it jumped, no neighbour moved at
  its start, and fewer than two of its readings moved. step: a lone jump of
  ``step_need`` readings. shift: not a lone jump (also before the anchor),
  ``shift_need`` readings, ``shift_z`` beyond the parameter. spike: a run's first
  reading whose own |z| is beyond ``spike_z``, not shared, that jumped beyond
  ``spike_z``, and further off the median than ``spike_tail`` times the usual excursion
  on its side. Also a spike: a change from
  the reading before that is ``2.5 x spike_z`` robust sigmas of the usual changes off
  their median, when the reading before did not change so (series with ``spike_tail`` 0
  only), unless another series of the group moved within the 10 s up to it. Such a
  lone odd change is also a step once the ``step_need`` readings after it have each
  stayed beyond half its size from the level before it, on its side, and none of them
  changed by more than a quarter of its size the same way again (a new one starts anew).
  A room's temperature and humidity also move (for the 10 s test) when their change is
  beyond 3 robust sigmas of their usual changes.
- stuck: a repeat of the reading before (raw values); its run of equal readings must be
  at least ``stuck_samples`` long and ``stuck_factor`` times the usual flat run, and the
  series must have read for 12 h. The usual flat run is two-level: every flat run of two
  readings or more that ends (the value changes) enters a fading maximum of all runs
  (``log(length) + t_end / 2 days``); it also enters the fading maximum of "usual" runs
  when it was shorter than the need computed from the maximum of all runs before it (a
  run that was itself stuck does not raise the usual). A repeat is judged against the
  usual one as it stood when its run began, faded to the repeat's time. A
  ``stuck_samples`` of 1 marks every reading.
- rate, gap, limit: change per second beyond ``max_rate`` (positive elapsed time only)
  and beyond 4 robust sigmas;
  more than ``gap_factor`` intervals since the reading before; |value| beyond the design
  limit. The reading before a series' first one in a batch is the last of the earlier
  batches, at the latest time the series has seen.
- Score: the larger of |value| / limit and |z| / spike_z, as float32; it only ever
  raises the batch's score.
- drift, per completed segment, on a level in two parts: the reading and its temperature.
  The reading part is the segment's median; ``"thermal"`` adds back coef x the
  temperature at the segment's last reading (the temperature part; the gauge's own
  regression on it learns from this segment) and, when judging, takes off the learnt
  slope times the temperature part's averages; ``"site"`` (two or more series of the
  measurement at the site) subtracts the mean of the other series' latest segment
  medians as of this segment's end: segments of earlier batches as they stood, and those
  of this batch taken in (end time, series) order, each replacing its series' level;
  ``"night"`` uses only segments whose middle is in the night hours. A ``"site"`` series
  alone at its site is ``"plain"``, with a fast window of at least ``ALONE_FAST_S`` and
  ``ALONE_FACTOR`` times the threshold; a record (readings faster than 1 Hz) has fast,
  slow and warm-up windows of minutes (``RECORD_*``). Except on the night floor and in
  records, each part first loses the series' own centred daily
  profile at the segment's hour (an average over about a week of each hour's departure
  from the slow average, learnt from this segment). Fast and slow exponential averages
  of both parts (reset when the segment holds a step or shift, including one in an
  earlier batch while the segment was open); once the series has ``warm_s`` of drift
  history, ``on`` is whether they part by more than the threshold. A reading is marked
  when ``on`` was set after the segment before its own.
- step of the night floor (``night_step`` finite, night mode, not a record): per usable
  night segment, the night is the day of (its middle + 1 h); a new night notes its first
  level and time and takes the level the night before ended on (none before the first).
  Once per night, at the first segment ``NIGHT_STEP_SPAN_S`` or more after the night's
  first, with a level before: a step when the first level is more than ``night_step``
  from that level before and the segment's level is within ``NIGHT_STEP_FLAT`` of that
  jump of the first. That segment then counts as holding a step (the averages restart),
  and a reading is marked STEP when the segment before its own found one. ``Detectors`` updates the
  segments of a batch by segment index (every series' first, then every second, ...);
  every update reads and writes only its own series' state, so taking each series'
  segments in their order is the same.

Exactness. Medians, sums and comparisons are the same floating-point operations in the
same order. ``exp`` and ``log`` are numpy's on single floats: numpy's SIMD versions differ
from ``math.exp`` in the last bit for some 5% of arguments, and fading maxima meet ties
(two flat runs ending at one time: ``exp(log(2) + a - a)`` against 2). What the reference
cannot reproduce bit for bit: the site mean (a running sum over the batch there, a plain
sum here) and the fading maxima (``Detectors`` takes running maxima per series with an
offset per series, which rounds in the 12th digit); a flag could differ only where a value
meets its threshold within that rounding. ``Detectors`` compares times as integer keys in
units of ``2**k`` ns where a batch spans more than 2**42 ns (73 min): times on a
whole-second grid stay exact. The high-rate means are plain sums of their window here;
``Detectors`` takes differences of one running sum over the batch, which round in the
last digits, so a mean that meets a threshold exactly could be judged either way.

Backlogs. ``Detectors`` judges a batch larger than its ``chunk`` in slices of time, cut
only between different times; that gives the flags of the batch in one piece, which are
what the reference computes (whatever its size).
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby, pairwise
from typing import Any, Literal

import numpy as np

from devices.registry import Series
from ingest.anomaly.detectors import (
    _ODD_CHANGE,
    _RATE_NOISE_Z,
    SEGMENT,
    SEGMENT_MAX,
    SMOOTH_S,
    STEEL_UE_PER_K,
)
from ingest.anomaly.drift import (
    _HOUR_NS,
    _NIGHT_UTC_HOURS,
    _PRIOR_VAR_K2,
    _PROFILE_DAYS,
    _THERMAL_MEMORY_S,
    ALONE_FACTOR,
    ALONE_FAST_S,
    DRIFT_SLOW_S,
    DRIFT_WARM_S,
    NIGHT_STEP_FLAT,
    NIGHT_STEP_SPAN_S,
    NIGHT_WARM_S,
    RECORD_FAST_S,
    RECORD_SLOW_S,
    RECORD_WARM_S,
)
from ingest.anomaly.held import _FURTHER_SHARE, _HOLD_SHARE
from ingest.anomaly.moves import MOVE_LEVELS, PROPORTION, SHARED_NS, SHARED_Z
from ingest.anomaly.params import DEFAULT_PARAMS, DetectorParams
from ingest.anomaly.segments import _TAIL_TAU_S, EPOCH_NS
from ingest.anomaly.stuck import _FLAT_TAU_S, _STUCK_WARM_NS
from ingest.batch import AnomalyFlag, ReadingBatch

LIMIT = int(AnomalyFlag.LIMIT)
SPIKE = int(AnomalyFlag.SPIKE)
STEP = int(AnomalyFlag.STEP)
SHIFT = int(AnomalyFlag.SHIFT)
STUCK = int(AnomalyFlag.STUCK)
RATE = int(AnomalyFlag.RATE)
GAP = int(AnomalyFlag.GAP)
DRIFT = int(AnomalyFlag.DRIFT)
NAN = math.nan
INF = math.inf

Stats = tuple[float, float, float, float]  # median, sigma, change median, change sigma
NO_STATS: Stats = (NAN, NAN, NAN, NAN)


def _exp(x: float) -> float:
    """numpy's exp, bit for bit (see "Exactness")."""
    return float(np.exp(x))


def _log(x: float) -> float:
    return float(np.log(x))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _both(compensated: float, raw: float) -> float:
    """A paired gauge's z-score: as far as its raw reading's agrees (same side, the
    smaller of the two)."""
    if _sign(compensated) != _sign(raw):
        return 0.0
    return _sign(compensated) * min(abs(compensated), abs(raw))


def _means(trail: deque[float], span: int) -> tuple[float, float]:
    """The mean of the last ``span`` readings of ``trail`` (of all while it holds fewer)
    and the mean of the ``span`` readings before those (NaN while it holds fewer)."""
    vals = list(trail)
    m = len(vals)
    now_n = min(span, m)
    now = sum(vals[m - now_n :]) / now_n
    before = sum(vals[m - 2 * span : m - span]) / span if m >= 2 * span else NAN
    return now, before


def _samples(seconds: float, interval_s: float) -> int:
    """Readings that cover ``seconds`` at ``interval_s``."""
    return math.ceil(seconds / interval_s - 1e-9) if interval_s > 0 and seconds > 0 else 0


def _stats(values: list[float], floor: float) -> tuple[Stats, float, float]:
    """Median, robust sigma, and median and robust sigma of the reading-to-reading
    changes of ``values``; and the largest deviations above and below the median."""
    med = statistics.median(values)
    mad = statistics.median([abs(x - med) for x in values])
    diffs = [b - a for a, b in pairwise(values)]
    dmed = statistics.median(diffs)
    dmad = statistics.median([abs(d - dmed) for d in diffs])
    above = max(values) - med
    below = -(min(values) - med)
    return (med, max(1.4826 * mad, floor), dmed, max(1.4826 * dmad, floor)), above, below


def _pairs(series: Sequence[Series]) -> list[int | None]:
    """For each strain gauge, inclinometer and crack gauge the temperature that explains
    part of it: the same channel's, else the device's own, else the device's first, else
    the site's first."""
    out: list[int | None] = []
    for x in series:
        k = x.key
        found = None
        if k.measurement in ("strain", "inclination", "crack_width"):
            temps = [y for y in series if y.key.measurement == "temperature"]
            device = [y for y in temps if (y.key.site, y.key.device) == (k.site, k.device)]
            ranked = (
                [y for y in device if y.key.channel == k.channel]
                + [y for y in device if y.key.channel == ""]
                + device
                + [y for y in temps if y.key.site == k.site]
            )
            found = ranked[0].index if ranked else None
        out.append(found)
    return out


@dataclass(frozen=True, slots=True)
class _Config:
    """One series' settings, as ``Detectors`` derives them."""

    p: DetectorParams
    limit: float
    width: int
    span: int  # readings whose mean is the level (1 below 1 Hz: the reading itself)
    step_need: int
    shift_need: int
    stuck_samples: int  # 2**62 when off
    gap_ns: float
    pair: int | None
    coef: float  # ue/K the strain is compensated with
    group: tuple[str, ...]  # whose moves are shared
    air: bool  # a room's temperature or humidity: a change beyond its usual ones is a move
    # drift
    threshold: float
    mode: str  # "plain", "thermal", "night" or "site" (after the checks of Drift)
    site_group: tuple[str, str] | None
    fast_s: float
    slow_s: float
    warm_s: float
    half_span_ns: int
    daily: bool  # drift after the series' own daily profile
    night_step: float  # the night floor's step (inf: off)


class _Track:
    """One series' segment in progress and the statistics of the one before it."""

    def __init__(self, width: int, floor: float, rolling: bool) -> None:
        self.width, self.floor = width, floor
        self.buf: list[float] = []
        self.ref: Stats = NO_STATS
        self.above_key = -INF  # fading maxima of the excursions, log(size) + t / tau
        self.below_key = -INF
        self.window: deque[float] | None = deque(maxlen=width) if rolling else None

    def reference(self) -> Stats:
        if self.window is None:
            return self.ref
        if len(self.window) < self.width:
            return NO_STATS
        return _stats(list(self.window), self.floor)[0]  # the textbook cost: every reading

    def push(self, x: float, t: int) -> float | None:
        """Take a reading in; return its segment's median when it completes one."""
        if self.window is not None:
            self.window.append(x)
        self.buf.append(x)
        if len(self.buf) < self.width:
            return None
        self.ref, above, below = _stats(self.buf, self.floor)
        age = (t - EPOCH_NS) / 1e9 / _TAIL_TAU_S
        self.above_key = max(self.above_key, _log(max(above, 1e-300)) + age)
        self.below_key = max(self.below_key, _log(max(below, 1e-300)) + age)
        self.buf = []
        return self.ref[0]


@dataclass(slots=True)
class _State:
    """One series' memory between readings and batches."""

    track: _Track
    raw: _Track
    first_ts: int | None = None
    last_ts: int | None = None  # the latest time seen
    last_value: float = NAN
    last_eff: float = NAN
    seen: int = 0  # readings so far: the next one's place in the sequence
    same_run: int = 0  # repeats of last_value so far
    dev_run: int = 0  # signed length of the deviation run
    abrupt: bool = False  # is that run a lone jump so far?
    onset_eff: float = 0.0  # the run's new level, read at its anchor
    onset_jump: float = 0.0  # ... and its size
    onset_moves: int = 0  # readings after the anchor off that level
    onset_before: float = NAN  # the level before the run
    onset_alone: bool = False  # no other series of the group moved at its first reading
    trail: deque[float] = field(default_factory=deque)  # the last 2 x span levels read
    raw_trail: deque[float] = field(default_factory=deque)  # ... raw (paired strain)
    odd: bool = False
    held_on: bool = False  # a lone odd change waiting to be held
    held_base: float = 0.0  # the level before it
    held_jump: float = 0.0  # its signed size
    held_n: int = 0  # readings since that held it
    # The latest move beyond each of MOVE_LEVELS (an aired room's change counts for the
    # first).
    moved_ts: list[int | None] = field(default_factory=lambda: [None] * len(MOVE_LEVELS))
    flat_all: float = -INF
    flat_ok: float = -INF
    stepped: set[int] = field(default_factory=set)  # segments holding a step or shift
    # drift
    fast: list[float] = field(default_factory=lambda: [NAN, NAN])  # reading, temperature
    slow: list[float] = field(default_factory=lambda: [NAN, NAN])
    drift_ts: int | None = None
    drift_since: int = 0
    on: bool = False
    level: float = NAN  # the last segment median (site mode)
    reg: list[float] = field(default_factory=lambda: [0.0] * 5)  # T, e, T^2, T*e, weight
    profile: list[list[float]] = field(default_factory=lambda: [[0.0, 0.0] for _ in range(24)])
    profile_n: list[int] = field(default_factory=lambda: [0] * 24)
    # the night floor's step
    night_id: int = -1
    night_first: float = NAN
    night_first_ts: int = 0
    night_last: float = NAN
    night_before: float = NAN
    night_judged: bool = False
    stepped_on: bool = False  # the last segment found one


@dataclass(slots=True)
class _Seen:
    """What the first pass learnt of one reading from its own series."""

    eff: float
    temp: float
    z: float
    sigma: float
    stats: Stats
    above_key: float
    below_key: float
    jump: float
    seg: int  # its segment's number in the series' life
    # The level: at high rates the mean of the last span readings, else the reading.
    level_z: float
    level_sign: int
    level_eff: float
    level_before: float  # the mean of the span readings before those (the reading before)
    level_sigma: float
    shift_z: float  # level_z on a single reading's scale
    moved: int = 0  # how many of MOVE_LEVELS its move passed


@dataclass(slots=True)
class _Event:
    """A segment completed in this batch."""

    series: int
    seg: int
    t: int
    median: float
    temp: float
    others: float = NAN  # site mode: the mean of the other series' levels


class ReferenceDetectors:
    """All detectors, one reading at a time."""

    def __init__(
        self,
        series: Sequence[Series],
        params: dict[str, DetectorParams] | None = None,
        stats: Literal["segment", "rolling"] = "segment",
    ) -> None:
        table = DEFAULT_PARAMS if params is None else params
        pairs = _pairs(series)
        members: dict[tuple[str, str], int] = {}
        for x in series:
            g = (x.key.site, x.key.measurement)
            members[g] = members.get(g, 0) + 1
        self._config: list[_Config] = []
        for x, pair in zip(series, pairs, strict=True):
            settings: dict[str, Any] = dict(x.detectors)  # the registry's, over the table's
            p = replace(table[x.key.measurement], **settings)
            i = max(x.interval.total_seconds(), 1e-3)
            width = min(max(SEGMENT, _samples(p.segment_s, i)), SEGMENT_MAX)
            strain = x.key.measurement == "strain"
            bridge = x.kind == "bridge"
            alone = p.drift_mode == "site" and members[(x.key.site, x.key.measurement)] < 2
            record = x.interval.total_seconds() < 1.0
            fast_s = max(p.drift_fast_s, ALONE_FAST_S) if alone else p.drift_fast_s
            mode = p.drift_mode
            if (mode == "thermal" and pair is None) or alone:
                mode = "plain"
            self._config.append(
                _Config(
                    p=p,
                    limit=abs(x.limit) if x.limit else INF,
                    width=width,
                    span=max(1, round(SMOOTH_S / i)),
                    step_need=max(p.step_samples, _samples(p.step_min_s, i)),
                    shift_need=max(2, _samples(p.shift_min_s, i)),
                    stuck_samples=p.stuck_samples if p.stuck_samples > 0 else 1 << 62,
                    gap_ns=p.gap_factor * i * 1e9,
                    pair=pair,
                    coef=STEEL_UE_PER_K if strain and pair is not None else 0.0,
                    group=(
                        ("bridge", x.key.site, x.key.measurement)
                        if bridge
                        else ("device", x.key.site, x.key.device)
                    ),
                    air=p.room_air and not bridge,
                    threshold=p.drift * ALONE_FACTOR if alone else p.drift,
                    mode=mode,
                    site_group=(x.key.site, x.key.measurement) if mode == "site" else None,
                    fast_s=min(fast_s, RECORD_FAST_S) if record else fast_s,
                    slow_s=RECORD_SLOW_S if record else DRIFT_SLOW_S,
                    warm_s=(
                        NIGHT_WARM_S
                        if p.drift_mode == "night"
                        else RECORD_WARM_S
                        if record
                        else DRIFT_WARM_S
                    ),
                    half_span_ns=int((width - 1) * (x.interval.total_seconds() * 1e9) / 2),
                    daily=p.drift_mode != "night" and not record,
                    night_step=(p.night_step if p.drift_mode == "night" and not record else INF),
                )
            )
        rolling = stats == "rolling"
        self._state = [
            _State(
                _Track(c.width, c.p.noise_floor, rolling),
                _Track(c.width, c.p.noise_floor, rolling),
                trail=deque(maxlen=2 * c.span),
                raw_trail=deque(maxlen=2 * c.span),
            )
            for c in self._config
        ]
        self._site_members: dict[tuple[str, str], list[int]] = {}
        for k, c in enumerate(self._config):
            if c.site_group is not None:
                self._site_members.setdefault(c.site_group, []).append(k)

    # -- the check -------------------------------------------------------------------------

    def check(self, batch: ReadingBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        series: list[int] = batch.series.tolist()
        ts: list[int] = batch.ts_ns.tolist()
        values: list[float] = batch.values.tolist()
        order = sorted(range(n), key=lambda i: (series[i], ts[i]))  # sorted() is stable
        runs = [(k, list(g)) for k, g in groupby(order, key=lambda i: series[i])]

        # Each paired temperature's readings in this batch, in time order, and its last
        # reading before the batch.
        of = dict(runs)
        temps: dict[int, tuple[list[int], list[float], float]] = {}
        for k, _ in runs:
            pair = self._config[k].pair
            if pair is not None and pair not in temps:
                mine = of.get(pair, [])
                temps[pair] = (
                    [ts[i] for i in mine],
                    [values[i] for i in mine],
                    self._state[pair].last_value,
                )

        # First pass, each series on its own: temperature, reference statistics, z-score,
        # jump; segments completed.
        seen: list[_Seen | None] = [None] * n
        events: list[_Event] = []
        # group: (time, series, levels passed)
        moves: dict[tuple[str, ...], list[tuple[int, int, int]]] = {}
        for k, idx in runs:
            cfg, st = self._config[k], self._state[k]
            prev_v, prev_eff = st.last_value, st.last_eff
            for i in idx:
                t, v = ts[i], values[i]
                temp = NAN
                if cfg.pair is not None:
                    times, vals, before = temps[cfg.pair]
                    j = bisect_right(times, t) - 1
                    temp = vals[j] if j >= 0 else before
                eff = v - cfg.coef * temp if math.isfinite(temp) else v
                ref = st.track.reference()
                med, sig = ref[0], ref[1]
                z = (eff - med) / sig if math.isfinite(med) else 0.0
                sigma = sig if math.isfinite(sig) else cfg.p.noise_floor
                rmed, rsig = NAN, NAN
                if cfg.coef > 0:
                    rmed, rsig = st.raw.reference()[:2]
                    z = _both(z, (v - rmed) / rsig if math.isfinite(rmed) else 0.0)
                # The level: at high rates the mean of the last second's readings, judged
                # against the noise of such a mean; below, the reading itself.
                span, floor = cfg.span, cfg.p.noise_floor
                if span > 1:
                    st.trail.append(eff)
                    now, before = _means(st.trail, span)
                    spread = max(sigma / math.sqrt(span), floor)
                    zm = (now - med) / spread if math.isfinite(med) else 0.0
                    if cfg.coef > 0:
                        st.raw_trail.append(v)
                        raw_now, _ = _means(st.raw_trail, span)
                        raw_sigma = rsig if math.isfinite(rsig) else floor
                        raw_spread = max(raw_sigma / math.sqrt(span), floor)
                        zm = _both(
                            zm, (raw_now - rmed) / raw_spread if math.isfinite(rmed) else 0.0
                        )
                    level = (abs(zm), _sign(zm), now, before, spread, abs(zm) * spread / sigma)
                else:
                    level = (abs(z), _sign(z), eff, prev_eff, sigma, abs(z))
                jump = abs(eff - prev_eff) / sigma
                if cfg.coef > 0 and not abs(v - prev_v) > SHARED_Z * sigma:
                    jump = 0.0  # a paired gauge moved only if its reading moved too
                moved = sum(1 for x in MOVE_LEVELS if x < jump)  # 0 when jump is NaN
                if cfg.air:  # an opened window: a change beyond the usual ones
                    usual_change = ref[3] if math.isfinite(ref[3]) else INF
                    change = eff - prev_eff - ref[2]
                    if abs(change) > SHARED_Z * max(usual_change, floor):
                        moved = max(moved, 1)
                if moved:
                    moves.setdefault(cfg.group, []).append((t, k, moved))
                seg = st.seen // cfg.width
                seen[i] = _Seen(
                    eff, temp, z, sigma, ref, st.track.above_key, st.track.below_key, jump, seg,
                    *level, moved,
                )  # fmt: skip
                st.seen += 1
                done = st.track.push(eff, t)
                if cfg.coef > 0:
                    st.raw.push(v, t)
                if done is not None:
                    events.append(_Event(k, seg, t, done, temp))
                prev_v, prev_eff = v, eff
        for group_moves in moves.values():
            group_moves.sort()

        def shared(k: int, t: int, need: int = 1) -> bool:
            """Did another series of k's group move beyond MOVE_LEVELS[need - 1] within
            the 10 s up to t?"""
            cfg = self._config[k]
            lo = t - SHARED_NS
            mv = moves.get(cfg.group, [])
            window = mv[bisect_left(mv, (lo, -1, 0)) : bisect_right(mv, (t, 1 << 62, 0))]
            if any(other != k and passed >= need for _, other, passed in window):
                return True
            return any(
                o != k and d[need - 1] is not None and lo <= (d[need - 1] or 0) <= t
                for o, d in remembered.get(cfg.group, [])
            )

        remembered: dict[tuple[str, ...], list[tuple[int, list[int | None]]]] = {}
        for k, st in enumerate(self._state):
            if any(x is not None for x in st.moved_ts):
                remembered.setdefault(self._config[k].group, []).append((k, list(st.moved_ts)))

        # Second pass: the judgement, reading by reading.
        flags = [0] * n
        scores = [0.0] * n
        for k, idx in runs:
            cfg, st = self._config[k], self._state[k]
            p = cfg.p
            prev_t, prev_v, prev_eff = st.last_ts, st.last_value, st.last_eff
            if st.first_ts is None:
                st.first_ts = ts[idx[0]]
            for i in idx:
                t, v = ts[i], values[i]
                r = seen[i]
                assert r is not None
                eff, z, sigma = r.eff, r.z, r.sigma
                f = 0
                ratio = abs(v) / cfg.limit
                if ratio > 1.0:
                    f |= LIMIT
                absz = abs(z)
                scores[i] = max(ratio, absz / p.spike_z)
                onset_shared = False

                # Deviation runs: step, shift, spike. A run's new level and its size are read
                # at its anchor, the reading where the run is span long (its first below
                # 1 Hz): at high rates the level's mean has then taken the jump in whole.
                if r.level_z > p.step_z:
                    sign = r.level_sign
                    if _sign(st.dev_run) == sign:
                        st.dev_run += sign
                    else:  # a run begins
                        st.dev_run = sign
                        onset_shared = shared(k, t)
                        # Alone unless a neighbour moved in proportion to this jump.
                        own = r.jump / PROPORTION if math.isfinite(r.jump) else 0.0
                        passed = max(1, sum(1 for x in MOVE_LEVELS if x <= own))
                        st.onset_alone = not shared(k, t, passed)
                        st.onset_before = r.level_before
                        st.abrupt = False
                        st.onset_eff, st.onset_jump, st.onset_moves = 0.0, 0.0, 0
                    length = abs(st.dev_run)
                    if length == cfg.span:  # the anchor
                        st.onset_eff = r.level_eff
                        st.onset_jump = abs(r.level_eff - st.onset_before)
                        jumped = st.onset_jump > p.step_z * r.level_sigma
                        if (
                            cfg.span == 1
                            and cfg.coef > 0
                            and not abs(v - prev_v) > SHARED_Z * sigma
                        ):
                            jumped = False  # a paired gauge's reading must have jumped too
                        st.abrupt = jumped and st.onset_alone
                    elif length > cfg.span:
                        st.onset_moves += abs(r.level_eff - st.onset_eff) > 0.5 * st.onset_jump
                        st.abrupt = st.abrupt and st.onset_moves < 2
                    lone_jump = length >= cfg.span and st.abrupt
                    if length >= cfg.step_need and lone_jump:
                        f |= STEP
                    if length >= cfg.shift_need and r.shift_z > p.shift_z and not lone_jump:
                        f |= SHIFT
                    if length == 1 and absz > p.spike_z and not onset_shared:
                        away = eff - r.stats[0]
                        key = r.above_key if away >= 0 else r.below_key
                        usual = _exp(key - (t - EPOCH_NS) / 1e9 / _TAIL_TAU_S)
                        if r.jump > p.spike_z and abs(away) > p.spike_tail * usual:
                            f |= SPIKE
                else:
                    st.dev_run, st.abrupt = 0, False
                    st.onset_eff, st.onset_jump, st.onset_moves = 0.0, 0.0, 0
                # A change far beyond the usual changes, not the way back from one.
                usual_change = r.stats[3] if math.isfinite(r.stats[3]) else INF
                change = eff - prev_eff - r.stats[2]
                odd = abs(change) > _ODD_CHANGE * p.spike_z * usual_change
                lone_odd = odd and not st.odd and p.spike_tail == 0 and not shared(k, t)
                if lone_odd:
                    f |= SPIKE
                st.odd = odd
                # ... and a step once the readings after it hold its level for step_need
                # readings without moving on the same way.
                if lone_odd:
                    st.held_on, st.held_n = True, 0
                    st.held_base, st.held_jump = prev_eff, eff - prev_eff
                elif st.held_on:
                    st.held_n += 1
                    off, size = eff - st.held_base, abs(st.held_jump)
                    holds = _sign(off) == _sign(st.held_jump) and abs(off) > _HOLD_SHARE * size
                    further = (eff - prev_eff) * _sign(st.held_jump) > _FURTHER_SHARE * size
                    if not holds or further:
                        st.held_on = False
                    elif st.held_n == cfg.step_need:
                        f |= STEP
                        st.held_on = False

                # stuck
                has_prev = prev_t is not None
                if has_prev and v == prev_v:
                    st.same_run += 1
                    need = self._stuck_need(cfg, st.flat_ok, t)
                    warm = t - st.first_ts >= _STUCK_WARM_NS
                    if st.same_run + 1 >= need and warm:
                        f |= STUCK
                else:
                    if has_prev and st.same_run > 0:  # a flat run of two or more ended
                        assert prev_t is not None
                        length = st.same_run + 1
                        key = _log(length) + (prev_t - EPOCH_NS) / 1e9 / _FLAT_TAU_S
                        ok = length < self._stuck_need(cfg, st.flat_all, prev_t)
                        st.flat_all = max(st.flat_all, key)
                        st.flat_ok = max(st.flat_ok, key if ok else -INF)
                    st.same_run = 0
                if cfg.stuck_samples <= 1:
                    f |= STUCK

                if prev_t is not None:
                    d_ns = t - prev_t
                    dv = abs(v - prev_v)  # beyond the noise, and too fast for the physics
                    if d_ns > 0 and dv > _RATE_NOISE_Z * r.sigma and dv / (d_ns / 1e9) > p.max_rate:
                        f |= RATE
                    if float(d_ns) > cfg.gap_ns:
                        f |= GAP
                if f & (STEP | SHIFT):
                    st.stepped.add(r.seg)
                flags[i] = f
                prev_t, prev_v, prev_eff = t, v, eff
            st.last_ts = ts[idx[-1]] if st.last_ts is None else max(st.last_ts, ts[idx[-1]])
            st.last_value, st.last_eff = prev_v, prev_eff
        for k, idx in runs:
            st = self._state[k]
            for i in idx:
                r = seen[i]
                assert r is not None
                for j in range(r.moved):
                    was = st.moved_ts[j]
                    st.moved_ts[j] = ts[i] if was is None else max(was, ts[i])

        # drift, per completed segment; a reading is judged by the one before its own.
        on_before = [st.on for st in self._state]
        step_before = [st.stepped_on for st in self._state]
        after, after_step = self._drift(events)
        for k, idx in runs:
            for i in idx:
                r = seen[i]
                assert r is not None
                if after.get((k, r.seg - 1), on_before[k]):
                    flags[i] |= DRIFT
                if after_step.get((k, r.seg - 1), step_before[k]):
                    flags[i] |= STEP

        batch.flags |= np.array(flags, dtype=np.int32)
        np.maximum(batch.scores, np.array(scores, dtype=np.float32), out=batch.scores)

    @staticmethod
    def _stuck_need(cfg: _Config, usual_key: float, at: int) -> float:
        longest = _exp(usual_key - (at - EPOCH_NS) / 1e9 / _FLAT_TAU_S)
        return max(float(cfg.stuck_samples), cfg.p.stuck_factor * longest)

    # -- drift -----------------------------------------------------------------------------

    def _drift(
        self, events: list[_Event]
    ) -> tuple[dict[tuple[int, int], bool], dict[tuple[int, int], bool]]:
        """Update the averages with this batch's segments; ``on`` after each of them, and
        whether each found a step of the night floor."""
        site = [e for e in events if self._config[e.series].mode == "site"]
        site.sort(key=lambda e: (self._config[e.series].site_group, e.t, e.series))
        for e in site:
            group = self._config[e.series].site_group
            assert group is not None
            self._state[e.series].level = e.median
            others = [
                self._state[o].level
                for o in self._site_members[group]
                if o != e.series and math.isfinite(self._state[o].level)
            ]
            e.others = sum(others) / len(others) if others else NAN
        after: dict[tuple[int, int], bool] = {}
        after_step: dict[tuple[int, int], bool] = {}
        for e in events:  # in each series' order
            cfg, st = self._config[e.series], self._state[e.series]
            stepped = e.seg in st.stepped
            st.stepped.discard(e.seg)
            # The level in two parts, the reading and its temperature (0 where none
            # applies), each with its own averages and daily profile; the gauge's own slope
            # joins them only when judging.
            reading, heat = e.median, 0.0
            if cfg.mode == "site":
                reading = e.median - e.others
            elif cfg.mode == "thermal":
                if math.isfinite(e.temp):
                    reading, heat = e.median + cfg.coef * e.temp, e.temp
                    self._learn(st, e.temp, reading, e.t)
                else:
                    reading = NAN
            hour = ((e.t - cfg.half_span_ns) // _HOUR_NS) % 24
            night_ok = hour >= _NIGHT_UTC_HOURS[0] or hour < _NIGHT_UTC_HOURS[1]
            usable = math.isfinite(cfg.threshold) and (cfg.p.drift_mode != "night" or night_ok)
            floor = usable and self._night_floor(cfg, st, e.t, reading)
            st.stepped_on = after_step[(e.series, e.seg)] = floor
            stepped = stepped or floor
            if usable and math.isfinite(reading):
                both = [reading, heat]
                if cfg.daily:
                    both = self._without_daily_cycle(st, both, hour)
                if st.drift_ts is None or stepped:  # after a step the new level counts
                    st.fast, st.slow = list(both), list(both)
                else:
                    dt = max((e.t - st.drift_ts) / 1e9, 0.0)
                    a_fast = 1.0 - _exp(-dt / cfg.fast_s)
                    a_slow = 1.0 - _exp(-dt / cfg.slow_s)
                    st.fast = [f + a_fast * (x - f) for f, x in zip(st.fast, both, strict=True)]
                    st.slow = [f + a_slow * (x - f) for f, x in zip(st.slow, both, strict=True)]
                if st.drift_ts is None:
                    st.drift_since = e.t
                st.drift_ts = e.t if st.drift_ts is None else max(st.drift_ts, e.t)
                b = self._slope(cfg, st) if cfg.mode == "thermal" else 0.0
                apart = (st.fast[0] - st.slow[0]) - b * (st.fast[1] - st.slow[1])
                warm = (e.t - st.drift_since) / 1e9 >= cfg.warm_s
                st.on = warm and abs(apart) > cfg.threshold
            after[(e.series, e.seg)] = st.on
        return after, after_step

    @staticmethod
    def _night_floor(cfg: _Config, st: _State, t: int, level: float) -> bool:
        """A night floor that began beyond ``night_step`` from where the night before
        ended and, once the night has lasted NIGHT_STEP_SPAN_S, moved less than
        NIGHT_STEP_FLAT of that jump: judged once per night."""
        if not (math.isfinite(cfg.night_step) and math.isfinite(level)):
            return False
        night = (t - cfg.half_span_ns + _HOUR_NS) // (24 * _HOUR_NS)
        if night != st.night_id:
            st.night_before = st.night_last if st.night_id >= 0 else NAN
            st.night_id, st.night_first, st.night_first_ts = night, level, t
            st.night_judged = False
        st.night_last = level
        if st.night_judged or (t - st.night_first_ts) / 1e9 < NIGHT_STEP_SPAN_S:
            return False
        if not math.isfinite(st.night_before):
            return False
        st.night_judged = True
        jump = st.night_first - st.night_before
        return abs(jump) > cfg.night_step and abs(level - st.night_first) < NIGHT_STEP_FLAT * abs(
            jump
        )

    @staticmethod
    def _without_daily_cycle(st: _State, x: list[float], hour: int) -> list[float]:
        """``x`` (the reading and its temperature) less the series' own centred daily
        profile at that hour; the profile learns the hour's departure from the slow level,
        averaged over about a week."""
        count = st.profile_n[hour]
        out = []
        for c in range(2):
            known = [p[c] for p, n in zip(st.profile, st.profile_n, strict=True) if n > 0]
            mean = sum(known) / max(len(known), 1)
            here = st.profile[hour][c]
            dev = 0.0 if st.drift_ts is None else x[c] - st.slow[c]
            alpha = 1.0 / min(count + 1, _PROFILE_DAYS)
            st.profile[hour][c] = here + alpha * (dev - here) if count else dev
            out.append(x[c] - (here - mean) if count else x[c])
        st.profile_n[hour] = count + 1
        return out

    @staticmethod
    def _slope(cfg: _Config, st: _State) -> float:
        sx, sy, sxx, sxy, w = st.reg
        if not w > 0:
            return cfg.coef
        cov = sxy - sx * sy / w
        var = sxx - sx * sx / w
        return (cov + cfg.coef * _PRIOR_VAR_K2) / (var + _PRIOR_VAR_K2)

    @staticmethod
    def _learn(st: _State, temp: float, strain: float, t: int) -> None:
        dt = 0.0 if st.drift_ts is None else max((t - st.drift_ts) / 1e9, 0.0)
        keep = _exp(-dt / _THERMAL_MEMORY_S)
        obs = (temp, strain, temp * temp, temp * strain, 1.0)
        st.reg = [r * keep + o for r, o in zip(st.reg, obs, strict=True)]
