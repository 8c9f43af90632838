"""``stadtpuls quarantine``: list, show and replay quarantined messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stadtpuls.cli.common import CONFIG, fail, load
from stadtpuls.cli.progress import Progress


@click.group()
def quarantine() -> None:
    """List, show and replay quarantined messages."""


def _quarantine(config_path: Path | None) -> Any:
    from ingest.quarantine import Quarantine

    settings, _ = load(config_path)
    if not settings.database_path.exists():
        fail(f"no database at {settings.database_path}")
    return Quarantine(settings.database_path)


def _preview(payload: bytes, width: int = 60) -> str:
    text = payload[:width].decode("utf-8", errors="replace")
    return text.replace("\n", "\\n") + ("…" if len(payload) > width else "")


@quarantine.command("list")
@CONFIG
@click.option(
    "--reason", default=None, help="Only entries with this reason, e.g. not_json, unknown_device."
)
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="As a JSON array, for tools.")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed entries.")
def quarantine_list(
    config_path: Path | None, reason: str | None, limit: int, as_json: bool, include_replayed: bool
) -> None:
    """Quarantined messages waiting for a replay (newest first): id, when it arrived
    (UTC), reason, topic and what was wrong, and how often the same message came again;
    then the count waiting per reason. See README, "Quarantine"."""
    from export.stream import iso_utc

    q = _quarantine(config_path)
    entries = q.list(reason=reason, limit=limit, include_replayed=include_replayed)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": e.id,
                        "received": iso_utc(e.received_ns),
                        "topic": e.topic,
                        "reason": e.reason,
                        "detail": e.detail,
                        "size": len(e.payload),
                        "times": e.times,
                        "last_received": iso_utc(e.last_received_ns),
                        "replayed": e.replayed_ns is not None,
                        "records": None if e.records is None else list(e.records),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    for e in entries:
        seen = f" (x{e.times}, last {iso_utc(e.last_received_ns)})" if e.times > 1 else ""
        click.echo(
            f"{e.id:>7}  {iso_utc(e.received_ns)}  {e.reason:<20} {e.topic}  {e.detail}{seen}"
        )
    counts = q.counts()
    click.echo(
        f"{sum(counts.values())} waiting: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    )


@quarantine.command("show")
@CONFIG
@click.argument("entry_id", type=int)
def quarantine_show(config_path: Path | None, entry_id: int) -> None:
    """One quarantined message, ENTRY_ID from `stadtpuls quarantine list`: its topic,
    reason and detail, when it arrived and how often, whether it was replayed, and its
    payload (as text, or in hex when it is not UTF-8)."""
    from export.stream import iso_utc

    entry = _quarantine(config_path).get(entry_id)
    if entry is None:
        fail(f"no quarantine entry {entry_id}")
        return
    click.echo(f"id:       {entry.id}")
    click.echo(f"received: {iso_utc(entry.received_ns)}")
    click.echo(f"topic:    {entry.topic}")
    click.echo(f"reason:   {entry.reason}")
    click.echo(f"detail:   {entry.detail}")
    if entry.records is not None:
        refused = ", ".join(str(i) for i in entry.records)
        click.echo(f"records:  {refused} refused; the message's other records were stored")
    click.echo(f"seen:     {entry.times} time(s), last {iso_utc(entry.last_received_ns)}")
    click.echo(f"replayed: {'yes' if entry.replayed_ns else 'no'}")
    click.echo(f"payload ({len(entry.payload)} bytes):")
    try:
        click.echo(entry.payload.decode("utf-8"))
    except UnicodeDecodeError:
        click.echo(entry.payload.hex(" ", 16))


@quarantine.command("replay")
@CONFIG
@click.argument("entry_ids", type=int, nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every waiting entry.")
def quarantine_replay(
    config_path: Path | None, entry_ids: tuple[int, ...], replay_all: bool
) -> None:
    """Decode quarantined messages again (after a registry fix) and store those that pass."""
    from ingest.anomaly import LimitCheck
    from stadtpuls.service import build_decoder, build_store

    settings, registry = load(config_path)
    q = _quarantine(config_path)
    if replay_all:
        entries = list(q.pending())
    else:
        entries = [e for e in (q.get(i) for i in entry_ids) if e is not None]
    if not entries:
        fail("nothing to replay: give entry ids or --all")
    decoder = build_decoder(settings, registry)
    store = build_store(settings, registry)
    accepted = 0
    # On stderr: entries done, readings stored so far and the time left; the lines per
    # entry stay on stdout.
    try:
        with Progress("replaying", len(entries), unit="readings stored") as bar:
            for entry in entries:
                result = q.replay(entry, decoder, LimitCheck(registry.series), store)
                if result.reason is None:
                    accepted += 1
                    bar.echo(f"{entry.id}: stored {result.stored} readings")
                else:
                    # Records that pass now are stored even while others are still refused.
                    stored = f"stored {result.stored} readings, " if result.stored else ""
                    bar.echo(
                        f"{entry.id}: {stored}still rejected: {result.reason}: {result.detail}"
                    )
                bar.advance(1, result.stored)
    finally:
        store.close()
    click.echo(
        f"replayed {len(entries)}: {accepted} stored, {len(entries) - accepted} still rejected"
    )
