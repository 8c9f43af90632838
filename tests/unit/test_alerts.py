"""The alert lifecycle on hand-made batches: hysteresis, durations, silences, acks,
repeats, flap damping, device silence, pipeline health and restarts. The engine's sink is
a list; the store is a real SQLite file. Time is a clock the test moves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from alerts.config import AlertsConfig, ThresholdRule
from alerts.digest import site_digest
from alerts.engine import AlertEngine, PipelineHealth
from alerts.model import State
from alerts.state import AlertStore
from devices.registry import Registry
from ingest.batch import AnomalyFlag, ReadingBatch
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from tests.support.alerting import Clock, Sink
from tests.support.registry import sample_registry

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@dataclass
class Health:
    value: PipelineHealth = field(default_factory=lambda: PipelineHealth(0, 0, True))

    def __call__(self) -> PipelineHealth:
        return self.value


def config(**changes: Any) -> AlertsConfig:
    base: dict[str, Any] = {"thresholds": [], "anomaly": {"severity": {}}}
    base.update(changes)
    return AlertsConfig.model_validate(base)


class Rig:
    def __init__(self, tmp: Path, cfg: AlertsConfig, health: Health | None = None) -> None:
        self.registry: Registry = sample_registry()
        self.cfg = cfg
        self.clock = Clock(T0)
        self.sink = Sink()
        self.path = tmp / "alerts.sqlite"
        self.store = AlertStore(self.path)
        self.health = health
        self.engine = self.start()

    def start(self) -> AlertEngine:
        return AlertEngine(
            self.registry, self.cfg, self.store, self.sink, health=self.health, clock=self.clock
        )

    def restart(self) -> None:
        self.store.close()
        self.store = AlertStore(self.path)
        self.engine = self.start()

    def index(self, site: str, device: str, name: str) -> int:
        dev = self.registry.device(site, device)
        assert dev is not None
        return dev.series[name].index

    def feed(
        self, index: int, values: Sequence[float], step_s: float = 1.0, flags: int = 0
    ) -> None:
        """One batch of readings of one series, ending at the clock's time."""
        n = len(values)
        end_ns = int(self.clock.now.timestamp() * 1e9)
        ts = end_ns - (np.arange(n)[::-1] * step_s * 1e9).astype(np.int64)
        batch = ReadingBatch.unchecked(np.full(n, index), ts, values)
        batch.flags[:] = flags
        self.engine.batch_committed(batch)

    def advance(self, seconds: float) -> None:
        self.clock.now += timedelta(seconds=seconds)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, config())


def test_gauge_over_its_limit_fires_once_and_resolves_once_below_the_clear_level(
    rig: Rig,
) -> None:
    g1 = rig.index("b1", "sg1", "g1/strain")
    rig.feed(g1, [100.0, 910.0])
    assert rig.sink.events() == [("firing", "incident/b1/sg1/g1/strain")]
    alert = rig.sink.sent[0].alert
    assert alert is not None
    assert alert.value == 910.0
    assert alert.threshold == 900.0
    # Around the limit but above the clear level (95 % = 855): nothing new.
    for v in (890.0, 905.0, 860.0, 930.0, 870.0):
        rig.advance(1)
        rig.feed(g1, [v])
    assert len(rig.sink.sent) == 1
    # Below the clear level, but not yet for clear_for (1 min by default).
    rig.advance(1)
    rig.feed(g1, [500.0] * 30)
    assert len(rig.sink.sent) == 1
    rig.advance(40)
    rig.feed(g1, [500.0] * 40)
    assert rig.sink.events() == [
        ("firing", "incident/b1/sg1/g1/strain"),
        ("resolved", "incident/b1/sg1/g1/strain"),
    ]
    assert rig.engine.active() == []


def test_compression_counts_against_the_limit(rig: Rig) -> None:
    g2 = rig.index("b1", "sg1", "g2/strain")
    rig.feed(g2, [-950.0])
    assert rig.sink.events() == [("firing", "incident/b1/sg1/g2/strain")]


def test_minimum_duration_keeps_a_short_excursion_pending(tmp_path: Path) -> None:
    rule = {"name": "co2", "measurement": "co2", "above": 1000, "clear": 800, "for": "2m"}
    rig = Rig(tmp_path, config(thresholds=[rule], registry={"enabled": False}))
    room = rig.index("s1", "room-1", "co2")
    rig.feed(room, [1100.0, 1200.0], step_s=60)  # one minute above: pending
    assert rig.sink.sent == []
    assert [a.state for a in rig.engine.active()] == [State.PENDING]
    rig.advance(60)
    rig.feed(room, [900.0])  # back under the threshold: the excursion is over
    assert rig.engine.active() == []
    rig.advance(60)
    rig.feed(room, [1100.0, 1150.0, 1300.0], step_s=60)  # two minutes above: firing
    assert rig.sink.events() == [("firing", "incident/s1/room-1/co2")]


def test_a_silenced_site_gets_nothing_until_the_silence_ends(rig: Rig) -> None:
    rig.store.add_silence({"site": "b1"}, T0, T0 + timedelta(hours=1), "inspector", "inspection")
    g1 = rig.index("b1", "sg1", "g1/strain")
    rig.feed(g1, [950.0])
    room = rig.index("s1", "room-1", "co2")
    rig.feed(room, [2500.0])
    # One incident for the room's CO2, at the higher of the registry's two levels.
    assert rig.sink.events() == [("firing", "incident/s1/room-1/co2")]
    assert rig.sink.sent[0].alert is not None
    assert rig.sink.sent[0].alert.all_labels()["alertname"] == "alarm"
    assert rig.store.history("incident/b1/sg1/g1/strain")[-2].event == "suppressed"
    # Still firing when the silence ends: the held-back notification goes out then.
    rig.advance(3601)
    rig.engine.tick()
    assert rig.sink.events("limit") == [("firing", "incident/b1/sg1/g1/strain")]
    assert rig.sink.events("device-silent")  # the bridge went quiet meanwhile: not silenced


def test_glob_matchers_and_unsilence(rig: Rig) -> None:
    s = rig.store.add_silence({"site": "b*", "alertname": "limit"}, T0, T0 + timedelta(days=1), "x")
    g1 = rig.index("b1", "sg1", "g1/strain")
    rig.feed(g1, [950.0])
    assert rig.sink.sent == []
    assert rig.store.expire_silence(s.id, rig.clock.now)
    assert not rig.store.expire_silence(s.id, rig.clock.now)  # already over
    rig.engine.tick()
    assert rig.sink.events() == [("firing", "incident/b1/sg1/g1/strain")]
    with pytest.raises(ValueError, match="at least one matcher"):
        rig.store.add_silence({}, T0, T0 + timedelta(hours=1), "x")


def test_repeats_until_acknowledged_and_the_ack_ends_with_the_alert(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(repeat_interval="10m", silence={"enabled": False}))
    g1 = rig.index("b1", "sg1", "g1/strain")
    rig.feed(g1, [950.0])
    rig.advance(601)
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing", "repeat"]
    # Acknowledged from elsewhere (the command line writes the shared file).
    other = AlertStore(rig.path)
    assert other.acknowledge("limit/b1/sg1/g1/strain", "ops-anna", rig.clock.now)
    assert not other.acknowledge("limit/b1/sg1/nope", "ops-anna", rig.clock.now)
    rig.advance(601)
    rig.engine.tick()
    assert [e for e, _ in rig.sink.events()] == ["firing", "repeat"]
    active = rig.engine.active()
    assert active[0].acked_by == "ops-anna"
    # Resolved, then firing again: a new incident needs a new acknowledgement.
    rig.feed(g1, [100.0] * 61)
    rig.advance(1)
    rig.feed(g1, [990.0])
    assert rig.engine.active()[0].acked_by is None
    stored = rig.store.get("limit/b1/sg1/g1/strain")
    assert stored is not None
    assert stored.alert.acked_by is None


def test_flapping_is_damped(tmp_path: Path) -> None:
    rig = Rig(
        tmp_path,
        config(
            registry={"clear_for": "0s"}, flap_max=3, flap_window="1h", silence={"enabled": False}
        ),
    )
    g1 = rig.index("b1", "sg1", "g1/strain")
    for _ in range(20):  # crossing both the limit and the clear level, again and again
        rig.advance(1)
        rig.feed(g1, [950.0])
        rig.advance(1)
        rig.feed(g1, [100.0])
    firing = [e for e, _ in rig.sink.events() if e == "firing"]
    assert len(firing) == 2  # the third firing within the hour marks it flapping
    assert len(rig.sink.sent) <= 4
    # Quiet for a whole window: the channels learn the final state once.
    rig.advance(3601)
    rig.engine.tick()
    assert rig.sink.events()[-1] == ("resolved", "incident/b1/sg1/g1/strain")
    assert rig.sink.events()[-2] != ("resolved", "incident/b1/sg1/g1/strain")


def test_a_quiet_device_is_alerted_within_its_window_and_resolved_by_data(rig: Rig) -> None:
    window = rig.engine.silence_window(rig.registry.sites["s1"].devices["room-1"])
    assert window == timedelta(minutes=5)  # 5 x the 1 min interval
    room = rig.index("s1", "room-1", "co2")
    others = [rig.index("s2", "room-9", "co2"), rig.index("b1", "sg1", "g1/strain")]
    rig.advance(window.total_seconds() - 10)
    for i in others:
        rig.feed(i, [500.0])
    rig.engine.tick()
    assert rig.sink.sent == []
    rig.advance(20)
    for i in others:
        rig.feed(i, [500.0])
    rig.engine.tick()
    silent = {a for _, a in rig.sink.events("device-silent")}
    assert "device-silent/s1/room-1/" in silent
    assert "device-silent/s2/room-9/" not in silent
    rig.feed(room, [600.0])
    assert ("resolved", "device-silent/s1/room-1/") in rig.sink.events()


def test_restart_keeps_state_no_second_firing(rig: Rig) -> None:
    g1 = rig.index("b1", "sg1", "g1/strain")
    rig.feed(g1, [950.0])
    rig.restart()
    rig.advance(1)
    rig.feed(g1, [960.0])
    rig.engine.tick()
    assert rig.sink.events() == [("firing", "incident/b1/sg1/g1/strain")]
    rig.advance(1)
    rig.feed(g1, [100.0] * 61)
    assert rig.sink.events()[-1] == ("resolved", "incident/b1/sg1/g1/strain")


def test_anomaly_flags_raise_an_alert_until_the_series_is_clean(tmp_path: Path) -> None:
    rig = Rig(tmp_path, config(anomaly={"severity": {"stuck": "warning"}, "clear_for": "10m"}))
    room = rig.index("s1", "room-1", "humidity")
    rig.feed(room, [40.0] * 3, step_s=60, flags=int(AnomalyFlag.STUCK))
    assert rig.sink.events() == [("firing", "incident/s1/room-1/humidity")]
    rig.advance(300)
    rig.feed(room, [41.0, 42.0], step_s=60)
    assert len(rig.sink.sent) == 1
    rig.advance(600)
    rig.feed(room, [43.0])
    assert rig.sink.events()[-1] == ("resolved", "incident/s1/room-1/humidity")


def test_pipeline_health(tmp_path: Path) -> None:
    health = Health()
    rig = Rig(tmp_path, config(health={"journal_depth": 1000, "broker_down_for": "30s"}), health)
    rig.engine.tick()
    health.value = PipelineHealth(0, 5000, False)
    rig.advance(5)
    rig.engine.tick()
    assert rig.sink.events() == [("firing", "journal-depth///")]
    rig.advance(31)
    rig.engine.tick()
    assert ("firing", "broker-down///") in rig.sink.events()
    health.value = PipelineHealth(1000, 400, True)  # 1000 quarantined within 36 s
    rig.advance(1)
    rig.engine.tick()
    events = rig.sink.events()
    assert ("resolved", "journal-depth///") in events
    assert ("resolved", "broker-down///") in events
    assert ("firing", "quarantine-rate///") in events


def test_failing_commits_alert_until_one_gets_through(tmp_path: Path) -> None:
    health = Health()
    rig = Rig(tmp_path, config(silence={"enabled": False}), health)
    health.value = PipelineHealth(0, 0, True, committed_total=100, commit_failures_total=0)
    rig.engine.tick()
    health.value = PipelineHealth(0, 0, True, committed_total=100, commit_failures_total=3)
    rig.advance(5)
    rig.engine.tick()
    assert rig.sink.events() == [("firing", "store-failing///")]
    health.value = PipelineHealth(0, 0, True, committed_total=100, commit_failures_total=9)
    rig.advance(5)
    rig.engine.tick()
    assert len(rig.sink.sent) == 1
    health.value = PipelineHealth(0, 0, True, committed_total=140, commit_failures_total=9)
    rig.advance(5)
    rig.engine.tick()
    assert rig.sink.events()[-1] == ("resolved", "store-failing///")


def test_config_refuses_a_clear_level_beyond_the_threshold() -> None:
    with pytest.raises(ValidationError, match="must not lie above"):
        ThresholdRule.model_validate(
            {"name": "x", "measurement": "co2", "above": 1000, "clear": 1200}
        )
    with pytest.raises(ValidationError, match="unknown detectors"):
        AlertsConfig.model_validate({"anomaly": {"severity": {"sparkle": "warning"}}})


def test_default_rules_follow_the_umweltbundesamt(tmp_path: Path) -> None:
    rig = Rig(tmp_path, AlertsConfig.model_validate({"registry": {"enabled": False}}))
    room = rig.index("s2", "room-9", "co2")
    rig.feed(room, [1200.0] * 4, step_s=60)
    assert rig.sink.events("co2-air-the-room") == [("firing", "incident/s2/room-9/co2")]
    rig.advance(60)
    rig.feed(room, [2100.0] * 3, step_s=60)
    # The same incident, escalated: not a second alert.
    assert rig.sink.events("co2-unacceptable") == [("escalated", "incident/s2/room-9/co2")]


def test_digest_counts_hours_above_1000_ppm_and_fired_alerts(rig: Rig, tmp_path: Path) -> None:
    # SQLite only: the digest reads through the store's readings(), which for InfluxStore is
    # Flux, and VictoriaMetrics (the tests' InfluxDB) has no Flux.
    store = SqliteStore(SqliteSettings(tmp_path / "readings.sqlite"), rig.registry.series)
    room = rig.index("s1", "room-1", "co2")
    start_ns = int(T0.timestamp() * 1e9)
    # Two hours of minute readings: the first hour above 1000 ppm, the second below.
    ts = start_ns + np.arange(120, dtype=np.int64) * 60_000_000_000
    values = np.where(np.arange(120) < 60, 1400.0, 700.0)
    store.commit(ReadingBatch.unchecked(np.full(120, room), ts, values), [])
    rig.clock.now = T0 + timedelta(hours=2)
    rig.feed(room, [2500.0])
    end = T0 + timedelta(hours=3)
    digest = site_digest(rig.registry, store, rig.store, "s1", end)
    assert digest["hours_above_1000_ppm"] == {"room-1": 1.0}
    assert digest["alerts_fired"] == {"alarm": 1, "warn": 1}
    g1 = rig.index("b1", "sg1", "g1/strain")
    store.commit(
        ReadingBatch.unchecked([g1, g1], [start_ns, start_ns + 10**9], [300.0, -810.0]), []
    )
    bridge = site_digest(rig.registry, store, rig.store, "b1", end)
    assert bridge["closest_to_limit"][0]["gauge"] == "sg1/g1/strain"
    assert bridge["closest_to_limit"][0]["share_of_limit"] == 0.9
    store.close()


def test_only_the_sites_a_worker_holds_can_fall_silent_there(tmp_path: Path) -> None:
    """On NATS a worker sees only the sites of the partitions it holds: another worker's
    devices must not look silent here, and a site taken over is silent only after a whole
    window of its own."""
    held = {"b1"}
    rig = Rig(tmp_path, config())
    rig.engine = AlertEngine(
        rig.registry, rig.cfg, rig.store, rig.sink, clock=rig.clock, owns=held.__contains__
    )
    window = rig.engine.silence_window(rig.registry.sites["s1"].devices["room-1"])
    rig.advance(window.total_seconds() * 3)
    rig.engine.tick()
    silent = {a for _, a in rig.sink.events("device-silent")}
    assert silent == {"device-silent/b1/sg1/"}
    held.add("s1")  # taken over now, after three windows without its data here
    rig.engine.tick()
    rig.advance(window.total_seconds() - 10)
    rig.engine.tick()
    assert {a for _, a in rig.sink.events("device-silent")} == silent
    rig.advance(20)
    rig.engine.tick()
    assert "device-silent/s1/room-1/" in {a for _, a in rig.sink.events("device-silent")}


def test_open_alerts_move_with_their_sites_without_a_word_to_the_channels(
    tmp_path: Path,
) -> None:
    """On NATS a partition moves between workers: its sites' open alerts go with it. The
    new holder carries the incident on (and resolves it when the gauge recovers); the old
    one forgets it; nobody on call hears of the move."""
    old = Rig(tmp_path / "old", config())
    g1 = old.index("b1", "sg1", "g1/strain")
    old.feed(g1, [100.0, 910.0])
    assert old.sink.events() == [("firing", "incident/b1/sg1/g1/strain")]
    moving = json.loads(json.dumps(old.engine.export({"b1"})))  # as it travels, in JSON
    assert old.engine.export({"s1"}) == []

    new = Rig(tmp_path / "new", config())
    new.clock.now = old.clock.now
    new.engine.take_over({"b1"}, moving)
    old.engine.hand_over({"b1"})
    assert [a.id for a in new.engine.active()] == ["incident/b1/sg1/g1/strain"]
    assert old.engine.active() == []
    assert new.sink.sent == []
    assert old.sink.events() == [("firing", "incident/b1/sg1/g1/strain")]
    new.advance(70)
    new.feed(g1, [500.0] * 70)  # below the clear level for longer than clear_for
    assert new.sink.events() == [("resolved", "incident/b1/sg1/g1/strain")]
