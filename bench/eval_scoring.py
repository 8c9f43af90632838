"""Scoring of the anomaly evaluation: pure functions of flag arrays and fault windows.

``bench/eval_anomaly.py`` describes the method; this module holds its arithmetic, so it can
be tested on hand-made arrays (``tests/unit/test_eval_anomaly.py``) without a simulator or
detectors. Every score is a sum over runs (counts, lists of delays), so runs can be scored
where they ran and pooled afterwards with ``add``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from devices.simulator import FAULT_KINDS, FaultKind, FaultSpec
from ingest.batch import AnomalyFlag

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

NS: Final = 1_000_000_000
MIN: Final = 60 * NS
HOUR: Final = 60 * MIN
DAY: Final = 24 * HOUR

# Detector name -> flag bit, in AnomalyFlag's order.
DETECTORS: Final[dict[str, int]] = {
    f.name.lower(): int(f) for f in AnomalyFlag if f.value and f.name is not None
}
# The detectors that should catch each fault kind (any of them counts); out_of_range is
# caught by the quarantine, which the harness records as RANGE. A settlement is a lasting
# level change of the structure: SHIFT says so, STEP at least marks it.
EXPECTED: Final[dict[FaultKind, tuple[str, ...]]] = {
    "spike": ("spike",),
    "stuck": ("stuck",),
    "step": ("step",),
    "drift": ("drift",),
    "out_of_range": ("range",),
    "gap": ("gap",),
    "settlement": ("shift", "step"),
}
# Per detector, the fault kinds whose windows one of its events may overlap to count as true
# (for precision). A quarantined stretch is silence to the check, just as a gap is, so a GAP
# flag after out-of-range values is right too.
MATCHING_KINDS: Final[dict[str, tuple[FaultKind, ...]]] = {
    d: tuple(k for k in FAULT_KINDS if d in EXPECTED[k])
    for d in DETECTORS
    if any(d in EXPECTED[k] for k in FAULT_KINDS)
} | {"gap": ("gap", "out_of_range")}
# Flags that count as "something was flagged": all but LIMIT, a structural finding that a
# design limit sets, whatever the sensor does.
ANY_FAULT_BITS: Final = int(AnomalyFlag(sum(DETECTORS.values())) & ~AnomalyFlag.LIMIT)
# Flags the arrival patterns must agree on: all the check sets (RANGE is the harness's).
CHECK_BITS: Final = int(AnomalyFlag(sum(DETECTORS.values())) & ~AnomalyFlag.RANGE)


def expected_name(kind: FaultKind) -> str:
    return "/".join(EXPECTED[kind])


def expected_bits(kind: FaultKind) -> int:
    return sum(DETECTORS[d] for d in EXPECTED[kind])


@dataclass(frozen=True)
class Window:
    """One injected fault: samples of ``series`` in [start_ns, end_ns) carry it (a
    settlement's offset outlasts the window, which is its rise)."""

    series: int
    kind: FaultKind
    start_ns: int
    end_ns: int

    @classmethod
    def of(cls, fault: FaultSpec) -> Window:
        if fault.series is None:
            raise ValueError("the evaluation injects faults into one series at a time")
        return cls(fault.series, fault.kind, fault.start_ns, fault.end_ns)

    @property
    def due_ns(self) -> int:
        """Where detection delays count from: the onset, or for a settlement its completion
        (a rise over minutes can only be told from a lorry or a drift once it stays)."""
        return self.end_ns if self.kind == "settlement" else self.start_ns


# Kinds whose samples never reach the check: the first reading it sees after one of them
# lands after the window, so that is where a GAP flag can be.
_SILENT: Final[tuple[FaultKind, ...]] = ("gap", "out_of_range")


def detection_span(w: Window, *, grace_ns: int, slack_ns: int) -> tuple[int, int]:
    """[lo, hi) in which a flag of an expected detector counts as detecting ``w``: the
    window; for step and drift cut to ``grace_ns`` after the onset; for a settlement up to
    ``grace_ns`` after its completion; for a gap or an out-of-range stretch extended by
    ``slack_ns`` past its end, where the first reading the check sees after it lands."""
    if w.kind in ("step", "drift"):
        return w.start_ns, min(w.end_ns, w.start_ns + grace_ns)
    if w.kind == "settlement":
        return w.start_ns, w.end_ns + grace_ns
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
    detected: int = 0  # by an expected detector, within the detection span
    detected_any: int = 0  # by any flag but LIMIT, within the detection span
    delays_ns: list[int] = field(default_factory=list)  # from ``Window.due_ns`` to the flag
    samples: int = 0  # samples labelled with this kind
    samples_hit: int = 0  # of those, flagged by an expected detector

    @property
    def recall(self) -> float | None:
        return self.detected / self.windows if self.windows else None

    @property
    def recall_any(self) -> float | None:
        return self.detected_any / self.windows if self.windows else None

    @property
    def median_delay_ns(self) -> int | None:
        return int(np.median(self.delays_ns)) if self.delays_ns else None

    @property
    def max_delay_ns(self) -> int | None:
        return max(self.delays_ns) if self.delays_ns else None

    def add(self, other: KindScore) -> None:
        self.windows += other.windows
        self.detected += other.detected
        self.detected_any += other.detected_any
        self.delays_ns += other.delays_ns
        self.samples += other.samples
        self.samples_hit += other.samples_hit


def score_recall(
    trace: Trace,
    windows: Sequence[Window],
    *,
    grace_ns: int = DAY,
    slack_ns: int = HOUR,
) -> dict[FaultKind, KindScore]:
    """Event recall per fault kind (see ``bench/eval_anomaly.py``), with detection delays
    and the share of labelled samples an expected detector flagged."""
    out = {k: KindScore(k, expected_name(k)) for k in FAULT_KINDS}
    for w in windows:
        score = out[w.kind]
        bits = expected_bits(w.kind)
        lo, hi = detection_span(w, grace_ns=grace_ns, slack_ns=slack_ns)
        sl = trace.span(w.series, lo, hi)
        flags, ts = trace.flags[sl], trace.ts_ns[sl]
        score.windows += 1
        hits = np.flatnonzero(flags & bits)
        if len(hits):
            score.detected += 1
            score.delays_ns.append(int(ts[hits[0]]) - w.due_ns)
        if bool(np.any(flags & ANY_FAULT_BITS)):
            score.detected_any += 1
        whole = trace.span(w.series, w.start_ns, w.end_ns)
        labelled = trace.labels[whole] == FAULT_KINDS.index(w.kind) + 1
        score.samples += int(labelled.sum())
        score.samples_hit += int(np.count_nonzero(labelled & ((trace.flags[whole] & bits) != 0)))
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

    def add(self, other: DetectorScore) -> None:
        self.events += other.events
        self.true_events += other.true_events


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
    """Per detector: events in ``trace`` (faulty runs), and how many overlap a window of
    the fault kinds it is meant for (``MATCHING_KINDS``). Detectors without a fault kind
    (rate, limit) have no true events by this definition; their counts are reported as
    they are."""
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


# --- agreement between arrival patterns -----------------------------------------------------


@dataclass
class Agreement:
    """How far two flag sets agree, as the Jaccard index |A & B| / |A | B| of the sets of
    (series, ts_ns, flag bit); counts add up over runs (pooled), and two empty sets agree."""

    common: int = 0
    either: int = 0

    @property
    def jaccard(self) -> float:
        return self.common / self.either if self.either else 1.0

    def add(self, other: Agreement) -> None:
        self.common += other.common
        self.either += other.either


def flag_agreement(a: I32, b: I32, bits: int = CHECK_BITS) -> Agreement:
    """Agreement of two flag columns over the same readings (row i is one (series, ts_ns)
    in both), counting the flag bits in ``bits``: by default all the check sets, not RANGE,
    which the harness sets itself."""
    if a.shape != b.shape:
        raise ValueError("flag columns of different readings cannot be compared")
    mask = np.int32(bits)
    return Agreement(
        int(np.bitwise_count(a & b & mask).sum()), int(np.bitwise_count((a | b) & mask).sum())
    )
