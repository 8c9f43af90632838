"""The ``stadtpuls`` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click

from devices.registry import Registry, RegistryError, load_registry
from stadtpuls.settings import ConfigError, Settings, load_settings

CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="STADTPULS_CONFIG",
    help="Settings file (YAML). Environment variables STADTPULS_* override it.",
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _load(config_path: Path | None) -> tuple[Settings, Registry]:
    try:
        settings = load_settings(config_path)
        registry = load_registry(settings.registry)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable: _fail exits
    return settings, registry


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # apscheduler logs every run of every job at INFO: the alert tick alone, every 5 s,
    # would bury the service's own lines.
    logging.getLogger("apscheduler").setLevel(max(logging.getLevelName(level), logging.WARNING))


def _parse_time(value: str) -> int:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000


@click.group()
@click.version_option(package_name="stadtpuls")
def main() -> None:
    """Stadtpuls: bridge and classroom sensors over MQTT into a time-series store."""


@main.command("check-config")
@CONFIG
def check_config(config_path: Path | None) -> None:
    """Check the settings and the registry, then print a summary."""
    settings, registry = _load(config_path)
    devices = registry.devices()
    click.echo(
        f"ok: {len(registry.sites)} sites, {len(devices)} devices, {len(registry.series)} series; "
        f"store {settings.store.backend}; broker {settings.mqtt.host}:{settings.mqtt.port}"
    )


@main.command()
@CONFIG
@click.option(
    "--worker-index",
    type=int,
    default=None,
    help="This worker's number, 0 to count-1 (worker.index; STADTPULS_WORKER__INDEX).",
)
@click.option(
    "--worker-count",
    type=int,
    default=None,
    help="How many ingest workers share the sites (worker.count; STADTPULS_WORKER__COUNT).",
)
def run(config_path: Path | None, worker_index: int | None, worker_count: int | None) -> None:
    """Run the service until SIGTERM or Ctrl-C."""
    from stadtpuls.service import Service

    # Through the environment, which wins over the file, so one settings file can serve
    # every worker and each worker's unit or container passes only its number.
    for key, value in (("INDEX", worker_index), ("COUNT", worker_count)):
        if value is not None:
            os.environ[f"STADTPULS_WORKER__{key}"] = str(value)
    settings, registry = _load(config_path)
    _logging(settings.log_level)
    service = Service(settings, registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    stop.wait()
    service.stop()


@main.command()
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("stadtpuls-demo"),
    show_default=True,
)
@click.option("--http-port", type=int, default=8080, show_default=True)
@click.option("--seed", type=int, default=1)
@click.option(
    "--broker",
    type=click.Choice(["auto", "mosquitto", "python"]),
    default="auto",
    show_default=True,
    help="auto: Mosquitto when installed, else the pure-Python broker (amqtt).",
)
def demo(duration: float | None, data_dir: Path, http_port: int, seed: int, broker: str) -> None:
    """Everything embedded: a broker, the simulator for Dortmund, the service with SQLite."""
    from stadtpuls.demo import run_demo

    _logging("WARNING")
    sys.exit(run_demo(data_dir, duration, http_port, seed, broker))  # type: ignore[arg-type]


def _parse_fault(spec: str, registry: Registry, now_ns: int) -> Any:
    from devices.simulator import FAULT_KINDS, FaultSpec

    fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    unknown = set(fields) - {"kind", "series", "start", "duration", "magnitude"}
    if unknown:
        raise click.BadParameter(f"unknown fault field(s) {', '.join(sorted(unknown))}")
    if fields.get("kind", "spike") not in FAULT_KINDS:
        raise click.BadParameter(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
    series_name = fields.get("series")
    index = None
    if series_name is not None:
        matches = [
            s.index
            for s in registry.series
            if f"{s.key.site}/{s.key.device}/{s.key.name}" == series_name
        ]
        if not matches:
            raise click.BadParameter(f"no series {series_name!r} (site/device/channel/measurement)")
        index = matches[0]
    try:
        start_s = float(fields.get("start", "10"))
        duration_s = float(fields.get("duration", "30"))
        magnitude = float(fields.get("magnitude", "1"))
    except ValueError as exc:
        raise click.BadParameter(f"fault {spec!r}: {exc}") from None
    return FaultSpec(
        kind=fields.get("kind", "spike"),  # type: ignore[arg-type]
        series=index,
        start_ns=now_ns + int(start_s * 1e9),
        duration_ns=int(duration_s * 1e9),
        magnitude=magnitude,
    )


@main.command()
@CONFIG
@click.option("--registry", "registry_path", type=click.Path(exists=True, path_type=Path))
@click.option("--host", default=None, help="Broker host (default: the settings' mqtt.host).")
@click.option("--port", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rate", type=float, default=1.0, show_default=True, help="Bridge samples/s.")
@click.option("--block", type=int, default=0, help="Send 100 Hz blocks of N samples instead.")
@click.option("--school-interval", type=float, default=60.0, show_default=True)
@click.option("--per-message", type=click.Choice(["device", "reading"]), default="device")
@click.option("--duration", type=float, default=None, help="Seconds of data to send.")
@click.option("--fast", is_flag=True, help="Publish as fast as the broker takes it.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help="kind=spike|drift|stuck|step|gap|out_of_range,series=SITE/DEVICE/NAME,"
    "start=S,duration=S,magnitude=X",
)
def simulate(
    config_path: Path | None,
    registry_path: Path | None,
    host: str | None,
    port: int | None,
    seed: int,
    rate: float,
    block: int,
    school_interval: float,
    per_message: str,
    duration: float | None,
    fast: bool,
    faults: tuple[str, ...],
) -> None:
    """Publish realistic readings for the registry's bridges and classrooms."""
    from devices.publisher import publish
    from devices.simulator import Simulator
    from devices.topics import TopicScheme

    try:
        settings = load_settings(config_path)
        registry = load_registry(registry_path or settings.registry)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
        return
    _logging(settings.log_level)
    now_ns = time.time_ns()
    if fast and duration is None:
        _fail("--fast needs --duration: it sends that many seconds of data at once")
    # Fast mode sends the whole span at once, so the span ends now: readings from the
    # future would be refused by the service's clock-skew check.
    start_ns = now_ns - int((duration or 0) * 1e9) if fast else now_ns
    sim = Simulator(
        registry,
        TopicScheme(settings.topic_prefix),
        seed=seed,
        start_ns=start_ns,
        bridge_rate_hz=rate,
        bridge_block=block,
        school_interval_s=school_interval,
        per_message=per_message,  # type: ignore[arg-type]
        faults=[_parse_fault(f, registry, start_ns) for f in faults],
    )
    end_ns = None if duration is None else start_ns + int(duration * 1e9)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mqtt = settings.mqtt
    stats = publish(
        sim.messages(end_ns),
        host=host or mqtt.host,
        port=port or mqtt.port,
        client_id=f"stadtpuls-sim-{seed}",
        pace="fast" if fast else "realtime",
        stop=stop,
        username=mqtt.username,
        password=None if mqtt.password is None else mqtt.password.get_secret_value(),
        protocol=mqtt.protocol,
    )
    click.echo(
        f"published {stats.published} messages ({stats.samples} samples) in "
        f"{stats.seconds:.1f} s; failed {stats.failed}"
    )


@main.group()
def quarantine() -> None:
    """List, show and replay quarantined messages."""


def _quarantine(config_path: Path | None) -> Any:
    from ingest.quarantine import Quarantine

    settings, _ = _load(config_path)
    if not settings.database_path.exists():
        _fail(f"no database at {settings.database_path}")
    return Quarantine(settings.database_path)


def _preview(payload: bytes, width: int = 60) -> str:
    text = payload[:width].decode("utf-8", errors="replace")
    return text.replace("\n", "\\n") + ("…" if len(payload) > width else "")


@quarantine.command("list")
@CONFIG
@click.option("--reason", default=None)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed entries.")
def quarantine_list(
    config_path: Path | None, reason: str | None, limit: int, as_json: bool, include_replayed: bool
) -> None:
    from dashboards.export import iso_utc

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
    from dashboards.export import iso_utc

    entry = _quarantine(config_path).get(entry_id)
    if entry is None:
        _fail(f"no quarantine entry {entry_id}")
        return
    click.echo(f"id:       {entry.id}")
    click.echo(f"received: {iso_utc(entry.received_ns)}")
    click.echo(f"topic:    {entry.topic}")
    click.echo(f"reason:   {entry.reason}")
    click.echo(f"detail:   {entry.detail}")
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

    settings, registry = _load(config_path)
    q = _quarantine(config_path)
    if replay_all:
        entries = list(q.pending())
    else:
        entries = [e for e in (q.get(i) for i in entry_ids) if e is not None]
    if not entries:
        _fail("nothing to replay: give entry ids or --all")
    decoder = build_decoder(settings, registry)
    store = build_store(settings, registry)
    accepted = 0
    try:
        for entry in entries:
            result = q.replay(entry, decoder, LimitCheck(registry.series), store)
            if result.reason is None:
                accepted += 1
                click.echo(f"{entry.id}: stored {result.stored} readings")
            else:
                click.echo(f"{entry.id}: still rejected: {result.reason}: {result.detail}")
    finally:
        store.close()
    click.echo(
        f"replayed {len(entries)}: {accepted} stored, {len(entries) - accepted} still rejected"
    )


# Registered last: the export commands reuse this module's options and helpers.
from stadtpuls.cli_export import export, tokens  # noqa: E402

main.add_command(export)
main.add_command(tokens)


# The stack's commands live in their own module, which needs the helpers above.
from stadtpuls.cli_stack import broker_auth, dashboards  # noqa: E402

main.add_command(dashboards)
main.add_command(broker_auth)


# The alert commands live in their own module, which needs the helpers above.
from stadtpuls.cli_alerts import alerts  # noqa: E402

main.add_command(alerts)
