"""The simulator: determinism, physics the detectors rely on, faults, and wire formats."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import numpy.typing as npt
import pytest

from devices.codecs import DecodeLimits, Decoder, ReadingRejected, RejectReason
from devices.registry import Registry, Series, parse_registry
from devices.sim_common import local_seconds, utc_offset_s
from devices.sim_school import LESSONS, OPEN
from devices.simulator import (
    FAULT_KINDS,
    FAULT_SCALE,
    FaultKind,
    FaultSpec,
    SimMessage,
    Simulator,
    label_kinds,
)
from devices.topics import TopicScheme

NS = 1_000_000_000
MIN = 60 * NS
HOUR = 3600 * NS
DAY = 86_400 * NS

REGISTRY_YAML = """
sites:
  b1-wittekind:
    kind: bridge
    name: B1 Wittekindstrasse
    city: Dortmund
    location: {lat: 51.50, lon: 7.45}
    devices:
      gw1:
        channels:
          g1: [strain]
          g2: [strain]
          g3: [strain]
          deck: [temperature]
          p1: [inclination]
          c1: [crack_width]
        overrides:
          c1/crack_width: {max: 0.2}
      gw2:
        channels:
          top: [temperature]
          bottom: [temperature]
          g4: [strain]
        overrides:
          g4/strain: {min: -1000, max: 1000, limit: 800}
  remberg:
    kind: bridge
    name: Remberg-Bruecke
    devices:
      s1:
        measurements: [temperature, strain]
  gs-nord:
    kind: school
    name: Grundschule Nord
    devices:
      r101:
        measurements: [co2, temperature, humidity, pm2_5, pm10, noise, light]
      r102:
        measurements: [co2, temperature, humidity]
  gym-west:
    kind: school
    name: Gymnasium West
    devices:
      box1:
        channels:
          r201: [co2, temperature]
          r202: [co2, noise]
"""


def _utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()) * NS


# Tuesday 14 January 2025, 09:00 local (CET): lessons are running.
TUESDAY_9 = _utc_ns(2025, 1, 14, 8)
# Monday 13 January 2025, 00:00 local.
MONDAY = _utc_ns(2025, 1, 12, 23)


@pytest.fixture(scope="module")
def registry() -> Registry:
    """This module's registry (also the publisher's tests'), not conftest's."""
    return parse_registry(REGISTRY_YAML, "test-registry")


def _series(registry: Registry, site: str, device: str, name: str) -> Series:
    dev = registry.device(site, device)
    assert dev is not None
    return dev.series[name]


def _grid(start: int, count: int, step: int) -> npt.NDArray[np.int64]:
    return start + np.arange(count, dtype=np.int64) * step


def _decoder(registry: Registry, topics: TopicScheme) -> Decoder:
    return Decoder(registry, topics, DecodeLimits())


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(registry: Registry, topics: TopicScheme) -> None:
    def run(seed: int) -> list[tuple[str, bytes]]:
        sim = Simulator(registry, topics, seed=seed, start_ns=TUESDAY_9)
        return [(m.topic, m.payload) for m in sim.messages(TUESDAY_9 + 10 * MIN)]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert len(first) > 1000
    assert [p for _, p in first] != [p for _, p in other]


def test_values_do_not_depend_on_chunking_or_other_series(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=3, start_ns=MONDAY)
    strain = _series(registry, "b1-wittekind", "gw1", "g2/strain")
    co2 = _series(registry, "gs-nord", "r101", "co2")
    ts = _grid(MONDAY, 2 * 1440, MIN)
    for s in (strain, co2):
        whole, _ = sim.series_values(s, ts)
        halves = np.concatenate([sim.series_values(s, part)[0] for part in np.split(ts, [1000])])
        np.testing.assert_array_equal(whole, halves)
        shuffled = ts[::-1]
        np.testing.assert_array_equal(sim.series_values(s, shuffled)[0], whole[::-1])
    # A registry with only one of the sites: the same series get the same values.
    alone = parse_registry(
        "sites:\n  gs-nord:\n    kind: school\n    name: x\n    devices:\n"
        "      r101:\n        measurements: [co2]\n"
    )
    sim_alone = Simulator(alone, topics, seed=3, start_ns=MONDAY)
    np.testing.assert_array_equal(
        sim_alone.series_values(alone.series[0], ts)[0], sim.series_values(co2, ts)[0]
    )


def test_local_time_follows_eu_summer_time() -> None:
    # Summer time 2025: 30 March 01:00 UTC to 26 October 01:00 UTC.
    t = np.array(
        [_utc_ns(2025, 3, 30, 0, 59), _utc_ns(2025, 3, 30, 1), _utc_ns(2025, 10, 26, 0, 59)],
        dtype=np.int64,
    )
    t = np.append(t, _utc_ns(2025, 10, 26, 1))
    assert utc_offset_s(t // NS).tolist() == [3600, 7200, 7200, 3600]


# --- bridges --------------------------------------------------------------------------------


def test_strain_follows_temperature_at_about_12_ue_per_kelvin(
    registry: Registry, topics: TopicScheme
) -> None:
    """Regression over a week, one fit per gauge (DOMAIN.md: steel, about 12 ue/K)."""
    sim = Simulator(registry, topics, seed=11, start_ns=MONDAY)
    ts = _grid(MONDAY, 7 * 1440, MIN)
    slopes = {}
    for dev in registry.devices():
        if dev.kind != "bridge":
            continue
        values = sim.device_values(dev, ts)
        temps = [v for name, (v, _) in values.items() if name.endswith("temperature")]
        mean_temp = np.mean(temps, axis=0)
        for name, (v, _) in values.items():
            if name.endswith("strain"):
                slopes[f"{dev.site}/{dev.id}/{name}"] = float(np.polyfit(mean_temp, v, 1)[0])
    assert len(slopes) == 5
    for name, slope in slopes.items():
        assert 10.5 <= slope <= 13.5, (name, slope)


def test_bridge_temperature_by_season_and_time_of_day(
    registry: Registry, topics: TopicScheme
) -> None:
    temp = _series(registry, "remberg", "s1", "temperature")
    sim = Simulator(registry, topics, seed=5, start_ns=MONDAY)
    for month, expected in ((1, 2.0), (7, 19.0)):
        start = _utc_ns(2025, month, 1)
        ts = _grid(start, 28 * 24 * 12, 5 * MIN)
        v, _ = sim.series_values(temp, ts)
        assert abs(float(v.mean()) - expected) < 4.0, (month, v.mean())
        hours = (local_seconds(ts) % 86_400) // 3600
        by_hour = np.array([v[hours == h].mean() for h in range(24)])
        assert 3 <= int(by_hour.argmin()) <= 7
        assert 13 <= int(by_hour.argmax()) <= 17
        assert 6.0 <= by_hour.max() - by_hour.min() <= 14.0  # amplitude 4-6 K, sun included


def test_deck_top_warmer_than_bottom_on_sunny_afternoons(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=5, start_ns=MONDAY)
    dev = registry.device("b1-wittekind", "gw2")
    assert dev is not None
    ts = _grid(_utc_ns(2025, 7, 1), 14 * 24, HOUR)
    values = sim.device_values(dev, ts)
    diff = values["top/temperature"][0] - values["bottom/temperature"][0]
    hours = (local_seconds(ts) % 86_400) // 3600
    assert diff[(hours >= 12) & (hours <= 15)].mean() > 1.5
    assert diff[hours <= 4].mean() < 0.0


def test_lorries_are_transients_more_by_day_than_at_night(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=2, start_ns=MONDAY)
    strain = _series(registry, "b1-wittekind", "gw1", "g1/strain")
    day = _grid(TUESDAY_9, 3600, NS)
    night = _grid(TUESDAY_9 - 7 * HOUR, 3600, NS)  # 02:00-03:00 local
    counts = []
    for ts in (day, night):
        v, _ = sim.series_values(strain, ts)
        # The thermal part moves slowly: a 2-minute running median is the baseline.
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(v, 60, mode="edge"), 121)
        baseline = np.median(windows, axis=1)
        excursion = np.abs(v - baseline) > 8.0  # well above 0.5-1 ue of noise
        starts = int(np.count_nonzero(excursion[1:] & ~excursion[:-1]))
        counts.append(starts)
        assert excursion.mean() < 0.5  # transients return to the baseline
        assert np.abs(v - baseline).max() < 200.0
    assert counts[0] >= 5
    assert counts[0] > 2 * counts[1]


def test_inclination_and_crack_width_are_small_and_in_range(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=9, start_ns=MONDAY)
    ts = _grid(_utc_ns(2025, 1, 1), 365 * 24, HOUR)
    incl, _ = sim.series_values(_series(registry, "b1-wittekind", "gw1", "p1/inclination"), ts)
    crack_series = _series(registry, "b1-wittekind", "gw1", "c1/crack_width")
    crack, _ = sim.series_values(crack_series, ts)
    assert np.abs(incl).max() < 0.15
    assert 0.005 < incl.max() - incl.min() < 0.1  # hundredths of a degree, thermal
    assert crack.min() >= 0.05
    assert crack.max() <= crack_series.maximum == 0.2  # clipped into the narrowed range


# --- classrooms -----------------------------------------------------------------------------


def _local_minute(ts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (local_seconds(ts) % 86_400) // 60


def test_co2_rises_in_unventilated_lessons_and_decays_at_night(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=4, start_ns=MONDAY)
    rooms = [("gs-nord", "r101", ""), ("gs-nord", "r102", ""), ("gym-west", "box1", "r201")]
    ts = _grid(MONDAY, 5 * 1440, MIN)
    minute = _local_minute(ts)
    unventilated = 0
    highest = 0.0
    for site, device, channel in rooms:
        name = f"{channel}/co2" if channel else "co2"
        co2, _ = sim.series_values(_series(registry, site, device, name), ts)
        state = sim.room_state(site, device, channel, ts)
        for day in range(5):
            today = (ts >= MONDAY + day * DAY) & (ts < MONDAY + (day + 1) * DAY)
            for a, b in LESSONS:
                idx = np.flatnonzero(today & (minute >= a) & (minute < b))
                # A full class (the teacher included) with the windows shut all lesson long.
                if (state.persons[idx] > 20).all() and (state.window[idx] == 0).all():
                    unventilated += 1
                    assert co2[idx[-1]] > 1000, (site, device, day, a)
                    if co2[idx[0]] < 800:
                        assert co2[idx[-1]] - co2[idx[0]] > 700  # ~1500 ppm, less the leaks
        night = (minute >= 60) & (minute < 300)  # 01:00-05:00 local
        assert 380 <= np.median(co2[night]) <= 520
        assert co2[night].max() < 900
        highest = max(highest, float(co2.max()))
    assert unventilated >= 5
    assert highest > 1900  # 1900-3300 ppm at lesson end are common (DOMAIN.md)


def test_weekend_rooms_are_empty(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=4, start_ns=MONDAY)
    saturday = MONDAY + 5 * DAY
    ts = _grid(saturday + 12 * HOUR, 36 * 60, MIN)  # Saturday noon to Sunday midnight
    dev = registry.device("gs-nord", "r101")
    assert dev is not None
    values = sim.device_values(dev, ts)
    state = sim.room_state("gs-nord", "r101", "", ts)
    assert (state.persons == 0).all()
    assert (state.window == 0).all()
    assert values["co2"][0].max() < 550
    assert values["noise"][0].max() < 45.0
    assert values["light"][0].max() < 2000  # daylight only, no lamps in empty rooms


def test_holidays_keep_rooms_empty(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(
        registry,
        topics,
        seed=4,
        start_ns=MONDAY,
        school_holidays=[(dt.date(2025, 1, 13), dt.date(2025, 1, 17))],
    )
    ts = _grid(MONDAY, 5 * 1440, MIN)
    assert (sim.room_state("gs-nord", "r101", "", ts).persons == 0).all()


def test_airing_drops_co2_and_temperature_together(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=4, start_ns=MONDAY)
    ts = _grid(MONDAY, 5 * 1440, MIN)
    state = sim.room_state("gs-nord", "r101", "", ts)
    opened = np.flatnonzero((state.window[1:] == OPEN) & (state.window[:-1] != OPEN)) + 1
    drops = [
        (state.co2[i] - state.co2[i + 3], state.temperature[i] - state.temperature[i + 3])
        for i in opened
        if state.co2[i] > 1200 and state.window[i + 3] == OPEN
    ]
    assert drops, "no airing after a lesson in a school week"
    for co2_drop, temp_drop in drops:
        assert co2_drop > 200  # within minutes
        assert temp_drop > 0.2  # January: cold air comes in with the fresh air


def test_classroom_values_are_plausible(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=6, start_ns=MONDAY)
    dev = registry.device("gs-nord", "r101")
    assert dev is not None
    ts = _grid(MONDAY, 7 * 1440, MIN)
    v = {name: values for name, (values, _) in sim.device_values(dev, ts).items()}
    state = sim.room_state("gs-nord", "r101", "", ts)
    lesson = state.persons > 10
    # 20-24 degC, a little lower right after airing in January
    assert v["temperature"].min() >= 18.5
    assert np.percentile(v["temperature"], 5) >= 19.5
    assert v["temperature"].max() <= 26.0
    # 30-55 %RH, lower in winter: a dry January week may dip below 30
    assert v["humidity"].min() >= 22.0
    assert v["humidity"].max() <= 55.0
    assert 28.0 <= np.median(v["humidity"]) <= 45.0
    assert v["humidity"][lesson].mean() > v["humidity"][~lesson].mean()
    assert 32.0 <= np.median(v["noise"][~lesson]) <= 40.0  # 35 dB(A) empty
    assert 60.0 <= np.median(v["noise"][lesson]) <= 70.0
    assert (v["pm2_5"] >= 0).all()
    assert (v["pm10"] >= v["pm2_5"]).all()  # one optical sensor gives both
    assert np.median(v["pm10"][lesson]) > np.median(v["pm10"][~lesson])
    assert np.median(v["light"][lesson]) >= 300.0  # lamps or daylight while teaching
    night = (_local_minute(ts) < 300) | (_local_minute(ts) > 22 * 60)
    assert v["light"][night].max() < 10.0


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_faults_change_values_as_specified_and_are_labelled(
    registry: Registry, topics: TopicScheme, kind: FaultKind
) -> None:
    strain = _series(registry, "b1-wittekind", "gw1", "g1/strain")
    start, duration = TUESDAY_9 + 10 * MIN, 20 * MIN
    fault = FaultSpec(kind, strain.index, start, duration, magnitude=2.0)
    clean_sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9)
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, faults=[fault])
    ts = _grid(TUESDAY_9, 3600, NS)
    clean, clean_labels = clean_sim.series_values(strain, ts)
    values, labels = sim.series_values(strain, ts)
    window = (ts >= start) & (ts < start + duration)
    if kind == "settlement":  # the one kind that outlasts its window
        window = ts >= start
    code = FAULT_KINDS.index(kind) + 1
    assert (clean_labels == 0).all()
    np.testing.assert_array_equal(values[~window], clean[~window])
    assert (labels[~window] == 0).all()
    amount = 2.0 * FAULT_SCALE["strain"]
    if kind == "spike":
        hit = labels == code
        assert 1 <= hit.sum() <= 10
        assert (hit <= window).all()
        np.testing.assert_allclose(np.abs(values[hit] - clean[hit]), amount, atol=0.011)
        np.testing.assert_array_equal(values[window & ~hit], clean[window & ~hit])
        # single-sample outliers: never two in a row
        assert not (hit[1:] & hit[:-1]).any()
    else:
        assert (labels[window] == code).all()
    if kind == "drift":
        frac = (ts[window] - start) / duration
        np.testing.assert_allclose(values[window] - clean[window], amount * frac, atol=0.011)
    elif kind == "stuck":
        assert np.unique(values[window]).size == 1
        assert values[window][0] == clean[window][0]  # frozen at its value at the start
        assert np.unique(clean[window]).size > 100
    elif kind == "step":
        np.testing.assert_allclose(values[window] - clean[window], amount, atol=0.011)
    elif kind == "settlement":
        rise = values[window] - clean[window]
        assert np.all(np.diff(rise) >= -0.011)  # monotone, up to the rounding
        ramp = ts[window] < start + duration
        assert abs(rise[0]) <= 0.011
        np.testing.assert_allclose(rise[~ramp], amount, atol=0.011)  # it stays
    elif kind == "gap":
        assert np.isnan(values[window]).all()
    elif kind == "out_of_range":
        assert (values[window] > strain.maximum).all()
    assert label_kinds(labels[window][:1]) == [kind]  # a spike hits the window's first sample


def test_faulty_values_stay_in_range_except_out_of_range(
    registry: Registry, topics: TopicScheme
) -> None:
    crack = _series(registry, "b1-wittekind", "gw1", "c1/crack_width")
    faults = [
        FaultSpec("step", crack.index, TUESDAY_9, 10 * MIN, magnitude=50.0),
        FaultSpec("spike", crack.index, TUESDAY_9 + 10 * MIN, 10 * MIN, magnitude=-50.0),
        FaultSpec("drift", crack.index, TUESDAY_9 + 20 * MIN, 10 * MIN, magnitude=-50.0),
        FaultSpec("out_of_range", crack.index, TUESDAY_9 + 30 * MIN, MIN, magnitude=-1.0),
    ]
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, faults=faults)
    ts = _grid(TUESDAY_9, 1900, NS)
    values, labels = sim.series_values(crack, ts)
    oor = labels == FAULT_KINDS.index("out_of_range") + 1
    assert oor.sum() == 60
    assert (values[oor] < crack.minimum).all()
    assert ((values[~oor] >= crack.minimum) & (values[~oor] <= crack.maximum)).all()


def test_settlement_and_step_in_microstrain_on_a_quiet_gauge_at_100_hz(
    registry: Registry, topics: TopicScheme
) -> None:
    strain = _series(registry, "b1-wittekind", "gw1", "g2/strain")
    onset = TUESDAY_9 + 5 * MIN
    faults = [
        FaultSpec("step", strain.index, onset, 10 * MIN, magnitude=-4.0, absolute=True),
        FaultSpec("settlement", strain.index, onset + 20 * MIN, 3 * MIN, 30.0, absolute=True),
    ]
    quiet = {strain.index: 0.5}
    clean_sim = Simulator(registry, topics, seed=2, start_ns=TUESDAY_9, sensor_noise=quiet)
    sim = Simulator(registry, topics, seed=2, start_ns=TUESDAY_9, faults=faults, sensor_noise=quiet)
    ts = _grid(TUESDAY_9, 40 * 60 * 100, 10_000_000)  # 40 minutes at 100 Hz
    clean, _ = clean_sim.series_values(strain, ts)
    values, labels = sim.series_values(strain, ts)
    diff = values - clean
    step = (ts >= onset) & (ts < onset + 10 * MIN)
    np.testing.assert_allclose(diff[step], -4.0, atol=0.011)
    assert (labels[step] == FAULT_KINDS.index("step") + 1).all()
    settled = ts >= onset + 23 * MIN
    np.testing.assert_allclose(diff[settled], 30.0, atol=0.011)
    assert (labels[ts >= onset + 20 * MIN] == FAULT_KINDS.index("settlement") + 1).all()
    assert FAULT_KINDS[-1] == "settlement"  # appended: older label codes keep their values
    # The quiet gauge: residual noise of 0.5 ue (lorries aside, whose transients are
    # smooth, so the sample-to-sample difference shows the noise: sqrt(2) x 0.5).
    loud = Simulator(registry, topics, seed=2, start_ns=TUESDAY_9).series_values(strain, ts)[0]
    quiet_sd = float(np.median(np.abs(np.diff(clean)))) / 0.6745 / np.sqrt(2)
    loud_sd = float(np.median(np.abs(np.diff(loud)))) / 0.6745 / np.sqrt(2)
    assert 0.4 < quiet_sd < 0.6
    assert quiet_sd < loud_sd or loud_sd < 0.6
    school = _series(registry, "gs-nord", "r102", "co2")
    with pytest.raises(ValueError, match="bridge series"):
        Simulator(registry, topics, start_ns=TUESDAY_9, sensor_noise={school.index: 1.0})


def test_classroom_thermometer_and_hygrometer_resolution(
    registry: Registry, topics: TopicScheme
) -> None:
    sim = Simulator(registry, topics, seed=3, start_ns=MONDAY)
    ts = _grid(MONDAY, 7 * 1440, MIN)
    dev = registry.device("gs-nord", "r102")
    assert dev is not None
    values = sim.device_values(dev, ts)
    temperature, humidity = values["temperature"][0], values["humidity"][0]
    np.testing.assert_allclose(temperature * 10, np.round(temperature * 10), atol=1e-9)
    np.testing.assert_allclose(humidity * 2, np.round(humidity * 2), atol=1e-9)
    assert {len(repr(float(x)).split(".")[1]) for x in temperature} <= {1}  # 21.3, not 21.30001
    # A quiet night holds one value for many minutes, without any fault.
    night = (_local_minute(ts) < 300) & (np.arange(len(ts)) < 1440)
    held = np.concatenate([[0], np.flatnonzero(np.diff(temperature[night]) != 0) + 1])
    assert np.diff(held).max() >= 10
    # Bridge temperature keeps its finer decimals.
    deck = _series(registry, "b1-wittekind", "gw1", "deck/temperature")
    bridge = sim.series_values(deck, ts[:600])[0]
    assert not np.allclose(bridge * 10, np.round(bridge * 10))
    # A stuck classroom sensor freezes at a value it could report.
    temp = dev.series["temperature"]
    stuck = FaultSpec("stuck", temp.index, MONDAY + HOUR + 17 * NS, HOUR)
    frozen = Simulator(registry, topics, seed=3, start_ns=MONDAY, faults=[stuck])
    v = frozen.series_values(temp, ts[61:120])[0]
    assert np.unique(v).size == 1
    assert float(v[0] * 10) == pytest.approx(round(float(v[0]) * 10))


def test_fault_for_all_series_and_school_faults(registry: Registry, topics: TopicScheme) -> None:
    fault = FaultSpec("step", None, TUESDAY_9, HOUR, magnitude=1.0)
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, faults=[fault])
    clean = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9)
    ts = _grid(TUESDAY_9, 60, MIN)
    co2 = _series(registry, "gs-nord", "r102", "co2")
    values, labels = sim.series_values(co2, ts)
    assert (labels == FAULT_KINDS.index("step") + 1).all()
    np.testing.assert_allclose(values - clean.series_values(co2, ts)[0], FAULT_SCALE["co2"])


# --- messages -------------------------------------------------------------------------------


def _check_decodes(
    sim: Simulator, registry: Registry, topics: TopicScheme, messages: list[SimMessage]
) -> int:
    """Decode every message; compare the stored readings with ``series_values``; return
    how many had records refused as out of range (exactly those carrying out_of_range
    samples; their other records are stored)."""
    decoder = _decoder(registry, topics)
    got: dict[int, tuple[list[int], list[float]]] = {}
    rejected = 0
    for m in messages:
        kinds = {kind for _, _, kind in m.labels}
        try:
            decoded = decoder.decode(m.topic, m.payload, m.t_ns + 500_000_000)
        except ReadingRejected as err:
            whole: RejectReason | None = err.reason
        else:
            whole = None
        if whole is not None:  # every record of the message refused
            assert "out_of_range" in kinds
            assert whole == RejectReason.OUT_OF_RANGE
            rejected += 1
            continue
        refused = sum(len(r.indices) for r in decoded.rejected)
        if "out_of_range" in kinds:
            assert {r.reason for r in decoded.rejected} == {RejectReason.OUT_OF_RANGE}
            rejected += 1
        assert len(decoded) + refused == m.samples
        assert refused == 0 or "out_of_range" in kinds
        for s, t, v in zip(
            np.asarray(decoded.series).tolist(),
            np.asarray(decoded.ts_ns).tolist(),
            np.asarray(decoded.values).tolist(),
            strict=True,
        ):
            ts_list, vs = got.setdefault(s, ([], []))
            ts_list.append(t)
            vs.append(v)
    for index, (ts_list, vs) in got.items():
        expected, _ = sim.series_values(registry.series[index], np.array(ts_list))
        np.testing.assert_allclose(vs, expected, rtol=1e-12, atol=1e-9)
        assert not np.isnan(expected).any()
    return rejected


def test_an_hour_of_messages_decodes(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9)
    messages = list(sim.messages(TUESDAY_9 + HOUR))
    assert [m.t_ns for m in messages] == sorted(m.t_ns for m in messages)
    assert all(TUESDAY_9 <= m.t_ns < TUESDAY_9 + HOUR for m in messages)
    bridge_devices, school_devices = 3, 3
    assert len(messages) == bridge_devices * 3600 + school_devices * 60
    assert _check_decodes(sim, registry, topics, messages) == 0
    pack = json.loads(next(m.payload for m in messages if m.device == "gw1"))
    assert pack[0]["bn"] == "gw1/"
    assert isinstance(pack[0]["bt"], float)
    assert {r["n"] for r in pack} == {
        "g1/strain",
        "g2/strain",
        "g3/strain",
        "deck/temperature",
        "p1/inclination",
        "c1/crack_width",
    }
    school = json.loads(next(m.payload for m in messages if m.device == "r101"))
    assert len(school) == 7
    assert school[0]["bn"] == "r101/"


def test_one_reading_per_message(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, per_message="reading")
    messages = list(sim.messages(TUESDAY_9 + 5 * MIN))
    bridge = [m for m in messages if "/bridge/" in m.topic]
    assert all(m.samples == 1 and len(json.loads(m.payload)) == 1 for m in bridge)
    assert len(bridge) == 300 * 11  # 11 bridge series at 1 Hz
    _check_decodes(sim, registry, topics, messages)


def test_native_blocks_at_100_hz(registry: Registry, topics: TopicScheme) -> None:
    sim = Simulator(registry, topics, seed=1, start_ns=TUESDAY_9, bridge_block=100)
    messages = list(sim.messages(TUESDAY_9 + 2 * MIN))
    blocks = [m for m in messages if "/bridge/" in m.topic]
    assert 3 * 119 <= len(blocks) <= 3 * 120  # one block per second per device
    block = json.loads(blocks[0].payload)
    assert block["dt"] == 0.01
    assert all(len(v) == 100 for v in block["series"].values())
    assert set(block["units"]) == set(block["series"])
    _check_decodes(sim, registry, topics, messages)


def test_strain_sent_as_ratio_is_converted_back(registry: Registry, topics: TopicScheme) -> None:
    for seed in range(40):
        sim = Simulator(registry, topics, seed=seed, start_ns=TUESDAY_9)
        ratio = [s for s in registry.series if sim.sent_unit(s) == "/"]
        if ratio:
            break
    else:
        pytest.fail("no seed in 0..39 gives a logger that sends strain as a ratio")
    messages = [m for m in sim.messages(TUESDAY_9 + MIN) if m.device == ratio[0].key.device]
    record = next(r for r in json.loads(messages[0].payload) if r["n"] == ratio[0].key.name)
    assert record["u"] == "/"
    assert abs(record["v"]) < 0.01
    _check_decodes(sim, registry, topics, messages)
    blocks = Simulator(registry, topics, seed=seed, start_ns=TUESDAY_9, bridge_block=50)
    _check_decodes(sim, registry, topics, list(blocks.messages(TUESDAY_9 + 10 * NS)))


def test_gap_means_no_message_and_out_of_range_is_rejected(
    registry: Registry, topics: TopicScheme
) -> None:
    g1 = _series(registry, "b1-wittekind", "gw1", "g1/strain")
    s1 = [s for s in registry.series if s.key.device == "s1"]
    faults = [
        FaultSpec("gap", g1.index, TUESDAY_9 + MIN, MIN),
        *(FaultSpec("gap", s.index, TUESDAY_9 + 2 * MIN, MIN) for s in s1),
        FaultSpec("out_of_range", g1.index, TUESDAY_9 + 4 * MIN, 10 * NS),
        FaultSpec("spike", None, TUESDAY_9 + 5 * MIN, MIN),
    ]
    for block in (0, 100):
        sim = Simulator(
            registry, topics, seed=1, start_ns=TUESDAY_9, faults=faults, bridge_block=block
        )
        messages = list(sim.messages(TUESDAY_9 + 6 * MIN))
        gw1 = [m for m in messages if m.device == "gw1"]
        in_gap = [m for m in gw1 if TUESDAY_9 + MIN <= m.t_ns < TUESDAY_9 + 2 * MIN]
        assert in_gap
        assert all(b"g1/strain" not in m.payload for m in in_gap)
        s1_msgs = [m for m in messages if m.device == "s1"]
        assert not [m for m in s1_msgs if TUESDAY_9 + 2 * MIN <= m.t_ns < TUESDAY_9 + 3 * MIN]
        rejected = _check_decodes(sim, registry, topics, messages)
        assert rejected == 10 if block == 0 else rejected in (10, 11)
        spikes = [lab for m in messages for lab in m.labels if lab[2] == "spike"]
        assert {index for index, _, _ in spikes} == {s.index for s in registry.series}


def test_invalid_arguments_are_refused(registry: Registry, topics: TopicScheme) -> None:
    with pytest.raises(ValueError, match="fault series index"):
        Simulator(registry, topics, start_ns=0, faults=[FaultSpec("spike", 999, 0, 1)])
    with pytest.raises(ValueError, match="bridge_rate_hz"):
        Simulator(registry, topics, start_ns=0, bridge_rate_hz=0)
    with pytest.raises(ValueError, match="fault duration"):
        Simulator(registry, topics, start_ns=0, faults=[FaultSpec("gap", None, 0, 0)])


def test_a_week_of_30_series_yields_every_sample(topics: TopicScheme) -> None:
    """One week, 20 bridge series at 1 Hz and 10 classroom series at 60 s."""
    text = (
        "sites:\n  b:\n    kind: bridge\n    name: b\n    devices:\n"
        + "".join(
            f"      d{d}:\n        channels:\n"
            + "".join(f"          g{g}: [strain]\n" for g in range(4))
            + "          t: [temperature]\n"
            for d in range(4)
        )
        + "  s:\n    kind: school\n    name: s\n    devices:\n"
        + "".join(
            f"      r{r}:\n        measurements: [co2, temperature, humidity, noise, light]\n"
            for r in range(2)
        )
    )
    reg = parse_registry(text)
    assert len(reg.series) == 30
    sim = Simulator(reg, topics, seed=1, start_ns=MONDAY)
    total = 0
    for dev in reg.devices():
        step = NS if dev.kind == "bridge" else MIN
        ts = _grid(MONDAY, 7 * DAY // step, step)
        total += sum(len(v) for v, _ in sim.device_values(dev, ts).values())
    assert total == 20 * 7 * 86_400 + 10 * 7 * 1440
