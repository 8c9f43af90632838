"""The anomaly evaluation's scoring on hand-made flag arrays, and its harness with stand-in
checks (the real detectors are judged by running ``python -m bench.eval_anomaly``)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from bench.eval_anomaly import (
    ANY_FAULT_BITS,
    DAY,
    HOUR,
    MIN,
    NS,
    EvalConfig,
    Readings,
    Trace,
    Window,
    detection_span,
    evaluate,
    f1,
    false_alarm_rate,
    flag_events,
    format_report,
    match_span,
    plan_faults,
    run_check,
    score_precision,
    score_recall,
    simulate,
    week_start_ns,
)
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
    assert counts == {"spike": 3, "drift": 3, "stuck": 3, "step": 3, "gap": 2, "out_of_range": 3}
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


# --- harness with stand-in checks -----------------------------------------------------------


class RecordingCheck:
    """Stand-in for ``build_check``: asserts it is fed as the service would feed it, and
    flags STUCK when a series repeats its previous value (state across batches)."""

    def __init__(self, series: Sequence[Series]) -> None:
        self.series = list(series)
        self.last = np.full(len(series), np.nan)
        self.last_ts = -1
        self.batches: list[ReadingBatch] = []

    def check(self, batch: ReadingBatch) -> None:
        assert batch.series.dtype == np.int32
        assert len(batch) == len(batch.ts_ns) == len(batch.flags) == len(batch.scores)
        assert not np.isnan(batch.values).any()
        lo = np.array([s.minimum for s in self.series])[batch.series]
        hi = np.array([s.maximum for s in self.series])[batch.series]
        assert ((batch.values >= lo) & (batch.values <= hi)).all()
        assert int(batch.ts_ns.min()) > self.last_ts  # batches in time order
        assert np.all(np.diff(batch.ts_ns) >= 0)
        assert int(batch.ts_ns.max() - batch.ts_ns.min()) < 10 * MIN
        self.last_ts = int(batch.ts_ns.max())
        for i in range(len(batch)):  # fine for a stand-in; the real check is vectorised
            s = int(batch.series[i])
            if batch.values[i] == self.last[s]:
                batch.flags[i] |= np.int32(AnomalyFlag.STUCK)
            self.last[s] = batch.values[i]
        self.batches.append(batch)


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


def _small_run(
    registry: Registry, faults: Sequence[FaultSpec], start: int
) -> tuple[Readings, npt.NDArray[np.float64]]:
    data = simulate(registry, 7, start, start + DAY, faults, np.random.default_rng(0))
    return data, data.values


def test_harness_feeds_batches_as_the_service_would(registry: Registry) -> None:
    start = week_start_ns(dt.date(2025, 1, 13))
    g1_strain = registry.series[0]
    faults = [
        FaultSpec("stuck", g1_strain.index, start + 2 * HOUR, 3 * HOUR),
        FaultSpec("out_of_range", 2, start + 6 * HOUR, 20 * MIN),
        FaultSpec("gap", 3, start + 8 * HOUR, 30 * MIN),
    ]
    data, values = _small_run(registry, faults, start)
    made: list[RecordingCheck] = []

    def factory(series: Sequence[Series]) -> RecordingCheck:
        made.append(RecordingCheck(series))
        return made[-1]

    result = run_check(registry, data, factory, start, np.random.default_rng(1))
    [check] = made
    assert result.batches == len(check.batches) > 100
    assert all(len(set(b.series.tolist())) > 1 for b in check.batches)  # series interleaved
    quarantined = (result.trace.flags & AnomalyFlag.RANGE) != 0
    assert result.checked == len(data.series) - int(quarantined.sum())
    oor = data.labels == _code("out_of_range")
    assert oor.any()
    assert np.array_equal(quarantined, oor)
    # The gap's samples are not there at all.
    gap = (data.series == 3) & (data.ts_ns >= start + 8 * HOUR) & (data.ts_ns < start + 8.5 * HOUR)
    assert not gap.any()
    # The stand-in's flags come back on the right samples: the stuck window of g1/strain.
    stuck = (result.trace.flags & AnomalyFlag.STUCK) != 0
    labelled = data.labels == _code("stuck")
    assert (stuck & labelled).sum() >= labelled.sum() - 1  # all but the first frozen value
    assert np.all(values[stuck] == values[np.flatnonzero(stuck) - 1])


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
    faulty, _ = _small_run(registry, faults, start)
    oracle = OracleCheck(faulty, [f for f in faults if f.kind == "gap"])
    trace = run_check(registry, faulty, lambda _: oracle, start, np.random.default_rng(2)).trace
    recall = score_recall(trace, windows, grace_ns=6 * HOUR)
    precision = score_precision(trace, windows)
    for kind in ("spike", "stuck", "step", "drift", "out_of_range", "gap"):
        assert recall[kind].recall == 1.0, kind
    for name in ("spike", "stuck", "step", "drift", "range", "gap"):
        assert precision[name].precision == 1.0, name
    clean, _ = _small_run(registry, [], start)
    quiet = run_check(registry, clean, lambda _: OracleCheck(clean, []), start, rng).trace
    assert false_alarm_rate(quiet, len(registry.series), 1 / 7) == 0.0


def test_evaluate_reports_every_figure(registry: Registry) -> None:
    config = EvalConfig(
        seeds=(4,),
        days=1,
        per_kind=1,
        gaps=1,
        lead_ns=2 * HOUR,
        margin_ns=HOUR,
        grace_ns=6 * HOUR,
        registry_yaml=SMALL_REGISTRY,
    )
    report = evaluate(config, RecordingCheck)
    figures = json.loads(json.dumps(report.to_json()))
    assert set(figures["recall"]) >= {"spike", "stuck", "step", "drift", "out_of_range"}
    assert figures["recall"]["out_of_range"] == 1.0  # the quarantine catches it
    assert figures["series"] == len(registry.series)
    assert figures["seeds"] == [4]
    assert figures["targets_met"] is False  # a repeat detector finds no spikes
    assert figures["false_alarms_per_sensor_week"] >= 0.0
    text = format_report(report)
    for word in ("spike", "out_of_range", "False alarms per sensor-week", "Targets met: no"):
        assert word in text
