"""The alert lifecycle: rules over committed batches, device silence and pipeline health,
pending -> firing -> resolved, acknowledgements, silences, repeats and flap damping.

Conditions are judged in reading time (the device's clock), so a backlog drained after an
outage fires and resolves as the readings say, not as they arrive: ``for``, ``clear_for``,
flap counting and the history all use the reading time of the readings that caused each
transition. Each rule keeps a track per series; the tracks of a series are grouped into
one incident (``alerts.incidents``), and only incidents, device silence and pipeline
alerts are told to the channels (``alerts.notifier``: silences, flapping, backlogs,
repeats). Notifications are handed to a sink (the dispatcher), which delivers them per
channel without blocking the committer thread that calls ``batch_committed``.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.config import AlertsConfig
from alerts.incidents import INCIDENT, Incidents, MemberChange, at
from alerts.model import Alert, AlertKey, Event, Notification, State
from alerts.notifier import NotificationSink, Notifier, ns
from alerts.rules import LevelRule, Rule, compile_rules
from alerts.state import AlertStore, Stored, stored_from_json, stored_to_json
from alerts.watch import RULES as WATCHED
from alerts.watch import PipelineHealth, Watch
from devices.registry import Device, Registry, Series
from ingest.batch import ReadingBatch

log = logging.getLogger(__name__)

__all__ = ["AlertEngine", "NotificationSink", "PipelineHealth"]


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
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        """``owns(site)``: whether this process takes the site's readings now (None: all
        of the registry's); device silence is watched for those sites only."""
        self.registry = registry
        self.config = config
        self.store = store
        self.sink = sink
        self.prefix = topic_prefix
        self.health = health
        self.clock = clock
        self.notifier = Notifier(config, store, sink, topic_prefix)
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
        # One track per (rule, series), grouped into one incident per series; device and
        # pipeline alerts are watched apart.
        self._tracks: dict[tuple[str, int], Stored] = {}
        self.incidents = Incidents(registry)
        self.watch = Watch(devices, config, store, self.notifier, health, clock(), owns)
        self._rule_names = {r.name for r in self.rules}
        for st in store.alerts((State.PENDING, State.FIRING, State.RESOLVED)):
            self._adopt(st)
        self._regroup()

    def _adopt(self, st: Stored) -> None:
        """Take over an alert from the store after a restart."""
        k = st.alert.key
        index = self._by_key.get((k.site, k.device, k.channel))
        if k.rule == INCIDENT and index is not None:
            self.incidents.adopt(index, st)
        elif k.rule in self._rule_names and index is not None:
            self._tracks[(k.rule, index)] = st
        elif k.rule in WATCHED:
            self.watch.adopt(st)
        elif st.alert.state != State.RESOLVED:
            log.info("alert %s no longer matches a rule or series; resolving it", k.id)
            st.alert.state = State.RESOLVED
            st.alert.resolved_at = self.clock()
            self.store.save(
                st, "resolved", "rule or series removed from the settings", self.clock()
            )

    def _regroup(self) -> None:
        """Firing tracks that no incident knows of (a state file from before incidents, or
        a rule whose incident row was pruned) join their series' incident now."""
        for (name, index), st in self._tracks.items():
            inc = self.incidents.get(index)
            known = inc is not None and name in inc.engine.get("members", {})
            if st.alert.state == State.FIRING and not known:
                rule = next(r for r in self.rules if r.name == name)
                fired = st.alert.fired_at or self.clock()
                self._changed([self._change(rule, index, st, ns(fired), fired=True)], self.clock())

    # -- queries and commands -------------------------------------------------------------

    def active(self) -> list[Alert]:
        """Firing incidents, device and pipeline alerts, and pending tracks of series
        without a firing incident (a condition waiting for its rule's duration)."""
        with self._lock:
            shown = [st for st in self.incidents if st.alert.state == State.FIRING]
            shown += [st for st in self.watch if st.alert.state != State.RESOLVED]
            for (_, index), st in self._tracks.items():
                inc = self.incidents.get(index)
                if st.alert.state == State.PENDING and (
                    inc is None or inc.alert.state != State.FIRING
                ):
                    shown.append(st)
            out = [
                replace(st.alert, labels=dict(st.alert.labels),
                        annotations=dict(st.alert.annotations))
                for st in shown
            ]  # fmt: skip
        return sorted(out, key=lambda a: a.id)

    def acknowledge(self, alert_id: str, by: str) -> bool:
        """Acknowledge an alert; the id of a member rule (``alarm/s1/room-1/co2``)
        acknowledges its firing incident."""
        now = self.clock()
        with self._lock:
            target = self._incident_of(alert_id) or alert_id
            if not self.store.acknowledge(target, by, now):
                return False
            for st in self._all():
                if st.alert.id == target:
                    st.alert.acked_by, st.alert.acked_at = by, now
            return True

    def _incident_of(self, alert_id: str) -> str | None:
        for (_, index), st in self._tracks.items():
            if st.alert.id == alert_id:
                inc = self.incidents.get(index)
                if inc is not None and inc.alert.state == State.FIRING:
                    return inc.alert.id
        return None

    def _all(self) -> Iterator[Stored]:
        yield from self._tracks.values()
        yield from self.incidents
        yield from self.watch

    # -- partitions moving between workers (source: nats) ----------------------------------

    def export(self, sites: set[str]) -> list[dict[str, Any]]:
        """The open alerts (pending or firing) of ``sites``, for the worker that takes them
        over (``take_over``)."""
        with self._lock:
            return [
                stored_to_json(st)
                for st in self._all()
                if st.alert.key.site in sites and st.alert.state != State.RESOLVED
            ]

    def take_over(self, sites: set[str], alerts: list[dict[str, Any]]) -> int:
        """The alerts of ``sites`` as the last holder left them: what this worker had of
        those sites from an earlier hold is replaced. Nothing is told to the channels: for
        the people on call the alerts simply carry on. Returns how many were taken."""
        now = self.clock()
        with self._lock:
            self._forget(sites, now, "replaced by the state of the worker it came from")
            for d in alerts:
                st = stored_from_json(d)
                if st.alert.key.site not in sites:
                    continue
                self.store.save(st, "taken over", "from the partition's last holder", now)
                self._adopt(st)
            self._regroup()
        return len(alerts)

    def hand_over(self, sites: set[str], detail: str = "handed over with its partition") -> None:
        """``sites`` went to another worker: their alerts are its now. They leave this
        worker's memory, and its store keeps them as resolved here, without a notification."""
        with self._lock:
            self._forget(sites, self.clock(), detail)

    def _forget(self, sites: set[str], now: datetime, detail: str) -> None:
        gone = [k for k, st in self._tracks.items() if st.alert.key.site in sites]
        gone_incidents = [i for i, st in self.incidents.items() if st.alert.key.site in sites]
        gone_watched = [k for k, st in self.watch.alerts.items() if st.alert.key.site in sites]
        for st in [
            *(self._tracks[k] for k in gone),
            *(self.incidents.get(i) for i in gone_incidents),
            *(self.watch.alerts[k] for k in gone_watched),
        ]:
            if st is not None and st.alert.state != State.RESOLVED:
                st.alert.state, st.alert.resolved_at = State.RESOLVED, now
                self.store.save(st, "moved", detail, now)
        for track in gone:
            del self._tracks[track]
        for i in gone_incidents:
            self.incidents.drop(i)
        for key in gone_watched:
            del self.watch.alerts[key]

    # -- batches --------------------------------------------------------------------------

    def batch_committed(self, batch: ReadingBatch) -> None:
        if len(batch) == 0:
            return
        now = self.clock()
        with self._lock:
            for d in np.unique(self._device_of[batch.series]).tolist():
                self.watch.seen(d, now)
            s = batch.series.astype(np.int64)
            changes: list[MemberChange] = []
            for rule in self.rules:
                on, clear = (
                    rule.judge(s, batch.values)
                    if isinstance(rule, LevelRule)
                    else rule.judge(batch.flags)
                )
                self._judge(rule, s, batch.ts_ns, batch.values, on, clear, now, changes)
            # The rules' transitions in reading time, per series, an instant at a time.
            changes.sort(key=lambda c: (c.series, c.t_ns))
            for _, same in itertools.groupby(changes, key=lambda c: (c.series, c.t_ns)):
                self._changed(list(same), now)
            self._backlog_progress(s, batch.ts_ns, now)

    def _backlog_progress(self, s: np.ndarray, ts: np.ndarray, now: datetime) -> None:
        """A series whose newest reading in the batch is on time ends its backlog; one
        still behind keeps it open."""
        waiting = {
            i: st
            for i in np.unique(s).tolist()
            if (st := self.incidents.get(i)) is not None and self.notifier.in_backlog(st)
        }
        if not waiting:
            return
        keys = np.array(sorted(waiting), dtype=np.int64)
        sel = np.isin(s, keys)
        newest = np.full(len(keys), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(newest, np.searchsorted(keys, s[sel]), ts[sel])
        for index, t_ns in zip(keys.tolist(), newest.tolist(), strict=True):
            st = waiting[index]
            if self.notifier.is_backlog(t_ns, now):
                self.notifier.backlog_seen(st, now)
            elif self.notifier.flush(st, now):
                self.store.save(st, "notified", "backlog over: data on time again", now)

    def _changed(self, changes: list[MemberChange], now: datetime) -> None:
        st, moved = self.incidents.apply(changes)
        if moved is None:
            return
        a, when = st.alert, at(moved.t_ns)
        backlog = self.notifier.is_backlog(moved.t_ns, now)
        what = f"{a.all_labels()['alertname']} {a.severity}, value {_fmt(a.value)}"
        if moved.before is None:
            self.notifier.fired(st, moved.t_ns, now, backlog=backlog)
            self.store.save(st, "firing", what, when)
        elif moved.after is None:
            self.notifier.resolved(st, moved.t_ns, now, backlog=backlog)
            self.store.save(st, "resolved", f"value {_fmt(a.value)}", when)
        else:
            self.notifier.changed(st, now, backlog=backlog)
            event = "escalated" if moved.escalated else "de-escalated"
            self.store.save(st, event, what, when, clear_ack=moved.escalated)

    def _judge(
        self,
        rule: Rule,
        s: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        on: np.ndarray,
        clear: np.ndarray,
        now: datetime,
        changes: list[MemberChange],
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
            self._run(rule, int(ss[lo]), tt[lo:hi], vv[lo:hi], bool(oo[lo]), bool(cc[lo]), changes)

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
        incident = AlertKey(INCIDENT, s.key.site, s.key.device, s.key.name).id
        return Alert(
            key=AlertKey(rule.name, s.key.site, s.key.device, s.key.name),
            severity=rule.severity,
            kind=s.kind,
            state=State.RESOLVED,
            summary=f"{place}: {s.key.measurement} {rule.summary}",
            threshold=threshold,
            unit=s.unit,
            # A member is told through its incident; the label says which, and lets
            # ``stadtpuls alerts list`` show incidents rather than their members.
            labels={"measurement": s.key.measurement, "incident": incident},
        )

    def _change(
        self, rule: Rule, index: int, st: Stored, t_ns: int, *, fired: bool
    ) -> MemberChange:
        a = st.alert
        return MemberChange(
            t_ns, index, rule.name, rule.severity, isinstance(rule, LevelRule), fired,
            a.value, a.summary, a.threshold,
        )  # fmt: skip

    def _run(
        self,
        rule: Rule,
        index: int,
        t: npt.NDArray[np.int64],
        v: npt.NDArray[np.float64],
        on: bool,
        clear: bool,
        changes: list[MemberChange],
    ) -> None:
        """A run of one series' consecutive readings (in time order) that are all on, all
        clear or all in between: the decisions of stepping through them one by one, with
        the moment a duration is reached found by searchsorted. Each transition is saved
        at the reading time that caused it; firing and resolving are also handed to the
        series' incident through ``changes``."""
        st = self._track(rule, index)
        a, e = st.alert, st.engine
        for_ns = rule.for_ns if isinstance(rule, LevelRule) else 0
        if on:
            if a.state == State.RESOLVED:
                a.state, a.since, a.value = State.PENDING, at(int(t[0])), float(v[0])
                e["since_ns"] = int(t[0])
                e.pop("clear_since_ns", None)
                if for_ns > 0:
                    self.store.save(st, "pending", f"value {_fmt(float(v[0]))}", at(int(t[0])))
            if a.state == State.PENDING:
                k = int(np.searchsorted(t, e["since_ns"] + for_ns, side="left"))
                if k == len(t):
                    return  # not yet for long enough
                a.state, a.fired_at, a.resolved_at = State.FIRING, at(int(t[k])), None
                a.value = float(v[k])
                a.acked_by = a.acked_at = None
                changes.append(self._change(rule, index, st, int(t[k]), fired=True))
                self.store.save(st, "firing", f"value {_fmt(a.value)}", at(int(t[k])))
            # Firing: beyond the threshold again, so any wait for the clear level restarts.
            e.pop("clear_since_ns", None)
            a.value = float(v[-1])
            return
        if a.state == State.RESOLVED:
            return
        if a.state == State.PENDING:
            a.state = State.RESOLVED
            self.store.save(st, "cancelled", "condition ended before its duration", at(int(t[0])))
            return
        # Firing: it resolves once it has stayed on the safe side of the clear level for
        # clear_for; a reading beyond the clear level starts that wait again.
        if not clear:
            e.pop("clear_since_ns", None)
            return
        e.setdefault("clear_since_ns", int(t[0]))
        k = int(np.searchsorted(t, e["clear_since_ns"] + rule.clear_for_ns, side="left"))
        if k < len(t):
            a.state, a.resolved_at, a.value = State.RESOLVED, at(int(t[k])), float(v[k])
            changes.append(self._change(rule, index, st, int(t[k]), fired=False))
            self.store.save(st, "resolved", f"value {_fmt(a.value)}", at(int(t[k])))

    # -- the scheduler's tick -------------------------------------------------------------

    def tick(self) -> None:
        """Device silence, pipeline health, acknowledgements made elsewhere, backlogs that
        went quiet, repeats, and notifications held back by a silence or flapping that has
        since ended."""
        now = self.clock()
        with self._lock:
            self._sync_acks()
            self.watch.tick(now)
            for st in self.incidents:
                if self.notifier.backlog_quiet(st, now) and self.notifier.flush(st, now):
                    self.store.save(st, "notified", "backlog over: quiet for a while", now)
            for st in [*self.incidents, *self.watch]:
                self.notifier.reconcile(st, now)

    def _sync_acks(self) -> None:
        """Acknowledgements written to the shared file (the command line): of an incident,
        or of one of its members, which stands for the incident."""
        acks = self.store.acks()
        for st in [*self.incidents, *self.watch]:
            if st.alert.state == State.FIRING and st.alert.id in acks:
                st.alert.acked_by, st.alert.acked_at = acks[st.alert.id]
        for (_, index), st in self._tracks.items():
            inc = self.incidents.get(index)
            if st.alert.id in acks and inc is not None and inc.alert.state == State.FIRING:
                st.alert.acked_by, st.alert.acked_at = acks[st.alert.id]
                if inc.alert.acked_by is None:
                    inc.alert.acked_by, inc.alert.acked_at = acks[st.alert.id]

    def silence_window(self, device: Device) -> timedelta:
        return self.watch.silence_window(device)

    # -- digest ---------------------------------------------------------------------------

    def digest(self, site: str, summary: dict[str, object]) -> None:
        """Send a site's daily digest (``alerts.digest`` computes it) to the channels."""
        kind = self.registry.sites[site].kind
        now = self.clock()
        self.sink.submit(
            Notification(Event.DIGEST, now, self.prefix, digest=dict(summary), site=site, kind=kind)
        )
        self.store.record("", "digest", f"site {site}", now)
