"""``stadtpuls export`` and ``stadtpuls tokens``: the students' export from the command line,
and the read tokens a teacher hands out for the export API and page."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from stadtpuls.cli.common import CONFIG, fail, load, local_time, parse_time, table
from stadtpuls.cli.progress import Progress

if TYPE_CHECKING:
    from ingest.stores.base import ReadingSource

# The choices of ExportFormat, Resolution, Layout and Statistic (export/formats.py,
# export/query.py), written out so that --help need not import pyarrow and numpy with
# them; tests/unit/test_cli_help.py keeps them equal.
FORMATS = ("csv", "csv-de", "json", "ndjson", "parquet", "zip")
RESOLUTIONS = ("raw", "1min", "15min", "1h", "1d")
LAYOUTS = ("long", "wide")
STATISTICS = ("mean", "min", "max")


@click.command()
@CONFIG
@click.option("--site", required=True, help="One site of the registry.")
@click.option(
    "--device", "devices", multiple=True, help="A device (room); repeatable. All if none."
)
@click.option("--measurement", "measurements", multiple=True, help="Repeatable. All if none.")
@click.option("--start", "start", required=True, help="ISO 8601; UTC unless an offset is given")
@click.option("--end", "end", required=True, help="ISO 8601, exclusive")
@click.option("--resolution", type=click.Choice(RESOLUTIONS), default="raw", show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option("--layout", type=click.Choice(LAYOUTS), default="long", show_default=True)
@click.option(
    "--statistic",
    type=click.Choice(STATISTICS),
    default="mean",
    show_default=True,
    help="The value per bucket in the wide layout (long carries mean, min and max).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output file (default: stdout). With it, progress on stderr: rows, time left.",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def export(
    config_path: Path | None,
    site: str,
    devices: tuple[str, ...],
    measurements: tuple[str, ...],
    start: str,
    end: str,
    resolution: str,
    fmt: str,
    layout: str,
    statistic: str,
    out: Path | None,
    quiet: bool,
) -> None:
    """Export a site's readings, streamed (see README, "Export formats")."""
    from export.formats import ExportFormat
    from export.query import ExportRefused, ExportRequest, Layout, Resolution, Statistic
    from export.stream import ExportStats, export_stream
    from stadtpuls.service import build_store, flux_source

    settings, registry = load(config_path)
    if site not in registry.sites:
        fail(f"site {site!r} is not in the registry")
    request = ExportRequest(
        site,
        parse_time(start),
        parse_time(end),
        devices,
        measurements,
        Resolution(resolution),
        Layout(layout),
        Statistic(statistic),
    )
    source: ReadingSource
    close: Callable[[], None]
    if settings.store.backend == "sqlite":
        store = build_store(settings, registry)
        source, close = store, store.close
    else:
        # Not build_store: that would start the InfluxDB drain, which an export must not run.
        flux = flux_source(settings, registry)
        source, close = flux, flux.close
    stats = ExportStats()
    # Progress through the range (the store is read one day at a time), with the rows
    # written so far and the time left at the pace so far.
    span_s = max(1.0, (request.end_ns - request.start_ns) / 1e9)
    try:
        with Progress("exporting", span_s, hidden=quiet or out is None) as bar:

            def progress(t_ns: int) -> None:
                bar.update((t_ns - request.start_ns) / 1e9, stats.rows)

            try:
                chunks = export_stream(
                    source, registry, request, ExportFormat(fmt), progress=progress, stats=stats,
                    licence=settings.export.licence,
                )  # fmt: skip
            except ExportRefused as exc:
                fail(str(exc))
                return
            if out is None:
                _write(chunks, sys.stdout.buffer)
            else:
                with out.open("wb") as fh:
                    _write(chunks, fh)
            bar.update(span_s, stats.rows)
    finally:
        close()
    where = f" to {out}" if out is not None else ""
    click.echo(f"exported {stats.rows} rows ({stats.bytes} bytes){where}", err=True)


def _write(chunks: Iterable[bytes], sink: BinaryIO) -> None:
    for chunk in chunks:
        sink.write(chunk)
    sink.flush()


@click.group()
def tokens() -> None:
    """Read tokens for the students' export: create, list, revoke, and the export log."""


def _iso(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@tokens.command("create")
@CONFIG
@click.option("--site", required=True, help="The school the token may read.")
@click.option("--room", default=None, help="Narrow the token to one room (device).")
@click.option(
    "--expires", default=None, help="Lifetime: 30d, 12h, ... (default export.token_expiry)"
)
@click.option("--label", default="", help="Who it is for, e.g. '7b physics, Ms Schulz'.")
def tokens_create(
    config_path: Path | None, site: str, room: str | None, expires: str | None, label: str
) -> None:
    """Create a token; the secret is printed once and only its hash is kept."""
    from devices.registry import is_valid_id, parse_duration
    from devices.vocabulary import SiteKind
    from export.tokens import TokenStore

    settings, registry = load(config_path)
    s = registry.sites.get(site)
    if s is None:
        fail(f"site {site!r} is not in the registry")
        return
    if s.kind != SiteKind.SCHOOL:
        fail(f"{site!r} is a {s.kind}; read tokens are for schools")
    if room is not None and (not is_valid_id(room) or room not in s.devices):
        fail(f"room {room!r} is not a device of {site!r}")
    try:
        lifetime = parse_duration(expires) if expires else settings.export.token_expiry
    except ValueError as exc:
        fail(f"--expires: {exc}")
        return
    now = time.time_ns()
    store = TokenStore(settings.token_db_path)
    try:
        token_id, secret = store.create(
            site, room, now + int(lifetime / timedelta(microseconds=1)) * 1000, label, now
        )
    finally:
        store.close()
    scope = f"{site}/{room}" if room else site
    until = _iso(now + int(lifetime.total_seconds() * 1e9))
    click.echo(f"token {token_id} for {scope}, valid until {until}")
    click.echo(f"secret (shown once): {secret}")
    click.echo(
        f"page: http://{settings.http.host}:{settings.http.port}/students#token={secret}",
    )


@tokens.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True)
def tokens_list(config_path: Path | None, as_json: bool) -> None:
    """Every token with its scope, expiry, status and number of exports."""
    from export.tokens import TokenStore

    settings, _ = load(config_path)
    store = TokenStore(settings.token_db_path)
    try:
        infos = store.all()
    finally:
        store.close()
    now = time.time_ns()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": t.id,
                        "site": t.site,
                        "room": t.device,
                        "label": t.label,
                        "created": _iso(t.created_ns),
                        "expires": _iso(t.expires_ns),
                        "status": t.status(now),
                        "exports": t.exports,
                        "last_export": _iso(t.last_export_ns),
                    }
                    for t in infos
                ],
                indent=2,
            )
        )
        return
    for t in infos:
        scope = f"{t.site}/{t.device}" if t.device else t.site
        click.echo(
            f"{t.id:>5}  {t.status(now):<8} {scope:<36} expires {_iso(t.expires_ns)}  "
            f"exports {t.exports:<5} {t.label}"
        )


@tokens.command("revoke")
@CONFIG
@click.argument("token_id", type=int)
def tokens_revoke(config_path: Path | None, token_id: int) -> None:
    """Revoke a token at once; requests with it are refused from now on."""
    from export.tokens import TokenStore

    settings, _ = load(config_path)
    store = TokenStore(settings.token_db_path)
    try:
        done = store.revoke(token_id, time.time_ns())
    finally:
        store.close()
    if not done:
        fail(f"no active token {token_id}")
    click.echo(f"token {token_id} revoked")


@tokens.command("log")
@CONFIG
@click.option("--token", "token_id", type=int, default=None, help="Only this token's exports.")
@click.option("--limit", type=int, default=50, show_default=True)
def tokens_log(config_path: Path | None, token_id: int | None, limit: int) -> None:
    """The export log, newest first, in columns: entry, time (Berlin), token, outcome,
    rows, bytes and what was asked."""
    from export.tokens import TokenStore

    settings, _ = load(config_path)
    store = TokenStore(settings.token_db_path)
    try:
        entries = store.entries(token_id, limit)
    finally:
        store.close()
    if not entries:
        click.echo("no exports logged" + (f" for token {token_id}" if token_id else ""))
        return
    rows = [
        (
            str(e.id),
            local_time(e.at_ns, seconds=True),
            "-" if e.token_id is None else str(e.token_id),
            e.status,
            "-" if e.rows is None else f"{e.rows:,}",
            "-" if e.bytes is None else f"{e.bytes:,}",
            _request_text(e.what),
        )
        for e in entries
    ]
    header = ("ENTRY", "TIME", "TOKEN", "OUTCOME", "ROWS", "BYTES", "REQUEST")
    click.echo(table(header, rows, right=(0, 2, 4, 5)))


def _request_text(what: str) -> str:
    """The logged request (its query parameters as JSON) as ``site=s1 start=...``; any
    other text as it is."""
    try:
        params = json.loads(what)
    except ValueError:
        return what
    if not isinstance(params, dict):
        return what
    return " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items()
    )
