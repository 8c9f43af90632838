"""``Detectors`` (vectorised) against ``ReferenceDetectors`` (one reading at a time, in
``bench/anomaly_reference.py``, ``stats="segment"``): identical flags and equal scores.

Streams: a bridge (strain gauges with paired temperatures, one without, a pier with an
inclinometer and a crack gauge) and two schools (three classrooms with CO2, temperature,
humidity and noise), 30 hours of daily cycles, lessons, lorries that load every gauge at
once, injected spikes, steps (some to the end), drifts, stuck runs and silences, values
rounded as the devices report them, in arrival (time) order; once with the default
thresholds and once with random ones that make every detector fire often.

Two comparisons:

- The same batches (random sizes) to both: the reference is the oracle of the batch
  semantics, including readings with equal times (a device's channels share its clock)
  and redeliveries.
- Batching does not matter: the vectorised check in random batches against the reference
  fed one reading at a time, on streams where no two series share a time. (Where two
  series of a group share one, a batch sees both moves at that time and a reading alone
  only those that arrived before it: the flags then depend on the order of arrival within
  the time, by design.)

Hypothesis properties do the same on short streams of small integers, where ties, zero
MADs, repeated values, equal times and runs across batch boundaries are the rule.

At high rates a level is a second's mean: minutes of a 100 Hz gauge and its thermometer,
with a small step and a settlement, in blocks of 100 readings and as one backlog judged in
time slices, against the reference; and a new 100 Hz series' first small batch, which
once made the vectorised check raise.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.anomaly_reference import ReferenceDetectors
from devices.registry import Registry, parse_registry
from ingest.anomaly import DEFAULT_PARAMS, DetectorParams, Detectors
from ingest.batch import AnomalyFlag, ReadingBatch

REGISTRY = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      gw1:
        interval: 30s
        channels: {g1: [strain, temperature], g2: [strain, temperature]}
        overrides: {strain: {limit: 900}}
      gw2:
        interval: 30s
        channels: {g3: [strain], g4: [strain, temperature]}
      pier:
        interval: 5m
        channels: {p1: [inclination], c1: [crack_width]}
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 2m
        measurements: [co2, temperature, humidity, noise]
      r2:
        interval: 2m
        measurements: [co2, temperature, humidity]
  s2:
    kind: school
    name: S2
    devices:
      r1:
        interval: 2m
        measurements: [co2, temperature, humidity]
"""
T0 = 1_780_000_000 * 10**9  # 20:26 UTC: the streams cross a night
S = 10**9
HOURS = 30
NEAR_LIMIT = 2  # b1/gw1/g2/strain runs close to its design limit of 900
DECIMALS = {
    "strain": 2,
    "temperature": 1,
    "inclination": 4,
    "crack_width": 3,
    "co2": 0,
    "humidity": 1,
    "noise": 1,
}

Columns = tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64]]
Result = tuple[
    npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.float32]
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry(REGISTRY)


def clean(
    measurement: str, t_s: npt.NDArray[np.float64], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """A plausible signal: daily cycles, lessons, noise."""
    day = 2 * np.pi * t_s / 86400
    noise = rng.normal(0.0, 1.0, len(t_s))
    if measurement == "strain":
        return 150 + 20 * np.sin(day) + 1.0 * noise
    if measurement == "temperature":
        return 15 + 3 * np.sin(day) + 0.05 * noise
    if measurement == "inclination":
        return 0.1 + 0.002 * np.sin(day) + 0.001 * noise
    if measurement == "crack_width":
        return 1.2 + 0.003 * noise
    if measurement == "co2":
        return 450 + 600 * np.clip(np.sin(3 * day), 0, None) + 10 * noise
    if measurement == "humidity":
        return 45 + 5 * np.sin(day) + 0.4 * noise
    return 35 + 25 * (np.sin(4 * day) > 0.3) + 2 * noise  # noise: lessons


def stream(rng: np.random.Generator, registry: Registry, *, shared_clock: bool) -> Columns:
    """All series in arrival order. ``shared_clock``: a device's channels share its times
    (temperatures arrive first, as a device lists them); else each series has its own."""
    sid, ts, vs = [], [], []
    for dev in registry.devices():
        period = int(dev.interval.total_seconds())
        n = HOURS * 3600 // period
        t_s = int(rng.integers(0, period)) + np.arange(n, dtype=np.int64) * period
        for _ in range(rng.integers(0, 3)):  # the device falls silent: a gap
            t_s[int(rng.integers(1, n)) :] += int(rng.uniform(1.0, 8.0) * period)
        lorries = [
            (int(rng.integers(0, n)), int(rng.integers(1, 3)), rng.uniform(20.0, 60.0))
            for _ in range(rng.integers(0, 20))
        ]
        for j, s in enumerate(dev.series.values()):
            m = s.key.measurement
            v = clean(m, t_s.astype(np.float64), rng)
            if s.index == NEAR_LIMIT:
                v += 740.0
            scale = max(float(np.std(np.diff(v))), DEFAULT_PARAMS[m].noise_floor)
            if m == "strain":  # a lorry loads every gauge at once
                for a, width, load in lorries:
                    v[a : a + width] += load
            for _ in range(rng.integers(0, 4)):  # spikes
                v[int(rng.integers(0, n))] += rng.choice([-1, 1]) * rng.uniform(10, 60) * scale
            for _ in range(rng.integers(0, 2)):  # steps, some to the end
                a = int(rng.integers(0, n))
                b = n if rng.random() < 0.5 else min(n, a + int(rng.integers(5, 200)))
                v[a:b] += rng.choice([-1, 1]) * rng.uniform(8, 30) * scale
            if rng.random() < 0.4:  # a drift over the second half
                a = int(rng.integers(n // 3, n // 2))
                drift = DEFAULT_PARAMS[m].drift
                size = rng.uniform(2, 6) * (drift if np.isfinite(drift) else 5 * scale)
                v[a:] += np.linspace(0.0, rng.choice([-1, 1]) * size, n - a)
            v = np.round(v, DECIMALS[m])
            for _ in range(rng.integers(0, 3)):  # stuck runs
                a = int(rng.integers(1, n))
                v[a : a + int(rng.integers(2, 80))] = v[a - 1]
            ms = t_s * 1000 + (0 if shared_clock else j)
            sid.append(np.full(n, s.index, np.int32))
            ts.append(T0 + ms * 10**6)
            vs.append(v)
    s_all, t_all, v_all = np.concatenate(sid), np.concatenate(ts), np.concatenate(vs)
    later = np.array([registry.series[i].key.measurement != "temperature" for i in s_all])
    order = np.lexsort((later, t_all))
    s_all, t_all, v_all = s_all[order], t_all[order], v_all[order]
    if shared_clock:  # redeliveries, and now and then a second value at the same time
        dup = np.sort(rng.choice(len(v_all), len(v_all) // 200, replace=False))
        again = v_all[dup] + np.where(rng.random(len(dup)) < 0.5, 0.0, 1.0)
        s_all = np.insert(s_all, dup + 1, s_all[dup])
        t_all = np.insert(t_all, dup + 1, t_all[dup])
        v_all = np.insert(v_all, dup + 1, again)
    return s_all, t_all, v_all


def random_params(rng: np.random.Generator) -> dict[str, DetectorParams]:
    """Thresholds that make every detector fire often, different for every measurement."""
    table: dict[str, DetectorParams] = {}
    for name, base in DEFAULT_PARAMS.items():
        table[name] = replace(
            base,
            noise_floor=base.noise_floor * float(rng.uniform(0.3, 1.5)),
            spike_z=float(rng.uniform(4.0, 10.0)),
            spike_tail=float(rng.choice([0.0, 0.0, 1.5, 2.5])),
            step_z=float(rng.uniform(2.0, 4.0)),
            step_samples=int(rng.integers(1, 6)),
            step_min_s=float(rng.choice([0.0, 45.0, 300.0])),
            shift_z=float(rng.choice([np.inf, 4.0, 6.0])),
            shift_min_s=float(rng.choice([60.0, 600.0])),
            segment_s=float(rng.choice([0.0, 1800.0, 7200.0])),
            stuck_samples=int(rng.choice([0, 1, 2, 3, 5, 12])),
            stuck_factor=float(rng.choice([1.0, 3.0])),
            max_rate=float(rng.uniform(0.001, 0.2)) * base.noise_floor,
            gap_factor=float(rng.uniform(1.2, 4.0)),
            drift=float(rng.uniform(0.3, 2.0)) * base.noise_floor * 4,
            drift_fast_s=float(rng.uniform(0.5, 6.0)) * 3600.0,
        )
    return table


def random_cuts(rng: np.random.Generator, total: int) -> list[slice]:
    cuts, i = [], 0
    while i < total:
        size = int(rng.integers(200, 3000)) if rng.random() < 0.1 else int(rng.integers(1, 60))
        cuts.append(slice(i, i + size))
        i += size
    return cuts


def feed(
    check: Detectors | ReferenceDetectors, columns: Columns, cuts: list[slice]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    sid, ts, v = columns
    flags, scores = np.zeros(len(v), np.int32), np.zeros(len(v), np.float32)
    for sl in cuts:
        b = ReadingBatch.unchecked(sid[sl].copy(), ts[sl].copy(), v[sl].copy())
        check.check(b)
        flags[sl], scores[sl] = b.flags, b.scores
    return flags, scores


def describe(
    registry: Registry, columns: Columns, vec: npt.NDArray[np.int32], ref: npt.NDArray[np.int32]
) -> str:
    sid, ts, v = columns
    bad = np.flatnonzero(vec != ref)
    if len(bad) == 0:
        return ""
    i = int(bad[0])
    return (
        f"{len(bad)} readings differ; first at position {i}: {registry.series[sid[i]].key}, "
        f"t={(ts[i] - T0) / S:.3f} s after T0, value {float(v[i])!r}: vectorised "
        f"{AnomalyFlag.names(int(vec[i]))!r}, reference {AnomalyFlag.names(int(ref[i]))!r}"
    )


@pytest.mark.parametrize("thresholds", ["default", "random"])
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_same_flags_and_scores_as_the_reference_on_the_same_batches(
    registry: Registry, seed: int, thresholds: str
) -> None:
    rng = np.random.default_rng(seed)
    params = None if thresholds == "default" else random_params(rng)
    columns = stream(rng, registry, shared_clock=True)
    cuts = random_cuts(rng, len(columns[2]))
    flags_v, scores_v = feed(Detectors(registry.series, params), columns, cuts)
    flags_r, scores_r = feed(ReferenceDetectors(registry.series, params), columns, cuts)
    assert np.array_equal(flags_v, flags_r), describe(registry, columns, flags_v, flags_r)
    assert np.array_equal(scores_v, scores_r)
    # Not a vacuous comparison: every detector fired somewhere.
    fired = {f for f in AnomalyFlag if f and (flags_r & int(f)).any()}
    expected = {
        AnomalyFlag.LIMIT,
        AnomalyFlag.SPIKE,
        AnomalyFlag.STEP,
        AnomalyFlag.SHIFT,
        AnomalyFlag.STUCK,
        AnomalyFlag.GAP,
        AnomalyFlag.DRIFT,
    }
    if thresholds == "random":
        expected.add(AnomalyFlag.RATE)  # the defaults are physics limits these stay within
    assert expected <= fired


@pytest.mark.parametrize("seed", range(2))
def test_random_batches_give_the_flags_of_one_reading_at_a_time(
    registry: Registry, seed: int
) -> None:
    rng = np.random.default_rng(100 + seed)
    columns = stream(rng, registry, shared_clock=False)
    n = len(columns[2])
    flags_v, scores_v = feed(Detectors(registry.series), columns, random_cuts(rng, n))
    one_by_one = [slice(i, i + 1) for i in range(n)]
    flags_r, scores_r = feed(ReferenceDetectors(registry.series), columns, one_by_one)
    assert np.array_equal(flags_v, flags_r), describe(registry, columns, flags_v, flags_r)
    assert np.array_equal(scores_v, scores_r)
    assert (flags_r & int(AnomalyFlag.STEP)).any()
    assert (flags_r & int(AnomalyFlag.DRIFT)).any()


# -- small integer streams -----------------------------------------------------------------

TINY_REGISTRY = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      sg1:
        interval: 10m
        channels: {a: [strain, temperature], b: [strain], c: [temperature]}
        overrides:
          strain: {limit: 30}
"""
_TINY = DetectorParams(
    noise_floor=0.5,
    spike_z=6.0,
    step_z=3.0,
    step_samples=2,
    shift_z=4.0,
    shift_min_s=1200.0,
    stuck_samples=3,
    stuck_factor=2.0,
    max_rate=0.01,
    gap_factor=2.0,
    drift=1.0,
    drift_fast_s=3600.0,
)
TINY_PARAMS = {
    "strain": replace(_TINY, spike_tail=1.0, drift_mode="thermal"),
    "temperature": replace(_TINY, drift_mode="site"),
}
_value = st.sampled_from([*range(7)] * 4 + [25, 40, -40])  # now and then far off


def tiny_run(
    readings: list[tuple[int, int, int]], cuts: list[int], *, one_by_one: bool
) -> tuple[Columns, Result]:
    registry = parse_registry(TINY_REGISTRY)
    sid = np.array([r[0] for r in readings], np.int32)
    ts = T0 + np.cumsum([r[1] for r in readings], dtype=np.int64) * S
    v = np.array([r[2] for r in readings], np.float64)
    columns = (sid, ts, v)
    slices, i, j = [], 0, 0
    while i < len(v):
        slices.append(slice(i, i + cuts[j % len(cuts)]))
        i, j = i + cuts[j % len(cuts)], j + 1
    ref_cuts = [slice(k, k + 1) for k in range(len(v))] if one_by_one else slices
    flags_v, scores_v = feed(Detectors(registry.series, TINY_PARAMS), columns, slices)
    flags_r, scores_r = feed(ReferenceDetectors(registry.series, TINY_PARAMS), columns, ref_cuts)
    return columns, (flags_v, flags_r, scores_v, scores_r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=st.lists(
        st.tuples(
            st.integers(0, 3),  # series
            st.sampled_from([0, 3, 600, 600, 600, -600]),  # seconds: ties, out of order
            _value,
        ),
        min_size=60,
        max_size=300,
    ),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=12),
)
def test_same_flags_on_small_integer_streams(
    readings: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    columns, (flags_v, flags_r, scores_v, scores_r) = tiny_run(readings, cuts, one_by_one=False)
    assert np.array_equal(flags_v, flags_r), describe(
        parse_registry(TINY_REGISTRY), columns, flags_v, flags_r
    )
    assert np.array_equal(scores_v, scores_r)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    readings=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([1, 3, 600, 600, 2000]), _value),
        min_size=60,
        max_size=300,
    ),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=12),
)
def test_small_integer_streams_in_time_order_batch_as_one_reading_at_a_time(
    readings: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    columns, (flags_v, flags_r, scores_v, scores_r) = tiny_run(readings, cuts, one_by_one=True)
    assert np.array_equal(flags_v, flags_r), describe(
        parse_registry(TINY_REGISTRY), columns, flags_v, flags_r
    )
    assert np.array_equal(scores_v, scores_r)


# -- cases the reference found ----------------------------------------------------------------

TWO_GAUGES = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      gw:
        interval: 30s
        channels: {g1: [strain], g2: [strain]}
"""


def test_a_neighbours_move_before_the_window_in_the_same_batch_is_not_shared() -> None:
    """g2 moves 29 s before g1's spike, both in one batch: not within the 10 s up to it.
    (Found by the reference: moves before the earliest question's window counted as at
    its start.)"""
    registry = parse_registry(TWO_GAUGES)
    n = 60
    rng = np.random.default_rng(0)
    g1 = np.round(100 + rng.normal(0, 1, n), 1)
    g2 = np.round(100 + rng.normal(0, 1, n), 1)
    g2[50], g2[51] = 96.0, 104.0  # g2 moves (8 sigma from the reading before, 4 off its median)
    g1[52] = 180.0
    t = T0 + np.arange(n, dtype=np.int64) * 30 * S
    sid = np.repeat(np.array([0, 1], np.int32)[None, :], n, axis=0).ravel()
    ts = np.stack([t, t + S], axis=1).ravel()
    v = np.stack([g1, g2], axis=1).ravel()
    cuts = [slice(0, 101), slice(101, 2 * n)]  # the second batch begins with g2's reading 50
    flags, _ = feed(Detectors(registry.series), (sid, ts, v), cuts)
    assert flags[2 * 52] & int(AnomalyFlag.SPIKE)


# -- high rates ------------------------------------------------------------------------------

HUNDRED_HZ = """\
sites:
  b1:
    kind: bridge
    name: B1
    devices:
      dyn:
        interval: 10ms
        channels: {g1: [strain, temperature]}
"""


def test_a_100_hz_gauge_in_blocks_of_100_as_the_reference() -> None:
    """Eight minutes of a 100 Hz gauge and its thermometer, whose levels are judged a
    second's mean at a time: a small step (2.5 ue, five of a reading's sigmas) at 2:10 and
    a settlement (15 ue over a minute) at 4:10. The vectorised check in blocks of 100
    readings (runs, anchors and the second's means across blocks) and in one batch judged
    in time slices (``chunk``) gives the reference's flags."""
    registry = parse_registry(HUNDRED_HZ)
    n = 8 * 60 * 100
    rng = np.random.default_rng(5)
    t = T0 + np.arange(n, dtype=np.int64) * 10_000_000
    temp = np.round(15.0 + 0.3 * np.arange(n) / n + rng.normal(0.0, 0.02, n), 2)
    strain = 50.0 + 12.0 * (temp - 15.0) + rng.normal(0.0, 0.5, n)
    strain[13_000:] += 2.5
    strain += 15.0 * np.clip((np.arange(n) - 25_000) / 6_000, 0.0, 1.0)
    strain = np.round(strain, 2)
    ids = {s.key.measurement: s.index for s in registry.series}
    # The device lists its thermometer first.
    sid = np.repeat(np.array([ids["temperature"], ids["strain"]], np.int32)[None, :], n, 0)
    columns = (sid.ravel(), np.repeat(t, 2), np.stack([temp, strain], axis=1).ravel())
    total = 2 * n
    flags_r, scores_r = feed(ReferenceDetectors(registry.series), columns, [slice(0, total)])
    # The first second in one block: see the next test.
    blocks = [slice(0, 200)] + [slice(i, i + 100) for i in range(200, total, 100)]
    flags_v, scores_v = feed(Detectors(registry.series), columns, blocks)
    assert np.array_equal(flags_v, flags_r), describe(registry, columns, flags_v, flags_r)
    assert np.array_equal(scores_v, scores_r)
    sliced = Detectors(registry.series, chunk=7_000)
    flags_c, scores_c = feed(sliced, columns, [slice(0, total)])
    assert np.array_equal(flags_c, flags_r), describe(registry, columns, flags_c, flags_r)
    assert np.array_equal(scores_c, scores_r)
    gauge = flags_r[columns[0] == ids["strain"]]
    step = np.flatnonzero(gauge & int(AnomalyFlag.STEP))
    shift = np.flatnonzero(gauge & int(AnomalyFlag.SHIFT))
    assert len(step)
    assert 13_000 < step.min() < 25_000  # the step, after 45 s
    assert len(shift)
    assert 25_000 < shift.min() < 32_000  # the settlement, as it settles


def test_a_100_hz_series_first_readings_in_a_small_batch() -> None:
    """A 100 Hz series' first batch of fewer than 98 readings (of all its trail's series)
    used to raise: ``Trail.means`` took ``csum[pos + 1 - span]`` for every reading, also
    where ``before`` is masked out, and that index fell before the start of the running
    sum. Reading by reading the reference has no such limit."""
    registry = parse_registry(HUNDRED_HZ)
    ids = {s.key.measurement: s.index for s in registry.series}
    batch = ReadingBatch.unchecked(
        np.array([ids["temperature"]], np.int32), np.array([T0], np.int64), np.array([15.0])
    )
    Detectors(registry.series).check(batch)


CLASSROOM_NOISE = """\
sites:
  s1:
    kind: school
    name: S1
    devices:
      r1:
        interval: 1m
        measurements: [noise]
"""


def classroom_noise(days: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """A classroom's sound level every minute: 35 dB(A) empty, 60-70 in lessons from
    07:00 to 13:00 UTC on weekdays, with louder breaks."""
    rng = np.random.default_rng(seed)
    t = (T0 - T0 % (86400 * S)) + np.arange(days * 1440, dtype=np.int64) * 60 * S
    hour = (t // (3600 * S)) % 24 + ((t // (60 * S)) % 60) / 60
    weekday = ((t // (86400 * S)) + 3) % 7 < 5  # 1970-01-01 was a Thursday
    lesson = weekday & (hour >= 7) & (hour < 13)
    loud = lesson & (rng.random(len(t)) < 0.1)
    v = 35.0 + rng.normal(0.0, 1.0, len(t)) + 28.0 * lesson + 8.0 * loud
    return t, np.round(v, 1)


@pytest.mark.parametrize(("fault", "stepped"), [("offset", True), ("drift", False), ("", False)])
def test_a_sound_level_offset_is_a_step_of_the_night_floor(fault: str, stepped: bool) -> None:
    """The sound level has no step detector by day: lessons jump by 30 dB. A sensor offset
    of 20 dB that begins mid-morning shows when the empty room's floor is 20 dB higher all
    night; a drift of 30 dB over two days moves that floor too, but within the night as
    well, and is a drift, not a step. The same in every batching, and as the reference
    judges it one reading at a time."""
    registry = parse_registry(CLASSROOM_NOISE)
    t, v = classroom_noise(7, seed=4)
    onset = 3 * 1440 + 10 * 60  # day 3, 10:00 UTC
    if fault == "offset":
        v[onset:] += 20.0
    elif fault == "drift":
        v[onset:] += np.clip(np.arange(len(v) - onset) / (2 * 1440), 0.0, 1.0) * 30.0
    columns = (np.zeros(len(v), np.int32), t, v)
    flags_r, _ = feed(ReferenceDetectors(registry.series), columns, [slice(0, len(v))])
    for cut in (17, 240, len(v)):
        cuts = [slice(i, i + cut) for i in range(0, len(v), cut)]
        flags_v, _ = feed(Detectors(registry.series), columns, cuts)
        assert np.array_equal(flags_v, flags_r), describe(registry, columns, flags_v, flags_r)
    step = np.flatnonzero(flags_r & int(AnomalyFlag.STEP))
    drift = np.flatnonzero(flags_r & int(AnomalyFlag.DRIFT))
    if stepped:
        assert len(step) > 0
        # Found in the night after the onset (23:00-04:00 UTC), within a day.
        assert onset < step.min() < onset + 1440
    else:
        assert len(step) == 0
    if fault == "drift":
        assert len(drift) > 0
    if not fault:
        assert len(drift) == 0


def test_the_night_floor_step_follows_the_registry() -> None:
    """``night_step`` is set per measurement in the registry like every threshold: raised
    above the offset, the offset is no step."""
    t, v = classroom_noise(7, seed=4)
    v[3 * 1440 + 600 :] += 20.0
    columns = (np.zeros(len(v), np.int32), t, v)
    marked = {}
    for threshold in (12.0, 30.0):
        text = f"detectors:\n  noise: {{night_step: {threshold}}}\n" + CLASSROOM_NOISE
        registry = parse_registry(text)
        flags, _ = feed(Detectors(registry.series), columns, [slice(0, len(v))])
        marked[threshold] = bool((flags & int(AnomalyFlag.STEP)).any())
    assert marked == {12.0: True, 30.0: False}
