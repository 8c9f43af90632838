"""``stadtpuls simulate``: publish simulated readings to the broker."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stadtpuls.cli.common import CONFIG, fail, load, setup_logging

if TYPE_CHECKING:
    from devices.registry import Registry


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


@click.command()
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

    settings, registry = load(config_path, registry_path)
    setup_logging(settings.log_level)
    now_ns = time.time_ns()
    if fast and duration is None:
        fail("--fast needs --duration: it sends that many seconds of data at once")
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
