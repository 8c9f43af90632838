"""``stadtpuls alerts``: list, acknowledge and silence alerts, and read their history.

The commands work on the alert state file the running service uses (``{data_dir}/
alerts.sqlite``); the service reads acknowledgements and silences from it before it
decides each notification, so they take effect without a restart.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from stadtpuls.cli.common import CONFIG, fail, load, local_time, table
from stadtpuls.cli.progress import format_seconds

if TYPE_CHECKING:
    from alerts.model import Alert
    from alerts.state import AlertStore, Silence
    from devices.registry import Registry


def _store(config_path: Path | None) -> AlertStore:
    from alerts.state import AlertStore

    settings, _ = load(config_path)
    return AlertStore(settings.alerts_db_path)


def _who(by: str | None) -> str:
    who = by or os.environ.get("USER") or ""
    if not who.strip():
        fail("say who you are with --by")
    return who.strip()


def canonical_id(alert_id: str) -> str:
    """An alert id as stored: ``rule/site/device/channel``. Device and pipeline alerts
    have an empty channel (and site and device), so their ids end in slashes
    (``device-silent/s1/room-1/``, ``broker-down///``); they may be given without."""
    parts = alert_id.split("/")
    return "/".join(parts + [""] * (4 - len(parts))) if len(parts) < 4 else alert_id


def _find(store: AlertStore, alert_id: str) -> Alert | None:
    """The alert of that id, given with or without its trailing slashes."""
    for candidate in dict.fromkeys((alert_id, canonical_id(alert_id))):
        found = store.get(candidate)
        if found is not None:
            return found.alert
    return None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _span(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """``--for``: a number with a unit. A bare ``8`` is refused: eight what?"""
    m = _DURATION.match(value)
    if m is None:
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
            raise click.BadParameter(
                f"{value.strip()!r} has no unit: write {value.strip()}h for hours or "
                f"{value.strip()}m for minutes (units: s, m, h, d)"
            )
        raise click.BadParameter(
            f"{value!r} is not a duration: write a number and a unit, e.g. 90m, 8h or 2d"
        )
    span = timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    if span <= timedelta(0):
        raise click.BadParameter("a silence must last longer than 0")
    return span


def _matchers_text(matchers: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in matchers.items())


def _age(alert: Alert, now: datetime) -> str:
    """For how long it has been in its state, and since when (local time)."""
    from alerts.model import State

    if alert.state == State.RESOLVED and alert.resolved_at is not None:
        fired = alert.fired_at
        lasted = (
            ""
            if fired is None
            else f" after {format_seconds((alert.resolved_at - fired).total_seconds())}"
        )
        return f"resolved at {local_time(alert.resolved_at)}{lasted}"
    began = alert.fired_at if alert.state == State.FIRING else alert.since
    if began is None:
        return str(alert.state)
    return (
        f"{alert.state} for {format_seconds((now - began).total_seconds())}, "
        f"since {local_time(began)}"
    )


def _ack_text(alert: Alert) -> str:
    if not alert.acked_by:
        return "not acknowledged"
    return f"acknowledged by {alert.acked_by} at {local_time(alert.acked_at)}"


def _silence_text(silences: list[Silence]) -> str:
    if not silences:
        return "not silenced"
    last = max(silences, key=lambda s: s.ends_at)
    more = f" (and {len(silences) - 1} more)" if len(silences) > 1 else ""
    comment = f": {last.comment}" if last.comment else ""
    return (
        f"silenced until {local_time(last.ends_at)} by {last.created_by} "
        f"(silence {last.id}{comment}){more}"
    )


alerts = click.Group("alerts", help="Alerts: list, acknowledge, silence, history.")


@alerts.command("list")
@CONFIG
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved alerts.")
@click.option(
    "--members", is_flag=True, help="Also the single rules grouped into each series' incident."
)
@click.option("--json", "as_json", is_flag=True)
def alerts_list(
    config_path: Path | None, include_resolved: bool, members: bool, as_json: bool
) -> None:
    """Pending and firing alerts (and resolved ones with --all): for how long each has
    been in its state, whether it is acknowledged and whether a silence holds it back
    (times in Europe/Berlin). A series' rules are grouped into one incident
    (incident/SITE/DEVICE/CHANNEL); its members are listed with --members, or on their
    own while one waits (pending) and no incident fires."""
    from alerts.incidents import INCIDENT
    from alerts.model import State

    now = datetime.now(UTC)
    store = _store(config_path)
    try:
        states = (State.PENDING, State.FIRING) + ((State.RESOLVED,) if include_resolved else ())
        every = [s.alert for s in store.alerts(states)]
        firing = {a.id for a in every if a.key.rule == INCIDENT and a.state == State.FIRING}
        rows = [
            a
            for a in every
            if members
            or "incident" not in a.labels
            or (a.state == State.PENDING and a.labels["incident"] not in firing)
        ]
        active = store.silences(now)
        silenced = {
            a.id: []
            if a.state == State.RESOLVED
            else [s for s in active if s.matches(a.all_labels())]
            for a in rows
        }
    finally:
        store.close()
    if as_json:
        listed = []
        for a in rows:
            body = a.to_json(listing=True)
            began = a.fired_at if a.state == State.FIRING else a.since
            body["for_s"] = (
                None
                if a.state == State.RESOLVED or began is None
                else round((now - began).total_seconds(), 1)
            )
            body["silenced_by"] = [s.id for s in silenced[a.id]]
            listed.append(body)
        click.echo(json.dumps(listed, indent=2))
        return
    if not rows:
        click.echo("no alerts")
        return
    for a in rows:
        value = "" if a.value is None else f" = {a.value:.4g} {a.unit}".rstrip()
        click.echo(f"{a.state:<8} {a.severity:<8} {a.id}{value}\n         {a.summary}")
        click.echo(f"         {_age(a, now)}; {_ack_text(a)}")
        if a.state != State.RESOLVED:
            click.echo(f"         {_silence_text(silenced[a.id])}")
        if a.annotations.get("members"):
            click.echo(f"         rules firing: {a.annotations['members']}")


@alerts.command("ack")
@CONFIG
@click.argument("alert_id")
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
def alerts_ack(config_path: Path | None, alert_id: str, by: str | None) -> None:
    """Acknowledge ALERT_ID (as `stadtpuls alerts list` shows it; a device alert's id
    works without its trailing slash): repeats stop until it resolves (or escalates).
    The id of a rule grouped into an incident acknowledges the incident."""
    from alerts.model import State

    store = _store(config_path)
    try:
        # The id first: a mistyped id is the error to report, not a missing --by.
        alert = _find(store, alert_id)
        if alert is None or alert.state == State.RESOLVED:
            what = "no alert" if alert is None else "alert"
            why = "" if alert is None else " is resolved, nothing to acknowledge"
            fail(f"{what} {alert_id!r}{why} (see `stadtpuls alerts list`)")
        target = alert.id
        incident = alert.labels.get("incident")
        if incident:
            parent = store.get(incident)
            if parent is not None and parent.alert.state == State.FIRING:
                target = incident
        who = _who(by)
        ok = store.acknowledge(target, who, datetime.now(UTC))
    finally:
        store.close()
    if not ok:
        fail(f"no pending or firing alert {alert_id!r} (see `stadtpuls alerts list`)")
    click.echo(f"acknowledged {target} as {who}")


def _check_places(registry: Registry, matchers: Mapping[str, str]) -> None:
    """Refuse a silence for a site or device the registry does not have (a typo would
    silence nothing and say nothing); a glob must match at least one."""
    sites = list(registry.sites)
    site = matchers.get("site")
    if site is not None:
        sites = [s for s in sites if fnmatchcase(s, site)]
        if not sites:
            _unknown("site", site, registry.sites)
    device = matchers.get("device")
    if device is not None:
        devices = {d for s in sites for d in registry.sites[s].devices}
        if not any(fnmatchcase(d, device) for d in devices):
            _unknown("device", device, devices, "" if site is None else f" at {site!r}")


def _unknown(what: str, value: str, known: Iterable[str], where: str = "") -> NoReturn:
    from devices.registry import suggest

    glob = any(c in value for c in "*?[")
    name = f"{what} matches {value!r}" if glob else f"{what} {value!r}"
    fail(
        f"no {name}{where} in the registry, so the silence would hold nothing back; "
        f"{suggest(value, known)}"
    )


@alerts.command("silence")
@CONFIG
@click.option("--site", default=None, help="A site id, or a glob such as 'bridge-*'.")
@click.option("--device", default=None, help="A device id, or a glob.")
@click.option("--rule", default=None, help="An alert rule, e.g. limit or device-silent.")
@click.option("--match", "matches", multiple=True, help="Any label as NAME=VALUE (repeatable).")
@click.option(
    "--for",
    "span",
    default="2h",
    show_default=True,
    callback=_span,
    help="How long, with a unit: 90m, 8h, 2d (s, m, h, d). A bare number is refused.",
)
@click.option("--by", default=None, help="Who silences (default: $USER).")
@click.option("--comment", default="", help="Why, e.g. 'annual inspection'.")
def alerts_silence(
    config_path: Path | None,
    site: str | None,
    device: str | None,
    rule: str | None,
    matches: tuple[str, ...],
    span: timedelta,
    by: str | None,
    comment: str,
) -> None:
    """Hold back notifications of matching alerts, e.g. one bridge during an inspection.
    Sites and devices must be in the registry (a glob must match one of them)."""
    matchers = {k: v for k, v in (("site", site), ("device", device), ("alertname", rule)) if v}
    for m in matches:
        name, sep, value = m.partition("=")
        if not sep or not name:
            fail(f"--match {m!r}: expected NAME=VALUE")
        matchers[name] = value
    if not matchers:
        fail("give --site, --device, --rule or --match: a silence of everything is refused")
    from alerts.state import AlertStore

    settings, registry = load(config_path)
    _check_places(registry, matchers)
    who = _who(by)
    now = datetime.now(UTC)
    store = AlertStore(settings.alerts_db_path)
    try:
        s = store.add_silence(matchers, now, now + span, who, comment)
    finally:
        store.close()
    click.echo(
        f"silence {s.id}: {_matchers_text(matchers)}, until {local_time(s.ends_at)} "
        f"({format_seconds(span.total_seconds())}), by {who}"
    )


@alerts.command("unsilence")
@CONFIG
@click.argument("silence_id")
def alerts_unsilence(config_path: Path | None, silence_id: str) -> None:
    """End a silence now."""
    store = _store(config_path)
    try:
        ok = store.expire_silence(silence_id, datetime.now(UTC))
    finally:
        store.close()
    if not ok:
        fail(f"no active silence {silence_id!r} (see `stadtpuls alerts silences`)")
    click.echo(f"silence {silence_id} ended")


@alerts.command("silences")
@CONFIG
@click.option("--all", "include_past", is_flag=True, help="Include ended silences.")
def alerts_silences(config_path: Path | None, include_past: bool) -> None:
    """Active silences (all with --all): what each matches, from when until when (Berlin
    time), who set it and why."""
    now = datetime.now(UTC)
    store = _store(config_path)
    try:
        found = store.silences(None if include_past else now)
    finally:
        store.close()
    if not found:
        click.echo("no silences")
        return
    rows = [
        (
            s.id,
            "active" if s.active(now) else "ended" if s.ends_at <= now else "waiting",
            _matchers_text(s.matchers),
            local_time(s.starts_at),
            local_time(s.ends_at),
            s.created_by,
            s.comment,
        )
        for s in found
    ]
    click.echo(table(("ID", "STATE", "MATCHES", "FROM", "UNTIL", "BY", "COMMENT"), rows))


@alerts.command("history")
@CONFIG
@click.argument("alert_id", required=False)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--deliveries", is_flag=True, help="Show delivery attempts per channel instead.")
def alerts_history(
    config_path: Path | None, alert_id: str | None, limit: int, deliveries: bool
) -> None:
    """Transitions, acknowledgements and suppressions (of ALERT_ID, or all)."""
    store = _store(config_path)
    try:
        if alert_id is not None:
            found = _find(store, alert_id)
            alert_id = alert_id if found is None else found.id
        if deliveries:
            for d in store.deliveries(alert_id, limit):
                result = "ok" if d.ok else f"FAILED: {d.error}"
                click.echo(
                    f"{d.at.isoformat()}  {d.channel:<12} {d.event:<9} attempt {d.attempt}  "
                    f"{d.alert_id or '-'}  {result}"
                )
            return
        for h in store.history(alert_id, limit):
            click.echo(f"{h.at.isoformat()}  {h.event:<12} {h.alert_id or '-'}  {h.detail}")
    finally:
        store.close()
