"""``stadtpuls alerts``: list, acknowledge and silence alerts, and read their history.

The commands work on the alert state file the running service uses (``{data_dir}/
alerts.sqlite``); the service reads acknowledgements and silences from it before it
decides each notification, so they take effect without a restart.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import click

from alerts.incidents import INCIDENT
from alerts.model import State
from alerts.state import AlertStore
from devices.registry import parse_duration
from stadtpuls.cli.common import CONFIG, fail, load


def _store(config_path: Path | None) -> AlertStore:
    settings, _ = load(config_path)
    return AlertStore(settings.alerts_db_path)


def _who(by: str | None) -> str:
    who = by or os.environ.get("USER") or ""
    if not who.strip():
        fail("say who you are with --by")
    return who.strip()


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
    """Pending and firing alerts (and resolved ones with --all). A series' rules are
    grouped into one incident (incident/SITE/DEVICE/CHANNEL); its members are listed
    with --members, or on their own while one waits (pending) and no incident fires."""
    store = _store(config_path)
    try:
        states = (State.PENDING, State.FIRING) + ((State.RESOLVED,) if include_resolved else ())
        every = [s.alert for s in store.alerts(states)]
    finally:
        store.close()
    firing = {a.id for a in every if a.key.rule == INCIDENT and a.state == State.FIRING}
    rows = [
        a
        for a in every
        if members
        or "incident" not in a.labels
        or (a.state == State.PENDING and a.labels["incident"] not in firing)
    ]
    if as_json:
        click.echo(json.dumps([a.to_json(listing=True) for a in rows], indent=2))
        return
    if not rows:
        click.echo("no alerts")
        return
    for a in rows:
        ack = f"  acked by {a.acked_by}" if a.acked_by else ""
        value = "" if a.value is None else f" = {a.value:.4g} {a.unit}".rstrip()
        click.echo(f"{a.state:<8} {a.severity:<8} {a.id}{value}{ack}\n         {a.summary}")
        if a.annotations.get("members"):
            click.echo(f"         rules firing: {a.annotations['members']}")


@alerts.command("ack")
@CONFIG
@click.argument("alert_id")
@click.option("--by", default=None, help="Who acknowledges (default: $USER).")
def alerts_ack(config_path: Path | None, alert_id: str, by: str | None) -> None:
    """Acknowledge ALERT_ID: repeats stop until it resolves (or escalates). The id of a
    rule grouped into an incident acknowledges the incident."""
    who = _who(by)
    store = _store(config_path)
    try:
        ok = store.acknowledge(alert_id, who, datetime.now(UTC))
    finally:
        store.close()
    if not ok:
        fail(f"no pending or firing alert {alert_id!r} (see `stadtpuls alerts list`)")
    click.echo(f"acknowledged {alert_id} as {who}")


@alerts.command("silence")
@CONFIG
@click.option("--site", default=None, help="A site id, or a glob such as 'bridge-*'.")
@click.option("--device", default=None)
@click.option("--rule", default=None, help="An alert rule, e.g. limit or device-silent.")
@click.option("--match", "matches", multiple=True, help="Any label as NAME=VALUE (repeatable).")
@click.option("--for", "duration", default="2h", show_default=True, help="e.g. 90m, 8h.")
@click.option("--by", default=None, help="Who silences (default: $USER).")
@click.option("--comment", default="", help="Why, e.g. 'annual inspection'.")
def alerts_silence(
    config_path: Path | None,
    site: str | None,
    device: str | None,
    rule: str | None,
    matches: tuple[str, ...],
    duration: str,
    by: str | None,
    comment: str,
) -> None:
    """Hold back notifications of matching alerts, e.g. one bridge during an inspection."""
    matchers = {k: v for k, v in (("site", site), ("device", device), ("alertname", rule)) if v}
    for m in matches:
        name, sep, value = m.partition("=")
        if not sep or not name:
            fail(f"--match {m!r}: expected NAME=VALUE")
        matchers[name] = value
    if not matchers:
        fail("give --site, --device, --rule or --match: a silence of everything is refused")
    try:
        span = parse_duration(duration)
    except ValueError as exc:
        fail(f"--for: {exc}")
        raise
    who = _who(by)
    now = datetime.now(UTC)
    store = _store(config_path)
    try:
        s = store.add_silence(matchers, now, now + span, who, comment)
    finally:
        store.close()
    click.echo(f"silence {s.id}: {matchers} until {s.ends_at.isoformat()} by {who}")


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
    """Active silences (all with --all)."""
    store = _store(config_path)
    try:
        rows = store.silences(None if include_past else datetime.now(UTC))
    finally:
        store.close()
    if not rows:
        click.echo("no silences")
    for s in rows:
        click.echo(
            f"{s.id}  {dict(s.matchers)}  {s.starts_at.isoformat()} -> {s.ends_at.isoformat()}"
            f"  by {s.created_by}{'  ' + s.comment if s.comment else ''}"
        )


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
