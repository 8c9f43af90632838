"""``stadtpuls check-config``, ``stadtpuls run`` and ``stadtpuls demo``: the service."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from stadtpuls.cli.common import CONFIG, load, setup_logging


@click.command("check-config")
@CONFIG
def check_config(config_path: Path | None) -> None:
    """Check the settings and the registry, then print a summary (and, on stderr, any
    warnings: settings that work but are probably not what was meant)."""
    from stadtpuls.settings import config_warnings

    settings, registry = load(config_path)
    devices = registry.devices()
    if settings.source == "nats":
        from stadtpuls.cli.nats import check_consumers

        check_consumers(settings)
        source = f"NATS {', '.join(settings.nats.servers)}, {settings.nats.partitions} partitions"
    else:
        source = f"broker {settings.mqtt.host}:{settings.mqtt.port}"
    click.echo(
        f"ok: {len(registry.sites)} sites, {len(devices)} devices, {len(registry.series)} series; "
        f"store {settings.store.backend}; {source}"
    )
    for warning in config_warnings(settings):
        click.echo(f"warning: {warning}", err=True)


@click.command()
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
    settings, registry = load(config_path)
    setup_logging(settings.log_level)
    service = Service(settings, registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    stop.wait()
    service.stop()


@click.command()
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

    setup_logging("WARNING")
    sys.exit(run_demo(data_dir, duration, http_port, seed, broker))  # type: ignore[arg-type]
