"""Each detector on hand-made series, including the edge cases: constant series, a single
sample, gaps, out-of-order and duplicate timestamps, a restart in the middle of a window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from devices.registry import Registry, parse_registry
from ingest.anomaly import MIN_HISTORY, WINDOW, Detectors
from ingest.batch import AnomalyFlag, ReadingBatch

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
TEN_S = 10 * 10**9


@pytest.fixture
def registry() -> Registry:
    return parse_registry(REGISTRY)


def quiet(n: int, level: float = 100.0, seed: int = 1) -> npt.NDArray[np.float64]:
    return level + np.random.default_rng(seed).normal(0, 1.0, n)


def feed(
    det: Detectors,
    values: npt.NDArray[np.float64],
    series: int = G1,
    step_ns: int = TEN_S,
    start_ns: int = T0,
    batch: int = 7,
    ts: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.int32]:
    """Run ``values`` through the detectors in batches of ``batch``; return the flags."""
    times = start_ns + np.arange(len(values), dtype=np.int64) * step_ns if ts is None else ts
    flags = np.zeros(len(values), dtype=np.int32)
    for i in range(0, len(values), batch):
        sl = slice(i, i + batch)
        b = ReadingBatch.unchecked(np.full(len(values[sl]), series), times[sl], values[sl])
        det.check(b)
        flags[sl] = b.flags
    return flags


def has(flags: npt.NDArray[np.int32], flag: AnomalyFlag) -> npt.NDArray[np.bool_]:
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
    assert step.min() == 152  # the third sample on the new level
    assert step.max() < 150 + WINDOW  # the window moves to the new level
    assert not has(flags, AnomalyFlag.SPIKE)[151:].any()


def test_stuck_value(registry: Registry) -> None:
    v = quiet(200)
    v[80:120] = v[80]
    flags = feed(Detectors(registry.series), v)
    stuck = np.flatnonzero(has(flags, AnomalyFlag.STUCK))
    assert stuck.min() == 80 + 11  # the twelfth identical reading
    assert stuck.max() == 119


def test_constant_series_is_stuck_but_never_spiky(registry: Registry) -> None:
    v = np.full(100, 400.0)
    v[60] = 401.0  # a change far below the noise floor: the MAD of zero is not a scale
    flags = feed(Detectors(registry.series), v, series=CO2, step_ns=60 * 10**9)
    assert not has(flags, AnomalyFlag.SPIKE).any()
    assert has(flags, AnomalyFlag.STUCK)[11:60].all()
    assert not has(flags, AnomalyFlag.STUCK)[60]


def test_rate_beyond_physics(registry: Registry) -> None:
    v = np.full(40, 600.0) + np.arange(40, dtype=np.float64)  # varying, so not stuck
    v[30:] += 8000.0 - 600.0  # 7400 ppm within a minute
    flags = feed(Detectors(registry.series), v, series=CO2, step_ns=60 * 10**9)
    assert np.flatnonzero(has(flags, AnomalyFlag.RATE)).tolist() == [30]


def test_gap_flags_the_first_reading_after_it(registry: Registry) -> None:
    ts = T0 + np.arange(50, dtype=np.int64) * TEN_S
    ts[25:] += 120 * 10**9  # two minutes of silence where 10 s is expected
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
    # Fewer than MIN_HISTORY values: no statistics, so no spike however far.
    flags = feed(det, np.array([100.0] * (MIN_HISTORY - 2) + [4000.0]), start_ns=T0 + TEN_S)
    assert not has(flags, AnomalyFlag.SPIKE).any()


def test_series_in_one_batch_do_not_mix(registry: Registry) -> None:
    det = Detectors(registry.series)
    n = 120
    ts = T0 + np.arange(n, dtype=np.int64) * TEN_S
    a, b = quiet(n, 100.0, seed=3), quiet(n, -300.0, seed=4)
    b[90] += 200.0
    batch = ReadingBatch.unchecked(
        np.r_[np.full(n, G1), np.full(n, G2)], np.r_[ts, ts], np.r_[a, b]
    )
    half = slice(None, None, 2)
    det.check(
        ReadingBatch(
            batch.series[half],
            batch.ts_ns[half],
            batch.values[half],
            batch.flags[half].copy(),
            batch.scores[half].copy(),
        )
    )
    det.check(batch)  # the same readings again (a redelivery) plus the rest
    spikes = np.flatnonzero(has(batch.flags, AnomalyFlag.SPIKE))
    assert spikes.tolist() == [n + 90]


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


def test_restart_mid_window_keeps_the_state(registry: Registry, tmp_path: Path) -> None:
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
TEN_MIN = 600 * 10**9


def daily(days: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    ts = T0 - T0 % (86400 * 10**9) + np.arange(days * 144, dtype=np.int64) * TEN_MIN
    hours = (ts // 3_600_000_000_000) % 24
    return ts, hours.astype(np.float64)


def feed_pair(
    det: Detectors,
    ts: npt.NDArray[np.int64],
    strain: npt.NDArray[np.float64],
    temp: npt.NDArray[np.float64],
) -> npt.NDArray[np.int32]:
    """Strain (series 0) and its temperature (series 1), an hour of both per batch."""
    flags = np.zeros(len(ts), dtype=np.int32)
    for i in range(0, len(ts), 6):
        sl = slice(i, i + 6)
        n = len(ts[sl])
        b = ReadingBatch.unchecked(
            np.r_[np.zeros(n), np.ones(n)], np.r_[ts[sl], ts[sl]], np.r_[strain[sl], temp[sl]]
        )
        det.check(b)
        flags[sl] = b.flags[:n]
    return flags


def test_strain_drift_is_found_after_temperature_compensation() -> None:
    reg = parse_registry(DRIFT_REGISTRY)
    ts, hours = daily(6)
    rng = np.random.default_rng(5)
    temp = 8 + 5 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.05, len(ts))
    strain = 12.1 * temp - 40 + rng.normal(0, 1.0, len(ts))  # 120 microstrain of daily swing
    clean = feed_pair(Detectors(reg.series), ts, strain, temp)
    assert not has(clean, AnomalyFlag.DRIFT).any()

    drifted = strain.copy()
    start = 4 * 144
    drifted[start:] += np.linspace(0, 100, len(ts) - start)  # 100 microstrain in two days
    flags = feed_pair(Detectors(reg.series), ts, drifted, temp)
    drift = np.flatnonzero(has(flags, AnomalyFlag.DRIFT))
    assert len(drift) > 0
    assert drift.min() >= start
    assert drift.min() < start + 144  # within a day


def test_co2_drift_is_judged_on_the_night_floor() -> None:
    reg = parse_registry(DRIFT_REGISTRY)
    ts, hours = daily(6)
    rng = np.random.default_rng(6)
    lessons = (hours >= 7) & (hours < 13)  # UTC: 08:00-14:00 in Dortmund in winter
    co2 = 420 + np.where(lessons, 1500.0, 0.0) + rng.normal(0, 10, len(ts))
    clean = feed(Detectors(reg.series), co2, series=2, step_ns=TEN_MIN, ts=ts, batch=6)
    assert not has(clean, AnomalyFlag.DRIFT).any()  # lessons are not a drift
    drifted = co2 + np.clip(np.arange(len(ts)) - 3 * 144, 0, None) * (300 / 144)
    flags = feed(Detectors(reg.series), drifted, series=2, step_ns=TEN_MIN, ts=ts, batch=6)
    drift = np.flatnonzero(has(flags, AnomalyFlag.DRIFT))
    assert len(drift) > 0
    assert drift.min() >= 3 * 144
    assert (hours[drift] < 4).all()  # judged at night


def test_detector_settings_come_from_the_registry() -> None:
    text = REGISTRY.replace(
        "          strain: {limit: 900}\n",
        "          strain: {limit: 900}\n          g2/strain: {detectors: {stuck_samples: 0}}\n",
    )
    reg = parse_registry("detectors:\n  strain: {stuck_samples: 5}\n" + text)
    det = Detectors(reg.series)
    v = quiet(60)
    v[20:40] = v[20]
    g1 = feed(det, v, series=G1)
    g2 = feed(det, v, series=G2)
    assert np.flatnonzero(has(g1, AnomalyFlag.STUCK)).min() == 24  # the fifth identical
    assert not has(g2, AnomalyFlag.STUCK).any()  # turned off for this gauge


def test_a_step_at_one_hertz_is_not_vouched_for_by_its_own_readings(
    registry: Registry,
) -> None:
    """At 1 Hz a series has ten readings in the ten seconds in which another series must
    deviate too; its own readings do not count as that other series."""
    v = quiet(300)
    v[150:] += 60.0
    flags = feed(Detectors(registry.series), v, step_ns=10**9, batch=50)
    assert has(flags, AnomalyFlag.STEP)[152]


def test_a_gauge_moving_with_its_neighbour_is_load_not_a_fault(registry: Registry) -> None:
    det = Detectors(registry.series)
    n = 200
    ts = T0 + np.arange(n, dtype=np.int64) * TEN_S
    a, b = quiet(n, 100.0, seed=8), quiet(n, -200.0, seed=9)
    a[120] += 70.0  # a lorry: both gauges at once
    b[120] += 30.0
    a[160] += 70.0  # a fault: one gauge alone
    spikes = []
    for lo in range(0, n, 20):  # twenty readings of each gauge per batch
        sl = slice(lo, lo + 20)
        batch = ReadingBatch.unchecked(
            np.r_[np.full(20, G1), np.full(20, G2)], np.r_[ts[sl], ts[sl]], np.r_[a[sl], b[sl]]
        )
        det.check(batch)
        spikes += [lo + int(i) for i in np.flatnonzero(has(batch.flags, AnomalyFlag.SPIKE))]
    assert spikes == [160]
