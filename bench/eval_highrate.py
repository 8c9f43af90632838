"""The high-rate scenario of the anomaly evaluation: hour-long 100 Hz records of a bridge.

Load tests and dynamic monitoring sample strain at 100 Hz for minutes to hours (DOMAIN.md).
Each record is one hour of a bridge device with three gauges (strain and temperature each)
at 100 Hz, on a weekday between 07:00 and 17:00, so lorries cross it every minute or two:
transients of 3-20 s and tens of microstrain that return to the baseline and must not be
flagged. Per seed and ``records`` there are three records:

- clean: no faults; every flag is a false alarm (reported per record-hour).
- settlement: at 15-45 min every gauge's strain rises monotonically (a half-cosine) over
  2-5 min by 15-60 ue (sign and size per gauge) and stays: a support settled. Expected:
  SHIFT or STEP, within ``deadline_ns`` (1 min) of the rise's completion.
- step: at 15-50 min a sensor step of 3-8 ue on g1, a quiet gauge (noise 0.5 ue): expected
  STEP within ``deadline_ns`` of the step. The same record carries a slow drift on another
  gauge from 5-15 min to its end, 20-40 ue in total: drift detection must work on an hour
  of 100 Hz data as well as on weeks of 1-minute data. Expected: DRIFT, before the record
  ends.

Recall counts fault windows (a settlement gives one window per gauge) with a flag of an
expected detector in the span; "by the end" counts flags up to the end of the record.
Delays run from the step's or drift's onset, and from the settlement's completion (negative
when it was marked during the rise). Events merge flagged runs less than ``merge_ns``
(1 min) apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from bench.eval_patterns import (
    PATTERNS,
    Arrivals,
    CheckFactory,
    Pattern,
    Readings,
    agreements,
    run_patterns,
)
from bench.eval_scoring import (
    ANY_FAULT_BITS,
    DETECTORS,
    F64,
    HOUR,
    MIN,
    NS,
    U8,
    Agreement,
    DetectorScore,
    KindScore,
    Window,
    score_precision,
    score_recall,
    trace_events,
)
from devices.registry import Registry, parse_registry
from devices.simulator import FaultKind, FaultSpec, Simulator
from devices.topics import TopicScheme

RATE_HZ: Final = 100
PERIOD_NS: Final = NS // RATE_HZ
QUIET_NOISE_UE: Final = 0.5
GAUGES: Final = ("g1", "g2", "g3")

REGISTRY_YAML: Final = """\
sites:
  lasttest:
    kind: bridge
    name: Load-tested bridge
    city: Dortmund
    location: {lat: 51.51, lon: 7.47}
    devices:
      dyn:
        interval: 10ms
        channels:
          g1: [strain, temperature]
          g2: [strain, temperature]
          g3: [strain, temperature]
"""

RecordKind = Literal["clean", "settlement", "step"]
RECORD_KINDS: Final[tuple[RecordKind, ...]] = ("clean", "settlement", "step")
HIGH_RATE_KINDS: Final[tuple[FaultKind, ...]] = ("settlement", "step", "drift")


@dataclass(frozen=True)
class HighRateConfig:
    records: int = 1  # records of each kind per seed
    record_ns: int = HOUR
    deadline_ns: int = MIN  # settlement and step: flagged this soon to count
    merge_ns: int = MIN
    # 50 samples of each series per live batch (half a block, not aligned with the blocks):
    # one sample per batch would be 360,000 checks per record, some three minutes each with
    # the detectors of this writing, and a 100 Hz device sends blocks anyway.
    arrivals: Arrivals = field(default_factory=lambda: Arrivals(live_tick_ns=500_000_000))
    registry_yaml: str = REGISTRY_YAML


@dataclass(frozen=True)
class Record:
    """One hour-long record to simulate: its seed, kind, start and faults."""

    seed: int
    index: int  # among the seed's records of this kind
    kind: RecordKind
    start_ns: int
    faults: tuple[FaultSpec, ...]

    def windows(self) -> list[Window]:
        return [Window.of(f) for f in self.faults]


def _strain(registry: Registry, gauge: str) -> int:
    dev = registry.device("lasttest", "dyn")
    if dev is None:
        raise ValueError("the high-rate registry needs the device lasttest/dyn")
    return dev.series[f"{gauge}/strain"].index


def plan_records(
    registry: Registry, seed: int, monday_ns: int, config: HighRateConfig
) -> list[Record]:
    """The seed's records, each on a random weekday (Tuesday to Friday) of the week from
    ``monday_ns`` (local midnight), starting at a random minute between 07:00 and 16:00
    local time."""
    out: list[Record] = []
    span = config.record_ns
    for kind in RECORD_KINDS:
        for index in range(config.records):
            rng = np.random.default_rng([seed, 7, RECORD_KINDS.index(kind), index])
            day = int(rng.integers(1, 5))
            minute = int(rng.integers(7 * 60, 16 * 60))
            start = monday_ns + day * 86_400 * NS + minute * MIN
            faults: list[FaultSpec] = []
            end = start + span
            if kind == "settlement":  # onset 15-45 min into an hour, a rise of 2-5 min
                onset = start + int(rng.uniform(0.25, 0.75) * span) // NS * NS
                ramp = min(int(rng.integers(2 * 60, 5 * 60 + 1)) * NS, (end - onset) // 2)
                for gauge in GAUGES:
                    size = float(rng.uniform(15.0, 60.0)) * (1 if rng.random() < 0.5 else -1)
                    s = _strain(registry, gauge)
                    faults.append(FaultSpec("settlement", s, onset, ramp, size, absolute=True))
            elif kind == "step":  # step 15-50 min into an hour, drift from 5-15 min on
                onset = start + int(rng.uniform(0.25, 5 / 6) * span) // NS * NS
                size = float(rng.uniform(3.0, 8.0)) * (1 if rng.random() < 0.5 else -1)
                g1 = _strain(registry, "g1")
                faults.append(FaultSpec("step", g1, onset, end - onset, size, absolute=True))
                drifting = _strain(registry, GAUGES[int(rng.integers(1, len(GAUGES)))])
                t0 = start + int(rng.uniform(1 / 12, 0.25) * span) // NS * NS
                total = float(rng.uniform(20.0, 40.0)) * (1 if rng.random() < 0.5 else -1)
                faults.append(FaultSpec("drift", drifting, t0, end - t0, total, absolute=True))
            out.append(Record(seed, index, kind, start, tuple(faults)))
    return out


def simulate_record(registry: Registry, record: Record, config: HighRateConfig) -> Readings:
    """Every series of the registry at 100 Hz over the record (g1 a quiet gauge)."""
    sim = Simulator(
        registry,
        TopicScheme(),
        seed=record.seed,
        start_ns=record.start_ns,
        bridge_rate_hz=RATE_HZ,
        faults=record.faults,
        sensor_noise={_strain(registry, "g1"): QUIET_NOISE_UE},
    )
    ts = record.start_ns + np.arange(config.record_ns // PERIOD_NS, dtype=np.int64) * PERIOD_NS
    cols: dict[int, tuple[F64, U8]] = {}
    for dev in registry.devices():
        for name, (values, labels) in sim.device_values(dev, ts).items():
            cols[dev.series[name].index] = (values, labels)
    order = sorted(cols)
    return Readings(
        np.repeat(np.array(order, np.int64), len(ts)),
        np.tile(ts, len(order)),
        np.concatenate([cols[i][0] for i in order]),
        np.concatenate([cols[i][1] for i in order]).astype(np.uint8),
    )


@dataclass
class HighRateScores:
    """One pattern's figures over high-rate records (sums; ``add`` pools records)."""

    recall: dict[FaultKind, KindScore]  # within the deadline (drift: by the end)
    recall_end: dict[FaultKind, KindScore]  # by the end of the record
    precision: dict[str, DetectorScore]  # events in the fault records
    clean_events: dict[str, int] = field(default_factory=dict)  # per detector and "any"
    clean_flagged: int = 0  # readings flagged by any but LIMIT, clean records
    clean_hours: float = 0.0
    readings: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, other: HighRateScores) -> None:
        for mine, theirs in (
            (self.recall, other.recall),
            (self.recall_end, other.recall_end),
        ):
            for kind, score in theirs.items():
                mine[kind].add(score)
        for name, d in other.precision.items():
            self.precision[name].add(d)
        for name, n in other.clean_events.items():
            self.clean_events[name] = self.clean_events.get(name, 0) + n
        self.clean_flagged += other.clean_flagged
        self.clean_hours += other.clean_hours
        self.readings += other.readings
        self.batches += other.batches
        self.seconds += other.seconds

    @property
    def false_alarms_per_hour(self) -> float | None:
        return self.clean_events.get("any", 0) / self.clean_hours if self.clean_hours else None


@dataclass
class HighRateResult:
    scores: dict[Pattern, HighRateScores]
    agreement: dict[tuple[Pattern, Pattern], Agreement]
    records: int = 0

    def add(self, other: HighRateResult) -> None:
        for p, s in other.scores.items():
            if p in self.scores:
                self.scores[p].add(s)
            else:
                self.scores[p] = s
        for pair, a in other.agreement.items():
            self.agreement.setdefault(pair, Agreement()).add(a)
        self.records += other.records


def score_record(
    record: Record,
    factory: CheckFactory,
    config: HighRateConfig,
    patterns: Sequence[Pattern] = PATTERNS,
) -> HighRateResult:
    """Simulate one record, feed it in every pattern to fresh checks, score each."""
    registry = parse_registry(config.registry_yaml, "bench/eval_highrate.py")
    readings = simulate_record(registry, record, config)
    runs = run_patterns(
        registry.series,
        readings,
        factory,
        patterns,
        start_ns=record.start_ns,
        rng=np.random.default_rng([record.seed, 8, record.index]),
        arrivals=config.arrivals,
    )
    windows = record.windows()
    quick = [w for w in windows if w.kind != "drift"]
    slow = [w for w in windows if w.kind == "drift"]
    long = config.record_ns
    scores: dict[Pattern, HighRateScores] = {}
    for pattern, run in runs.items():
        trace = run.trace
        recall = score_recall(trace, quick, grace_ns=config.deadline_ns)
        for kind, score in score_recall(trace, slow, grace_ns=long).items():
            recall[kind].add(score)
        s = HighRateScores(
            recall=recall,
            recall_end=score_recall(trace, windows, grace_ns=long),
            precision=score_precision(trace, windows, merge_ns=config.merge_ns, grace_ns=long),
            readings=run.checked,
            batches=run.batches,
            seconds=run.seconds,
        )
        if record.kind == "clean":
            for name, bits in (*DETECTORS.items(), ("any", ANY_FAULT_BITS)):
                s.clean_events[name] = len(trace_events(trace, bits, config.merge_ns))
            s.clean_flagged = int(np.count_nonzero(trace.flags & ANY_FAULT_BITS))
            s.clean_hours = long / HOUR
        scores[pattern] = s
    return HighRateResult(scores, agreements(runs), 1)


def empty_result() -> HighRateResult:
    return HighRateResult({}, {})
