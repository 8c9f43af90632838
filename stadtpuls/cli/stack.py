"""CLI commands for the deployed stack: ``stadtpuls dashboards build|push`` and
``stadtpuls broker-auth write|password``. ``stadtpuls.cli`` registers them on ``main``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stadtpuls.cli.common import config_option, fail, file_option, load
from stadtpuls.cli.progress import Progress

if TYPE_CHECKING:
    from stadtpuls.settings import Settings

# The shared --config option, with the wording these commands have always shown.
CONFIG = config_option("Settings file (YAML); STADTPULS_* environment variables override it.")
PROMETHEUS_URL = click.option(
    "--prometheus-url",
    default="http://prometheus:9090",
    show_default=True,
    help="Prometheus as Grafana's server reaches it (the pipeline-health dashboard).",
)
INFLUX_URL = click.option(
    "--influx-url",
    default=None,
    help="InfluxDB as Grafana's server reaches it (default: the settings' influxdb.url).",
)
REGISTRY = file_option(
    "--registry", "registry_path", help="Registry file (default: the settings' registry)."
)


def _secret(env_var: str, file: Path | None, what: str, *, required: bool) -> str | None:
    """A secret from its file (wins) or the environment; placeholders are refused."""
    from ingest.secrets import is_placeholder

    value = (
        file.read_text(encoding="utf-8").strip() if file is not None else os.environ.get(env_var)
    )
    if value is None:
        if required:
            fail(f"{what}: set {env_var} or give its file")
        return None
    if is_placeholder(value):
        fail(f"{what} is empty or a placeholder; set a real secret")
    return value.strip()


def _influx_note(settings: Settings) -> None:
    """The dashboards query InfluxDB (Flux): with the SQLite store they stay empty. Said
    plainly, on stderr, so nobody hunts for a Grafana fault."""
    if settings.store.backend != "influxdb":
        click.echo(
            f"note: the dashboards read InfluxDB (Flux), but store.backend is "
            f"{settings.store.backend!r}: they show no data until the service stores into "
            'InfluxDB (store.backend: influxdb, see README, "Configuration")',
            err=True,
        )


dashboards: click.Group = click.Group(
    "dashboards", help="Grafana dashboards generated from the registry."
)


@dashboards.command("build")
@CONFIG
@REGISTRY
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output directory: dashboards/ and provisioning/ go in it.",
)
@INFLUX_URL
@PROMETHEUS_URL
@click.option(
    "--token-ref",
    default=None,
    help="How Grafana finds its InfluxDB token in the datasource file "
    "(default: $__file{/var/lib/stadtpuls-tokens/grafana.token}).",
)
@click.option(
    "--dashboards-path",
    default="/var/lib/grafana/dashboards",
    show_default=True,
    help="Where Grafana sees OUT/dashboards.",
)
def dashboards_build(
    config_path: Path | None,
    registry_path: Path | None,
    out: Path,
    influx_url: str | None,
    prometheus_url: str,
    token_ref: str | None,
    dashboards_path: str,
) -> None:
    """Write the dashboards and Grafana's provisioning files into OUT."""
    from dashboards.provisioning import DEFAULT_TOKEN_REF, DatasourceTarget, write_build

    settings, registry = load(config_path, registry_path)
    target = DatasourceTarget(
        influx_url or settings.influxdb.url,
        settings.influxdb.org,
        settings.influxdb.bucket,
        prometheus_url,
    )
    written = write_build(
        registry,
        target,
        out,
        token_ref=token_ref or DEFAULT_TOKEN_REF,
        dashboards_path=dashboards_path,
    )
    n = sum(1 for p in written if p.suffix == ".json")
    click.echo(f"wrote {n} dashboards and 2 provisioning files to {out}")
    _influx_note(settings)


@dashboards.command("push")
@CONFIG
@REGISTRY
@click.option(
    "--url",
    envvar="GRAFANA_URL",
    default="http://localhost:3000",
    show_default=True,
    help="Grafana's URL (or GRAFANA_URL).",
)
@file_option(
    "--token-file",
    envvar="GRAFANA_TOKEN_FILE",
    help="File holding a Grafana service-account token (or GRAFANA_TOKEN in the environment).",
)
@file_option(
    "--influx-token-file",
    envvar="GRAFANA_INFLUXDB_TOKEN_FILE",
    help="File holding the InfluxDB read token for Grafana's datasource "
    "(or GRAFANA_INFLUXDB_TOKEN); needed when the datasource is created.",
)
@INFLUX_URL
@PROMETHEUS_URL
@click.option("--force", is_flag=True, help="Overwrite dashboards changed in Grafana.")
def dashboards_push(
    config_path: Path | None,
    registry_path: Path | None,
    url: str,
    token_file: Path | None,
    influx_token_file: Path | None,
    influx_url: str | None,
    prometheus_url: str,
    force: bool,
) -> None:
    """Upsert folders, datasources and dashboards into a running Grafana."""
    import niquests
    from grafana_client.client import GrafanaException

    from dashboards.grafana import build_dashboards
    from dashboards.provisioning import DatasourceTarget
    from dashboards.push import DashboardDrift, connect, push

    settings, registry = load(config_path, registry_path)
    token = _secret("GRAFANA_TOKEN", token_file, "the Grafana token", required=True)
    assert token is not None
    influx_token = _secret(
        "GRAFANA_INFLUXDB_TOKEN", influx_token_file, "Grafana's InfluxDB token", required=False
    )
    target = DatasourceTarget(
        influx_url or settings.influxdb.url,
        settings.influxdb.org,
        settings.influxdb.bucket,
        prometheus_url,
    )
    _influx_note(settings)
    generated = build_dashboards(registry, target.bucket)
    # On stderr: dashboards handled, how many were written, and the time left.
    bar = Progress("pushing dashboards", len(generated), unit="written")
    try:
        with bar:
            report = push(
                connect(url, token),
                generated,
                target,
                influx_token=influx_token,
                force=force,
                progress=bar.update,
            )
    except DashboardDrift as exc:
        click.echo(f"pushed to {url}: {exc.report.summary()}")
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except (GrafanaException, ValueError) as exc:
        fail(f"push to {url} failed: {exc}")
        return
    except (niquests.RequestException, OSError) as exc:
        # Unreachable is an operator's problem (a wrong URL, Grafana down), not drift:
        # exit 2 with the reason, no traceback.
        fail(f"push to {url} failed: Grafana unreachable: {exc}")
        return
    click.echo(f"pushed to {url}: {report.summary()}")


broker_auth: click.Group = click.Group(
    "broker-auth",
    help='Mosquitto password file and ACL from the registry (README, "Run the full stack").',
)


MASTER_SECRET_FILE = file_option(
    "--master-secret-file",
    envvar="STADTPULS_MQTT_MASTER_SECRET_FILE",
    help="File holding the master secret every MQTT password is derived from "
    "(or STADTPULS_MQTT_MASTER_SECRET).",
)


def _master_secret(file: Path | None) -> str:
    secret = _secret("STADTPULS_MQTT_MASTER_SECRET", file, "the MQTT master secret", required=True)
    assert secret is not None
    return secret


@broker_auth.command("write")
@CONFIG
@REGISTRY
@MASTER_SECRET_FILE
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for Mosquitto's passwd and acl files.",
)
@click.option(
    "--credentials",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the service's and the simulator's plain passwords here "
    "(stadtpuls.password, stadtpuls-sim.password).",
)
def broker_auth_write(
    config_path: Path | None,
    registry_path: Path | None,
    master_secret_file: Path | None,
    out: Path,
    credentials: Path | None,
) -> None:
    """Write passwd and acl: one account per device, the service, the simulator."""
    from dashboards.broker_acl import (
        SERVICE_ACCOUNT,
        SIMULATOR_ACCOUNT,
        derive_password,
        write_broker_auth,
    )
    from dashboards.broker_acl import broker_auth as make_auth
    from devices.topics import TopicScheme

    settings, registry = load(config_path, registry_path)
    master = _master_secret(master_secret_file)
    try:
        auth = make_auth(registry, TopicScheme(settings.topic_prefix), master)
    except ValueError as exc:
        fail(str(exc))
        return
    passwd, acl = write_broker_auth(auth, out)
    if credentials is not None:
        credentials.mkdir(parents=True, exist_ok=True)
        for account in (SERVICE_ACCOUNT, SIMULATOR_ACCOUNT):
            path = credentials / f"{account}.password"
            path.write_text(derive_password(master, account), encoding="utf-8")
            path.chmod(0o600)
    click.echo(f"wrote {passwd} and {acl}: {len(auth.accounts)} accounts")


@broker_auth.command("password")
@MASTER_SECRET_FILE
@click.argument("account")
def broker_auth_password(master_secret_file: Path | None, account: str) -> None:
    """Print ACCOUNT's MQTT password: SITE/DEVICE for a device, stadtpuls, stadtpuls-sim."""
    from dashboards.broker_acl import derive_password

    try:
        click.echo(derive_password(_master_secret(master_secret_file), account))
    except ValueError as exc:
        fail(str(exc))
