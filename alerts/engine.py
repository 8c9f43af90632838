"""The alert lifecycle: rules over committed batches, device silence and pipeline health,
pending -> firing -> resolved, acknowledgements, silences, repeats and flap damping.

Conditions are judged in reading time (the device's clock), so a backlog drained after an
outage fires and resolves as the readings say, not as they arrive. Notifications are
decided in wall time and handed to a sink (the dispatcher), which delivers them per channel
without blocking the committer thread that calls ``batch_committed``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

from alerts.config import AlertsConfig
from alerts.model import Alert, AlertKey, Event, Notification, Severity, State
from alerts.rules import LevelRule, Rule, compile_rules
from alerts.state import AlertStore, Stored
from devices.registry import Device, Registry, Series
from ingest.batch import ReadingBatch

log = logging.getLogger(__name__)

SILENT = "device-silent"
QUARANTINE = "quarantine-rate"
JOURNAL = "journal-depth"
BROKER = "broker-down"
STORE = "store-failing"


class NotificationSink(Protocol):
    def submit(self, notification: Notification) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    quarantined_total: int  # messages quarantined since the service started
    journal_depth: int
    broker_connected: bool
    committed_total: int = 0  # messages durably committed since the service started
    commit_failures_total: int = 0  # durable commits that failed (and were retried)


def _at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


class AlertEngine:
    """Listens to committed batches (``ingest.pipeline.BatchListener``) and is ticked by the
    scheduler. Thread-safe: the committer thread, the scheduler and HTTP handlers call it."""

    def __init__(
        self,
        registry: Registry,
        config: AlertsConfig,
        store: AlertStore,
        sink: NotificationSink,
        topic_prefix: str = "stadtpuls",
        health: Callable[[], PipelineHealth] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.registry = registry
        self.config = config
        self.store = store
        self.sink = sink
        self.prefix = topic_prefix
        self.health = health
        self.clock = clock
        self.rules: list[Rule] = compile_rules(registry, config)
        self._lock = threading.RLock()
        devices = list(registry.devices())
        self._devices = devices
        self._device_index = {(d.site, d.id): i for i, d in enumerate(devices)}
        self._device_of = np.array(
            [self._device_index[(s.key.site, s.key.device)] for s in registry.series],
            dtype=np.int64,
        )
        self._by_key = {(s.key.site, s.key.device, s.key.name): s.index for s in registry.series}
        now = clock()
        # Devices count as seen at start: a restart must not page for every device at once.
        self._seen = [now] * len(devices)
        self._quarantine_marks: list[tuple[datetime, int]] = []
        self._broker_down_since: datetime | None = None
        self._last_commits: tuple[int, int] | None = None  # (committed, failures)
        # One track per (rule, series), plus device and pipeline alerts by key.
        self._tracks: dict[tuple[str, int], Stored] = {}
        self._other: dict[AlertKey, Stored] = {}
        self._rule_names = {r.name for r in self.rules}
        for st in store.alerts():
            self._adopt(st)

    def _adopt(self, st: Stored) -> None:
        """Take over an alert from the store after a restart."""
        k = st.alert.key
        index = self._by_key.get((k.site, k.device, k.channel))
        if k.rule in self._rule_names and index is not None:
            self._tracks[(k.rule, index)] = st
        elif k.rule in (SILENT, QUARANTINE, JOURNAL, BROKER, STORE):
            self._other[k] = st
        else:
            log.info("alert %s no longer matches a rule or series; resolving it", k.id)
            st.alert.state = State.RESOLVED
            st.alert.resolved_at = self.clock()
            self.store.save(
                st, "resolved", "rule or series removed from the settings", self.clock()
            )

    # -- queries and commands -------------------------------------------------------------

    def active(self) -> list[Alert]:
        with self._lock:
            out = [
                replace(st.alert, labels=dict(st.alert.labels))
                for st in self._all()
                if st.alert.state in (State.PENDING, State.FIRING)
            ]
        return sorted(out, key=lambda a: a.id)

    def acknowledge(self, alert_id: str, by: str) -> bool:
        now = self.clock()
        with self._lock:
            if not self.store.acknowledge(alert_id, by, now):
                return False
            for st in self._all():
                if st.alert.id == alert_id:
                    st.alert.acked_by, st.alert.acked_at = by, now
            return True

    def _all(self) -> Iterator[Stored]:
        yield from self._tracks.values()
        yield from self._other.values()

    # -- batches --------------------------------------------------------------------------

    def batch_committed(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        now = self.clock()
        with self._lock:
            for d in np.unique(self._device_of[batch.series]).tolist():
                self._seen[d] = now
                st = self._other.get(AlertKey(SILENT, self._devices[d].site, self._devices[d].id))
                if st is not None and st.alert.state == State.FIRING:
                    self._resolve(st, now, now, None, "data arrived again")
            s = batch.series.astype(np.int64)
            for rule in self.rules:
                on, clear = (
                    rule.judge(s, batch.values)
                    if isinstance(rule, LevelRule)
                    else rule.judge(batch.flags)
                )
                self._judge(rule, s, batch.ts_ns, batch.values, on, clear, now)

    def _judge(
        self,
        rule: Rule,
        s: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        on: np.ndarray,
        clear: np.ndarray,
        now: datetime,
    ) -> None:
        tracked = [k for (name, k), st in self._tracks.items() if name == rule.name and (
            st.alert.state != State.RESOLVED)]  # fmt: skip
        candidates = np.union1d(np.unique(s[on]), np.array(tracked, dtype=np.int64))
        if len(candidates) == 0:
            return
        sel = np.flatnonzero(np.isin(s, candidates))
        if len(sel) == 0:
            return  # the tracked series have no readings in this batch
        sel = sel[np.lexsort((ts[sel], s[sel]))]
        ss, tt, vv, oo, cc = s[sel], ts[sel], values[sel], on[sel], clear[sel]
        # A firing series is judged on every batch; stepping reading by reading would put a
        # Python loop over each of its readings on the hot path. Runs of readings with the
        # same (on, clear) lead to the same decisions, so they are judged a run at a time.
        code = oo.astype(np.int8) * 2 + cc.astype(np.int8)
        cut = np.flatnonzero((ss[1:] != ss[:-1]) | (code[1:] != code[:-1])) + 1
        bounds = np.concatenate(([0], cut, [len(sel)])).tolist()
        for lo, hi in itertools.pairwise(bounds):
            self._run(rule, int(ss[lo]), tt[lo:hi], vv[lo:hi], bool(oo[lo]), bool(cc[lo]), now)

    def _track(self, rule: Rule, index: int) -> Stored:
        st = self._tracks.get((rule.name, index))
        if st is None:
            series = self.registry.series[index]
            st = Stored(self._new_alert(rule, series))
            self._tracks[(rule.name, index)] = st
        return st

    def _new_alert(self, rule: Rule, s: Series) -> Alert:
        threshold = None
        if isinstance(rule, LevelRule):
            threshold = float(rule.on[s.index])
        place = f"{s.key.site}/{s.key.device}/{s.key.name}"
        return Alert(
            key=AlertKey(rule.name, s.key.site, s.key.device, s.key.name),
            severity=rule.severity,
            kind=s.kind,
            state=State.RESOLVED,
            summary=f"{place}: {s.key.measurement} {rule.summary}",
            threshold=threshold,
            unit=s.unit,
            labels={"measurement": s.key.measurement},
        )

    def _run(
        self,
        rule: Rule,
        index: int,
        t: npt.NDArray[np.int64],
        v: npt.NDArray[np.float64],
        on: bool,
        clear: bool,
        now: datetime,
    ) -> None:
        """A run of one series' consecutive readings (in time order) that are all on, all
        clear or all in between: the decisions of stepping through them one by one, with
        the moment a duration is reached found by searchsorted."""
        st = self._track(rule, index)
        a, e = st.alert, st.engine
        for_ns = rule.for_ns if isinstance(rule, LevelRule) else 0
        if on:
            if a.state == State.RESOLVED:
                a.state, a.since, a.value = State.PENDING, _at(int(t[0])), float(v[0])
                e["since_ns"] = int(t[0])
                e.pop("clear_since_ns", None)
                if for_ns > 0:
                    self.store.save(st, "pending", f"value {_fmt(float(v[0]))}", now)
            if a.state == State.PENDING:
                k = int(np.searchsorted(t, e["since_ns"] + for_ns, side="left"))
                if k == len(t):
                    return  # not yet for long enough
                self._fire(st, int(t[k]), float(v[k]), now)
            # Firing: beyond the threshold again, so any wait for the clear level restarts.
            e.pop("clear_since_ns", None)
            a.value = float(v[-1])
            return
        if a.state == State.RESOLVED:
            return
        if a.state == State.PENDING:
            a.state = State.RESOLVED
            self.store.save(st, "cancelled", "condition ended before its duration", now)
            return
        # Firing: it resolves once it has stayed on the safe side of the clear level for
        # clear_for; a reading beyond the clear level starts that wait again.
        if not clear:
            e.pop("clear_since_ns", None)
            return
        e.setdefault("clear_since_ns", int(t[0]))
        k = int(np.searchsorted(t, e["clear_since_ns"] + rule.clear_for_ns, side="left"))
        if k < len(t):
            value = float(v[k])
            self._resolve(st, now, _at(int(t[k])), value, f"value {_fmt(value)}")

    def _fire(self, st: Stored, t_ns: int | None, value: float | None, now: datetime) -> None:
        a, e = st.alert, st.engine
        a.state = State.FIRING
        a.fired_at = now if t_ns is None else _at(t_ns)
        a.resolved_at = None
        a.value = value
        a.acked_by = a.acked_at = None
        e.pop("clear_since_ns", None)
        window = self.config.flap_window
        fires = [f for f in e.get("fires", []) if now - datetime.fromisoformat(f) < window]
        fires.append(now.isoformat())
        e["fires"] = fires
        if len(fires) >= self.config.flap_max and not e.get("flapping"):
            e["flapping"] = True
            self.store.record(a.id, "flapping", f"fired {len(fires)} times within {window}", now)
        self._notify(st, Event.FIRING, now)
        self.store.save(st, "firing", f"value {_fmt(value)}", now)

    def _resolve(
        self, st: Stored, now: datetime, at: datetime, value: float | None, detail: str
    ) -> None:
        a = st.alert
        a.state = State.RESOLVED
        a.resolved_at = at
        if value is not None:
            a.value = value
        if st.engine.get("notified") == "firing":
            self._notify(st, Event.RESOLVED, now)
        self.store.save(st, "resolved", detail, now)

    def _notify(self, st: Stored, event: Event, now: datetime) -> None:
        """Hand a notification to the sink unless a silence or flapping holds it back;
        ``notified`` remembers what the channels were last told."""
        a = st.alert
        labels = a.all_labels()
        silences = [s for s in self.store.silences(now) if s.matches(labels)]
        if silences:
            self.store.record(a.id, "suppressed", f"{event}: silence {silences[0].id}", now)
            return
        if st.engine.get("flapping"):
            self.store.record(a.id, "suppressed", f"{event}: flapping", now)
            return
        snapshot = replace(a, labels=dict(a.labels))
        self.sink.submit(Notification(event, now, self.prefix, alert=snapshot))
        st.engine["notified"] = "resolved" if event == Event.RESOLVED else "firing"
        st.engine["notified_at"] = now.isoformat()

    # -- the scheduler's tick -------------------------------------------------------------

    def tick(self) -> None:
        """Device silence, pipeline health, acknowledgements made elsewhere, repeats, and
        notifications held back by a silence or flapping that has since ended."""
        now = self.clock()
        with self._lock:
            acks = self.store.acks()
            for st in self._all():
                if st.alert.state == State.FIRING and st.alert.id in acks:
                    st.alert.acked_by, st.alert.acked_at = acks[st.alert.id]
            if self.config.silence.enabled:
                self._silence(now)
            if self.health is not None:
                self._health(now)
            for st in list(self._all()):
                self._reconcile(st, now)

    def _reconcile(self, st: Stored, now: datetime) -> None:
        a, e = st.alert, st.engine
        if e.get("flapping"):
            last = max(datetime.fromisoformat(f) for f in e.get("fires", [now.isoformat()]))
            if now - last < self.config.flap_window:
                return
            e["flapping"] = False
            self.store.save(st, "stable", "no longer flapping", now)
        notified = e.get("notified")
        if a.state == State.FIRING:
            if notified != "firing":
                self._notify(st, Event.FIRING, now)  # held back until now
                self.store.save(st, "notified", "firing, after a silence or flapping", now)
            elif a.acked_by is None:
                at = datetime.fromisoformat(e["notified_at"])
                if now - at >= self.config.repeat_interval:
                    self._notify(st, Event.REPEAT, now)
                    self.store.save(st, "repeat", f"unacknowledged since {a.fired_at}", now)
        elif a.state == State.RESOLVED and notified == "firing":
            self._notify(st, Event.RESOLVED, now)
            if e.get("notified") == "resolved":
                self.store.save(st, "notified", "resolved, after a silence or flapping", now)

    def silence_window(self, device: Device) -> timedelta:
        cfg = self.config.silence
        own = cfg.devices.get(f"{device.site}/{device.id}")
        if own is not None:
            return own
        return max(device.interval * cfg.factor, cfg.minimum)

    def _silence(self, now: datetime) -> None:
        for i, dev in enumerate(self._devices):
            key = AlertKey(SILENT, dev.site, dev.id)
            st = self._other.get(key)
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
                self._other[key] = st
                st.alert.threshold = window.total_seconds()
                self._fire(st, None, quiet.total_seconds(), now)
                st.alert.fired_at = self._seen[i] + window
                st.alert.since = self._seen[i]

    def _pipeline_alert(self, rule: str, severity: Severity, summary: str) -> Stored:
        key = AlertKey(rule)
        st = self._other.get(key)
        if st is None:
            st = Stored(
                Alert(key=key, severity=severity, kind="pipeline", state=State.RESOLVED,
                      summary=summary)
            )  # fmt: skip
            self._other[key] = st
        return st

    def _level(self, st: Stored, firing: bool, clear: bool, value: float, now: datetime) -> None:
        if firing and st.alert.state != State.FIRING:
            self._fire(st, None, value, now)
        elif clear and st.alert.state == State.FIRING:
            self._resolve(st, now, now, value, f"value {_fmt(value)}")
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

    # -- digest ---------------------------------------------------------------------------

    def digest(self, site: str, summary: dict[str, object]) -> None:
        """Send a site's daily digest (``alerts.digest`` computes it) to the channels."""
        kind = self.registry.sites[site].kind
        now = self.clock()
        self.sink.submit(
            Notification(Event.DIGEST, now, self.prefix, digest=dict(summary), site=site, kind=kind)
        )
        self.store.record("", "digest", f"site {site}", now)
