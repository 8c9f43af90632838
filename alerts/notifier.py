"""What the channels are told, and when: silences, flap damping, backlogs and repeats.

The engine decides transitions in reading time; this module turns them into
notifications. It remembers per alert what the channels last heard (``told``: firing or
resolved, the level and the labels), so a notification held back by a silence, by
flapping or by a backlog goes out later as the one that brings the channels up to date,
not as a replay of everything in between.

**Backlogs.** A transition whose reading lies more than ``backlog_after`` behind the wall
clock was delayed (a gateway offline, the journal drained after a database outage). It is
recorded at its reading time like any other, but not told at once: episodes that fire and
resolve inside the backlog are collected, and once the backlog of the series is over (a
reading arrives less than ``backlog_after`` late, or none arrived for ``backlog_after``)
the channels get one BACKLOG summary of them, plus one FIRING (or ESCALATED) if the
incident is still firing then. A resolution of an incident the channels knew as firing is
told at once: it ends something they are waiting on. Fires inside a backlog do not count
toward flapping: many episodes drained in seconds say nothing about the live signal.

Flapping counts fires by their reading time; repeats are wall-clock, as they remind
people.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from alerts.config import AlertsConfig
from alerts.incidents import at
from alerts.model import SEVERITY_RANK, Episode, Event, Notification, Severity, State
from alerts.state import AlertStore, Stored

MAX_EPISODES = 100  # kept per backlog; a summary names how many more there were


class NotificationSink(Protocol):
    def submit(self, notification: Notification) -> None: ...


def ns(t: datetime) -> int:
    return round(t.timestamp() * 1e9)


class Notifier:
    def __init__(
        self, config: AlertsConfig, store: AlertStore, sink: NotificationSink, prefix: str
    ) -> None:
        self.config = config
        self.store = store
        self.sink = sink
        self.prefix = prefix

    # -- transitions ----------------------------------------------------------------------

    def is_backlog(self, t_ns: int, now: datetime) -> bool:
        return now - at(t_ns) > self.config.backlog_after

    def fired(self, st: Stored, t_ns: int, now: datetime, *, backlog: bool = False) -> None:
        e = st.engine
        if backlog:
            self._episodes(st, now).append(
                {"fired": t_ns, "resolved": None, "severity": str(st.alert.severity),
                 "rule": st.alert.all_labels()["alertname"], "value": st.alert.value}
            )  # fmt: skip
            return
        self.flush(st, now, catch_up=False)
        window = round(self.config.flap_window.total_seconds() * 1e9)
        fires = [f for f in e.get("fire_ns", []) if t_ns - f < window]
        fires.append(t_ns)
        e["fire_ns"] = fires
        if len(fires) >= self.config.flap_max and not e.get("flapping"):
            e["flapping"] = True
            self.store.record(
                st.alert.id, "flapping",
                f"fired {len(fires)} times within {self.config.flap_window}", now,
            )  # fmt: skip
        self.notify(st, Event.FIRING, now)

    def changed(self, st: Stored, now: datetime, *, backlog: bool = False) -> None:
        if backlog:
            episodes = self._episodes(st, now)
            if episodes and episodes[-1]["resolved"] is None:
                episode, a = episodes[-1], st.alert
                if SEVERITY_RANK[a.severity] > SEVERITY_RANK[Severity(episode["severity"])]:
                    episode["severity"] = str(a.severity)
                    episode["rule"] = a.all_labels()["alertname"]
                    episode["value"] = a.value
            # An escalation of the episode the channels know is told at the flush.
            return
        self.flush(st, now, catch_up=False)
        # Never told (it fired inside the backlog): this is the channels' first word of it.
        self.notify(st, Event.ESCALATED if self._told(st) == "firing" else Event.FIRING, now)

    def resolved(self, st: Stored, t_ns: int, now: datetime, *, backlog: bool = False) -> None:
        open_episode = (
            "backlog" in st.engine
            and bool(st.engine["backlog"]["episodes"])
            and st.engine["backlog"]["episodes"][-1]["resolved"] is None
        )
        if open_episode:
            # Fired inside the backlog: it ends there, in the summary, live or not.
            st.engine["backlog"]["episodes"][-1]["resolved"] = t_ns
            if backlog:
                return
        if not backlog:
            self.flush(st, now, catch_up=False)
        if self._told(st) == "firing":
            self.notify(st, Event.RESOLVED, now)

    # -- backlogs -------------------------------------------------------------------------

    def _episodes(self, st: Stored, now: datetime) -> list[dict[str, Any]]:
        b = st.engine.setdefault("backlog", {"episodes": [], "more": 0})
        b["last"] = now.isoformat()
        episodes: list[dict[str, Any]] = b["episodes"]
        done = [i for i, ep in enumerate(episodes) if ep["resolved"] is not None]
        if len(done) >= MAX_EPISODES:
            del episodes[done[0]]
            b["more"] += 1
        return episodes

    def in_backlog(self, st: Stored) -> bool:
        return "backlog" in st.engine

    def backlog_seen(self, st: Stored, now: datetime) -> None:
        """More delayed readings of the series arrived: its backlog is not over yet."""
        if "backlog" in st.engine:
            st.engine["backlog"]["last"] = now.isoformat()

    def backlog_quiet(self, st: Stored, now: datetime) -> bool:
        b = st.engine.get("backlog")
        return b is not None and now - datetime.fromisoformat(b["last"]) >= (
            self.config.backlog_after
        )

    def flush(self, st: Stored, now: datetime, *, catch_up: bool = True) -> bool:
        """End the series' backlog: one summary of its finished episodes, then (with
        ``catch_up``; a live transition that ends the backlog tells its own news) bring
        the channels up to date with the incident's state. False if there was none."""
        b = st.engine.pop("backlog", None)
        if b is None:
            return False
        a = st.alert
        done = [
            Episode(at(ep["fired"]), at(ep["resolved"]), Severity(ep["severity"]), ep["rule"],
                    ep["value"])
            for ep in b["episodes"]
            if ep["resolved"] is not None
        ]  # fmt: skip
        if done:
            more = f" (and {b['more']} earlier)" if b["more"] else ""
            self.notify(st, Event.BACKLOG, now, tuple(done))
            self.store.record(
                a.id, "backlog", f"{len(done)} episode(s){more} while data was delayed", now
            )
        if catch_up and a.state == State.FIRING:
            if self._told(st) != "firing":
                self.notify(st, Event.FIRING, now)
            elif st.engine["told"].get("level") != st.engine.get("level"):
                self.notify(st, Event.ESCALATED, now)
        return True

    # -- telling the channels ---------------------------------------------------------------

    def _told(self, st: Stored) -> str | None:
        told = st.engine.get("told")
        return None if told is None else str(told["state"])

    def notify(
        self, st: Stored, event: Event, now: datetime, episodes: tuple[Episode, ...] = ()
    ) -> bool:
        """Hand a notification to the sink unless a silence or flapping holds it back;
        ``told`` remembers what the channels were last told. True if it was handed on."""
        a, e = st.alert, st.engine
        labels = a.all_labels()
        silences = [s for s in self.store.silences(now) if s.matches(labels)]
        if silences:
            self.store.record(a.id, "suppressed", f"{event}: silence {silences[0].id}", now)
            return False
        if e.get("flapping") and event is not Event.BACKLOG:
            self.store.record(a.id, "suppressed", f"{event}: flapping", now)
            return False
        told = e.get("told")
        previous = None
        if told is not None and told["state"] == "firing" and told["labels"] != labels:
            previous = replace(
                a, severity=Severity(told["severity"]), labels=dict(told["labels"]),
                annotations={},
            )  # fmt: skip
        snapshot = replace(a, labels=dict(a.labels), annotations=dict(a.annotations))
        self.sink.submit(
            Notification(event, now, self.prefix, alert=snapshot, previous=previous,
                         episodes=episodes)
        )  # fmt: skip
        if event is not Event.BACKLOG:
            e["told"] = {
                "state": "resolved" if event is Event.RESOLVED else "firing",
                "level": e.get("level"),
                "severity": str(a.severity),
                "labels": labels,
            }
            e["notified_at"] = now.isoformat()
        return True

    def reconcile(self, st: Stored, now: datetime) -> None:
        """At a tick: the end of flapping, notifications held back until now, repeats."""
        a, e = st.alert, st.engine
        if "backlog" in e:
            return  # the flush brings the channels up to date
        if e.get("flapping"):
            fires = e.get("fire_ns", [])
            if fires and now - at(max(fires)) < self.config.flap_window:
                return
            e["flapping"] = False
            self.store.save(st, "stable", "no longer flapping", now)
        told = self._told(st)
        if a.state == State.FIRING:
            if told != "firing":
                if self.notify(st, Event.FIRING, now):
                    self.store.save(st, "notified", "firing, after a silence or flapping", now)
            elif e["told"].get("level") != e.get("level"):
                if self.notify(st, Event.ESCALATED, now):
                    self.store.save(st, "notified", "escalated, after a silence", now)
            elif a.acked_by is None:
                last = datetime.fromisoformat(e["notified_at"])
                if now - last >= self.config.repeat_interval and self.notify(st, Event.REPEAT, now):
                    self.store.save(st, "repeat", f"unacknowledged since {a.fired_at}", now)
        elif (
            a.state == State.RESOLVED and told == "firing" and self.notify(st, Event.RESOLVED, now)
        ):
            self.store.save(st, "notified", "resolved, after a silence or flapping", now)

    @staticmethod
    def migrate(st: Stored) -> None:
        """Bookkeeping written before ``told`` existed: what was notified, as told."""
        e = st.engine
        if "told" not in e and e.get("notified") in ("firing", "resolved"):
            e["told"] = {
                "state": e.pop("notified"),
                "level": e.get("level"),
                "severity": str(st.alert.severity),
                "labels": st.alert.all_labels(),
            }
