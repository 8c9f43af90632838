"""The anomaly evaluation's scoring on hand-made flag arrays, its arrival patterns, and its
harness with stand-in checks (the real detectors are judged by running
``python -m bench.eval_anomaly``)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from bench.eval_anomaly import EvalConfig, evaluate
from bench.eval_highrate import HighRateConfig, plan_records, simulate_record
from bench.eval_patterns import (
    PATTERNS,
    Arrivals,
    Pattern,
    Readings,
    agreements,
    arrange,
    batch_feed,
    run_patterns,
)
from bench.eval_report import format_report, report_json
from bench.eval_scoring import (
    ANY_FAULT_BITS,
    DAY,
    HOUR,
    MATCHING_KINDS,
    MIN,
    NS,
    Agreement,
    Trace,
    Window,
    detection_span,
    f1,
    false_alarm_rate,
    flag_agreement,
    flag_events,
    match_span,
    score_precision,
    score_recall,
)
from bench.eval_week import WeekConfig, plan_faults, simulate, week_start_ns
from devices.registry import Registry, Series, parse_registry
from devices.simulator import FAULT_KINDS, FaultKind, FaultSpec
from ingest.batch import AnomalyFlag, ReadingBatch

SPIKE = int(AnomalyFlag.SPIKE)
STEP = int(AnomalyFlag.STEP)
DRIFT = int(AnomalyFlag.DRIFT)
RATE = int(AnomalyFlag.RATE)
LIMIT = int(AnomalyFlag.LIMIT)
GAP = int(AnomalyFlag.GAP)
SHIFT = int(AnomalyFlag.SHIFT)

SMALL_REGISTRY = """\
sites:
  b1:
    kind: bridge
    name: Test bridge
    devices:
      gw1:
        interval: 10s
        channels:
          g1: [strain, temperature]
          g2: [strain]
  s1:
    kind: school
    name: Test school
    devices:
      r1:
        interval: 1m
        measurements: [co2, temperature, humidity]
"""


def _i64(values: Sequence[int]) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=np.int64)


def _trace(
    series: Sequence[int],
    ts: Sequence[int],
    flags: Sequence[int],
    labels: Sequence[int] | None = None,
) -> Trace:
    n = len(series)
    return Trace(
        _i64(series),
        _i64(ts),
        np.array(flags, dtype=np.int32),
        np.array(labels if labels is not None else [0] * n, dtype=np.uint8),
    )


def _rows(*rows: Sequence[int]) -> list[int]:
    """Per-series columns written one series per tuple, joined."""
    return [x for row in rows for x in row]


def _code(kind: FaultKind) -> int:
    return FAULT_KINDS.index(kind) + 1


# --- events ---------------------------------------------------------------------------------


def test_flagged_runs_less_than_an_hour_apart_merge() -> None:
    minutes = [0, 1, 2, 30, 31, 200, 260, 261]
    flagged = [True, True, False, True, False, True, True, True]
    ev = flag_events(_i64([0] * 8), _i64([m * MIN for m in minutes]), np.array(flagged))
    # 0-1 and 30 are 29 min apart: one event; 200 is 170 min later: a new one; 260 is
    # exactly 60 min after 200, which is not "less than an hour": a third.
    assert ev.first_ns.tolist() == [0, 200 * MIN, 260 * MIN]
    assert ev.last_ns.tolist() == [30 * MIN, 200 * MIN, 261 * MIN]
    assert ev.series.tolist() == [0, 0, 0]


def test_events_never_span_two_series() -> None:
    ev = flag_events(_i64([0, 0, 1, 1]), _i64([0, MIN, 2 * MIN, 3 * MIN]), np.ones(4, bool))
    assert ev.series.tolist() == [0, 1]
    assert ev.first_ns.tolist() == [0, 2 * MIN]
    assert ev.last_ns.tolist() == [MIN, 3 * MIN]


def test_no_flags_no_events() -> None:
    ev = flag_events(_i64([0, 0]), _i64([0, MIN]), np.zeros(2, bool))
    assert len(ev) == 0
    assert len(flag_events(_i64([]), _i64([]), np.zeros(0, bool))) == 0


def test_merge_window_is_a_parameter() -> None:
    ev = flag_events(_i64([0, 0]), _i64([0, 10 * MIN]), np.ones(2, bool), merge_ns=5 * MIN)
    assert len(ev) == 2


# --- spans ----------------------------------------------------------------------------------


def test_step_and_drift_must_be_caught_within_the_grace_period() -> None:
    step = Window(0, "step", 10 * DAY, 15 * DAY)
    drift = Window(0, "drift", 10 * DAY, 10 * DAY + 6 * HOUR)
    assert detection_span(step, grace_ns=DAY, slack_ns=HOUR) == (10 * DAY, 11 * DAY)
    # Whichever ends first: a drift shorter than the grace period keeps its own end.
    assert detection_span(drift, grace_ns=DAY, slack_ns=HOUR) == (10 * DAY, 10 * DAY + 6 * HOUR)
    # For precision a drift's whole window counts (it keeps changing: a late flag is late,
    # not false); a step changed once, at its onset, so its span stays cut.
    long_drift = Window(0, "drift", 10 * DAY, 13 * DAY)
    assert match_span(long_drift, grace_ns=DAY, slack_ns=HOUR) == (10 * DAY, 13 * DAY)
    assert match_span(step, grace_ns=DAY, slack_ns=HOUR) == (10 * DAY, 11 * DAY)


def test_silent_faults_extend_past_their_end() -> None:
    gap = Window(0, "gap", 0, 30 * MIN)
    spike = Window(0, "spike", 0, 30 * MIN)
    assert detection_span(gap, grace_ns=DAY, slack_ns=HOUR) == (0, 90 * MIN)
    assert detection_span(spike, grace_ns=DAY, slack_ns=HOUR) == (0, 30 * MIN)


# --- recall ---------------------------------------------------------------------------------


def test_recall_counts_windows_with_a_flag_of_the_expected_detector() -> None:
    # Series 0: a spike window [10, 20) min flagged by SPIKE at 12 min.
    # Series 1: a spike window [10, 20) min flagged only by RATE: missed, but "any flag".
    # Series 2: a spike window flagged by SPIKE only after it ended: missed.
    ts = [m * MIN for m in (5, 12, 15, 25)]
    trace = _trace(
        [0] * 4 + [1] * 4 + [2] * 4,
        ts * 3,
        _rows((0, SPIKE, 0, 0), (0, RATE, 0, 0), (0, 0, 0, SPIKE)),
        [0, _code("spike"), 0, 0] * 3,
    )
    windows = [Window(s, "spike", 10 * MIN, 20 * MIN) for s in range(3)]
    score = score_recall(trace, windows)["spike"]
    assert score.windows == 3
    assert score.detected == 1
    assert score.detected_any == 2
    assert score.recall == pytest.approx(1 / 3)
    assert score.recall_any == pytest.approx(2 / 3)
    assert score.delays_ns == [2 * MIN]
    assert (score.samples, score.samples_hit) == (3, 1)


def test_step_recall_has_a_one_day_deadline() -> None:
    hours = [0, 30, 60, 100]  # flagged at onset + 30 h only: after the grace period
    ts = [24 * HOUR + h * HOUR for h in hours]
    late = _trace([0] * 4, ts, [0, STEP, 0, 0], [_code("step")] * 4)
    window = Window(0, "step", 24 * HOUR, 200 * HOUR)
    assert score_recall(late, [window])["step"].detected == 0
    early = _trace([0] * 4, ts, [STEP, 0, 0, 0], [_code("step")] * 4)
    assert score_recall(early, [window])["step"].detected == 1
    # With a longer grace period the late flag counts.
    assert score_recall(late, [window], grace_ns=2 * DAY)["step"].detected == 1


def test_limit_is_not_any_flag() -> None:
    trace = _trace([0, 0], [0, MIN], [LIMIT, 0])
    score = score_recall(trace, [Window(0, "drift", 0, DAY)])["drift"]
    assert score.detected_any == 0
    assert not ANY_FAULT_BITS & LIMIT
    shifted = _trace([0, 0], [0, MIN], [SHIFT, 0])
    assert score_recall(shifted, [Window(0, "drift", 0, DAY)])["drift"].detected_any == 1


def test_kinds_without_windows_have_no_recall() -> None:
    score = score_recall(_trace([0], [0], [0]), [])["stuck"]
    assert score.windows == 0
    assert score.recall is None
    assert score.median_delay_ns is None


# --- precision ------------------------------------------------------------------------------


def test_precision_counts_events_overlapping_a_window_of_the_matching_kind() -> None:
    # Series 0 has a step window from 60 min on. STEP events: one at 0 min (before it:
    # false), one at its onset (true; 61 min after the first, so not merged with it).
    # Series 1 has no fault: its STEP event is false. A SPIKE event inside the step window
    # is false for SPIKE: a spike detector is not for steps.
    ts = [m * MIN for m in (0, 61, 62, 200)]
    trace = _trace(
        [0] * 4 + [1] * 4,
        ts * 2,
        _rows((STEP, STEP, STEP, SPIKE), (0, 0, STEP, 0)),
    )
    windows = [Window(0, "step", 60 * MIN, 300 * MIN)]
    scores = score_precision(trace, windows)
    assert (scores["step"].events, scores["step"].true_events) == (3, 1)
    assert scores["step"].precision == pytest.approx(1 / 3)
    assert (scores["spike"].events, scores["spike"].true_events) == (1, 0)
    assert scores["drift"].events == 0
    assert scores["drift"].precision is None
    # A STEP event on the offset series long after the onset is not about the step.
    later = _trace([0, 0], [61 * MIN, 2 * DAY], [STEP, STEP])
    long_step = [Window(0, "step", 60 * MIN, 3 * DAY)]
    assert score_precision(later, long_step)["step"].true_events == 1


def test_gap_flag_after_a_gap_or_a_quarantined_stretch_is_true() -> None:
    # The first reading after a gap [10, 40) min arrives at 40 min and is flagged GAP; the
    # same after out-of-range values [100, 110) min, which never reach the check either.
    ts = [m * MIN for m in (5, 40, 95, 111, 300)]
    trace = _trace([0] * 5, ts, [0, GAP, 0, GAP, GAP])
    windows = [
        Window(0, "gap", 10 * MIN, 40 * MIN),
        Window(0, "out_of_range", 100 * MIN, 110 * MIN),
    ]
    gap = score_precision(trace, windows)["gap"]
    assert (gap.events, gap.true_events) == (3, 2)  # 300 min is a false alarm
    assert score_recall(trace, windows)["gap"].detected == 1


def test_detectors_without_a_fault_kind_have_no_true_events() -> None:
    trace = _trace([0, 0], [0, MIN], [RATE, LIMIT])
    scores = score_precision(trace, [Window(0, "spike", 0, HOUR)])
    assert (scores["rate"].events, scores["rate"].true_events) == (1, 0)
    assert (scores["limit"].events, scores["limit"].true_events) == (1, 0)


def test_f1() -> None:
    assert f1(0.5, 1.0) == pytest.approx(2 / 3)
    assert f1(None, 1.0) == 0.0
    assert f1(0.0, 0.0) == 0.0
    assert f1(1.0, None) == 0.0


# --- false alarms ---------------------------------------------------------------------------


def test_false_alarms_count_union_events_per_sensor_week() -> None:
    # Series 0: SPIKE and RATE on the same sample (one alarm), STEP 30 min later (merged),
    # another SPIKE 5 h later (a second alarm). Series 1: only LIMIT, not a data fault.
    ts = [0, 30 * MIN, 5 * HOUR]
    trace = _trace([0, 0, 0, 1, 1, 1], ts * 2, [SPIKE | RATE, STEP, SPIKE, LIMIT, LIMIT, 0])
    assert false_alarm_rate(trace, n_series=2, weeks=1.0) == pytest.approx(1.0)
    assert false_alarm_rate(trace, n_series=4, weeks=0.5) == pytest.approx(1.0)
    assert false_alarm_rate(trace, n_series=2, weeks=1.0, bits=LIMIT) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs series"):
        false_alarm_rate(trace, n_series=0, weeks=1.0)


# --- settlement, agreement -------------------------------------------------------------------


def test_settlement_is_caught_by_shift_or_step_soon_after_it_completes() -> None:
    # A rise over [10, 13) min that stays; SHIFT on series 0 at 13.5 min, STEP on series 1
    # at 12 min (during the rise: a negative delay), SPIKE only on series 2, and SHIFT on
    # series 3 two minutes after the completion: too late for a one-minute deadline.
    ts = [m * MIN for m in (5, 12, 13.5, 15)]
    trace = _trace(
        [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4,
        [int(t) for t in ts] * 4,
        _rows((0, 0, SHIFT, SHIFT), (0, STEP, 0, 0), (0, SPIKE, 0, 0), (0, 0, 0, SHIFT)),
    )
    windows = [Window(s, "settlement", 10 * MIN, 13 * MIN) for s in range(4)]
    assert detection_span(windows[0], grace_ns=MIN, slack_ns=HOUR) == (10 * MIN, 14 * MIN)
    score = score_recall(trace, windows, grace_ns=MIN)["settlement"]
    assert (score.windows, score.detected, score.detected_any) == (4, 2, 3)
    assert sorted(score.delays_ns) == [-MIN, MIN // 2]  # from the completion
    assert score_recall(trace, windows, grace_ns=HOUR)["settlement"].detected == 3
    assert MATCHING_KINDS["shift"] == ("settlement",)
    assert set(MATCHING_KINDS["step"]) == {"step", "settlement"}
    precision = score_precision(trace, windows, grace_ns=MIN)
    assert (precision["shift"].events, precision["shift"].true_events) == (2, 1)
    assert (precision["step"].events, precision["step"].true_events) == (1, 1)


def test_jaccard_of_flag_sets_leaves_range_out_and_pools_runs() -> None:
    a = np.array([SPIKE | STEP, 0, RATE, int(AnomalyFlag.RANGE), 0], dtype=np.int32)
    b = np.array([SPIKE, 0, RATE | GAP, 0, DRIFT], dtype=np.int32)
    # Elements (row, bit): both have (0, spike) and (2, rate); either adds (0, step),
    # (2, gap) and (4, drift). RANGE is the harness's, not the check's.
    one = flag_agreement(a, b)
    assert (one.common, one.either) == (2, 5)
    assert one.jaccard == pytest.approx(0.4)
    assert flag_agreement(a, a).jaccard == 1.0
    empty = flag_agreement(np.zeros(3, np.int32), np.zeros(3, np.int32))
    assert (empty.either, empty.jaccard) == (0, 1.0)  # nothing flagged: full agreement
    pooled = Agreement()
    for part in (one, Agreement(8, 8), empty):
        pooled.add(part)
    assert pooled.jaccard == pytest.approx(10 / 13)  # pooled, not a mean of per-run indices
    with pytest.raises(ValueError, match="different readings"):
        flag_agreement(a, b[:2])


# --- trace ----------------------------------------------------------------------------------


def test_trace_must_be_sorted_by_series_then_time() -> None:
    with pytest.raises(ValueError, match="sorted"):
        _trace([0, 0], [MIN, 0], [0, 0])
    with pytest.raises(ValueError, match="sorted"):
        _trace([1, 0], [0, MIN], [0, 0])
    with pytest.raises(ValueError, match="length"):
        Trace(_i64([0]), _i64([0, 1]), np.zeros(1, np.int32), np.zeros(1, np.uint8))


def test_concat_keeps_runs_apart() -> None:
    a = _trace([0, 1], [0, 0], [SPIKE, 0])
    b = _trace([0, 1], [0, 0], [0, SPIKE])
    both = Trace.concat([a, b], stride=2)
    assert both.series.tolist() == [0, 1, 2, 3]
    assert both.flags.tolist() == [SPIKE, 0, 0, SPIKE]
    assert both.ts_ns[both.span(3, 0, 1)].tolist() == [0]


# --- fault plan -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry(SMALL_REGISTRY, "test")


def test_week_starts_at_local_midnight() -> None:
    winter = week_start_ns(dt.date(2025, 1, 13))
    summer = week_start_ns(dt.date(2025, 5, 12))
    assert winter == int(dt.datetime(2025, 1, 12, 23, tzinfo=dt.UTC).timestamp()) * NS
    assert summer == int(dt.datetime(2025, 5, 11, 22, tzinfo=dt.UTC).timestamp()) * NS


def test_fault_plan_is_seeded_and_keeps_faults_apart(registry: Registry) -> None:
    start, end = 0, 7 * DAY
    plan = plan_faults(registry.series, np.random.default_rng(5), start, end, per_kind=3, gaps=2)
    again = plan_faults(registry.series, np.random.default_rng(5), start, end, per_kind=3, gaps=2)
    assert plan == again
    counts = {k: sum(f.kind == k for f in plan) for k in FAULT_KINDS}
    assert counts == {
        "spike": 3,
        "drift": 3,
        "stuck": 3,
        "step": 3,
        "gap": 2,
        "out_of_range": 3,
        "settlement": 0,
    }
    by_series: dict[int, list[FaultSpec]] = {}
    for f in plan:
        assert f.series is not None
        assert start + DAY <= f.start_ns < f.end_ns <= end
        assert 1.0 <= abs(f.magnitude) <= 3.0
        by_series.setdefault(f.series, []).append(f)
        if f.kind == "step":
            assert f.end_ns == end
            assert f.start_ns <= end - DAY  # leaves the grace period to detect it in
        if f.kind in ("step", "drift") and registry.series[f.series].minimum >= 0:
            assert f.magnitude > 0
    for faults in by_series.values():
        faults.sort(key=lambda f: f.start_ns)
        for a, b in itertools.pairwise(faults):
            assert b.start_ns >= a.end_ns + 12 * HOUR


def test_fault_plan_refuses_what_does_not_fit(registry: Registry) -> None:
    with pytest.raises(ValueError, match="cannot place"):
        plan_faults(registry.series, np.random.default_rng(1), 0, 7 * DAY, per_kind=8, gaps=0)
    with pytest.raises(ValueError, match="lead-in"):
        plan_faults(registry.series, np.random.default_rng(1), 0, DAY, per_kind=1, gaps=0)


# --- arrival patterns -----------------------------------------------------------------------

DEVICES = 3


def _stream(rng: np.random.Generator, fast: bool = False) -> tuple[npt.NDArray[np.int64], ...]:
    """Readings of three devices with two series each and their own phases: device 0 every
    10 s (every 10 ms if ``fast``), device 1 every 10 s, device 2 every 60 s; two hours from
    a start at 00:00 UTC + 10 min; sorted by (series, ts) as a run's readings are."""
    start = 10 * MIN
    periods = [10_000_000 if fast else 10 * NS, 10 * NS, 60 * NS]
    ts_cols, series_cols, dev_cols, per_cols = [], [], [], []
    for d, period in enumerate(periods):
        phase = int(rng.integers(0, period // 1000)) * 1000
        end = start + (20 * NS if fast and d == 0 else 2 * HOUR)
        ts = np.arange(start + phase, end, period, dtype=np.int64)
        for k in range(2):
            keep = rng.random(len(ts)) > 0.05  # a few gaps, as out-of-range readings leave
            ts_cols.append(ts[keep])
            series_cols.append(np.full(int(keep.sum()), 2 * d + k, np.int64))
            dev_cols.append(np.full(int(keep.sum()), d, np.int64))
            per_cols.append(np.full(int(keep.sum()), period, np.int64))
    return (
        np.concatenate(ts_cols),
        np.concatenate(series_cols),
        np.concatenate(dev_cols),
        np.concatenate(per_cols),
        np.array([start], np.int64),
    )


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("fast", [False, True])
def test_every_pattern_feeds_every_reading_once_in_time_order_per_series(
    pattern: Pattern, fast: bool
) -> None:
    ts, series, device, period, start = _stream(np.random.default_rng(7), fast)
    for tick in (10 * NS, 0):
        feed = arrange(
            pattern,
            ts_ns=ts,
            series=series,
            device=device,
            period_ns=period,
            start_ns=int(start[0]),
            rng=np.random.default_rng(1),
            arrivals=Arrivals(live_tick_ns=tick),
        )
        assert np.array_equal(np.sort(feed.order), np.arange(len(ts)))  # each exactly once
        batch_of = np.repeat(np.arange(len(feed)), np.diff(feed.bounds))
        assert (np.diff(feed.bounds) > 0).all()  # no empty batches
        for s in range(2 * DEVICES):
            mine = series[feed.order] == s
            arrival = ts[feed.order][mine]
            assert (np.diff(arrival) > 0).all(), (pattern, s)  # in time order
            assert (np.diff(batch_of[mine]) >= 0).all()
        sizes = np.diff(feed.bounds)
        batches = [feed.order[a:b] for a, b in itertools.pairwise(feed.bounds.tolist())]
        if pattern == "backlog":
            assert len(feed) == 1
        elif pattern == "hour":
            assert len(feed) == 3  # 00:10-01:00, 01:00-02:00, 02:00-02:10
            assert all(len(set((ts[b] // HOUR).tolist())) == 1 for b in batches)
        elif pattern == "minutes":
            assert all(int(ts[b].max() - ts[b].min()) < 10 * MIN for b in batches)
            assert 12 <= len(feed) <= 25
        elif pattern == "live" and tick == 0:  # one message: one device, one timestamp
            assert all(len(set(ts[b].tolist())) == 1 for b in batches)
            assert all(len(set(device[b].tolist())) == 1 for b in batches)
            assert sizes.max() <= 2
        elif pattern == "live":  # one tick: each series at most once
            if not fast:
                assert all(len(set(series[b].tolist())) == len(b) for b in batches)
            assert all(len(set((ts[b] // tick).tolist())) == 1 for b in batches)
        elif pattern == "blocks":
            fast_batches = [b for b in batches if (period[b] < NS).any()]
            for b in fast_batches:  # one block of one fast device
                assert (period[b] < NS).all()
                assert len(set(device[b].tolist())) == 1
                assert len(set(ts[b].tolist())) <= 100
            for b in batches:  # the rest as in live
                if (period[b] >= NS).all():
                    assert len(set(series[b].tolist())) == len(b)
            if fast:  # 20 s of device 0 at 100 Hz: 2,000 timestamps in 20 blocks
                assert len(fast_batches) == 20


def test_blocks_without_fast_devices_is_live() -> None:
    ts, series, device, period, start = _stream(np.random.default_rng(3))
    feeds = [
        arrange(
            p,
            ts_ns=ts,
            series=series,
            device=device,
            period_ns=period,
            start_ns=int(start[0]),
            rng=np.random.default_rng(1),
        )
        for p in ("live", "blocks")
    ]
    assert np.array_equal(feeds[0].order, feeds[1].order)
    assert np.array_equal(feeds[0].bounds, feeds[1].bounds)


def test_batches_come_in_the_order_they_complete() -> None:
    # Key 1 holds readings at 5 and 30, key 0 at 10 and 20: key 0 completes first.
    feed = batch_feed(_i64([1, 0, 0, 1]), _i64([5, 10, 20, 30]), _i64([0, 1, 1, 0]))
    assert feed.order.tolist() == [1, 2, 0, 3]
    assert feed.bounds.tolist() == [0, 2, 4]
    empty = batch_feed(_i64([]), _i64([]), _i64([]))
    assert (len(empty), list(empty.batches())) == (0, [])


# --- harness with stand-in checks -----------------------------------------------------------


class RecordingCheck:
    """Stand-in for ``build_check``: asserts it is fed as the service would feed it, and
    flags STUCK when a series repeats its previous value (state across batches)."""

    def __init__(self, series: Sequence[Series]) -> None:
        self.series = list(series)
        self.last = np.full(len(series), np.nan)
        self.last_ts = np.full(len(series), -1, dtype=np.int64)
        self.batches: list[ReadingBatch] = []

    def check(self, batch: ReadingBatch) -> None:
        assert batch.series.dtype == np.int32
        assert len(batch) == len(batch.ts_ns) == len(batch.flags) == len(batch.scores)
        assert not np.isnan(batch.values).any()
        lo = np.array([s.minimum for s in self.series])[batch.series]
        hi = np.array([s.maximum for s in self.series])[batch.series]
        assert ((batch.values >= lo) & (batch.values <= hi)).all()
        assert np.all(np.diff(batch.ts_ns) >= 0)
        for i in range(len(batch)):  # fine for a stand-in; the real check is vectorised
            s = int(batch.series[i])
            assert int(batch.ts_ns[i]) > self.last_ts[s]  # each series in time order
            if batch.values[i] == self.last[s]:
                batch.flags[i] |= np.int32(AnomalyFlag.STUCK)
            self.last[s] = batch.values[i]
            self.last_ts[s] = int(batch.ts_ns[i])
        self.batches.append(batch)


class RepeatCheck:
    """The same repeat rule, vectorised and independent of batching (for whole runs)."""

    def __init__(self, series: Sequence[Series]) -> None:
        self.last = np.full(len(series), np.nan)

    def check(self, batch: ReadingBatch) -> None:
        order = np.lexsort((batch.ts_ns, batch.series))
        s, v = batch.series[order], batch.values[order]
        first = np.ones(len(s), dtype=bool)
        first[1:] = s[1:] != s[:-1]
        prev = np.roll(v, 1)
        prev[first] = self.last[s[first]]
        flags = np.zeros(len(v), np.int32)
        flags[order] = np.where(v == prev, np.int32(AnomalyFlag.STUCK), 0)
        batch.flags |= flags
        last = np.append(first[1:], True)
        self.last[s[last]] = v[last]


class OracleCheck:
    """Flags exactly the faulty readings with their expected detector, from the labels of
    the readings it will be fed; a GAP on the first reading after each gap."""

    def __init__(self, readings: Readings, gaps: Sequence[FaultSpec]) -> None:
        bits = {
            _code("spike"): SPIKE,
            _code("stuck"): int(AnomalyFlag.STUCK),
            _code("step"): STEP,
            _code("drift"): DRIFT,
        }
        self.truth: dict[tuple[int, int], int] = {}
        for s, t, lab in zip(
            readings.series.tolist(), readings.ts_ns.tolist(), readings.labels.tolist(), strict=True
        ):
            if lab in bits:
                self.truth[(s, t)] = bits[lab]
        for g in gaps:
            assert g.series is not None
            mine = readings.ts_ns[readings.series == g.series]
            after = mine[mine >= g.end_ns]
            if len(after):
                self.truth[(g.series, int(after[0]))] = GAP

    def check(self, batch: ReadingBatch) -> None:
        for i, (s, t) in enumerate(zip(batch.series.tolist(), batch.ts_ns.tolist(), strict=True)):
            batch.flags[i] |= np.int32(self.truth.get((s, t), 0))


def _small_run(registry: Registry, faults: Sequence[FaultSpec], start: int) -> Readings:
    return simulate(registry, 7, start, start + DAY, faults, np.random.default_rng(0))


def test_harness_feeds_every_pattern_as_the_service_would(registry: Registry) -> None:
    start = week_start_ns(dt.date(2025, 1, 13))
    g1_strain = registry.series[0]
    faults = [
        FaultSpec("stuck", g1_strain.index, start + 2 * HOUR, 3 * HOUR),
        FaultSpec("out_of_range", 2, start + 6 * HOUR, 20 * MIN),
        FaultSpec("gap", 3, start + 8 * HOUR, 30 * MIN),
    ]
    data = _small_run(registry, faults, start)
    made: list[RecordingCheck] = []

    def factory(series: Sequence[Series]) -> RecordingCheck:
        made.append(RecordingCheck(series))
        return made[-1]

    patterns: tuple[Pattern, ...] = ("live", "blocks", "minutes", "backlog")
    runs = run_patterns(
        registry.series, data, factory, patterns, start_ns=start, rng=np.random.default_rng(1)
    )
    assert len(made) == 3  # a fresh check per pattern; blocks is live here and reused
    assert runs["blocks"] is runs["live"]
    live, minutes, backlog = made
    assert runs["live"].batches == len(live.batches) == 8640  # one 10 s tick each
    assert all(len(set(b.series.tolist())) == len(b) for b in live.batches)
    assert len(backlog.batches) == 1
    assert all(len(set(b.series.tolist())) > 1 for b in minutes.batches)  # interleaved
    oor = data.labels == _code("out_of_range")
    assert oor.any()
    stuck_labelled = data.labels == _code("stuck")
    for pattern in patterns:
        run = runs[pattern]
        quarantined = (run.trace.flags & AnomalyFlag.RANGE) != 0
        assert np.array_equal(quarantined, oor)
        assert run.checked == len(data.series) - int(oor.sum())
        stuck = (run.trace.flags & AnomalyFlag.STUCK) != 0
        assert (stuck & stuck_labelled).sum() >= stuck_labelled.sum() - 1
        assert np.all(data.values[stuck] == data.values[np.flatnonzero(stuck) - 1])
    # The gap's samples are not there at all.
    gap = (data.series == 3) & (data.ts_ns >= start + 8 * HOUR) & (data.ts_ns < start + 8.5 * HOUR)
    assert not gap.any()
    # A repeat rule that sees each series in time order flags the same in every pattern.
    pairs = agreements(runs)
    assert len(pairs) == 6
    assert all(a.jaccard == 1.0 and a.either > 0 for a in pairs.values())


def test_an_oracle_scores_perfectly(registry: Registry) -> None:
    start = week_start_ns(dt.date(2025, 9, 15))
    rng = np.random.default_rng(3)
    faults = plan_faults(
        registry.series,
        rng,
        start,
        start + DAY,
        per_kind=1,
        gaps=1,
        lead_ns=2 * HOUR,
        margin_ns=HOUR,
        grace_ns=6 * HOUR,
    )
    windows = [Window.of(f) for f in faults]
    faulty = _small_run(registry, faults, start)
    oracle = OracleCheck(faulty, [f for f in faults if f.kind == "gap"])
    runs = run_patterns(
        registry.series, faulty, lambda _: oracle, ("minutes", "hour"), start_ns=start, rng=rng
    )
    for run in runs.values():
        recall = score_recall(run.trace, windows, grace_ns=6 * HOUR)
        precision = score_precision(run.trace, windows)
        for kind in ("spike", "stuck", "step", "drift", "out_of_range", "gap"):
            assert recall[kind].recall == 1.0, kind
        for name in ("spike", "stuck", "step", "drift", "range", "gap"):
            assert precision[name].precision == 1.0, name
    assert agreements(runs)[("minutes", "hour")].jaccard == 1.0
    clean = _small_run(registry, [], start)
    quiet = run_patterns(
        registry.series, clean, lambda _: OracleCheck(clean, []), ("hour",), start_ns=start, rng=rng
    )["hour"].trace
    assert false_alarm_rate(quiet, len(registry.series), 1 / 7) == 0.0


def test_high_rate_records_carry_settlement_step_and_drift() -> None:
    config = HighRateConfig(record_ns=10 * MIN)
    from devices.registry import parse_registry as parse

    hr = parse(config.registry_yaml, "test")
    monday = week_start_ns(dt.date(2025, 5, 12))
    records = plan_records(hr, 4, monday, config)
    assert [r.kind for r in records] == ["clean", "settlement", "step"]
    assert records == plan_records(hr, 4, monday, config)  # seeded
    clean, settled, stepped = records
    assert clean.faults == ()
    assert {f.kind for f in settled.faults} == {"settlement"}
    assert len({f.series for f in settled.faults}) == 3  # every gauge
    assert {f.kind for f in stepped.faults} == {"step", "drift"}
    for r in records:
        local_hour = (r.start_ns - monday) % DAY // HOUR
        assert 7 <= local_hour < 16
        for f in r.faults:
            assert r.start_ns <= f.start_ns < f.end_ns <= r.start_ns + config.record_ns
            assert f.absolute
    [step] = [f for f in stepped.faults if f.kind == "step"]
    assert 3.0 <= abs(step.magnitude) <= 8.0
    data = simulate_record(hr, stepped, config)
    assert len(data.series) == 6 * 60_000  # six series at 100 Hz for ten minutes
    assert (np.diff(data.ts_ns[data.series == step.series]) == 10_000_000).all()


def test_evaluate_reports_both_seed_sets_and_every_pattern(registry: Registry) -> None:
    config = EvalConfig(
        seeds=(4,),
        held_out=(5,),
        week=WeekConfig(
            days=1,
            per_kind=1,
            gaps=1,
            lead_ns=2 * HOUR,
            margin_ns=HOUR,
            grace_ns=6 * HOUR,
            # Coarse live ticks keep the test quick; the patterns' batching is tested above.
            arrivals=Arrivals(live_tick_ns=60 * NS),
            registry_yaml=SMALL_REGISTRY,
        ),
        high_rate=HighRateConfig(record_ns=3 * MIN, arrivals=Arrivals(live_tick_ns=NS)),
        workers=1,
    )
    report = evaluate(config, RepeatCheck)
    figures = json.loads(json.dumps(report_json(report)))
    assert set(figures) == {"tuning", "held_out", "targets_met", "seconds"}
    assert figures["targets_met"] is False  # a repeat detector finds no spikes
    for name, seeds in (("tuning", [4]), ("held_out", [5])):
        part = figures[name]
        assert part["seeds"] == seeds
        assert part["series"] == len(registry.series)
        assert set(part["patterns"]) == set(PATTERNS)
        for p in PATTERNS:
            assert part["patterns"][p]["recall"]["out_of_range"] == 1.0  # the quarantine
            assert part["patterns"][p]["false_alarms_per_sensor_week"] >= 0.0
        assert set(part["jaccard"].values()) == {1.0}
        assert part["high_rate"]["records"] == 3
        assert set(part["high_rate"]["patterns"]) == set(PATTERNS)
    text = format_report(report)
    for word in (
        "Held-out seeds 5",
        "out_of_range",
        "false alarms/sensor-week",
        "Flag agreement",
        "High-rate records",
        "settlement",
        "Targets (issue 12) on the held-out seeds",
        "All targets met: no",
    ):
        assert word in text
