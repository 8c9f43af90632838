"""The week scenario of the anomaly evaluation: a simulated week of 52 series per seed.

``bench/eval_anomaly.py`` describes the method. Here: the registry (three bridges every
10 s, five classrooms every 60 s), the school weeks, the fault plan, the simulation on each
device's grid, and the scoring of one week fed in every arrival pattern.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from bench.eval_patterns import Arrivals, CheckFactory, Pattern, Readings, agreements, run_patterns
from bench.eval_scoring import (
    ANY_FAULT_BITS,
    DAY,
    DETECTORS,
    F64,
    HOUR,
    I64,
    MIN,
    NS,
    U8,
    Agreement,
    DetectorScore,
    KindScore,
    Window,
    events_per_series,
    expected_name,
    score_precision,
    score_recall,
)
from devices.registry import Registry, Series, parse_registry
from devices.sim_common import utc_offset_s
from devices.simulator import FAULT_KINDS, FaultKind, FaultSpec, Simulator
from devices.topics import TopicScheme

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
# The i-th seed of a set runs the week MONDAYS[i % 3], so three seeds cover three seasons.
MONDAYS: Final = (dt.date(2025, 1, 13), dt.date(2025, 5, 12), dt.date(2025, 9, 15))
TARGET_KINDS: Final[tuple[FaultKind, ...]] = ("spike", "stuck", "step", "drift", "out_of_range")


@dataclass(frozen=True)
class WeekConfig:
    """The week scenario's settings."""

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
    arrivals: Arrivals = field(default_factory=Arrivals)
    registry_yaml: str = REGISTRY_YAML


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


# --- one run, all patterns ------------------------------------------------------------------


@dataclass
class PatternScores:
    """One pattern's figures over the runs of a seed set (sums; ``add`` pools runs)."""

    recall: dict[FaultKind, KindScore]
    precision: dict[str, DetectorScore]
    # Events in the clean runs per series, summed over runs: per detector, and "any" for
    # the union of all but LIMIT (the false alarms).
    clean_counts: dict[str, I64]
    clean_flagged: int = 0  # clean readings flagged by any but LIMIT
    readings: int = 0  # readings passed to the check
    batches: int = 0
    seconds: float = 0.0  # spent inside the check

    @classmethod
    def empty(cls, n_series: int) -> PatternScores:
        return cls(
            recall={k: KindScore(k, expected_name(k)) for k in FAULT_KINDS},
            precision={d: DetectorScore(d) for d in DETECTORS},
            clean_counts={d: np.zeros(n_series, np.int64) for d in (*DETECTORS, "any")},
        )

    def add(self, other: PatternScores) -> None:
        for kind, k in other.recall.items():
            self.recall[kind].add(k)
        for name, d in other.precision.items():
            self.precision[name].add(d)
        for name, c in other.clean_counts.items():
            self.clean_counts[name] = self.clean_counts[name] + c
        self.clean_flagged += other.clean_flagged
        self.readings += other.readings
        self.batches += other.batches
        self.seconds += other.seconds


@dataclass
class RunResult:
    scores: dict[Pattern, PatternScores]
    agreement: dict[tuple[Pattern, Pattern], Agreement]


@dataclass(frozen=True)
class WeekRun:
    """One simulated week: clean when ``faults`` is None."""

    seed: int
    monday: dt.date
    faults: tuple[FaultSpec, ...] | None


def score_week(
    config: WeekConfig, run: WeekRun, factory: CheckFactory, patterns: Sequence[Pattern]
) -> RunResult:
    """Simulate one week, feed it in every pattern to fresh checks, score each."""
    registry = parse_registry(config.registry_yaml, "bench/eval_week.py")
    n = len(registry.series)
    start = week_start_ns(run.monday)
    faults = run.faults or ()
    data = simulate(
        registry,
        run.seed,
        start,
        start + config.days * DAY,
        faults,
        np.random.default_rng([run.seed, 2]),
    )
    runs = run_patterns(
        registry.series,
        data,
        factory,
        patterns,
        start_ns=start,
        rng=np.random.default_rng([run.seed, 3]),
        arrivals=config.arrivals,
    )
    windows = [Window.of(f) for f in faults]
    scores: dict[Pattern, PatternScores] = {}
    for pattern, result in runs.items():
        s = PatternScores.empty(n)
        trace = result.trace
        if run.faults is not None:
            s.recall = score_recall(
                trace, windows, grace_ns=config.grace_ns, slack_ns=config.slack_ns
            )
            s.precision = score_precision(
                trace,
                windows,
                merge_ns=config.merge_ns,
                grace_ns=config.grace_ns,
                slack_ns=config.slack_ns,
            )
        else:
            for name, bits in (*DETECTORS.items(), ("any", ANY_FAULT_BITS)):
                s.clean_counts[name] = events_per_series(trace, bits, n, config.merge_ns)
            s.clean_flagged = int(np.count_nonzero(trace.flags & ANY_FAULT_BITS))
        s.readings, s.batches, s.seconds = result.checked, result.batches, result.seconds
        scores[pattern] = s
    return RunResult(scores, agreements(runs))
