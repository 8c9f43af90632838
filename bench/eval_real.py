"""The anomaly check on real public sensor data (``bench/real_data.py`` says which).

    python -m bench.eval_real [--sets occupancy munich_1hz munich_100hz]

Every data set found goes through a fresh ``ingest.anomaly.build_check`` in each arrival
pattern:

- ``live``: one batch per reading timestamp (everything stamped at that instant); not for
  data sets with a high-rate series, where ``blocks100`` is how readings arrive;
- ``hourly``: one batch per clock hour;
- ``backlog``: everything in one batch;
- ``blocks100``: high-rate series (interval under 1 s) arrive as messages of 100 samples,
  every other reading alone; one batch per message, in the order the messages complete.
  Only for data sets with a high-rate series.

Figures:

- Events: per series and detector, runs of flagged readings, runs under 1 h apart merged
  (as ``bench.eval_anomaly`` counts them). An event is *explained* when the data say why:
  a GAP at a silence between published files (``recording_gap``), or STEP/SHIFT/DRIFT
  inside a real support settlement of the bridge. Every other event is *false*: none of
  these data has a documented sensor fault, and a load test (a vehicle parked on the
  bridge for a minute or two, then gone) is no lasting shift. Rates are per sensor-week of
  observed time (readings x the device's interval), per measurement and detector. Target:
  <= 1 false event per sensor-week. The bridge data cover hours, not weeks: read their
  counts, not their rates.
- Agreement: Jaccard index of the sets of flagged readings (any flag but LIMIT) of each
  pattern against ``live`` (``blocks100`` for high-rate data); 1.0: the same readings
  flagged (both empty counts as 1.0).
- Settlements: the real support lowerings of the Munich bridge (onset estimated as the
  first 10 s mean 5 microstrain off the segment's first two minutes), and settlement-like
  shifts injected into its real strain: a monotone half-cosine rise of ``amplitude``
  microstrain over ``ramp`` that then stays, 5 minutes into each load-test segment (the
  data before the segment fed as one backlog, the segment as it would arrive). For each:
  which of STEP or SHIFT marks it first and after how long (flags the same run without the
  injection also has do not count), and whether RATE flagged it (it should not: a
  settlement is slow).

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from bench.eval_patterns import CheckFactory
from bench.eval_scoring import ANY_FAULT_BITS, DETECTORS, HOUR, MIN, NS, flag_events
from bench.real_data import LOADERS, KnownWindow, RealData, available
from devices.registry import Registry
from ingest.batch import AnomalyFlag, ReadingBatch

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def default_factory() -> CheckFactory:
    """``ingest.anomaly.build_check``, imported when the evaluation runs."""
    from ingest.anomaly import build_check

    return build_check


Pattern = Literal["live", "hourly", "backlog", "blocks100"]
PATTERNS: Final[tuple[Pattern, ...]] = ("live", "hourly", "backlog", "blocks100")
WEEK_NS: Final = 7 * 24 * HOUR
FALSE_TARGET: Final = 1.0  # false events per sensor-week
BLOCK: Final = 100
STEP_BITS: Final = int(AnomalyFlag.STEP | AnomalyFlag.SHIFT)
RATE_BIT: Final = int(AnomalyFlag.RATE)
GAP_BIT: Final = int(AnomalyFlag.GAP)
SETTLEMENT_BITS: Final = int(AnomalyFlag.STEP | AnomalyFlag.SHIFT | AnomalyFlag.DRIFT)
# What a sensor glitch may be marked as.
FAULT_BITS: Final = int(AnomalyFlag.SPIKE | AnomalyFlag.STEP | AnomalyFlag.RATE)
NAMES: Final = [d for d in DETECTORS if d != "limit"]

# Injected settlements: amplitudes (microstrain) and ramp times.
AMPLITUDES_UE: Final = (10.0, 20.0, 40.0)
RAMPS_NS: Final = (2 * MIN, 5 * MIN)
ONSET_AFTER_NS: Final = 5 * MIN


# --- feeding the check ------------------------------------------------------------------------


def has_high_rate(registry: Registry) -> bool:
    return any(s.interval.total_seconds() < 1.0 for s in registry.series)


def arrival_batches(
    data: RealData, registry: Registry, pattern: Pattern, backlog_before: int | None = None
) -> list[I64]:
    """Row indices of ``data``, one array per batch, in arrival order; with
    ``backlog_before``, the batches wholly before that time come first as one backlog (a
    service that has been running: the history seen, the rest arriving in ``pattern``)."""
    batches = _arrival_batches(data, registry, pattern)
    if backlog_before is None:
        return batches
    old = [b for b in batches if int(data.ts_ns[b].max()) < backlog_before]
    new = [b for b in batches if int(data.ts_ns[b].max()) >= backlog_before]
    return ([np.concatenate(old)] if old else []) + new


def _arrival_batches(data: RealData, registry: Registry, pattern: Pattern) -> list[I64]:
    order = np.lexsort((data.series, data.ts_ns)).astype(np.int64)
    ts = data.ts_ns[order]
    if pattern == "backlog":
        return [order]
    if pattern in ("live", "hourly"):
        key = ts if pattern == "live" else ts // HOUR
        cut = np.flatnonzero(key[1:] != key[:-1]) + 1
        return np.split(order, cut)
    # blocks100: rows sorted by (series, ts) already; number each series' readings.
    n = len(data)
    start = np.searchsorted(data.series, data.series, side="left")
    rank = np.arange(n) - start
    high = np.array([s.interval.total_seconds() < 1.0 for s in registry.series])[data.series]
    block = np.where(high, rank // BLOCK, rank)
    msg = data.series.astype(np.int64) * (n + 1) + block  # one id per message
    # A message arrives with its last sample.
    uniq, inv = np.unique(msg, return_inverse=True)
    last = np.full(len(uniq), np.iinfo(np.int64).min)
    np.maximum.at(last, inv, data.ts_ns)
    arrive = last[inv]
    rows = np.lexsort((data.ts_ns, msg, arrive)).astype(np.int64)
    cut = np.flatnonzero(msg[rows][1:] != msg[rows][:-1]) + 1
    return np.split(rows, cut)


@dataclass(frozen=True)
class Run:
    flags: I32  # per row of the data
    batches: int
    seconds: float


def run_check(
    data: RealData,
    registry: Registry,
    pattern: Pattern,
    factory: CheckFactory,
    backlog_before: int | None = None,
) -> Run:
    """A fresh check fed ``data`` in ``pattern``; out-of-range readings never reach it (the
    decoder quarantines them) and are marked RANGE."""
    lo = np.array([s.minimum for s in registry.series])[data.series]
    hi = np.array([s.maximum for s in registry.series])[data.series]
    out = (data.values < lo) | (data.values > hi)
    flags = np.where(out, np.int32(AnomalyFlag.RANGE), np.int32(0)).astype(np.int32)
    check = factory(registry.series)
    seconds = 0.0
    batches = arrival_batches(data, registry, pattern, backlog_before)
    for arrived in batches:
        rows = arrived[~out[arrived]]
        if not len(rows):
            continue
        batch = ReadingBatch.unchecked(data.series[rows], data.ts_ns[rows], data.values[rows])
        t0 = time.perf_counter()
        check.check(batch)
        seconds += time.perf_counter() - t0
        flags[rows] |= batch.flags
    return Run(flags, len(batches), seconds)


# --- scoring ------------------------------------------------------------------------------------


def sensor_weeks(data: RealData, registry: Registry) -> F64:
    """Observed time per series: its readings times its device's interval, in weeks."""
    counts = np.bincount(data.series, minlength=len(registry.series))
    interval = np.array([s.interval.total_seconds() for s in registry.series])
    return np.asarray(counts * interval * NS / WEEK_NS, dtype=np.float64)


def explained(
    series: I64, first: I64, last: I64, bit: int, windows: Sequence[KnownWindow]
) -> npt.NDArray[np.bool_]:
    """Per event (of detector ``bit``): does a known window of its series explain it?"""
    hit = np.zeros(len(series), dtype=bool)
    for w in windows:
        mine = series == w.series
        why = {
            "recording_gap": GAP_BIT,
            "settlement": SETTLEMENT_BITS,
            "implausible": FAULT_BITS,
        }.get(w.kind, 0)
        if bit & why:
            hit |= mine & (first <= w.end_ns) & (last >= w.start_ns)
    return hit


@dataclass(frozen=True)
class Score:
    """Events per measurement and detector: (false, explained)."""

    weeks: dict[str, float]  # sensor-weeks per measurement
    series: dict[str, int]
    events: dict[str, dict[str, tuple[int, int]]]

    def false_rate(self, measurement: str, detector: str | None = None) -> float:
        ev = self.events[measurement]
        n = sum(f for d, (f, _) in ev.items() if detector is None or d == detector)
        return n / self.weeks[measurement] if self.weeks[measurement] else 0.0


def score(data: RealData, registry: Registry, flags: I32) -> Score:
    weeks = sensor_weeks(data, registry)
    groups: dict[str, list[int]] = {}
    for s in registry.series:
        groups.setdefault(s.key.measurement, []).append(s.index)
    events: dict[str, dict[str, tuple[int, int]]] = {m: {} for m in groups}
    s64 = data.series.astype(np.int64)
    for name in NAMES:
        bit = DETECTORS[name]
        ev = flag_events(s64, data.ts_ns, (flags & bit) != 0)
        ok = explained(ev.series, ev.first_ns, ev.last_ns, bit, data.windows)
        for m, idx in groups.items():
            mine = np.isin(ev.series, idx)
            events[m][name] = (int(np.sum(mine & ~ok)), int(np.sum(mine & ok)))
    return Score(
        {m: float(weeks[idx].sum()) for m, idx in groups.items()},
        {m: len(idx) for m, idx in groups.items()},
        events,
    )


def jaccard(a: I32, b: I32, bits: int = ANY_FAULT_BITS) -> float:
    x, y = (a & bits) != 0, (b & bits) != 0
    union = int(np.count_nonzero(x | y))
    return 1.0 if union == 0 else int(np.count_nonzero(x & y)) / union


# --- settlements ------------------------------------------------------------------------------


def estimated_onset(ts: I64, values: F64, threshold: float = 5.0) -> int | None:
    """First time the 10-reading mean leaves the first two minutes' median by more than
    ``threshold`` (the readings of one segment)."""
    base = float(np.median(values[ts < ts[0] + 2 * MIN]))
    k = min(10, len(values))
    mean = np.convolve(values, np.ones(k) / k, mode="valid")
    off = np.flatnonzero(np.abs(mean - base) > threshold)
    return int(ts[off[0] + k - 1]) if len(off) else None


@dataclass(frozen=True)
class Detection:
    label: str
    onset_ns: int
    end_ns: int
    first_ns: int | None  # first STEP or SHIFT flag at or after the onset
    by: str  # the detector(s) of that first flag
    rate: bool  # RATE flagged within [onset, end]
    other: str  # other detectors flagging within the window (new against the clean run)

    @property
    def delay_s(self) -> float | None:
        return None if self.first_ns is None else (self.first_ns - self.onset_ns) / NS


def detect(
    label: str, ts: I64, flags: I32, onset: int, end: int, clean: I32 | None = None
) -> Detection:
    """Of one series' readings (ts, flags): the first STEP/SHIFT at or after ``onset`` that
    the run without the injection (``clean``) does not have."""
    inside = (ts >= onset) & (ts <= end)
    f = flags[inside]
    new = f if clean is None else f & ~clean[inside]
    hits = np.flatnonzero(new & STEP_BITS)
    first = int(ts[inside][hits[0]]) if len(hits) else None
    by = AnomalyFlag.names(int(new[hits[0]]) & STEP_BITS) if len(hits) else "-"
    others = int(np.bitwise_or.reduce(new)) if len(new) else 0
    other = AnomalyFlag.names(others & ~(STEP_BITS | RATE_BIT)) or "-"
    return Detection(label, onset, end, first, by, bool(np.any(f & RATE_BIT)), other)


def settlement_shape(ts: I64, onset: int, ramp: int, amplitude: float) -> F64:
    """A monotone half-cosine rise from 0 at ``onset`` to ``amplitude`` after ``ramp``,
    then staying."""
    x = np.clip((ts - onset) / ramp, 0.0, 1.0)
    return np.asarray(amplitude * (1 - np.cos(np.pi * x)) / 2, dtype=np.float64)


def inject(data: RealData, onset: int, ramp: int, amplitude: float, until: int) -> RealData:
    """``data`` up to ``until`` with a settlement added to the strain (series 0)."""
    keep = data.ts_ns <= until
    values = data.values.copy()
    strain = data.series == 0
    values[strain] += settlement_shape(data.ts_ns[strain], onset, ramp, amplitude)
    return replace(
        data,
        series=data.series[keep],
        ts_ns=data.ts_ns[keep],
        values=values[keep],
        occupied=data.occupied[keep],
    )


def real_settlements(data: RealData, run: Run, pattern: str) -> list[Detection]:
    out = []
    s0 = data.series == 0
    ts, v, f = data.ts_ns[s0], data.values[s0], run.flags[s0]
    for w in data.windows:
        if w.kind != "settlement" or w.series != 0:
            continue
        inside = (ts >= w.start_ns) & (ts <= w.end_ns)
        onset = estimated_onset(ts[inside], v[inside])
        if onset is None:
            continue
        out.append(detect(f"{w.note} [{pattern}]", ts, f, onset, w.end_ns))
    return out


def injected_settlements(
    data: RealData, registry: Registry, pattern: Pattern, factory: CheckFactory
) -> list[Detection]:
    """One run per (segment, amplitude, ramp): a fresh check fed the data up to the end of
    the segment with the settlement added ``ONSET_AFTER_NS`` into it."""
    out = []
    for w in data.windows:
        if w.kind != "load_test" or w.series != 0:
            continue
        onset = w.start_ns + ONSET_AFTER_NS
        clean_data = inject(data, onset, MIN, 0.0, w.end_ns)
        clean = run_check(clean_data, registry, pattern, factory, w.start_ns).flags
        s0 = clean_data.series == 0
        for amp, ramp in itertools.product(AMPLITUDES_UE, RAMPS_NS):
            shifted = inject(data, onset, ramp, amp, w.end_ns)
            flags = run_check(shifted, registry, pattern, factory, w.start_ns).flags
            label = f"{w.note} +{amp:g} ue/{ramp // MIN} min [{pattern}]"
            out.append(
                detect(label, shifted.ts_ns[s0], flags[s0], onset, w.end_ns, clean=clean[s0])
            )
    return out


# --- the evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetReport:
    data: RealData
    registry: Registry
    runs: dict[str, Run]
    scores: dict[str, Score]
    real: list[Detection]
    injected: list[Detection]

    @property
    def reference(self) -> str:
        return "live" if "live" in self.runs else "blocks100"

    def agreement(self) -> dict[str, float]:
        ref = self.runs[self.reference].flags
        return {p: jaccard(ref, r.flags) for p, r in self.runs.items() if p != self.reference}

    def disagreement(self) -> dict[str, str]:
        """Per pattern: which detectors differ from the reference, in how many readings."""
        ref = self.runs[self.reference].flags
        out = {}
        for p, r in self.runs.items():
            diff = (ref ^ r.flags) & ANY_FAULT_BITS
            parts = [f"{n} {int(np.count_nonzero(diff & b))}" for n, b in DETECTORS.items()]
            out[p] = ", ".join(x for x in parts if not x.endswith(" 0")) or "none"
        return {p: d for p, d in out.items() if p != self.reference}


def evaluate_set(name: str, factory: CheckFactory) -> SetReport:
    data = LOADERS[name]()
    registry = data.registry()
    # At 100 Hz a batch per timestamp is not how readings arrive (they come 100 to a
    # message), and 70,000 calls would take most of the run: blocks100 replaces live.
    high = has_high_rate(registry)
    patterns = [p for p in PATTERNS if p != ("live" if high else "blocks100")]
    runs: dict[str, Run] = {p: run_check(data, registry, p, factory) for p in patterns}
    scores = {p: score(data, registry, r.flags) for p, r in runs.items()}
    real = [d for p, r in runs.items() for d in real_settlements(data, r, p)]
    injected: list[Detection] = []
    if any(w.kind == "load_test" for w in data.windows):
        # The pattern a gauge of this rate really has: messages of 100 samples at 100 Hz,
        # one reading per message at 1 Hz.
        pattern: Pattern = "blocks100" if has_high_rate(registry) else "live"
        injected = injected_settlements(data, registry, pattern, factory)
    return SetReport(data, registry, runs, scores, real, injected)


# --- output -----------------------------------------------------------------------------------


def _fmt_delay(d: Detection) -> str:
    s = d.delay_s
    if s is None:
        return "missed"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def format_set(rep: SetReport) -> list[str]:
    d = rep.data
    span_h = (int(d.ts_ns.max()) - int(d.ts_ns.min())) / HOUR
    lines = [
        f"== {d.name}: {d.title}",
        f"{len(d):,} readings, {len(rep.registry.series)} series, span {span_h:.1f} h",
        "false events per sensor-week (false/explained event counts per detector)",
        f"  {'pattern':<10}{'measurement':<13}{'s-weeks':>8}{'false/sw':>9}  "
        + "".join(f"{n:>8}" for n in NAMES)
        + f"{'batches':>9}{'check s':>9}",
    ]
    for p, sc in rep.scores.items():
        run = rep.runs[p]
        for i, m in enumerate(sc.events):
            cells = "".join(f"{'{}/{}'.format(*sc.events[m][n]):>8}" for n in NAMES)
            tail = f"{run.batches:>9,}{run.seconds:>9.2f}" if i == 0 else ""
            lines.append(
                f"  {p if i == 0 else '':<10}{m:<13}{sc.weeks[m]:>8.3f}"
                f"{sc.false_rate(m):>9.2f}  {cells}{tail}"
            )
    agree = rep.agreement()
    lines.append(
        f"agreement with {rep.reference} (Jaccard of flagged readings): "
        + ", ".join(f"{p} {j:.3f}" for p, j in agree.items())
    )
    lines.extend(f"  {p}: readings flagged differently: {d}" for p, d in rep.disagreement().items())
    for title, dets in (("real settlements", rep.real), ("injected settlements", rep.injected)):
        if not dets:
            continue
        lines.append(f"{title}: first STEP/SHIFT after onset; RATE; other new flags")
        lines.extend(
            f"  {x.label:<52}{x.by:>11}{_fmt_delay(x):>10}  rate={'yes' if x.rate else 'no':<4}"
            f"other={x.other}"
            for x in dets
        )
    return lines


def to_json(reports: Sequence[SetReport], seconds: float) -> dict[str, object]:
    out: dict[str, object] = {"seconds": round(seconds, 1)}
    for rep in reports:
        patterns: dict[str, object] = {}
        for p, sc in rep.scores.items():
            patterns[p] = {
                m: {
                    "sensor_weeks": round(sc.weeks[m], 4),
                    "false_per_sensor_week": round(sc.false_rate(m), 3),
                    "false": {n: f for n, (f, _) in sc.events[m].items() if f},
                    "explained": {n: e for n, (_, e) in sc.events[m].items() if e},
                }
                for m in sc.events
            }
        worst = max(
            (sc.false_rate(m) for sc in rep.scores.values() for m in sc.events), default=0.0
        )

        def det(x: Detection) -> dict[str, object]:
            return {"label": x.label, "by": x.by, "delay_s": x.delay_s, "rate": x.rate}

        out[rep.data.name] = {
            "readings": len(rep.data),
            "patterns": patterns,
            "worst_false_per_sensor_week": round(worst, 3),
            "target_met": worst <= FALSE_TARGET,
            "agreement_reference": rep.reference,
            "agreement": {p: round(j, 4) for p, j in rep.agreement().items()},
            "real_settlements": [det(x) for x in rep.real],
            "injected": {
                "runs": len(rep.injected),
                "marked_by_step_or_shift": sum(x.first_ns is not None for x in rep.injected),
                "rate_flagged": sum(x.rate for x in rep.injected),
                "median_delay_s": (
                    float(np.median([x.delay_s for x in rep.injected if x.delay_s is not None]))
                    if any(x.delay_s is not None for x in rep.injected)
                    else None
                ),
                "runs_detail": [det(x) for x in rep.injected],
            },
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_real", description=__doc__)
    parser.add_argument("--sets", nargs="+", choices=list(LOADERS), default=None)
    args = parser.parse_args(argv)
    names = args.sets or available()
    missing = [n for n in names if n not in available()]
    if missing:
        print(f"data not found for {', '.join(missing)}: see bench/data/*/SOURCE.md")
        names = [n for n in names if n not in missing]
    factory = default_factory()
    t0 = time.perf_counter()
    reports = []
    for n in names:
        rep = evaluate_set(n, factory)
        reports.append(rep)
        print("\n".join(format_set(rep)), flush=True)
        print()
    print(json.dumps(to_json(reports, time.perf_counter() - t0), separators=(",", ":")))
    return 0 if names else 1


if __name__ == "__main__":
    sys.exit(main())
