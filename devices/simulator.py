"""A deterministic simulator of every series of a registry: bridges and classrooms.

The models live in ``devices/sim_bridge.py`` (structure temperature, strain with the thermal
coefficient of steel and lorry transients, inclination, crack width) and
``devices/sim_school.py`` (NRW timetable, CO2 box model with window airing, temperature,
humidity, PM, noise, light); ``devices/sim_common.py`` holds seeding, local time and
Dortmund's climate; ``devices/sim_faults.py`` holds fault injection with ground-truth labels.
This module puts them together, rounds values as the devices report them, and turns them
into MQTT messages in the payload formats of DESIGN.md.

Determinism: a value is a pure function of (seed, series ids, timestamp, faults). Parameters
come from numpy Generators seeded from the seed and the series' ids (site, device, channel,
measurement) rather than its registry index, so adding or reordering series changes no other
series; sample noise is a counter-based hash of the timestamp, so any chunking of a span gives
the same samples, and the same seed gives the same payload bytes.

Labels: ``series_values`` returns a ``uint8`` array, 0 for a clean sample and
``FAULT_KINDS.index(kind) + 1`` for a faulty one (``label_kinds`` turns them into names; these
and the other fault names of ``devices/sim_faults.py`` are re-exported here). Messages carry
the faulty samples they contain in ``SimMessage.labels``; samples of a gap are in no message
at all.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from devices.registry import Device, Registry, Series
from devices.sim_bridge import BridgeDevice, Traffic
from devices.sim_common import F64, I64, NS, Weather, stable_key
from devices.sim_faults import (
    CLEAN,
    FAULT_KINDS,
    FAULT_SCALE,
    FaultKind,
    FaultSpec,
    Labels,
    apply_faults,
    label_kinds,
)
from devices.sim_school import Room, RoomState, holidays_to_days
from devices.topics import TopicScheme
from devices.vocabulary import SiteKind

__all__ = [
    "BLOCK_DT_NS",
    "CLEAN",
    "FAULT_KINDS",
    "FAULT_SCALE",
    "FaultKind",
    "FaultSpec",
    "Labels",
    "SimMessage",
    "Simulator",
    "label_kinds",
]

# Decimals a device reports: far below the noise, and short JSON numbers.
_DECIMALS: Final[dict[str, int]] = {
    "strain": 2,
    "temperature": 2,
    "inclination": 5,
    "crack_width": 4,
    "co2": 0,
    "humidity": 1,
    "pm2_5": 1,
    "pm10": 1,
    "noise": 1,
    "light": 0,
}
# Resolution of what a device reports, where it is coarser than ``_DECIMALS``: classroom
# thermometers report 0.1 degC and hygrometers 0.5 %RH steps (senseBox-style kits, SCD30), so
# on a quiet night a room holds one value for many minutes, which is not a stuck sensor.
# Bridge temperature comes from finer loggers and keeps its decimals.
_RESOLUTION: Final[dict[tuple[SiteKind, str], float]] = {
    (SiteKind.SCHOOL, "temperature"): 0.1,
    (SiteKind.SCHOOL, "humidity"): 0.5,
}
BLOCK_DT_NS: Final = 10_000_000  # 100 Hz, the rate of load tests and dynamic monitoring
_CHUNK_SAMPLES = 20_000  # per series per generated chunk: big enough to vectorise
_DAY_NS = 86_400 * NS


@dataclass(frozen=True)
class SimMessage:
    """One MQTT message. ``labels`` lists the faulty samples in it as (series index, t_ns,
    kind); every other sample in it is clean."""

    topic: str
    payload: bytes
    t_ns: int
    site: str
    device: str
    samples: int
    labels: tuple[tuple[int, int, FaultKind], ...] = ()


def _seconds(t_ns: int) -> str:
    # Timestamps are microsecond multiples; this division is exact to the microsecond and
    # repr gives the shortest text that parses back to the same float.
    return repr((t_ns // 1000) / 1e6)


class Simulator:
    """Realistic readings for every series of ``registry``, as arrays or MQTT messages.

    Bridges report every ``1 / bridge_rate_hz`` s as SenML (one pack per device per tick, or
    one record per message with ``per_message="reading"``), or with ``bridge_block=N`` native
    blocks of N samples at 100 Hz. Schools report one SenML pack per device every
    ``school_interval_s``. ``school_holidays`` lists inclusive (first, last) date ranges on
    which rooms stay empty (NRW holidays differ per year, so none are built in).
    ``sensor_noise`` sets the noise standard deviation (in the unit) of bridge series by
    registry index, instead of the drawn one: a quiet gauge for a small step, say.
    """

    def __init__(
        self,
        registry: Registry,
        topics: TopicScheme,
        *,
        seed: int = 0,
        start_ns: int,
        bridge_rate_hz: float = 1.0,
        bridge_block: int = 0,
        school_interval_s: float = 60.0,
        per_message: Literal["device", "reading"] = "device",
        faults: Sequence[FaultSpec] = (),
        school_holidays: Sequence[tuple[dt.date, dt.date]] = (),
        sensor_noise: Mapping[int, float] | None = None,
    ) -> None:
        if not bridge_rate_hz > 0 or round(1e6 / bridge_rate_hz) < 1:
            raise ValueError(f"bridge_rate_hz must be positive and at most 1 MHz: {bridge_rate_hz}")
        if bridge_block < 0:
            raise ValueError(f"bridge_block must be 0 (SenML) or a block size: {bridge_block}")
        if not school_interval_s > 0 or round(school_interval_s * 1e6) < 1:
            raise ValueError(f"school_interval_s must be positive: {school_interval_s}")
        if per_message not in ("device", "reading"):
            raise ValueError(f"per_message must be 'device' or 'reading': {per_message!r}")
        for f in faults:
            if f.kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {f.kind!r} (known: {FAULT_KINDS})")
            if f.series is not None and not 0 <= f.series < len(registry.series):
                raise ValueError(f"fault series index {f.series} is not in the registry")
            if f.duration_ns <= 0:
                raise ValueError(f"fault duration must be positive: {f}")
        noise = dict(sensor_noise or {})
        for index, sd in noise.items():
            if not 0 <= index < len(registry.series) or not sd > 0:
                raise ValueError(f"sensor_noise needs registry indices and positive sds: {noise}")
            if registry.series[index].kind != SiteKind.BRIDGE:
                raise ValueError(f"sensor_noise is for bridge series: {registry.series[index].key}")
        self.registry = registry
        self.topics = topics
        self.seed = seed
        self.start_ns = int(start_ns)
        self.bridge_block = bridge_block
        self.per_message = per_message
        self.faults = tuple(faults)
        self.bridge_period_ns = round(1e6 / bridge_rate_hz) * 1000  # microsecond grid
        self.school_period_ns = round(school_interval_s * 1e6) * 1000
        holidays = holidays_to_days(school_holidays)
        self._bridges: dict[tuple[str, str], BridgeDevice] = {}
        self._rooms: dict[tuple[str, str, str], Room] = {}
        for site in registry.sites.values():
            weather = Weather.for_site(seed, site.id)
            traffic = Traffic(seed, site.id) if site.kind == SiteKind.BRIDGE else None
            for dev in site.devices.values():
                if traffic is not None:
                    quiet = {n: noise[s.index] for n, s in dev.series.items() if s.index in noise}
                    self._bridges[(site.id, dev.id)] = BridgeDevice(
                        seed, dev, weather, traffic, noise=quiet
                    )
                    continue
                for chan in sorted({s.key.channel for s in dev.series.values()}):
                    self._rooms[(site.id, dev.id, chan)] = Room(
                        seed, site.id, dev.id, chan, weather, holidays, site.lat, site.lon
                    )

    # --- values ---------------------------------------------------------------------------

    def period_ns(self, series: Series) -> int:
        """The sample spacing of a series in ``messages`` (spikes hit samples of this grid)."""
        if series.kind == SiteKind.SCHOOL:
            return self.school_period_ns
        return BLOCK_DT_NS if self.bridge_block else self.bridge_period_ns

    def series_values(self, series: Series, ts_ns: npt.ArrayLike) -> tuple[F64, Labels]:
        """Values (in the measurement's canonical unit, as the service stores them) and labels
        of one series at the given timestamps (ns). Gap samples are NaN."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        dev = self.registry.device(series.key.site, series.key.device)
        if dev is None:
            raise KeyError(f"series {series.key} is not in the simulator's registry")
        return self._device_values(dev, ts, [series])[series.key.name]

    def device_values(self, device: Device, ts_ns: npt.ArrayLike) -> dict[str, tuple[F64, Labels]]:
        """``series_values`` for all series of a device at once (shared state computed once),
        by record name."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        return self._device_values(device, ts, list(device.series.values()))

    def room_state(self, site: str, device: str, channel: str, ts_ns: npt.ArrayLike) -> RoomState:
        """Ground truth of a classroom (occupancy, windows, clean values), for evaluations."""
        return self._rooms[(site, device, channel)].state(np.asarray(ts_ns, dtype=np.int64))

    def _clean(self, device: Device, ts: I64, series: list[Series]) -> dict[str, F64]:
        """Realistic values clipped into each series' range; ``ts`` must be sorted."""
        out: dict[str, F64] = {}
        bridge = self._bridges.get((device.site, device.id))
        if bridge is not None:
            lat = bridge.latent(ts)
            for s in series:
                out[s.key.name] = bridge.clean(s, lat, ts)
        else:
            states: dict[str, RoomState] = {}
            for s in series:
                chan = s.key.channel
                if chan not in states:
                    states[chan] = self._rooms[(device.site, device.id, chan)].state(ts)
                room = self._rooms[(device.site, device.id, chan)]
                out[s.key.name] = room.measure(s, states[chan], ts)
        for s in series:
            out[s.key.name] = np.clip(out[s.key.name], s.minimum, s.maximum)
        return out

    def _device_values(
        self, device: Device, ts: I64, series: list[Series]
    ) -> dict[str, tuple[F64, Labels]]:
        order: npt.NDArray[np.intp] | None = None
        if len(ts) > 1 and bool(np.any(np.diff(ts) < 0)):
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
        clean = self._clean(device, ts, series)
        out: dict[str, tuple[F64, Labels]] = {}
        for s in series:
            values, labels = self._finish(device, s, ts, clean[s.key.name])
            if order is not None:
                back = np.empty_like(order)
                back[order] = np.arange(len(order))
                values, labels = values[back], labels[back]
            out[s.key.name] = (values, labels)
        return out

    def _finish(self, device: Device, s: Series, ts: I64, clean: F64) -> tuple[F64, Labels]:
        """Apply faults (in the order given; a later label wins) and the device's rounding."""

        def reported_at(t_ns: int) -> float:
            start = np.array([t_ns], dtype=np.int64)
            return float(self._quantise(s, self._clean(device, start, [s])[s.key.name])[0])

        v, labels = apply_faults(
            self.faults,
            s,
            ts,
            clean,
            seed=self.seed,
            period_ns=self.period_ns(s),
            reported_at=reported_at,
        )
        v = self._quantise(s, v)
        inside = labels != FAULT_KINDS.index("out_of_range") + 1
        v = np.where(inside, np.clip(v, s.minimum, s.maximum), v)
        return v, labels

    @staticmethod
    def _quantise(s: Series, v: F64) -> F64:
        """Round to what the device reports: its resolution step, then its decimals (which
        also turns 21.300000000000001 into 21.3)."""
        decimals = _DECIMALS[s.key.measurement]
        step = _RESOLUTION.get((s.kind, s.key.measurement))
        if step is not None:
            v = np.round(v / step) * step
        return np.asarray(np.round(v, decimals), dtype=np.float64)

    # --- messages ---------------------------------------------------------------------------

    def messages(self, end_ns: int | None = None) -> Iterator[SimMessage]:
        """All devices' messages with start_ns <= t_ns < end_ns, in time order (ties in
        registry order). ``end_ns=None`` runs forever, for a realtime demo."""
        streams = [self._device_messages(dev, end_ns) for dev in self.registry.devices()]
        return heapq.merge(*streams, key=attrgetter("t_ns"))

    def _phase(self, device: Device, period: int, unit: int) -> int:
        # Devices are not synchronised: each gets a fixed offset within its period.
        offset = stable_key(self.seed, "phase", device.site, device.id) % period
        return offset // unit * unit

    def _device_messages(self, device: Device, end_ns: int | None) -> Iterator[SimMessage]:
        if device.kind == SiteKind.BRIDGE and self.bridge_block:
            yield from self._block_messages(device, end_ns)
            return
        period = self.bridge_period_ns if device.kind == SiteKind.BRIDGE else self.school_period_ns
        phase = self._phase(device, period, min(period, 1_000_000))
        n_series = max(1, len(device.series))
        chunk = max(1, min(_DAY_NS // period, _CHUNK_SAMPLES // n_series * 4))
        k = -(-(self.start_ns - phase) // period)
        while True:
            ts = phase + (k + np.arange(chunk, dtype=np.int64)) * period
            if end_ns is not None:
                ts = ts[ts < end_ns]
            if len(ts) == 0:
                return
            yield from self._senml_messages(device, ts, self.device_values(device, ts))
            k += chunk

    def sent_unit(self, series: Series) -> str:
        """The unit a series' device sends: the canonical one, or ``/`` for strain on the
        loggers that send a ratio."""
        bridge = self._bridges.get((series.key.site, series.key.device))
        if bridge is not None and bridge.strain_as_ratio and series.key.measurement == "strain":
            return "/"
        return series.unit

    def _encoders(self, device: Device) -> list[tuple[Series, str, float]]:
        """Per series: record name, unit sent, and the factor from canonical to sent units."""
        out = []
        for s in device.series.values():
            unit = self.sent_unit(s)
            out.append((s, unit, 1e-6 if unit == "/" else 1.0))
        return out

    @staticmethod
    def _sent(s: Series, values: F64, factor: float) -> list[float]:
        """Values in the unit sent. A ratio is rounded to the same digits as the microstrain,
        then nudged so the service's conversion back cannot leave the range by one ulp."""
        if factor == 1.0:
            return [float(x) for x in values.tolist()]
        sent = np.round(values * 1e6 * factor * 100.0) / 1e8
        ok = ~np.isnan(values) & (values >= s.minimum) & (values <= s.maximum)
        for _ in range(4):
            back = sent * 1e6
            high = ok & (back > s.maximum)
            low = ok & (back < s.minimum)
            if not (high.any() or low.any()):
                break
            sent = np.where(high, np.nextafter(sent, -np.inf), sent)
            sent = np.where(low, np.nextafter(sent, np.inf), sent)
        return [float(x) for x in sent.tolist()]

    def _senml_messages(
        self, device: Device, ts: I64, values: dict[str, tuple[F64, Labels]]
    ) -> Iterator[SimMessage]:
        topic = self.topics.readings(device.kind, device.site, device.id)
        head = f'[{{"bn":"{device.id}/","bt":'
        encoders = self._encoders(device)
        cols = []
        for s, unit, factor in encoders:
            v, lab = values[s.key.name]
            rec = f'"n":"{s.key.name}","u":"{unit}","v":'
            sent = self._sent(s, v, factor)
            cols.append((s.index, rec, sent, lab.tolist(), np.isnan(v).tolist()))
        per_reading = device.kind == SiteKind.BRIDGE and self.per_message == "reading"
        for j, t in enumerate(ts.tolist()):
            bt = _seconds(t)
            records: list[tuple[str, tuple[tuple[int, int, FaultKind], ...]]] = []
            for index, rec, vals, labs, gap in cols:
                if gap[j]:
                    continue
                label = labs[j]
                mark: tuple[tuple[int, int, FaultKind], ...] = (
                    ((index, t, FAULT_KINDS[label - 1]),) if label else ()
                )
                records.append((f"{rec}{vals[j]!r}}}", mark))
            if not records:
                continue
            if per_reading:
                for body, marks in records:
                    payload = f"{head}{bt},{body}]".encode()
                    yield SimMessage(topic, payload, t, device.site, device.id, 1, marks)
            else:
                bodies = [body for body, _ in records]
                payload = (f"{head}{bt}," + ",{".join(bodies) + "]").encode()
                marks_all = tuple(m for _, marks in records for m in marks)
                yield SimMessage(topic, payload, t, device.site, device.id, len(records), marks_all)

    def _block_messages(self, device: Device, end_ns: int | None) -> Iterator[SimMessage]:
        n = self.bridge_block
        block_ns = n * BLOCK_DT_NS
        phase = self._phase(device, block_ns, BLOCK_DT_NS)
        per_chunk = max(1, _CHUNK_SAMPLES // n)
        b = -(-(self.start_ns - phase) // block_ns)
        topic = self.topics.readings(device.kind, device.site, device.id)
        encoders = self._encoders(device)
        while True:
            t0 = phase + b * block_ns
            ts = t0 + np.arange(per_chunk * n, dtype=np.int64) * BLOCK_DT_NS
            values = self.device_values(device, ts)
            for i in range(per_chunk):
                lo, hi = i * n, (i + 1) * n
                if end_ns is not None and int(ts[hi - 1]) >= end_ns:
                    return
                yield from self._block(device, topic, encoders, ts[lo:hi], values, lo)
            b += per_chunk

    def _block(
        self,
        device: Device,
        topic: str,
        encoders: list[tuple[Series, str, float]],
        ts: I64,
        values: dict[str, tuple[F64, Labels]],
        offset: int,
    ) -> Iterator[SimMessage]:
        n = len(ts)
        present = np.array(
            [~np.isnan(values[s.key.name][0][offset : offset + n]) for s, _, _ in encoders]
        ).reshape(len(encoders), n)
        # A block needs every series it names for all of its samples; a gap in some series
        # splits the block where the set of present series changes.
        change = np.flatnonzero(np.any(present[:, 1:] != present[:, :-1], axis=0)) + 1
        bounds = [0, *change.tolist(), n]
        for a, z in itertools.pairwise(bounds):
            parts = []
            marks: list[tuple[int, int, FaultKind]] = []
            count = 0
            for row, (s, _, factor) in enumerate(encoders):
                if not present[row, a]:
                    continue
                v, lab = values[s.key.name]
                seg = v[offset + a : offset + z]
                parts.append(f'"{s.key.name}":[' + ",".join(map(repr, self._sent(s, seg, factor))))
                count += z - a
                seg_lab = lab[offset + a : offset + z]
                marks.extend(
                    (s.index, int(ts[a + j]), FAULT_KINDS[int(seg_lab[j]) - 1])
                    for j in np.flatnonzero(seg_lab).tolist()
                )
            if not parts:
                continue
            names = {s.key.name for row, (s, _, _) in enumerate(encoders) if present[row, a]}
            unit_text = ",".join(
                f'"{s.key.name}":"{unit}"' for s, unit, _ in encoders if s.key.name in names
            )
            payload = (
                f'{{"device":"{device.id}","t0":{_seconds(int(ts[a]))},"dt":0.01,"series":{{'
                + "],".join(parts)
                + f']}},"units":{{{unit_text}}}}}'
            )
            yield SimMessage(
                topic, payload.encode(), int(ts[z - 1]), device.site, device.id, count, tuple(marks)
            )
