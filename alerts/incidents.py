"""One incident per series: the rules on a series are grouped, so a CO2 peak that crosses
the registry's warn and alarm levels and both Umweltbundesamt rules is one alert that
escalates and de-escalates, not four.

Each rule keeps its own track on the series (``alerts.engine``: pending, firing, resolved,
in reading time); this module folds the tracks' firing and resolved transitions into the
series' incident, as Alertmanager's inhibit rules would: the highest firing member leads,
the others are inhibited and only listed. Members are ranked by severity, and at equal
severity a threshold outranks an anomaly detector (a value beyond a level says more than
a sensor behaving oddly). An anomaly that fires while a threshold member fires is folded
into the incident: it is listed, but it neither changes the incident's level nor keeps it
open once the thresholds have resolved, since the anomaly is most likely the threshold
incident itself (the step when a window is opened). An anomaly on a series with no
threshold firing opens the incident on its own.

The incident fires when its first member fires, changes level (``Event.ESCALATED``) when
the leading member's rank changes, and resolves when no member that counts is firing.
Its id is ``incident/{site}/{device}/{channel}``; its ``alertname`` label is the leading
rule's name, so silences and Alertmanager routes written for rules still match.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from alerts.model import SEVERITY_RANK, Alert, AlertKey, Severity, State
from alerts.state import Stored
from devices.registry import Registry

INCIDENT = "incident"


def at(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def level(severity: Severity, threshold: bool) -> int:
    """A member's rank: by severity, then threshold over anomaly."""
    return SEVERITY_RANK[severity] * 2 + int(threshold)


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A rule's track on a series fired or resolved, at the reading time ``t_ns``."""

    t_ns: int
    series: int
    rule: str
    severity: Severity
    threshold: bool  # a threshold (LevelRule), not an anomaly flag
    fired: bool
    value: float | None
    summary: str = ""
    limit: float | None = None  # the threshold's level, None for an anomaly


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """The incident's level changed at ``t_ns``: None before means it fired, None after
    means it resolved."""

    t_ns: int
    before: int | None
    after: int | None

    @property
    def escalated(self) -> bool:
        return self.before is not None and self.after is not None and self.after > self.before


class Incidents:
    """The incidents of all series, by series index. Not thread-safe: the engine's lock
    guards it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_series: dict[int, Stored] = {}

    def __iter__(self) -> Iterator[Stored]:
        return iter(self._by_series.values())

    def items(self) -> list[tuple[int, Stored]]:
        return list(self._by_series.items())

    def get(self, index: int) -> Stored | None:
        return self._by_series.get(index)

    def adopt(self, index: int, st: Stored) -> None:
        self._by_series[index] = st

    def drop(self, index: int) -> None:
        self._by_series.pop(index, None)

    def _incident(self, index: int) -> Stored:
        st = self._by_series.get(index)
        if st is None:
            s = self.registry.series[index]
            st = Stored(
                Alert(
                    key=AlertKey(INCIDENT, s.key.site, s.key.device, s.key.name),
                    severity=Severity.WARNING,
                    kind=s.kind,
                    state=State.RESOLVED,
                    summary=f"{s.key.site}/{s.key.device}/{s.key.name}: {s.key.measurement}",
                    unit=s.unit,
                    labels={"measurement": s.key.measurement},
                )
            )
            self._by_series[index] = st
        return st

    def apply(self, changes: Sequence[MemberChange]) -> tuple[Stored, IncidentChange | None]:
        """Fold the transitions of one series' members at one reading time into its
        incident, all at once: two members resolving on the same reading end the
        incident, they do not de-escalate it first."""
        change = changes[-1]
        st = self._incident(change.series)
        a, e = st.alert, st.engine
        members: dict[str, dict[str, Any]] = e.setdefault("members", {})
        before: int | None = e.get("level")
        for c in sorted(changes, key=lambda c: not c.threshold):
            if not c.fired:
                members.pop(c.rule, None)
                continue
            members[c.rule] = {
                "level": level(c.severity, c.threshold),
                "severity": str(c.severity),
                "threshold": c.threshold,
                "folded": not c.threshold and any(m["threshold"] for m in members.values()),
                "t": c.t_ns,
                "value": c.value,
                "summary": c.summary,
                "limit": c.limit,
            }
        counted = {r: m for r, m in members.items() if not m["folded"]}
        # The highest rank leads; among equals the one firing longest, so the lead (and
        # with it the alertname label) does not change while nothing of substance does.
        lead = min(counted, key=lambda r: (-counted[r]["level"], counted[r]["t"]), default=None)
        after = None if lead is None else int(counted[lead]["level"])
        a.annotations["members"] = ", ".join(
            sorted(members, key=lambda r: (-members[r]["level"], r))
        )
        if lead is not None:
            m = counted[lead]
            a.severity = Severity(m["severity"])
            a.summary = m["summary"]
            a.threshold = m["limit"]
            a.labels["alertname"] = lead
        if change.value is not None:
            a.value = change.value
        if before == after:
            return st, None
        e["level"] = after
        when = at(change.t_ns)
        if before is None:
            a.state, a.fired_at, a.since, a.resolved_at = State.FIRING, when, when, None
            a.acked_by = a.acked_at = None
            a.annotations["peak_severity"] = str(a.severity)
        elif after is None:
            a.state, a.resolved_at = State.RESOLVED, when
        else:
            peak = Severity(a.annotations.get("peak_severity", str(a.severity)))
            if SEVERITY_RANK[a.severity] > SEVERITY_RANK[peak]:
                a.annotations["peak_severity"] = str(a.severity)
            if after > before:
                a.acked_by = a.acked_at = None  # a worse state asks for a new acknowledgement
        if after is not None:
            a.annotations["severity_since"] = when.isoformat()
        return st, IncidentChange(change.t_ns, before, after)
