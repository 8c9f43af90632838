"""The alert lifecycle in reading time and the grouping of a series' rules into one
incident: a drained backlog against the same data fed live, a classroom's CO2 peak through
every channel's rendering, repeats and flapping. The clock is injected, the sink is a
list, the store is a real SQLite file."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.channels.alertmanager import AlertmanagerSettings, alertmanager_alerts
from alerts.channels.email import EmailSettings, render_message
from alerts.config import AlertsConfig
from alerts.engine import AlertEngine
from alerts.model import Event, Severity, State
from alerts.state import AlertStore
from devices.registry import Registry
from ingest.batch import AnomalyFlag, ReadingBatch
from tests.support.alerting import Clock, Sink
from tests.support.registry import sample_registry

MIN = 60 * 10**9
DAY0 = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday, midnight
ROOM = "incident/s1/room-1/co2"
TRANSITIONS = {"pending", "firing", "resolved", "cancelled", "escalated", "de-escalated"}
# Per school day: lessons starting at these hours, CO2 rising linearly from 450 ppm to the
# peak over 45 minutes, then the room aired back to 450 ppm (Umweltbundesamt thresholds:
# 1000 ppm air the room, 2000 ppm unacceptable).
LESSONS = ((8, 1500.0), (9, 2600.0), (10, 900.0), (11, 2300.0))


class Rig:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.registry: Registry = sample_registry()
        base: dict[str, Any] = {"silence": {"enabled": False}}
        base.update(settings)
        self.config = AlertsConfig.model_validate(base)
        self.clock = Clock(DAY0)
        self.sink = Sink()
        self.store = AlertStore(tmp / "alerts.sqlite")
        self.engine = AlertEngine(
            self.registry, self.config, self.store, self.sink, clock=self.clock
        )

    def index(self, site: str, device: str, name: str) -> int:
        dev = self.registry.device(site, device)
        assert dev is not None
        return dev.series[name].index

    def feed(
        self, index: int, ts: npt.NDArray[np.int64], values: Sequence[float] | npt.NDArray[Any],
        flags: npt.NDArray[np.int32] | None = None,
    ) -> None:  # fmt: skip
        batch = ReadingBatch.unchecked(np.full(len(ts), index), ts, values)
        if flags is not None:
            batch.flags[:] = flags
        self.engine.batch_committed(batch)

    def transitions(self) -> list[tuple[datetime, str, str]]:
        return sorted(
            (h.at, h.alert_id, h.event)
            for h in self.store.history(limit=100_000)
            if h.event in TRANSITIONS
        )


def school_days(days: int, until: datetime) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Minute readings of one classroom from DAY0 up to ``until``."""
    start = int(DAY0.timestamp() * 1e9)
    n = int((until - DAY0).total_seconds() // 60)
    ts = start + np.arange(n, dtype=np.int64) * MIN
    minute = np.arange(n) % (24 * 60)
    values = np.full(n, 450.0)
    for hour, peak in LESSONS:
        into = minute - hour * 60
        lesson = (into >= 0) & (into < 45)
        values[lesson] = 450.0 + (peak - 450.0) * (into[lesson] + 1) / 45.0
    assert n <= days * 24 * 60
    return ts, values


def at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


# Day two, 11:30: the fourth lesson is above 1000 ppm (warning) and rising.
BACKLOG_END = DAY0 + timedelta(days=1, hours=11, minutes=30)
# Live after the backlog: still rising, over 2000 ppm four minutes later.
LIVE = (1750.0, 1850.0, 1950.0, 2100.0)


def test_a_drained_backlog_is_recorded_in_reading_time_and_told_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "backlog")
    room = rig.index("s1", "room-1", "co2")
    ts, values = school_days(2, BACKLOG_END)
    # The gateway was offline for two days; its backlog drains in four big batches while
    # the wall clock moves by seconds.
    rig.clock.now = BACKLOG_END + timedelta(seconds=20)
    parts = np.array_split(np.arange(len(ts)), 4)
    for part in parts[:-1]:
        rig.feed(room, ts[part], values[part])
        rig.clock.now += timedelta(seconds=1)
    assert rig.sink.sent == []  # nothing told while the backlog lasts
    assert not [h for h in rig.store.history(limit=100_000) if h.event == "flapping"]
    # The last batch reaches readings within backlog_after of the wall clock: the backlog
    # is over, and told once.
    rig.feed(room, ts[parts[-1]], values[parts[-1]])
    # Recorded as it would have been live: three episodes a day, at their reading times.
    history = [h for h in rig.store.history(ROOM, limit=1000) if h.event in TRANSITIONS]
    day = [
        ("08:23", "firing"), ("08:50", "resolved"),
        ("09:11", "firing"), ("09:32", "escalated"), ("09:50", "resolved"),
        ("11:13", "firing"), ("11:37", "escalated"), ("11:50", "resolved"),
    ]  # fmt: skip
    assert [(f"{h.at:%d %H:%M}", h.event) for h in history] == [
        *((f"{DAY0:%d} {hm}", e) for hm, e in day),
        *((f"{DAY0 + timedelta(days=1):%d} {hm}", e) for hm, e in day[:6]),
    ]
    fired = [h.at for h in history if h.event == "firing"]
    summary, firing = rig.sink.sent
    assert (summary.event, firing.event) == (Event.BACKLOG, Event.FIRING)
    # The five episodes that began and ended inside the backlog, at their reading times.
    assert [e.fired_at for e in summary.episodes] == fired[:5]
    assert [e.severity for e in summary.episodes] == [
        Severity.WARNING, Severity.CRITICAL, Severity.CRITICAL,
        Severity.WARNING, Severity.CRITICAL,
    ]  # fmt: skip
    # The one still firing when the backlog ends: told once, as of its reading time.
    assert firing.alert is not None
    assert firing.alert.severity == Severity.WARNING
    assert firing.alert.fired_at == fired[5]

    # Live data after it.
    live_start = int(BACKLOG_END.timestamp() * 1e9)
    for i, value in enumerate(LIVE):
        t = live_start + i * MIN
        rig.clock.now = at(t) + timedelta(seconds=5)
        rig.feed(room, np.array([t]), [value])
    # Four wall-clock minutes after the backlog: over 2000 ppm, and told at once.
    assert rig.sink.events() == [
        ("backlog", ROOM),
        ("firing", ROOM),
        ("escalated", ROOM),
    ]
    escalated = rig.sink.sent[-1]
    assert escalated.alert is not None
    assert escalated.alert.severity == Severity.CRITICAL
    assert escalated.at - BACKLOG_END < timedelta(minutes=4, seconds=10)
    assert not [h for h in rig.store.history(limit=100_000) if h.event == "flapping"]

    # The same two days fed live, the wall clock moving with the readings.
    live = Rig(tmp_path / "live")
    for t, value in zip(ts.tolist(), values.tolist(), strict=True):
        live.clock.now = at(t) + timedelta(seconds=5)
        live.feed(room, np.array([t]), [value])
    for i, value in enumerate(LIVE):
        t = live_start + i * MIN
        live.clock.now = at(t) + timedelta(seconds=5)
        live.feed(room, np.array([t]), [value])
    assert live.transitions() == rig.transitions()
    live_events = [e for e, _ in live.sink.events()]
    assert live_events.count("firing") == 6  # one per episode, not per rule
    assert "backlog" not in live_events


def test_a_backlog_with_no_live_data_after_it_is_told_once_quiet(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    room = rig.index("s1", "room-1", "co2")
    ts, values = school_days(1, DAY0 + timedelta(hours=11, minutes=30))
    rig.clock.now = DAY0 + timedelta(days=1)  # delivered half a day late, then nothing
    rig.feed(room, ts, values)
    rig.engine.tick()
    assert rig.sink.sent == []  # more of the backlog may still come
    rig.clock.now += rig.config.backlog_after
    rig.engine.tick()
    assert rig.sink.events() == [("backlog", ROOM), ("firing", ROOM)]
    assert len(rig.sink.sent[0].episodes) == 2
    rig.clock.now += timedelta(minutes=10)
    rig.engine.tick()
    assert len(rig.sink.sent) == 2


def test_a_resolution_inside_a_backlog_of_a_told_incident_is_told(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    room = rig.index("s1", "room-1", "co2")
    t0 = int((DAY0 + timedelta(hours=8)).timestamp() * 1e9)
    rig.clock.now = at(t0)
    rig.feed(room, np.array([t0]), [1200.0])
    assert rig.sink.events() == [("firing", ROOM)]
    # The gateway drops out; an hour later the hour arrives at once: aired, then a
    # second short peak that is over again.
    ts = t0 + np.arange(1, 61, dtype=np.int64) * MIN
    values = np.where((np.arange(60) > 30) & (np.arange(60) < 40), 1300.0, 500.0)
    rig.clock.now = at(int(ts[-1])) + timedelta(minutes=6)
    rig.feed(room, ts, values)
    assert rig.sink.events() == [("firing", ROOM), ("resolved", ROOM)]
    rig.clock.now += timedelta(minutes=6)
    rig.engine.tick()
    assert rig.sink.events() == [("firing", ROOM), ("resolved", ROOM), ("backlog", ROOM)]
    assert len(rig.sink.sent[-1].episodes) == 1


def test_a_batch_that_ends_a_backlog_with_a_live_firing_tells_it_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    room = rig.index("s1", "room-1", "co2")
    t0 = int((DAY0 + timedelta(hours=8)).timestamp() * 1e9)
    # An hour late: a short peak that fired and resolved, then (on time) 2500 ppm.
    ts = t0 + np.arange(61, dtype=np.int64) * MIN
    values = np.where((np.arange(61) >= 10) & (np.arange(61) < 20), 1300.0, 500.0)
    values[-1] = 2500.0
    rig.clock.now = at(int(ts[-1])) + timedelta(seconds=5)
    rig.feed(room, ts, values)
    assert rig.sink.events() == [("backlog", ROOM), ("firing", ROOM)]
    assert rig.sink.sent[1].alert is not None
    assert rig.sink.sent[1].alert.severity == Severity.CRITICAL
    # The incident the channels know resolves inside the next backlog: told at once.
    t1 = int(ts[-1]) + 30 * MIN
    later = t1 + np.arange(30, dtype=np.int64) * MIN
    rig.clock.now = at(int(later[-1])) + timedelta(seconds=5)
    rig.feed(room, later, np.full(30, 500.0))
    assert rig.sink.events()[-1] == ("resolved", ROOM)
    assert len(rig.sink.sent) == 3


def peak() -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[np.int32]]:
    """A lesson's CO2 peak: rising through 1000 and 2000 ppm, partly aired down to 1200 ppm
    (still above 1000), then fully aired; a step flag (the window opened) on the way."""
    rise = np.linspace(700.0, 2400.0, 30)
    values = np.concatenate([rise, np.full(10, 1200.0), np.full(50, 500.0)])
    start = int((DAY0 + timedelta(hours=9)).timestamp() * 1e9)
    ts = start + np.arange(len(values), dtype=np.int64) * MIN
    flags = np.zeros(len(values), np.int32)
    flags[30] = int(AnomalyFlag.STEP)
    return ts, values, flags


def test_one_co2_peak_is_one_incident_that_escalates_and_de_escalates(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    room = rig.index("s1", "room-1", "co2")
    ts, values, flags = peak()
    for t, value, flag in zip(ts.tolist(), values.tolist(), flags.tolist(), strict=True):
        rig.clock.now = at(t) + timedelta(seconds=2)
        rig.feed(room, np.array([t]), [value], np.array([flag], np.int32))
    # Registry warn and alarm, both Umweltbundesamt rules and a step anomaly: one alert.
    assert rig.sink.events() == [
        ("firing", ROOM),
        ("escalated", ROOM),
        ("escalated", ROOM),
        ("resolved", ROOM),
    ]
    _, up, down, resolved = rig.sink.sent
    assert [n.alert.severity for n in rig.sink.sent if n.alert is not None] == [
        Severity.WARNING, Severity.CRITICAL, Severity.WARNING, Severity.WARNING,
    ]  # fmt: skip
    assert up.previous is not None
    assert up.previous.severity == Severity.WARNING
    assert down.previous is not None
    assert down.previous.severity == Severity.CRITICAL
    # Once warn cleared, co2-air-the-room led at the same level, silently: the resolution
    # names the label set the channels know, so Alertmanager ends that one.
    assert resolved.previous is not None
    assert resolved.previous.all_labels()["alertname"] == "warn"
    assert down.alert is not None
    # The anomaly is folded into the incident: named, never told on its own.
    assert "anomaly-step" in down.alert.annotations["members"]
    assert down.alert.annotations["peak_severity"] == "critical"
    step = rig.store.history("anomaly-step/s1/room-1/co2")
    assert [h.event for h in step] == ["firing", "resolved"]  # 30 min after its flag
    assert resolved.alert is not None
    assert resolved.alert.resolved_at is not None
    assert resolved.alert.resolved_at < step[-1].at  # the anomaly did not keep it open
    assert rig.engine.active() == []

    # Each channel's rendering of the four.
    mail = EmailSettings("smtp", "alerts@stadt.example", ("ops@stadt.example",))
    messages = [render_message(n, mail) for n in rig.sink.sent]
    assert [str(m["Subject"]).split("]")[0] + "]" for m in messages] == [
        "[FIRING warning]",
        "[ESCALATED critical]",
        "[DE-ESCALATED warning]",
        "[RESOLVED warning]",
    ]
    assert {m["In-Reply-To"] for m in messages[1:]} == {messages[0]["Message-ID"]}
    am = AlertmanagerSettings("http://am:9093")
    posts = [alertmanager_alerts(n, am) for n in rig.sink.sent]
    assert [[(p["labels"]["alertname"], p["labels"]["severity"], "endsAt" in p) for p in post]
            for post in posts] == [
        [("warn", "warning", False)],
        [("warn", "warning", True), ("alarm", "critical", False)],
        [("alarm", "critical", True), ("warn", "warning", False)],
        [("warn", "warning", True), ("co2-air-the-room", "warning", True)],
    ]  # fmt: skip
    bodies = [n.to_json() for n in rig.sink.sent]
    assert [b["event"] for b in bodies] == ["firing", "escalated", "escalated", "resolved"]
    assert [b["alert"]["id"] for b in bodies] == [ROOM] * 4
    assert bodies[1]["previous"]["severity"] == "warning"
    assert bodies[1]["alert"]["rule"] == "alarm"


def test_an_anomaly_alone_is_its_own_incident_and_a_threshold_outranks_it(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, anomaly={"severity": {"stuck": "warning"}, "clear_for": "10m"})
    room = rig.index("s1", "room-1", "co2")
    t0 = int((DAY0 + timedelta(hours=8)).timestamp() * 1e9)
    stuck = np.full(1, int(AnomalyFlag.STUCK), np.int32)
    rig.clock.now = at(t0)
    rig.feed(room, np.array([t0]), [600.0], stuck)
    assert rig.sink.events() == [("firing", ROOM)]
    rig.clock.now = at(t0 + MIN)
    rig.feed(room, np.array([t0 + MIN]), [1100.0], stuck)  # the registry's warn level
    assert rig.sink.events()[-1] == ("escalated", ROOM)
    assert rig.sink.sent[-1].alert is not None
    assert rig.sink.sent[-1].alert.all_labels()["alertname"] == "warn"


def test_repeats_follow_the_wall_clock_and_stop_when_the_incident_is_acked(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, repeat_interval="1h")
    room = rig.index("s1", "room-1", "co2")
    t0 = int((DAY0 + timedelta(hours=8)).timestamp() * 1e9)
    rig.clock.now = at(t0)
    rig.feed(room, np.array([t0]), [1200.0])
    # An hour of readings delivered within a minute is no reason to remind anyone.
    ts = t0 + np.arange(1, 61, dtype=np.int64) * MIN
    rig.clock.now = at(t0) + timedelta(minutes=1)
    rig.feed(room, ts[:1], [1200.0])
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing"]
    rig.clock.now = at(t0) + timedelta(hours=1, seconds=1)
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing", "repeat"]
    # Acknowledged by the id of one of its rules: the incident stops repeating.
    assert rig.engine.acknowledge("warn/s1/room-1/co2", "ops-anna")
    assert rig.engine.active()[0].acked_by == "ops-anna"
    rig.clock.now += timedelta(hours=2)
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing", "repeat"]
    # Worse now: the escalation asks for a new acknowledgement, and repeats again.
    t = int(rig.clock.now.timestamp() * 1e9)
    rig.feed(room, np.array([t]), [2500.0])
    assert rig.engine.active()[0].acked_by is None
    rig.clock.now += timedelta(hours=1, seconds=1)
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing", "repeat", "escalated", "repeat"]


def test_live_flapping_is_still_damped(tmp_path: Path) -> None:
    rig = Rig(tmp_path, registry={"clear_for": "0s"}, flap_max=3, flap_window="1h")
    g1 = rig.index("b1", "sg1", "g1/strain")
    t = int(DAY0.timestamp() * 1e9)
    for _ in range(10):
        for value in (950.0, 100.0):
            t += 10**9
            rig.clock.now = at(t)
            rig.feed(g1, np.array([t]), [value])
    assert [e for e, _ in rig.sink.events()].count("firing") == 2
    assert [h.event for h in rig.store.history("incident/b1/sg1/g1/strain")].count("flapping") == 1
    assert rig.engine.active() == []


def test_restart_keeps_the_incident_and_its_backlog(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    room = rig.index("s1", "room-1", "co2")
    ts, values = school_days(1, DAY0 + timedelta(hours=11, minutes=30))
    rig.clock.now = DAY0 + timedelta(hours=12)
    rig.feed(room, ts, values)
    rig.store.close()
    rig.store = AlertStore(tmp_path / "alerts.sqlite")
    rig.engine = AlertEngine(rig.registry, rig.config, rig.store, rig.sink, clock=rig.clock)
    active = rig.engine.active()
    assert [(a.id, a.state) for a in active] == [(ROOM, State.FIRING)]
    rig.clock.now += rig.config.backlog_after
    rig.engine.tick()
    assert rig.sink.events() == [("backlog", ROOM), ("firing", ROOM)]
