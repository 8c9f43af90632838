"""Alerts on wall-clock conditions: a device that fell silent, and the pipeline's own
health (quarantine rate, journal depth, failing commits, a lost broker). They have no
readings to be judged by and no series to be grouped with, so they are told directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from alerts.config import AlertsConfig
from alerts.model import Alert, AlertKey, Severity, State
from alerts.notifier import Notifier, ns
from alerts.state import AlertStore, Stored
from devices.registry import Device

SILENT = "device-silent"
QUARANTINE = "quarantine-rate"
JOURNAL = "journal-depth"
BROKER = "broker-down"
STORE = "store-failing"
RULES = (SILENT, QUARANTINE, JOURNAL, BROKER, STORE)


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    quarantined_total: int  # messages quarantined since the service started
    journal_depth: int
    broker_connected: bool
    committed_total: int = 0  # messages durably committed since the service started
    commit_failures_total: int = 0  # durable commits that failed (and were retried)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


class Watch:
    """Not thread-safe: the engine's lock guards it."""

    def __init__(
        self,
        devices: list[Device],
        config: AlertsConfig,
        store: AlertStore,
        notifier: Notifier,
        health: Callable[[], PipelineHealth] | None,
        now: datetime,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        # Whether this process takes a site's readings now: on NATS a worker holds some
        # partitions, and a device of another's must not look silent here.
        self.owns = owns
        self.store = store
        self.notifier = notifier
        self.health = health
        self._devices = devices
        # Devices count as seen at start: a restart must not page for every device at once.
        self._seen = [now] * len(devices)
        self._owned = [True] * len(devices)
        self._quarantine_marks: list[tuple[datetime, int]] = []
        self._broker_down_since: datetime | None = None
        self._last_commits: tuple[int, int] | None = None  # (committed, failures)
        self.alerts: dict[AlertKey, Stored] = {}

    def __iter__(self) -> Iterator[Stored]:
        return iter(self.alerts.values())

    def adopt(self, st: Stored) -> None:
        Notifier.migrate(st)
        self.alerts[st.alert.key] = st

    def seen(self, device: int, now: datetime) -> None:
        """Data of the device arrived."""
        self._seen[device] = now
        dev = self._devices[device]
        st = self.alerts.get(AlertKey(SILENT, dev.site, dev.id))
        if st is not None and st.alert.state == State.FIRING:
            self._resolve(st, now, None, "data arrived again")

    def tick(self, now: datetime) -> None:
        if self.config.silence.enabled:
            self._silence(now)
        if self.health is not None:
            self._health(now)

    def _fire(self, st: Stored, value: float | None, now: datetime) -> None:
        a = st.alert
        a.state, a.fired_at, a.resolved_at, a.value = State.FIRING, now, None, value
        a.acked_by = a.acked_at = None
        self.notifier.fired(st, ns(now), now)
        self.store.save(st, "firing", f"value {_fmt(value)}", now)

    def _resolve(self, st: Stored, now: datetime, value: float | None, detail: str) -> None:
        a = st.alert
        a.state, a.resolved_at = State.RESOLVED, now
        if value is not None:
            a.value = value
        self.notifier.resolved(st, ns(now), now)
        self.store.save(st, "resolved", detail, now)

    def silence_window(self, device: Device) -> timedelta:
        cfg = self.config.silence
        own = cfg.devices.get(f"{device.site}/{device.id}")
        if own is not None:
            return own
        return max(device.interval * cfg.factor, cfg.minimum)

    def _silence(self, now: datetime) -> None:
        owns = self.owns
        for i, dev in enumerate(self._devices):
            if owns is not None:
                owned = owns(dev.site)
                if owned and not self._owned[i]:
                    # Taken over just now: silent only from here on, as after a start.
                    self._seen[i] = max(self._seen[i], now)
                self._owned[i] = owned
                if not owned:
                    continue
            key = AlertKey(SILENT, dev.site, dev.id)
            st = self.alerts.get(key)
            window = self.silence_window(dev)
            quiet = now - self._seen[i]
            if quiet > window and (st is None or st.alert.state != State.FIRING):
                st = st or Stored(
                    Alert(
                        key=key,
                        severity=self.config.silence.severity,
                        kind=dev.kind,
                        state=State.RESOLVED,
                        summary=f"{dev.site}/{dev.id}: no data for more than {window}",
                        unit="s",
                    )
                )
                self.alerts[key] = st
                st.alert.threshold = window.total_seconds()
                self._fire(st, quiet.total_seconds(), now)
                st.alert.fired_at = self._seen[i] + window
                st.alert.since = self._seen[i]

    def _pipeline_alert(self, rule: str, severity: Severity, summary: str) -> Stored:
        key = AlertKey(rule)
        st = self.alerts.get(key)
        if st is None:
            st = Stored(
                Alert(key=key, severity=severity, kind="pipeline", state=State.RESOLVED,
                      summary=summary)
            )  # fmt: skip
            self.alerts[key] = st
        return st

    def _level(self, st: Stored, firing: bool, clear: bool, value: float, now: datetime) -> None:
        if firing and st.alert.state != State.FIRING:
            self._fire(st, value, now)
        elif clear and st.alert.state == State.FIRING:
            self._resolve(st, now, value, f"value {_fmt(value)}")
        else:
            st.alert.value = value

    def _health(self, now: datetime) -> None:
        assert self.health is not None
        h = self.health()
        cfg = self.config.health
        # The quarantine rate over the last minute, from the running total.
        marks = [m for m in self._quarantine_marks if now - m[0] <= timedelta(minutes=1)]
        marks.append((now, h.quarantined_total))
        self._quarantine_marks = marks
        span = (marks[-1][0] - marks[0][0]).total_seconds()
        if span > 0:
            rate = (marks[-1][1] - marks[0][1]) * 60.0 / span
            st = self._pipeline_alert(
                QUARANTINE, Severity.WARNING, "messages quarantined at an unusual rate"
            )
            st.alert.threshold, st.alert.unit = cfg.quarantine_per_minute, "1/min"
            limit = cfg.quarantine_per_minute
            self._level(st, rate > limit, rate <= limit / 2, rate, now)
        st = self._pipeline_alert(
            JOURNAL, Severity.WARNING, "readings waiting in the journal for the database"
        )
        st.alert.threshold, st.alert.unit = float(cfg.journal_depth), "readings"
        depth = h.journal_depth
        self._level(st, depth > cfg.journal_depth, depth <= cfg.journal_depth / 2, depth, now)
        if h.broker_connected:
            self._broker_down_since = None
        elif self._broker_down_since is None:
            self._broker_down_since = now
        down = 0.0 if self._broker_down_since is None else (now - self._broker_down_since)
        seconds = down.total_seconds() if isinstance(down, timedelta) else down
        # Commits failing with none getting through (a full disk, a locked file): nothing is
        # acknowledged, the broker holds the stream, and someone must act.
        if self._last_commits is not None:
            committed = h.committed_total - self._last_commits[0]
            failed = h.commit_failures_total - self._last_commits[1]
            st = self._pipeline_alert(
                STORE, Severity.CRITICAL, "durable commits are failing: nothing is acknowledged"
            )
            st.alert.unit = "failed commits"
            self._level(st, failed > 0 and committed == 0, committed > 0, float(failed), now)
        self._last_commits = (h.committed_total, h.commit_failures_total)
        st = self._pipeline_alert(BROKER, Severity.CRITICAL, "the service lost its MQTT broker")
        st.alert.threshold, st.alert.unit = cfg.broker_down_for.total_seconds(), "s"
        self._level(st, seconds > st.alert.threshold, h.broker_connected, seconds, now)
