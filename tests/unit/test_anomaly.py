"""Each detector on hand-made series, including the edge cases: constant series, a single
sample, gaps, out-of-order and duplicate timestamps, a restart in the middle of a segment;
and the same readings judged alike however they are batched."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from devices.registry import Registry, parse_registry
from devices.simulator import FaultSpec, Simulator
from devices.topics import TopicScheme
from ingest.anomaly import SEGMENT, Detectors
from ingest.batch import AnomalyFlag, ReadingBatch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

REGISTRY = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      sg1:
        interval: 10s
        channels:
          g1: [strain]
          g2: [strain]
        overrides:
          strain: {limit: 900}
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 1m
        measurements: [co2]
"""
G1, G2, CO2 = 0, 1, 2
T0 = 1_780_000_000 * 10**9
SECOND = 10**9
TEN_S = 10 * SECOND
MINUTE = 60 * SECOND


@pytest.fixture
def registry() -> Registry:
    return parse_registry(REGISTRY)


def quiet(n: int, level: float = 100.0, seed: int = 1, sd: float = 1.0) -> F64:
    return level + np.random.default_rng(seed).normal(0, sd, n)


def feed(
    det: Detectors,
    values: F64,
    series: int = G1,
    step_ns: int = TEN_S,
    start_ns: int = T0,
    batch: int = 7,
    ts: I64 | None = None,
) -> I32:
    """Run ``values`` through the detectors in batches of ``batch``; return the flags."""
    times = start_ns + np.arange(len(values), dtype=np.int64) * step_ns if ts is None else ts
    flags = np.zeros(len(values), dtype=np.int32)
    for i in range(0, len(values), batch):
        sl = slice(i, i + batch)
        b = ReadingBatch.unchecked(np.full(len(values[sl]), series), times[sl], values[sl])
        det.check(b)
        flags[sl] = b.flags
    return flags


def has(flags: I32, flag: AnomalyFlag) -> npt.NDArray[np.bool_]:
    hit: npt.NDArray[np.bool_] = (flags & int(flag)) != 0
    return hit


def test_clean_noisy_series_is_not_flagged(registry: Registry) -> None:
    flags = feed(Detectors(registry.series), quiet(2000))
    assert not flags.any()


def test_spike_is_flagged_alone(registry: Registry) -> None:
    v = quiet(300)
    v[[100, 200]] += [120.0, -150.0]
    flags = feed(Detectors(registry.series), v)
    assert np.flatnonzero(has(flags, AnomalyFlag.SPIKE)).tolist() == [100, 200]
    assert not has(flags, AnomalyFlag.STEP).any()


def test_step_is_flagged_and_then_accepted_as_the_new_level(registry: Registry) -> None:
    v = quiet(400)
    v[150:] += 60.0
    flags = feed(Detectors(registry.series), v)
    step = np.flatnonzero(has(flags, AnomalyFlag.STEP))
    # At 10 s a step must hold for 45 s (longer than a lorry's transient): five readings.
    assert step.min() == 154
    assert step.max() < 150 + 2 * SEGMENT  # the reference moves to the new level
    assert not has(flags, AnomalyFlag.SHIFT).any()  # one sensor's jump: a sensor fault


def test_a_small_step_on_a_quiet_gauge_is_many_noise_widths(registry: Registry) -> None:
    """A gauge with 0.3 ue of noise: a lasting offset of 5 ue is over 15 noise widths."""
    v = quiet(400, sd=0.3)
    v[200:] += 5.0
    flags = feed(Detectors(registry.series), v)
    assert has(flags, AnomalyFlag.STEP)[200:210].any()
    assert not flags[:200].any()


def test_a_busy_gauge_is_not_marked_for_its_normal_noise(registry: Registry) -> None:
    """Noise of 3 ue: its own scale, not a fixed threshold, decides; the same 5 ue offset
    is under two noise widths and goes unmarked."""
    v = quiet(3000, sd=3.0)
    v[1500:] += 5.0
    flags = feed(Detectors(registry.series), v, batch=50)
    assert not has(flags, AnomalyFlag.STEP | AnomalyFlag.SPIKE | AnomalyFlag.SHIFT).any()


ONE_HZ = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      sg1:
        interval: 1s
        channels:
          g1: [strain, temperature]
"""


def settlement(n: int, onset: int, ramp: int, amount: float) -> F64:
    """A monotone rise (half cosine) over ``ramp`` readings that then stays."""
    x = np.clip((np.arange(n) - onset) / ramp, 0.0, 1.0)
    return amount * (1 - np.cos(np.pi * x)) / 2


def feed_pair(det: Detectors, ts: I64, strain: F64, temp: F64, per_batch: int) -> I32:
    """Strain (series 0) and its temperature (series 1), ``per_batch`` of each per batch."""
    flags = np.zeros(len(ts), dtype=np.int32)
    for i in range(0, len(ts), per_batch):
        sl = slice(i, i + per_batch)
        n = len(ts[sl])
        b = ReadingBatch.unchecked(
            np.r_[np.zeros(n), np.ones(n)], np.r_[ts[sl], ts[sl]], np.r_[strain[sl], temp[sl]]
        )
        det.check(b)
        flags[sl] = b.flags[:n]
    return flags


@pytest.mark.parametrize(("sd", "amount"), [(0.3, 12.0), (3.0, 40.0)])
def test_shift_marks_a_settlement_within_about_a_minute(sd: float, amount: float) -> None:
    """A support settles: the gauge rises over two minutes and stays, on a quiet and on a
    noisy gauge. No jump at any reading, so it is no sensor step: a structural shift."""
    reg = parse_registry(ONE_HZ)
    n, onset = 1800, 900
    ts = T0 + np.arange(n, dtype=np.int64) * SECOND
    temp = 15.0 + np.round(np.random.default_rng(2).normal(0, 0.02, n), 2)
    strain = quiet(n, 50.0, seed=3, sd=sd) + 12.0 * (temp - 15.0)
    strain += settlement(n, onset, 120, amount)
    flags = feed_pair(Detectors(reg.series), ts, strain, temp, per_batch=60)
    shift = np.flatnonzero(has(flags, AnomalyFlag.SHIFT))
    assert len(shift) > 0
    assert onset < shift.min() <= onset + 120 + 60
    assert not has(flags, AnomalyFlag.STEP | AnomalyFlag.SPIKE).any()
    assert not flags[:onset].any()


def test_shift_ignores_lorries_and_temperature() -> None:
    """Lorries (bumps of 30 ue for seconds) and a warming deck (2 K in an hour, 24 ue)
    move the gauge; neither is a lasting change the temperature does not explain."""
    reg = parse_registry(ONE_HZ)
    n = 3600
    ts = T0 + np.arange(n, dtype=np.int64) * SECOND
    temp = 15.0 + 2.0 * np.arange(n) / n
    strain = quiet(n, 50.0, seed=4, sd=0.5) + 12.0 * (temp - 15.0)
    rng = np.random.default_rng(5)
    for at in rng.choice(np.arange(200, n - 30), 40, replace=False):
        strain[at : at + 8] += 30.0 * np.sin(np.linspace(0, np.pi, 8))
    flags = feed_pair(Detectors(reg.series), ts, strain, np.round(temp, 2), per_batch=100)
    assert not has(flags, AnomalyFlag.SHIFT | AnomalyFlag.STEP | AnomalyFlag.DRIFT).any()


def test_a_faulty_thermometer_does_not_move_its_gauge() -> None:
    """The thermometer steps by 5 K: its step, not the compensated gauge's."""
    reg = parse_registry(ONE_HZ)
    n = 900
    ts = T0 + np.arange(n, dtype=np.int64) * SECOND
    temp = np.round(15.0 + np.random.default_rng(6).normal(0, 0.03, n), 2)
    strain = quiet(n, 50.0, seed=7, sd=0.5)
    temp[600:] += 5.0
    det = Detectors(reg.series)
    gauge = feed_pair(det, ts, strain, temp, per_batch=30)
    assert not has(gauge, AnomalyFlag.STEP | AnomalyFlag.SHIFT | AnomalyFlag.SPIKE).any()


def test_stuck_value(registry: Registry) -> None:
    """After half a day of history (a new sensor first shows how long it holds a value),
    twelve identical readings of a series that always varies are stuck."""
    v = quiet(5000)
    v[4400:4440] = v[4400]
    flags = feed(Detectors(registry.series), v, batch=100)
    stuck = np.flatnonzero(has(flags, AnomalyFlag.STUCK))
    assert stuck.min() == 4400 + 11  # the twelfth identical reading
    assert stuck.max() == 4439
    young = feed(Detectors(registry.series), v[4000:], batch=100)
    assert not has(young, AnomalyFlag.STUCK).any()


@pytest.mark.parametrize("per_batch", [1, 20, 200])
def test_a_lorry_on_the_next_gauge_does_not_explain_a_sensor_step(
    registry: Registry, per_batch: int
) -> None:
    """A lorry bends the next gauge by a few microstrain at the moment one gauge's reading
    jumps by a hundred and stays: the jump is that sensor's step. Both gauges jumping
    alike and staying is not one sensor's fault."""
    n = 200
    ts = T0 + np.arange(n, dtype=np.int64) * TEN_S

    def marks(b_jump: float) -> tuple[bool, bool]:
        det = Detectors(registry.series)
        a, b = quiet(n, 100.0, seed=10), quiet(n, -200.0, seed=11)
        a[150:] += 100.0
        b[150] += b_jump  # the lorry, one reading
        if b_jump > 50:
            b[150:] += b_jump - b[150] + b[149]  # ... or a lasting jump of the same size
        flags = np.zeros(n, dtype=np.int32)
        for lo in range(0, n, per_batch):
            sl = slice(lo, lo + per_batch)
            k = len(ts[sl])
            batch = ReadingBatch.unchecked(
                np.r_[np.full(k, G1), np.full(k, G2)], np.r_[ts[sl], ts[sl]], np.r_[a[sl], b[sl]]
            )
            det.check(batch)
            flags[sl] = batch.flags[:k]
        return bool(has(flags, AnomalyFlag.STEP).any()), bool(has(flags, AnomalyFlag.SHIFT).any())

    assert marks(6.0) == (True, False)
    assert marks(100.0) == (False, True)


ROOM = """\
sites:
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 1m
        measurements: [temperature]
"""


def test_a_quantised_thermometer_holding_through_the_night_is_not_stuck() -> None:
    """0.1 degC steps: a quiet room shows one value for tens of minutes each night. The
    series' own longest recent flat run sets how long is unusual; a frozen sensor through
    the next day's lessons is."""
    reg = parse_registry(ROOM)
    minutes = 4 * 1440
    t = np.arange(minutes)
    hour = (t // 60) % 24
    day = (hour >= 7) & (hour < 16)
    rng = np.random.default_rng(8)
    v = 20.0 + np.where(day, 1.5 + 0.5 * np.sin(t / 25.0), 0.0) + rng.normal(0, 0.03, minutes)
    v = np.round(v, 1)
    clean = feed(Detectors(reg.series), v, series=0, step_ns=MINUTE, batch=60)
    assert not has(clean, AnomalyFlag.STUCK).any()
    longest = max(len(r) for r in np.split(v, np.flatnonzero(np.diff(v)) + 1))
    assert longest >= 30  # the nights do hold one value that long
    frozen = v.copy()
    frozen[3 * 1440 + 6 * 60 :] = frozen[3 * 1440 + 6 * 60]  # from 06:00 on the fourth day
    flags = feed(Detectors(reg.series), frozen, series=0, step_ns=MINUTE, batch=60)
    stuck = np.flatnonzero(has(flags, AnomalyFlag.STUCK))
    assert len(stuck) > 0
    assert stuck.min() >= 3 * 1440 + 6 * 60 + 2 * longest  # judged against its own runs


def test_constant_series_is_stuck_but_never_spiky(registry: Registry) -> None:
    v = np.full(100, 400.0)
    v[60] = 401.0  # a change far below the noise floor: the MAD of zero is not a scale
    flags = feed(Detectors(registry.series), v, series=CO2, step_ns=MINUTE)
    assert not has(flags, AnomalyFlag.SPIKE).any()
    assert not has(flags, AnomalyFlag.STUCK)[60]


def test_rate_beyond_physics(registry: Registry) -> None:
    v = np.full(40, 600.0) + np.arange(40, dtype=np.float64)  # varying, so not stuck
    v[30:] += 8000.0 - 600.0  # 7400 ppm within a minute
    flags = feed(Detectors(registry.series), v, series=CO2, step_ns=MINUTE)
    assert np.flatnonzero(has(flags, AnomalyFlag.RATE)).tolist() == [30]


def test_gap_flags_the_first_reading_after_it(registry: Registry) -> None:
    ts = T0 + np.arange(50, dtype=np.int64) * TEN_S
    ts[25:] += 120 * SECOND  # two minutes of silence where 10 s is expected
    flags = feed(Detectors(registry.series), quiet(50), ts=ts)
    assert np.flatnonzero(has(flags, AnomalyFlag.GAP)).tolist() == [25]


def test_limit_is_a_structural_flag(registry: Registry) -> None:
    v = quiet(50, level=880.0)
    v[40] = 905.0
    flags = feed(Detectors(registry.series), v)
    assert np.flatnonzero(has(flags, AnomalyFlag.LIMIT)).tolist() == [40]


def test_single_sample_and_warm_up(registry: Registry) -> None:
    det = Detectors(registry.series)
    assert feed(det, np.array([500.0])).tolist() == [0]
    # The first segment has no segment before it: no statistics, so no spike however far.
    flags = feed(det, np.array([100.0] * (SEGMENT - 2) + [4000.0]), start_ns=T0 + TEN_S)
    assert not has(flags, AnomalyFlag.SPIKE).any()


def test_out_of_order_and_duplicate_timestamps(registry: Registry) -> None:
    det = Detectors(registry.series)
    v = quiet(60)
    ts = T0 + np.arange(60, dtype=np.int64) * TEN_S
    shuffled = np.random.default_rng(7).permutation(60)
    flags = feed(det, v[shuffled], ts=ts[shuffled], batch=60)
    assert not flags.any()
    # A duplicate of the last reading: same time, same value. Neither rate nor gap.
    again = feed(det, v[-1:], ts=ts[-1:])
    assert again.tolist() == [0]


def test_restart_mid_segment_keeps_the_state(registry: Registry, tmp_path: Path) -> None:
    v = quiet(300)
    v[205] += 150.0  # just after the restart, inside what would be a new warm-up
    v[195:215] = v[195]  # and a stuck run straddling the restart
    v[205] = v[195] + 150.0
    whole = feed(Detectors(registry.series), v)

    first = Detectors(registry.series)
    part1 = feed(first, v[:200])
    first.save(tmp_path / "anomaly.npz")
    second = Detectors(registry.series)
    assert second.load(tmp_path / "anomaly.npz") == len(registry.series)
    part2 = feed(second, v[200:], start_ns=T0 + 200 * TEN_S)
    assert np.concatenate([part1, part2]).tolist() == whole.tolist()
    assert has(part2, AnomalyFlag.SPIKE)[5]
    # Without the state the restart is a new warm-up: the spike would pass unflagged.
    cold = feed(Detectors(registry.series), v[200:], start_ns=T0 + 200 * TEN_S)
    assert not has(cold, AnomalyFlag.SPIKE)[5]


def test_state_of_a_changed_registry_maps_by_name(registry: Registry, tmp_path: Path) -> None:
    det = Detectors(registry.series)
    feed(det, quiet(100))
    det.save(tmp_path / "state.npz")
    smaller = parse_registry(REGISTRY.replace("          g1: [strain]\n", ""))
    other = Detectors(smaller.series)
    assert other.load(tmp_path / "state.npz") == len(smaller.series)


def test_a_snapshot_of_some_series_carries_only_them(registry: Registry) -> None:
    """What a NATS worker hands over with a partition: the state of that partition's series,
    restored elsewhere, judges the next readings as the first worker would have."""
    v = quiet(300)
    v[205] += 150.0
    whole = feed(Detectors(registry.series), v, series=G2)

    first = Detectors(registry.series)
    feed(first, quiet(200, seed=5), series=G1)
    part1 = feed(first, v[:200], series=G2)
    snapshot = first.snapshot(np.array([G2]))
    second = Detectors(registry.series)
    assert second.restore(snapshot) == 1
    part2 = feed(second, v[200:], series=G2, start_ns=T0 + 200 * TEN_S)
    assert np.concatenate([part1, part2]).tolist() == whole.tolist()
    assert has(part2, AnomalyFlag.SPIKE)[5]
    # G1 was not in the snapshot: it starts cold in the second worker.
    assert second.last_ts[G1] == Detectors(registry.series).last_ts[G1]
    assert len(snapshot) < len(first.snapshot(np.arange(len(registry.series))))


DRIFT_REGISTRY = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      sg1:
        interval: 10m
        channels:
          g1: [strain, temperature]
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 10m
        measurements: [co2]
"""
TEN_MIN = 600 * SECOND


def daily(days: int) -> tuple[I64, F64]:
    ts = T0 - T0 % (86400 * SECOND) + np.arange(days * 144, dtype=np.int64) * TEN_MIN
    hours = (ts // 3_600_000_000_000) % 24
    return ts, hours.astype(np.float64)


def test_strain_drift_is_found_after_temperature_compensation() -> None:
    reg = parse_registry(DRIFT_REGISTRY)
    ts, hours = daily(8)
    rng = np.random.default_rng(5)
    temp = 8 + 5 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.05, len(ts))
    strain = 12.1 * temp - 40 + rng.normal(0, 1.0, len(ts))  # 120 microstrain of daily swing
    clean = feed_pair(Detectors(reg.series), ts, strain, temp, per_batch=6)
    assert not has(clean, AnomalyFlag.DRIFT).any()

    drifted = strain.copy()
    start = 5 * 144
    drifted[start:] += np.linspace(0, 100, len(ts) - start)  # 100 microstrain in three days
    flags = feed_pair(Detectors(reg.series), ts, drifted, temp, per_batch=6)
    drift = np.flatnonzero(has(flags, AnomalyFlag.DRIFT))
    assert len(drift) > 0
    assert drift.min() >= start
    # Within a day and a half: at one reading per ten minutes a segment is eight hours.
    assert drift.min() < start + 216


def test_co2_drift_is_judged_on_the_night_floor() -> None:
    reg = parse_registry(DRIFT_REGISTRY)
    ts, hours = daily(8)
    rng = np.random.default_rng(6)
    # UTC: lessons 08:00-14:00 in Dortmund in winter; the room fills over an hour.
    lessons = np.clip(hours - 7, 0, 1) * (hours < 13)
    co2 = 420 + 1500.0 * lessons + rng.normal(0, 10, len(ts))
    clean = feed(Detectors(reg.series), co2, series=2, step_ns=TEN_MIN, ts=ts, batch=6)
    assert not has(clean, AnomalyFlag.DRIFT).any()  # lessons are not a drift
    drifted = co2 + np.clip(np.arange(len(ts)) - 4 * 144, 0, None) * (300 / 144)
    flags = feed(Detectors(reg.series), drifted, series=2, step_ns=TEN_MIN, ts=ts, batch=6)
    drift = np.flatnonzero(has(flags, AnomalyFlag.DRIFT))
    assert len(drift) > 0
    assert drift.min() >= 4 * 144


HUNDRED_HZ = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      dyn:
        interval: 10ms
        channels:
          g1: [strain, temperature]
"""


def test_drift_works_on_an_hour_of_100_hz() -> None:
    """Dynamic monitoring: an hour-long record at 100 Hz. A gauge creeping by 30 ue over
    the last half hour is marked within it; the clean record is not."""
    reg = parse_registry(HUNDRED_HZ)
    n = 360_000
    ts = T0 + np.arange(n, dtype=np.int64) * 10_000_000
    temp = np.full(n, 15.0)
    strain = quiet(n, 50.0, seed=9, sd=0.5)
    clean = feed_pair(Detectors(reg.series), ts, strain, temp, per_batch=1000)
    assert not clean.any()
    creep = strain + np.clip((np.arange(n) - n // 2) / (n // 2), 0, 1) * 30.0
    flags = feed_pair(Detectors(reg.series), ts, creep, temp, per_batch=1000)
    drift = np.flatnonzero(has(flags, AnomalyFlag.DRIFT))
    assert len(drift) > 0
    assert n // 2 <= drift.min() < n


def test_detector_settings_come_from_the_registry() -> None:
    text = REGISTRY.replace(
        "          strain: {limit: 900}\n",
        "          strain: {limit: 900}\n          g2/strain: {detectors: {stuck_samples: 0}}\n",
    )
    reg = parse_registry("detectors:\n  strain: {stuck_samples: 5}\n" + text)
    det = Detectors(reg.series)
    v = quiet(5000)
    v[4420:4440] = v[4420]
    g1 = feed(det, v, series=G1, batch=100)
    g2 = feed(det, v, series=G2, batch=100)
    assert np.flatnonzero(has(g1, AnomalyFlag.STUCK)).min() == 4424  # the fifth identical
    assert not has(g2, AnomalyFlag.STUCK).any()  # turned off for this gauge


def test_a_step_at_one_hertz_is_not_vouched_for_by_its_own_readings(
    registry: Registry,
) -> None:
    """At 1 Hz a series has ten readings in the ten seconds in which another series must
    move too; its own readings do not count as that other series."""
    v = quiet(300)
    v[150:] += 60.0
    flags = feed(Detectors(registry.series), v, step_ns=SECOND, batch=50)
    assert has(flags, AnomalyFlag.STEP)[150 + 4]  # registry interval 10 s: five readings


def test_a_gauge_moving_with_its_neighbour_is_load_not_a_fault(registry: Registry) -> None:
    det = Detectors(registry.series)
    n = 200
    ts = T0 + np.arange(n, dtype=np.int64) * TEN_S
    a, b = quiet(n, 100.0, seed=8), quiet(n, -200.0, seed=9)
    a[120] += 70.0  # a lorry: both gauges at once
    b[120] += 30.0
    a[160] -= 70.0  # a fault: one gauge alone, the other way than traffic bends it
    spikes = []
    for lo in range(0, n, 20):  # twenty readings of each gauge per batch
        sl = slice(lo, lo + 20)
        batch = ReadingBatch.unchecked(
            np.r_[np.full(20, G1), np.full(20, G2)], np.r_[ts[sl], ts[sl]], np.r_[a[sl], b[sl]]
        )
        det.check(batch)
        spikes += [lo + int(i) for i in np.flatnonzero(has(batch.flags, AnomalyFlag.SPIKE))]
    assert spikes == [160]


CO2_ROOM = """\
sites:
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 1m
        measurements: [co2, temperature]
"""
ROOM_CO2, ROOM_T = 0, 1


def lesson_co2(n: int, seed: int) -> F64:
    """A room filling through a lesson: CO2 climbing about 25 ppm a minute, with noise."""
    rng = np.random.default_rng(seed)
    return 500.0 + 25.0 * np.arange(n) + rng.normal(0, 8, n)


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_a_co2_step_while_the_room_fills_is_a_step(batch: int) -> None:
    """The level climbs a thousand ppm through the lesson, so the previous segment's spread
    hides a 400 ppm offset; the jump between two readings does not, and the readings after
    it hold the new level."""
    reg = parse_registry(CO2_ROOM)
    v = lesson_co2(200, seed=3)
    v[120:] += 400.0
    flags = feed(Detectors(reg.series), v, series=ROOM_CO2, step_ns=MINUTE, batch=batch)
    step = np.flatnonzero(has(flags, AnomalyFlag.STEP))
    assert step.tolist() == [123]  # confirmed by the three readings after the jump


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_an_opened_window_is_no_step(batch: int) -> None:
    """Airing takes the CO2 down by hundreds of ppm a minute for several minutes: the jump
    goes on the same way, which a sensor's offset does not."""
    reg = parse_registry(CO2_ROOM)
    v = lesson_co2(200, seed=4)
    # Toward the outdoor air's 420 ppm, with a time constant of three minutes.
    minutes = np.arange(1, 81)
    v[120:] = 420.0 + (v[119] - 420.0) * np.exp(-minutes / 3.0) + v[120:] - v[120:].mean()
    flags = feed(Detectors(reg.series), v, series=ROOM_CO2, step_ns=MINUTE, batch=batch)
    assert not has(flags, AnomalyFlag.STEP).any()


def test_a_co2_jump_with_the_rooms_temperature_is_the_air_not_a_spike() -> None:
    """An opened window shows in the room's temperature within the minute (half a kelvin,
    beyond its usual changes, while its level stays inside the lesson's spread): the CO2's
    jump at that moment is shared, not a fault of the CO2 sensor."""
    reg = parse_registry(CO2_ROOM)
    n = 200
    ts = T0 + np.arange(n, dtype=np.int64) * MINUTE
    co2 = lesson_co2(n, seed=5)
    temp = 19.0 + np.round(np.linspace(0.0, 6.0, n) / 0.1) * 0.1  # warming about 2 K an hour
    alone, together = co2.copy(), co2.copy()
    alone[150:] -= 500.0
    together[150:] -= 500.0
    cold = temp.copy()
    cold[150:] -= 0.5

    def spikes(c: F64, t: F64) -> list[int]:
        det = Detectors(reg.series)
        batch = ReadingBatch.unchecked(
            np.r_[np.full(n, ROOM_CO2), np.full(n, ROOM_T)], np.r_[ts, ts], np.r_[c, t]
        )
        det.check(batch)
        return np.flatnonzero(has(batch.flags[:n], AnomalyFlag.SPIKE)).tolist()

    assert spikes(alone, temp) == [150]
    assert spikes(together, cold) == []


# -- the same readings, however they arrive ------------------------------------------------

MIXED = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      gw1:
        interval: 1m
        channels:
          g1: [strain, temperature]
          g2: [strain, temperature]
      pier:
        interval: 1m
        channels:
          p1: [inclination]
          top: [temperature]
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 1m
        measurements: [co2, temperature, humidity, noise]
      r2:
        interval: 1m
        measurements: [co2, temperature, humidity]
"""
DAY = 86400 * SECOND


def simulated(days: int) -> tuple[Registry, I64, I64, F64]:
    """Days of a bridge and two classrooms with faults of every kind, in arrival
    order (time, then series): series, ts_ns, values."""
    reg = parse_registry(MIXED)
    start = 1_736_722_800 * SECOND  # a Monday in January, midnight in Dortmund
    idx = {f"{s.key.device}/{s.key.name}": s.index for s in reg.series}
    faults = [
        FaultSpec("spike", idx["gw1/g1/strain"], start + 30 * 3600 * SECOND, 1800 * SECOND, 2.0),
        FaultSpec("step", idx["gw1/g2/strain"], start + 34 * 3600 * SECOND, 6 * 3600 * SECOND),
        FaultSpec("stuck", idx["r1/humidity"], start + 26 * 3600 * SECOND, 5 * 3600 * SECOND),
        FaultSpec("drift", idx["r2/co2"], start + 25 * 3600 * SECOND, 20 * 3600 * SECOND, 2.0),
        FaultSpec("drift", idx["gw1/g1/strain"], start + 48 * 3600 * SECOND, DAY, 2.0),
        FaultSpec("step", idx["pier/p1/inclination"], start + 40 * 3600 * SECOND, DAY),
    ]
    sim = Simulator(reg, TopicScheme(), seed=3, start_ns=start, bridge_rate_hz=1 / 60,
                    school_interval_s=60, faults=faults)  # fmt: skip
    cols: list[tuple[I64, I64, F64]] = []
    for dev in reg.devices():
        period = sim.period_ns(next(iter(dev.series.values())))
        ts = np.arange(start + period // 3, start + days * DAY, period, dtype=np.int64)
        for name, (values, _) in sim.device_values(dev, ts).items():
            keep = ~np.isnan(values)
            x = dev.series[name]
            inside = keep & (values >= x.minimum) & (values <= x.maximum)
            cols.append((np.full(int(inside.sum()), x.index), ts[inside], values[inside]))
    s = np.concatenate([c[0] for c in cols]).astype(np.int64)
    t = np.concatenate([c[1] for c in cols])
    v = np.concatenate([c[2] for c in cols])
    order = np.lexsort((s, t))
    return reg, s[order], t[order], v[order]


def batched_by(
    cut: Callable[[I64, I64], I64], chunk: int = 1 << 20
) -> Callable[[Registry, I64, I64, F64], I32]:
    def run(reg: Registry, s: I64, t: I64, v: F64) -> I32:
        det = Detectors(reg.series, chunk=chunk)
        flags = np.zeros(len(s), dtype=np.int32)
        bounds = np.concatenate([[0], cut(s, t), [len(s)]]).astype(np.int64)
        for a, b in itertools.pairwise(bounds.tolist()):
            if a == b:
                continue
            batch = ReadingBatch.unchecked(s[a:b], t[a:b], v[a:b])
            det.check(batch)
            flags[a:b] = batch.flags
        return flags

    return run


def _live(s: I64, t: I64) -> I64:
    # One message per device and time: the readings of one timestamp of one device.
    return np.flatnonzero(t[1:] != t[:-1]) + 1


def _hourly(s: I64, t: I64) -> I64:
    return np.flatnonzero(np.diff(t // (3600 * SECOND)) != 0) + 1


def _blocks(s: I64, t: I64) -> I64:
    # A gateway forwarding 100 readings per message, whatever they are.
    return np.arange(100, len(s), 100)


def _backlog(s: I64, t: I64) -> I64:
    return np.zeros(0, dtype=np.int64)


def test_the_same_readings_get_the_same_flags_however_they_arrive() -> None:
    """Four days of a bridge and two classrooms with injected faults: one message at a
    time, an hour per batch, blocks of 100, and everything as one backlog give the same
    flags, reading for reading."""
    reg, s, t, v = simulated(4)
    runs = {
        name: batched_by(cut)(reg, s, t, v)
        for name, cut in (("live", _live), ("hourly", _hourly), ("blocks", _blocks),
                          ("backlog", _backlog))
    }  # fmt: skip
    # A backlog too big for one piece is judged in slices of time.
    runs["sliced"] = batched_by(_backlog, chunk=5000)(reg, s, t, v)
    live = runs["live"]
    for detector in (AnomalyFlag.SPIKE, AnomalyFlag.STEP, AnomalyFlag.STUCK, AnomalyFlag.DRIFT):
        assert has(live, detector).any(), f"the trace should exercise {detector.name}"
    for name, flags in runs.items():
        differ = np.flatnonzero(flags != live)
        assert len(differ) == 0, f"{name}: {len(differ)} readings flagged differently"
