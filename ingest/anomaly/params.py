"""Detector thresholds per measurement, and the defaults DOMAIN.md gives reason for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DriftMode = Literal["plain", "thermal", "night", "site"]


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Thresholds for one measurement. Units are the measurement's own; ``*_z`` are in
    robust standard deviations of the series itself (1.4826 x MAD of its previous
    segment), never below ``noise_floor``."""

    noise_floor: float  # smallest robust sigma: the sensor's noise and resolution
    spike_z: float = 8.0
    # ... and beyond this many times the series' usual excursions (the 95th percentile of
    # its deviations per segment, the largest of the last hours): a gauge under traffic
    # sees lorries as one-reading bumps all day (0: off).
    spike_tail: float = 0.0
    step_z: float = 5.0
    step_samples: int = 3
    # A step must last this long as well: longer than a lorry's transient on a gauge.
    step_min_s: float = 0.0
    # shift (structural): a deviation of this many sigmas that lasts shift_min_s and did
    # not begin as a lone sensor's jump (inf: off).
    shift_z: float = np.inf
    shift_min_s: float = 60.0
    # The segment the statistics come from covers at least this much time (and at least
    # SEGMENT samples): at 100 Hz, 48 samples would be half a second of one lorry.
    segment_s: float = 0.0
    stuck_samples: int = 12  # identical consecutive readings that can make a stuck sensor
    # ... and the run must be this many times the longest flat run the series showed
    # recently: a 0.1 degC thermometer holds one value through a quiet night.
    stuck_factor: float = 3.0
    max_rate: float = np.inf  # units per second
    gap_factor: float = 3.0
    # drift: a fast and a slow moving average part by more than this (inf: off)
    drift: float = np.inf
    drift_fast_s: float = 12 * 3600.0  # averages out the daily cycle
    # "thermal": after the series' own regression on its temperature; "night": the CO2
    # floor; "site": against the other series of the measurement at the site
    drift_mode: DriftMode = "plain"
    # "night": a night floor that begins beyond this from where the night before ended and
    # stays flat is a step (inf: off), for a series whose day is too lively for a step.
    night_step: float = np.inf
    # In a room, a sudden change of this series says the air changed (a window opened), so
    # a jump of another of the room's series at that moment is no fault of its own.
    room_air: bool = False


def _with_the_weather(
    noise_floor: float, max_rate: float, drift: float, drift_fast_s: float
) -> DetectorParams:
    """Weather moves all temperatures and humidities of a site together: a sensor is
    compared with the others of its site; alone, with its own slow level. In a room, a
    sudden change of either says the air changed."""
    return DetectorParams(
        noise_floor=noise_floor,
        max_rate=max_rate,
        drift=drift,
        drift_fast_s=drift_fast_s,
        drift_mode="site",
        room_air=True,
    )


# Defaults from DOMAIN.md. Strain: gauges resolve well under 1 microstrain; lorries add
# tens within seconds to tens of seconds and return; a settlement is a few to tens of
# microstrain within minutes that stays. Classroom CO2 rises about 1500 ppm in a lesson and
# falls within minutes when a window opens, both far below the rate limits, which catch
# physically impossible jumps.
DEFAULT_PARAMS: dict[str, DetectorParams] = {
    "strain": DetectorParams(
        noise_floor=0.25,
        spike_z=12.0,
        spike_tail=2.0,
        step_z=6.0,
        step_min_s=45.0,
        shift_z=8.0,
        shift_min_s=60.0,
        segment_s=120.0,
        max_rate=2000.0,
        drift=12.0,
        drift_fast_s=2 * 3600.0,
        drift_mode="thermal",
    ),
    "temperature": _with_the_weather(
        noise_floor=0.1, max_rate=0.5, drift=1.1, drift_fast_s=4 * 3600.0
    ),
    # Both follow the temperature a little: drift is judged after their own regression.
    "inclination": DetectorParams(
        noise_floor=0.002, max_rate=0.5, drift=0.005, drift_fast_s=4 * 3600.0, drift_mode="thermal"
    ),
    "crack_width": DetectorParams(
        noise_floor=0.005, max_rate=0.5, drift=0.015, drift_fast_s=4 * 3600.0, drift_mode="thermal"
    ),
    # CO2 drift is judged on the night floor, which should sit near outdoor air (~400 ppm).
    "co2": DetectorParams(
        noise_floor=15.0,
        max_rate=100.0,
        drift=120.0,
        drift_fast_s=3600.0,
        drift_mode="night",
        night_step=240.0,
    ),
    "humidity": _with_the_weather(
        noise_floor=0.5, max_rate=2.0, drift=3.0, drift_fast_s=3 * 3600.0
    ),
    "pm2_5": DetectorParams(
        noise_floor=2.0, stuck_samples=30, max_rate=50.0, drift=8.0, drift_fast_s=6 * 3600.0
    ),
    "pm10": DetectorParams(
        noise_floor=3.0, stuck_samples=30, max_rate=50.0, drift=12.0, drift_fast_s=6 * 3600.0
    ),
    # A classroom's sound level jumps by nature (a lesson starts: 35 to 65 dB): no step by
    # day, and a spike must stand more than 36 dB out. Its drift and steps are judged on
    # the empty room at night, whose background level (about 35 dB(A)) should not move.
    "noise": DetectorParams(
        noise_floor=3.0,
        spike_z=12.0,
        step_z=12.0,
        step_samples=1 << 30,
        drift=6.0,
        drift_fast_s=3600.0,
        drift_mode="night",
        night_step=12.0,
    ),
    # Light switches: on, off, a cloud, the blinds. Each is a jump that may stay or not,
    # so neither a spike nor a step says anything about the sensor.
    "light": DetectorParams(
        noise_floor=5.0, spike_z=np.inf, step_samples=1 << 30, stuck_samples=0, max_rate=np.inf
    ),
}
