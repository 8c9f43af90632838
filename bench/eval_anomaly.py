"""Anomaly detection evaluation on labelled simulator traces.

    python -m bench.eval_anomaly [--seeds 1 2 3] [--per-kind 6] [--days 7]

For each seed the simulator produces one week (starting Monday 00:00 local time; the seeds
cycle through a winter, a spring and an autumn school week) of every series of the registry
below: bridges with strain and temperature per gauge, inclination and crack width, lorry
traffic and temperature cycles; classrooms with CO2, temperature, humidity, PM2.5 and noise,
lessons and window airing. Two runs per seed:

- CLEAN: no faults. Every flag here is a false alarm.
- FAULTY: the same values with faults injected (``plan_faults``): ``per_kind`` each of
  spike, stuck, step, drift and out_of_range, plus a few gaps, on random series at random
  times, with durations typical of the kind (spike and out_of_range 5-60 min, stuck 2-12 h,
  drift 1-3 days, step from its onset to the end of the run, gap 15 min-4 h) and magnitudes
  of 1-3 (``FAULT_SCALE`` units). Two faults on one series are at least ``margin_ns`` apart,
  so each fault window has one unambiguous label.

The readings are fed to a fresh check (``ingest.anomaly.build_check``) per run as the
service would: in time order, in batches of everything sampled in a 5-10 minute window
(random lengths, so no detector can rely on a batch size), many series interleaved in each
batch. Values outside a series' [minimum, maximum] never reach the check, since the decoder
quarantines them; the harness marks them with ``AnomalyFlag.RANGE`` instead. Gap samples
(NaN) do not exist at all.

Scoring (pure functions below, unit-tested in ``tests/unit/test_eval_anomaly.py``):

- Fault kind -> expected detector: spike -> SPIKE, stuck -> STUCK, step -> STEP, drift ->
  DRIFT, out_of_range -> RANGE (the quarantine), gap -> GAP (reported, no target).
- Event recall per fault kind: a fault window counts as detected when the expected detector
  flags at least one sample of that series inside its detection span. The span is the fault
  window [start, end), except: step and drift are lasting states that need some samples to
  be told from noise, and a detection days late is of little use, so their span is the
  window cut to one day (``grace_ns``) after the onset, whichever ends first; a gap (and an
  out-of-range stretch) has no samples the check sees, so its span reaches ``slack_ns``
  (1 h) past its end, where the first reading after it lands. "Recall (any flag)" counts a
  flag of any detector but LIMIT instead.
- Events: per series and detector, maximal runs of flagged samples; runs less than
  ``merge_ns`` (1 h) apart merge into one event, so one fault that a detector flags on and
  off counts once.
- Precision per detector: its events in the FAULTY runs that overlap a window of the
  matching fault kind on the same series, over all its events in the FAULTY runs. The
  window is the detection span, except that a drift's is not cut: a drift keeps changing
  through its window, so a late flag is right, just late; a step is one change at its
  onset, and a STEP event days later on the offset series is about something else. GAP
  also matches out_of_range windows (a quarantined stretch is silence to the check). F1
  combines this precision with the recall above.
- False alarms per sensor-week: events of the union of all detectors but LIMIT in the CLEAN
  runs, over (series x weeks). LIMIT is a structural finding set by design limits, not a
  data fault, so its events are reported on their own.

Targets (issue 3): recall >= 0.9 on spike, stuck, step and out_of_range, >= 0.8 on drift,
and at most 1 false alarm per sensor-week on clean data. The last line printed is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from devices.registry import Registry, Series, parse_registry
from devices.sim_common import utc_offset_s
from devices.simulator import FAULT_KINDS, FaultKind, FaultSpec, Simulator
from devices.topics import TopicScheme
from ingest.batch import AnomalyFlag, ReadingBatch

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

NS: Final = 1_000_000_000
MIN: Final = 60 * NS
HOUR: Final = 60 * MIN
DAY: Final = 24 * HOUR

# Bridges sample every 10 s rather than 1 Hz: a week at 1 Hz is 600,000 samples per series,
# too much for a 3-minute run, and 10 s still leaves lorry transients (3-20 s) in the data as
# the one-sample bumps a spike detector must not mistake for faults. Static monitoring in
# Dortmund reports even less often (every 30 min, DOMAIN.md). Classrooms report every 60 s,
# as senseBox-style kits do.
BRIDGE_INTERVAL_S: Final = 10
SCHOOL_INTERVAL_S: Final = 60

REGISTRY_YAML: Final = f"""\
sites:
  b1-wittekind:
    kind: bridge
    name: B1 Wittekindstrasse
    city: Dortmund
    location: {{lat: 51.50, lon: 7.45}}
    devices:
      gw1:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          g1: [strain, temperature]
          g2: [strain, temperature]
          g3: [strain, temperature]
          g4: [strain, temperature]
        overrides:
          strain: {{limit: 600}}
      gw2:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          deck-top: [temperature]
          deck-bottom: [temperature]
          g5: [strain]
          g6: [strain]
      pier:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          p1: [inclination]
          p2: [inclination]
          c1: [crack_width]
          c2: [crack_width]
  remberg:
    kind: bridge
    name: Remberg-Bruecke
    city: Dortmund
    location: {{lat: 51.49, lon: 7.52}}
    devices:
      gw1:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          g1: [strain, temperature]
          g2: [strain, temperature]
          g3: [strain, temperature]
      env:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          p1: [inclination]
          c1: [crack_width]
  ruhr-schwerte:
    kind: bridge
    name: Ruhrbruecke Schwerte
    city: Schwerte
    location: {{lat: 51.44, lon: 7.57}}
    devices:
      gw1:
        interval: {BRIDGE_INTERVAL_S}s
        channels:
          g1: [strain, temperature]
          g2: [strain, temperature]
          top: [temperature]
          bottom: [temperature]
  gs-nord:
    kind: school
    name: Grundschule Nord
    city: Dortmund
    devices:
      r101:
        interval: {SCHOOL_INTERVAL_S}s
        measurements: [co2, temperature, humidity, pm2_5, noise]
      r102:
        interval: {SCHOOL_INTERVAL_S}s
        measurements: [co2, temperature, humidity]
      r103:
        interval: {SCHOOL_INTERVAL_S}s
        measurements: [co2, temperature, humidity]
  gym-west:
    kind: school
    name: Gymnasium West
    city: Dortmund
    devices:
      box1:
        interval: {SCHOOL_INTERVAL_S}s
        channels:
          r201: [co2, temperature, humidity, noise]
          r202: [co2, temperature, humidity]
  ge-sued:
    kind: school
    name: Gesamtschule Sued
    city: Schwerte
    devices:
      r12:
        interval: {SCHOOL_INTERVAL_S}s
        measurements: [co2, temperature, humidity, pm2_5]
"""

# Mondays of school weeks outside NRW holidays: winter (heating, dry air), spring, autumn.
# Seed i runs the week MONDAYS[i % 3], so three seeds cover three seasons.
MONDAYS: Final = (dt.date(2025, 1, 13), dt.date(2025, 5, 12), dt.date(2025, 9, 15))

TARGET_KINDS: Final[tuple[FaultKind, ...]] = ("spike", "stuck", "step", "drift", "out_of_range")
RECALL_TARGETS: Final[dict[FaultKind, float]] = {
    "spike": 0.9,
    "stuck": 0.9,
    "step": 0.9,
    "out_of_range": 0.9,
    "drift": 0.8,
}
FALSE_ALARM_TARGET: Final = 1.0  # per sensor-week on clean data

# Detector name -> flag bit, in AnomalyFlag's order.
DETECTORS: Final[dict[str, int]] = {
    f.name.lower(): int(f) for f in AnomalyFlag if f.value and f.name is not None
}
# The detector that should catch each fault kind; out_of_range is caught by the quarantine,
# which the harness records as RANGE.
EXPECTED: Final[dict[FaultKind, str]] = {
    "spike": "spike",
    "stuck": "stuck",
    "step": "step",
    "drift": "drift",
    "out_of_range": "range",
    "gap": "gap",
}
# The fault kinds whose windows an event of a detector may overlap to count as true (for
# precision). A quarantined stretch is silence to the check, just as a gap is, so a GAP flag
# after out-of-range values is right too.
MATCHING_KINDS: Final[dict[str, tuple[FaultKind, ...]]] = {
    d: (k,) for k, d in EXPECTED.items() if k != "gap"
} | {"gap": ("gap", "out_of_range")}
# Flags that count as "something was flagged": all but LIMIT, a structural finding that a
# design limit sets, whatever the sensor does.
ANY_FAULT_BITS: Final = int(AnomalyFlag(sum(DETECTORS.values())) & ~AnomalyFlag.LIMIT)

# Typical durations (low, high) of each kind; step has none, it lasts to the end of the run.
DURATIONS: Final[dict[FaultKind, tuple[int, int]]] = {
    "spike": (5 * MIN, HOUR),
    "out_of_range": (5 * MIN, HOUR),
    "stuck": (2 * HOUR, 12 * HOUR),
    "drift": (DAY, 3 * DAY),
    "gap": (15 * MIN, 4 * HOUR),
}
# Long faults are placed first: they are the hardest to fit between the others.
_PLACEMENT_ORDER: Final[tuple[FaultKind, ...]] = (
    "step",
    "drift",
    "stuck",
    "gap",
    "spike",
    "out_of_range",
)


# --- scoring: pure functions of arrays ------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One injected fault: samples of ``series`` in [start_ns, end_ns) carry it."""

    series: int
    kind: FaultKind
    start_ns: int
    end_ns: int

    @classmethod
    def of(cls, fault: FaultSpec) -> Window:
        if fault.series is None:
            raise ValueError("the evaluation injects faults into one series at a time")
        return cls(fault.series, fault.kind, fault.start_ns, fault.end_ns)


# Kinds whose samples never reach the check: the first reading it sees after one of them
# lands after the window, so that is where a GAP flag can be.
_SILENT: Final[tuple[FaultKind, ...]] = ("gap", "out_of_range")


def detection_span(w: Window, *, grace_ns: int, slack_ns: int) -> tuple[int, int]:
    """[lo, hi) in which a flag of the expected detector counts as detecting ``w``: the
    window; for step and drift cut to ``grace_ns`` after the onset; for a gap or an
    out-of-range stretch extended by ``slack_ns`` past its end, where the first reading the
    check sees after it lands."""
    if w.kind in ("step", "drift"):
        return w.start_ns, min(w.end_ns, w.start_ns + grace_ns)
    if w.kind in _SILENT:
        return w.start_ns, w.end_ns + slack_ns
    return w.start_ns, w.end_ns


def match_span(w: Window, *, grace_ns: int, slack_ns: int) -> tuple[int, int]:
    """[lo, hi) an event must overlap to be a true detection of ``w`` (for precision): the
    detection span, but a drift's uncut, since a drift keeps changing through its window
    and a late flag is right, just late. A step changes once, at its onset: later STEP
    events on the offset series are about something else, so its span stays cut."""
    if w.kind == "drift":
        return w.start_ns, w.end_ns
    return detection_span(w, grace_ns=grace_ns, slack_ns=slack_ns)


@dataclass(frozen=True)
class Trace:
    """Per-sample results of one or more runs, sorted by (series, ts_ns). ``series`` is a
    key unique per run and series (``concat`` offsets it), ``flags`` are the check's bits
    plus RANGE for quarantined samples, ``labels`` the simulator's (0 clean)."""

    series: I64
    ts_ns: I64
    flags: I32
    labels: U8

    def __post_init__(self) -> None:
        n = len(self.series)
        if not len(self.ts_ns) == len(self.flags) == len(self.labels) == n:
            raise ValueError("trace columns differ in length")
        if n > 1:
            s, t = self.series, self.ts_ns
            if bool(np.any((s[1:] < s[:-1]) | ((s[1:] == s[:-1]) & (t[1:] <= t[:-1])))):
                raise ValueError("a trace must be sorted by (series, ts_ns), without repeats")

    def __len__(self) -> int:
        return len(self.series)

    @staticmethod
    def concat(parts: Sequence[Trace], stride: int) -> Trace:
        """Join runs: run ``i``'s series ``s`` becomes ``i * stride + s``."""
        if not parts:
            z = np.zeros(0, np.int64)
            return Trace(z, z, np.zeros(0, np.int32), np.zeros(0, np.uint8))
        return Trace(
            np.concatenate([p.series + i * stride for i, p in enumerate(parts)]),
            np.concatenate([p.ts_ns for p in parts]),
            np.concatenate([p.flags for p in parts]),
            np.concatenate([p.labels for p in parts]),
        )

    def span(self, series: int, lo: int, hi: int) -> slice:
        """The samples of ``series`` with lo <= ts_ns < hi."""
        a, b = np.searchsorted(self.series, [series, series + 1], side="left").tolist()
        ts = self.ts_ns[a:b]
        i, j = np.searchsorted(ts, [lo, hi], side="left").tolist()
        return slice(a + i, a + j)


@dataclass(frozen=True)
class Events:
    """Flag events: for event k, series[k], and the first and last flagged timestamps."""

    series: I64
    first_ns: I64
    last_ns: I64

    def __len__(self) -> int:
        return len(self.series)


def flag_events(series: I64, ts_ns: I64, flagged: Bool, merge_ns: int = HOUR) -> Events:
    """Group the flagged samples of a (series, ts)-sorted trace into events: runs of flagged
    samples of one series, where runs less than ``merge_ns`` apart (last flagged sample of
    one to first of the next) merge."""
    idx = np.flatnonzero(flagged)
    s, t = series[idx], ts_ns[idx]
    new = np.ones(len(idx), dtype=bool)
    new[1:] = (s[1:] != s[:-1]) | (t[1:] - t[:-1] >= merge_ns)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(idx))[: len(starts)] - 1  # empty when nothing flagged
    return Events(s[starts], t[starts], t[ends])


def trace_events(trace: Trace, bits: int, merge_ns: int = HOUR) -> Events:
    """Events of the samples flagged with any of ``bits``."""
    return flag_events(trace.series, trace.ts_ns, (trace.flags & bits) != 0, merge_ns)


@dataclass
class KindScore:
    """Recall of one fault kind."""

    kind: FaultKind
    detector: str
    windows: int = 0
    detected: int = 0  # by the expected detector, within the detection span
    detected_any: int = 0  # by any flag but LIMIT, within the detection span
    delays_ns: list[int] = field(default_factory=list)  # onset to first detecting flag
    samples: int = 0  # samples labelled with this kind
    samples_hit: int = 0  # of those, flagged by the expected detector

    @property
    def recall(self) -> float | None:
        return self.detected / self.windows if self.windows else None

    @property
    def recall_any(self) -> float | None:
        return self.detected_any / self.windows if self.windows else None

    @property
    def median_delay_ns(self) -> int | None:
        return int(np.median(self.delays_ns)) if self.delays_ns else None


def score_recall(
    trace: Trace,
    windows: Sequence[Window],
    *,
    grace_ns: int = DAY,
    slack_ns: int = HOUR,
) -> dict[FaultKind, KindScore]:
    """Event recall per fault kind (see the module docstring), with detection delays and
    the share of labelled samples the expected detector flagged."""
    out = {k: KindScore(k, EXPECTED[k]) for k in FAULT_KINDS}
    for w in windows:
        score = out[w.kind]
        bit = DETECTORS[score.detector]
        lo, hi = detection_span(w, grace_ns=grace_ns, slack_ns=slack_ns)
        sl = trace.span(w.series, lo, hi)
        flags, ts = trace.flags[sl], trace.ts_ns[sl]
        score.windows += 1
        hits = np.flatnonzero(flags & bit)
        if len(hits):
            score.detected += 1
            score.delays_ns.append(int(ts[hits[0]]) - w.start_ns)
        if bool(np.any(flags & ANY_FAULT_BITS)):
            score.detected_any += 1
        whole = trace.span(w.series, w.start_ns, w.end_ns)
        labelled = trace.labels[whole] == FAULT_KINDS.index(w.kind) + 1
        score.samples += int(labelled.sum())
        score.samples_hit += int(np.count_nonzero(labelled & ((trace.flags[whole] & bit) != 0)))
    return out


@dataclass
class DetectorScore:
    """Precision of one detector: its events and those overlapping a matching fault."""

    detector: str
    events: int = 0
    true_events: int = 0

    @property
    def precision(self) -> float | None:
        return self.true_events / self.events if self.events else None


def overlaps(
    events: Events, windows: Sequence[Window], *, grace_ns: int = DAY, slack_ns: int = HOUR
) -> Bool:
    """Per event: does it overlap the match span of one of ``windows`` on its series?"""
    hit = np.zeros(len(events), dtype=bool)
    for w in windows:
        lo, hi = match_span(w, grace_ns=grace_ns, slack_ns=slack_ns)
        hit |= (events.series == w.series) & (events.first_ns < hi) & (events.last_ns >= lo)
    return hit


def score_precision(
    trace: Trace,
    windows: Sequence[Window],
    *,
    merge_ns: int = HOUR,
    grace_ns: int = DAY,
    slack_ns: int = HOUR,
) -> dict[str, DetectorScore]:
    """Per detector: events in ``trace`` (the faulty runs), and how many overlap a window of
    the fault kinds it is meant for (``MATCHING_KINDS``). Detectors without a fault kind
    (rate, shift, limit) have no true events by this definition; their counts are reported
    as they are."""
    out: dict[str, DetectorScore] = {}
    for name, bit in DETECTORS.items():
        events = trace_events(trace, bit, merge_ns)
        kinds = MATCHING_KINDS.get(name, ())
        mine = [w for w in windows if w.kind in kinds]
        true = overlaps(events, mine, grace_ns=grace_ns, slack_ns=slack_ns)
        out[name] = DetectorScore(name, len(events), int(true.sum()))
    return out


def f1(precision: float | None, recall: float | None) -> float:
    """Harmonic mean; 0 when either is missing or both are 0."""
    if precision is None or recall is None or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def events_per_series(trace: Trace, bits: int, n_keys: int, merge_ns: int = HOUR) -> I64:
    """Number of events of ``bits`` for each series key 0..n_keys-1."""
    ev = trace_events(trace, bits, merge_ns)
    return np.bincount(ev.series, minlength=n_keys).astype(np.int64)


def false_alarm_rate(
    trace: Trace, n_series: int, weeks: float, *, bits: int = ANY_FAULT_BITS, merge_ns: int = HOUR
) -> float:
    """Events of ``bits`` (by default every detector but LIMIT) per sensor-week: ``trace``
    holds clean runs of ``n_series`` series (keys summed over runs) of ``weeks`` each."""
    if n_series <= 0 or weeks <= 0:
        raise ValueError("false alarm rate needs series and time")
    return len(trace_events(trace, bits, merge_ns)) / (n_series * weeks)


# --- simulation and the check -------------------------------------------------------------


class Check(Protocol):
    def check(self, batch: ReadingBatch) -> None: ...


CheckFactory = Callable[[Sequence[Series]], Check]


def default_factory() -> CheckFactory:
    """``ingest.anomaly.build_check``, imported when the evaluation runs, so the scoring
    can be imported and tested without the detectors (the tests pass their own factory)."""
    from ingest.anomaly import build_check

    return build_check


@dataclass(frozen=True)
class EvalConfig:
    seeds: tuple[int, ...] = (1, 2, 3)
    days: int = 7
    per_kind: int = 6  # faults of each target kind per seed
    gaps: int = 2  # gap faults per seed
    lead_ns: int = DAY  # no fault starts earlier: detectors have a day of history first
    # Least time between two faults on one series: one label per window, and the series
    # (and the check's state of it) settles before the next fault.
    margin_ns: int = 12 * HOUR
    grace_ns: int = DAY
    merge_ns: int = HOUR
    slack_ns: int = HOUR
    batch_ns: tuple[int, int] = (5 * MIN, 10 * MIN)  # range of batch lengths
    registry_yaml: str = REGISTRY_YAML


def week_start_ns(monday: dt.date) -> int:
    """Midnight at the start of ``monday`` on Dortmund's clock, in ns since the epoch."""
    utc_midnight = int(
        dt.datetime(monday.year, monday.month, monday.day, tzinfo=dt.UTC).timestamp()
    )
    offset = int(utc_offset_s(np.array([utc_midnight], dtype=np.int64))[0])
    return (utc_midnight - offset) * NS


def _signed(rng: np.random.Generator, series: Series, kind: FaultKind) -> float:
    magnitude = float(rng.uniform(1.0, 3.0))
    # Steps and drifts of quantities that sit near a floor of 0 (CO2 near outdoor air, PM,
    # crack width, noise) go up: going down they would be clipped at the range minimum and
    # turn into a flat line at 0, another fault than the label says.
    if kind in ("step", "drift") and series.minimum >= 0:
        return magnitude
    return magnitude if rng.random() < 0.5 else -magnitude


def plan_faults(
    series: Sequence[Series],
    rng: np.random.Generator,
    start_ns: int,
    end_ns: int,
    *,
    per_kind: int,
    gaps: int,
    lead_ns: int = DAY,
    margin_ns: int = 12 * HOUR,
    grace_ns: int = DAY,
) -> list[FaultSpec]:
    """Random faults: ``per_kind`` of each target kind and ``gaps`` gaps, each on a random
    series, starting no earlier than ``lead_ns`` into the run, with a typical duration for
    its kind (clamped to the run) and none within ``margin_ns`` of another fault on the same
    series. A step onset leaves ``grace_ns`` to the end of the run, to be detected in."""
    wanted = dict.fromkeys(TARGET_KINDS, per_kind) | {"gap": gaps}
    taken: dict[int, list[tuple[int, int]]] = {}
    faults: list[FaultSpec] = []
    first = start_ns + lead_ns
    if first >= end_ns:
        raise ValueError("the run is shorter than the lead-in before the first fault")
    for kind in _PLACEMENT_ORDER:
        for _ in range(wanted[kind]):
            for _attempt in range(1000):
                s = series[int(rng.integers(len(series)))]
                if kind == "step":
                    t0 = int(rng.integers(first, max(first + 1, end_ns - grace_ns)))
                    duration = end_ns - t0
                else:
                    lo, hi = DURATIONS[kind]
                    duration = min(int(rng.integers(lo, hi + 1)), end_ns - first)
                    t0 = int(rng.integers(first, end_ns - duration + 1))
                busy = taken.setdefault(s.index, [])
                if any(t0 < b + margin_ns and a < t0 + duration + margin_ns for a, b in busy):
                    continue
                busy.append((t0, t0 + duration))
                faults.append(FaultSpec(kind, s.index, t0, duration, _signed(rng, s, kind)))
                break
            else:
                raise ValueError(f"cannot place {wanted[kind]} {kind} faults: too few series")
    return sorted(faults, key=lambda f: (f.start_ns, f.series or 0))


@dataclass(frozen=True)
class Readings:
    """Simulated samples of one run, sorted by (series, ts_ns); gap samples left out."""

    series: I64
    ts_ns: I64
    values: F64
    labels: U8


def simulate(
    registry: Registry,
    seed: int,
    start_ns: int,
    end_ns: int,
    faults: Sequence[FaultSpec],
    rng: np.random.Generator,
) -> Readings:
    """Every series on its device's grid (bridges every 10 s, classrooms every 60 s), each
    device at its own phase, as unsynchronised devices are."""
    sim = Simulator(
        registry,
        TopicScheme(),
        seed=seed,
        start_ns=start_ns,
        bridge_rate_hz=1.0 / BRIDGE_INTERVAL_S,
        school_interval_s=SCHOOL_INTERVAL_S,
        faults=faults,
    )
    cols: dict[int, tuple[I64, F64, U8]] = {}
    for dev in registry.devices():
        period = sim.period_ns(next(iter(dev.series.values())))
        phase = int(rng.integers(0, period // 1000)) * 1000
        ts = np.arange(start_ns + phase, end_ns, period, dtype=np.int64)
        for name, (values, labels) in sim.device_values(dev, ts).items():
            keep = ~np.isnan(values)
            cols[dev.series[name].index] = (ts[keep], values[keep], labels[keep])
    order = sorted(cols)
    return Readings(
        np.concatenate([np.full(len(cols[i][0]), i, np.int64) for i in order]),
        np.concatenate([cols[i][0] for i in order]),
        np.concatenate([cols[i][1] for i in order]),
        np.concatenate([cols[i][2] for i in order]),
    )


@dataclass(frozen=True)
class CheckRun:
    trace: Trace
    checked: int  # readings passed to the check
    batches: int
    seconds: float  # spent inside the check


def run_check(
    registry: Registry,
    readings: Readings,
    factory: CheckFactory,
    start_ns: int,
    rng: np.random.Generator,
    batch_ns: tuple[int, int] = (5 * MIN, 10 * MIN),
) -> CheckRun:
    """Feed a fresh check the in-range readings in time-ordered batches of random length
    and collect its flags; quarantined readings get RANGE and never reach the check."""
    lo = np.array([s.minimum for s in registry.series])[readings.series]
    hi = np.array([s.maximum for s in registry.series])[readings.series]
    quarantined = (readings.values < lo) | (readings.values > hi)
    flags = np.where(quarantined, np.int32(AnomalyFlag.RANGE), np.int32(0)).astype(np.int32)
    passed = np.flatnonzero(~quarantined)
    # Arrival order: by time, devices interleaved (series breaks ties).
    passed = passed[np.lexsort((readings.series[passed], readings.ts_ns[passed]))]
    ts = readings.ts_ns[passed]
    end = int(ts[-1]) + 1 if len(ts) else start_ns
    lengths = rng.integers(batch_ns[0], batch_ns[1] + 1, size=(end - start_ns) // batch_ns[0] + 2)
    edges = start_ns + np.concatenate([[0], np.cumsum(lengths)])
    edges = edges[: int(np.searchsorted(edges, end)) + 1]
    bounds = np.searchsorted(ts, edges, side="left").tolist()
    check = factory(registry.series)
    seconds = 0.0
    batches = 0
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        rows = passed[a:b]
        batch = ReadingBatch.unchecked(
            readings.series[rows], readings.ts_ns[rows], readings.values[rows]
        )
        t0 = time.perf_counter()
        check.check(batch)
        seconds += time.perf_counter() - t0
        flags[rows] |= batch.flags
        batches += 1
    trace = Trace(readings.series, readings.ts_ns, flags, readings.labels)
    return CheckRun(trace, len(passed), batches, seconds)


# --- the evaluation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    config: EvalConfig
    registry: Registry
    weeks: tuple[dt.date, ...]
    recall: dict[FaultKind, KindScore]
    precision: dict[str, DetectorScore]
    # Events in the clean runs per series key (run * series + index): per detector, and
    # "any" for the union of all but LIMIT (the false alarms).
    clean_counts: dict[str, I64]
    false_alarms: float  # per sensor-week
    limit_events: float  # per sensor-week, clean runs
    readings: int
    check_seconds: float

    @property
    def n_series(self) -> int:
        return len(self.registry.series)

    @property
    def sensor_weeks(self) -> float:
        return self.n_series * len(self.config.seeds) * self.config.days / 7

    @property
    def clean_events(self) -> dict[str, int]:
        return {d: int(c.sum()) for d, c in self.clean_counts.items() if d in DETECTORS}

    def f1(self, kind: FaultKind) -> float:
        return f1(self.precision[EXPECTED[kind]].precision, self.recall[kind].recall)

    def targets_met(self) -> bool:
        for kind, target in RECALL_TARGETS.items():
            r = self.recall[kind].recall
            if r is None or r < target:
                return False
        return self.false_alarms <= FALSE_ALARM_TARGET

    def to_json(self) -> dict[str, object]:
        def rnd(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        kinds = (*TARGET_KINDS, "gap")
        return {
            "recall": {k: rnd(self.recall[k].recall) for k in kinds},
            "recall_any": {k: rnd(self.recall[k].recall_any) for k in kinds},
            "precision": {k: rnd(self.precision[EXPECTED[k]].precision) for k in kinds},
            "f1": {k: rnd(self.f1(k)) for k in kinds},
            "windows": {k: self.recall[k].windows for k in kinds},
            "false_alarms_per_sensor_week": rnd(self.false_alarms),
            "limit_events_per_sensor_week": rnd(self.limit_events),
            "events_clean": self.clean_events,
            "events_faulty": {d: s.events for d, s in self.precision.items()},
            "targets_met": self.targets_met(),
            "seeds": list(self.config.seeds),
            "weeks": [w.isoformat() for w in self.weeks],
            "series": self.n_series,
            "readings": self.readings,
            "check_seconds": round(self.check_seconds, 2),
        }


def evaluate(config: EvalConfig, factory: CheckFactory | None = None) -> Report:
    """Run the clean and the faulty run of every seed through fresh checks and score them."""
    make = factory if factory is not None else default_factory()
    registry = parse_registry(config.registry_yaml, "bench/eval_anomaly.py")
    n = len(registry.series)
    clean: list[Trace] = []
    faulty: list[Trace] = []
    windows: list[Window] = []
    weeks: list[dt.date] = []
    readings = 0
    seconds = 0.0
    for run, seed in enumerate(config.seeds):
        monday = MONDAYS[run % len(MONDAYS)]
        weeks.append(monday)
        start = week_start_ns(monday)
        end = start + config.days * DAY
        # One generator per purpose, so e.g. more faults per kind leave phases and batch
        # lengths as they were.
        faults = plan_faults(
            registry.series,
            np.random.default_rng([seed, 1]),
            start,
            end,
            per_kind=config.per_kind,
            gaps=config.gaps,
            lead_ns=config.lead_ns,
            margin_ns=config.margin_ns,
            grace_ns=config.grace_ns,
        )
        windows += [
            Window(w.series + run * n, w.kind, w.start_ns, w.end_ns) for w in map(Window.of, faults)
        ]
        for specs, out in (((), clean), (faults, faulty)):
            data = simulate(registry, seed, start, end, specs, np.random.default_rng([seed, 2]))
            result = run_check(
                registry, data, make, start, np.random.default_rng([seed, 3]), config.batch_ns
            )
            out.append(result.trace)
            readings += result.checked
            seconds += result.seconds
    clean_all = Trace.concat(clean, n)
    faulty_all = Trace.concat(faulty, n)
    weeks_per_run = config.days / 7
    runs = len(config.seeds)
    return Report(
        config=config,
        registry=registry,
        weeks=tuple(weeks),
        recall=score_recall(
            faulty_all, windows, grace_ns=config.grace_ns, slack_ns=config.slack_ns
        ),
        precision=score_precision(
            faulty_all,
            windows,
            merge_ns=config.merge_ns,
            grace_ns=config.grace_ns,
            slack_ns=config.slack_ns,
        ),
        clean_counts={
            d: events_per_series(clean_all, bit, n * runs, config.merge_ns)
            for d, bit in (*DETECTORS.items(), ("any", ANY_FAULT_BITS))
        },
        false_alarms=false_alarm_rate(clean_all, n * runs, weeks_per_run, merge_ns=config.merge_ns),
        limit_events=false_alarm_rate(
            clean_all,
            n * runs,
            weeks_per_run,
            bits=int(AnomalyFlag.LIMIT),
            merge_ns=config.merge_ns,
        ),
        readings=readings,
        check_seconds=seconds,
    )


# --- output ---------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_delay(ns: int | None) -> str:
    if ns is None:
        return "-"
    s = ns / NS
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def format_report(report: Report) -> str:
    cfg = report.config
    reg = report.registry
    bridges = sum(1 for s in reg.series if s.kind == "bridge")
    lines = [
        f"Anomaly detection evaluation: seeds {', '.join(map(str, cfg.seeds))}; "
        f"{cfg.days}-day runs from Mondays {', '.join(w.isoformat() for w in report.weeks)}",
        f"{report.n_series} series ({bridges} bridge every {BRIDGE_INTERVAL_S} s, "
        f"{report.n_series - bridges} classroom every {SCHOOL_INTERVAL_S} s); "
        f"{report.readings:,} readings checked in {report.check_seconds:.1f} s "
        f"({report.readings / max(report.check_seconds, 1e-9) / 1e6:.2f} M/s)",
        "",
        f"Recall per fault type (faulty runs; step/drift: flagged within {cfg.grace_ns / HOUR:.0f}"
        " h of onset)",
        "(samples hit: share of the labelled samples the detector flagged; low where it flags"
        " only the onset of a lasting fault)",
        f"{'fault':<13}{'detector':<10}{'windows':>8}{'recall':>8}{'target':>8}"
        f"{'any flag':>10}{'median delay':>14}{'samples hit':>13}",
    ]
    for fault in (*TARGET_KINDS, "gap"):
        k = report.recall[fault]
        target = RECALL_TARGETS.get(fault)
        hit = k.samples_hit / k.samples if k.samples else None
        lines.append(
            f"{fault:<13}{k.detector:<10}{k.windows:>8}{_fmt(k.recall):>8}"
            f"{_fmt(target, 1) if target else '-':>8}{_fmt(k.recall_any):>10}"
            f"{_fmt_delay(k.median_delay_ns):>14}{_fmt(hit):>13}"
        )
    lines += [
        "",
        "Per detector (events: flagged runs merged within "
        f"{cfg.merge_ns / MIN:.0f} min; clean = per sensor-week on clean data)",
        f"{'detector':<10}{'faulty':>8}{'true':>6}{'precision':>11}{'recall':>8}{'F1':>6}"
        f"{'clean':>7}{'clean/sw':>10}",
    ]
    recall_of = {d: k for k, d in EXPECTED.items()}  # the fault kind a detector is for
    for name, d in report.precision.items():
        kind = recall_of.get(name)
        recall = report.recall[kind].recall if kind else None
        lines.append(
            f"{name:<10}{d.events:>8}{d.true_events if kind else '-':>6}"
            f"{_fmt(d.precision) if kind else '-':>11}{_fmt(recall):>8}"
            f"{_fmt(f1(d.precision, recall)) if kind else '-':>6}"
            f"{report.clean_events[name]:>7}"
            f"{report.clean_events[name] / report.sensor_weeks:>10.2f}"
        )
    lines += [
        "",
        f"False alarms per sensor-week on clean data: {report.false_alarms:.2f} "
        f"(target <= {FALSE_ALARM_TARGET:g}); limit events {report.limit_events:.2f}",
        *_clean_table(report),
        "",
        f"Targets met: {'yes' if report.targets_met() else 'no'}",
    ]
    return "\n".join(lines)


def _clean_table(report: Report) -> list[str]:
    """Clean-data alarms per sensor-week by measurement and detector, with the worst sensor:
    shows which detector trips on which events (lorries on strain, airing in classrooms)."""
    cfg = report.config
    runs, n = len(cfg.seeds), report.n_series
    weeks = runs * cfg.days / 7  # per series, over all clean runs
    counts = {d: c.reshape(runs, n).sum(axis=0) for d, c in report.clean_counts.items()}
    noisy = [d for d in DETECTORS if d != "limit" and counts[d].any()]
    groups: dict[str, list[int]] = {}
    for s in report.registry.series:
        groups.setdefault(f"{s.kind}/{s.key.measurement}", []).append(s.index)
    head = f"  {'measurement':<20}{'series':>7}{'all':>7}{'worst':>7}"
    lines = [head + "".join(f"{d:>8}" for d in noisy)]
    for name, idx in sorted(groups.items()):
        per = counts["any"][idx] / weeks
        row = f"  {name:<20}{len(idx):>7}{per.mean():>7.2f}{per.max():>7.1f}"
        lines.append(row + "".join(f"{counts[d][idx].mean() / weeks:>8.2f}" for d in noisy))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_anomaly", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-kind", type=int, default=6, help="faults of each kind per seed")
    parser.add_argument("--days", type=int, default=7, help="length of each run")
    args = parser.parse_args(argv)
    config = EvalConfig(seeds=tuple(args.seeds), per_kind=args.per_kind, days=args.days)
    report = evaluate(config)
    print(format_report(report))
    print(json.dumps(report.to_json(), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
