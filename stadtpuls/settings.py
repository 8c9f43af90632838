"""Settings: one YAML file, overridable by environment variables, read once at start-up.

Environment variables win over the file: ``STADTPULS_MQTT__HOST=broker`` overrides
``mqtt.host``. Secrets (the MQTT password, the InfluxDB token) come from the environment or
from a file named by ``*_file``, are held as ``SecretStr`` so they never reach a log, and a
placeholder secret refuses start-up.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.config import registry_problems
from devices.registry import Duration, Registry
from devices.topics import TopicScheme
from devices.yamlfile import LoadedYaml, YamlFileError, key_path, load_yaml
from ingest.secrets import read_secret
from stadtpuls.alert_settings import CHANNEL_FILE_KEYS, AlertsSection


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and what."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _mqtt_url(url: str) -> dict[str, Any]:
    """``mqtts://host[:port]`` or ``mqtt://host[:port]`` as host, port and TLS."""
    # The URL is never echoed: a pasted one may carry a password.
    expected = "mqtt.url: expected mqtts://HOST[:PORT] or mqtt://HOST[:PORT]"
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "mqtt.url must not carry credentials: use mqtt.username and mqtt.password_file"
        )
    if (
        parts.scheme not in {"mqtt", "mqtts"}
        or not parts.hostname
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
    ):
        raise ValueError(expected)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{expected} (the port must be 1-65535)") from None
    tls = parts.scheme == "mqtts"
    return {"host": parts.hostname, "port": port or (8883 if tls else 1883), "tls": tls}


class MqttSection(_Section):
    url: str | None = None  # sets host, port and tls in one; mqtts:// is TLS
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False  # also on with mqtts:// or any tls_* file
    client_id: str = Field(default="stadtpuls-ingest", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # YAML reads an unquoted 5 as a number; the protocol is a name, so take either.
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(str)] = "5"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    keepalive: Duration = timedelta(seconds=30)
    session_expiry: Duration = timedelta(days=1)
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    # The MQTT client (paho) in a process of its own: its work per message no longer
    # shares one interpreter lock with decoding and storing. Off: a thread of the service.
    client_process: bool = True
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("url") is None:
            return data
        # Two answers to "where is the broker" would leave one silently ignored.
        clash = sorted(k for k in ("host", "port", "tls") if k in data)
        if clash:
            raise ValueError(
                "mqtt.url already sets host, port and TLS; remove "
                + ", ".join(f"mqtt.{k}" for k in clash)
            )
        return {**data, **_mqtt_url(str(data["url"]))}

    @model_validator(mode="after")
    def _secret(self) -> MqttSection:
        self.password = read_secret(self.password, self.password_file, "mqtt.password")
        return self

    @model_validator(mode="after")
    def _tls_files(self) -> MqttSection:
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("mqtt.tls_key is set without mqtt.tls_cert")
        files = {"tls_ca": self.tls_ca, "tls_cert": self.tls_cert, "tls_key": self.tls_key}
        given = [name for name, path in files.items() if path is not None]
        if given and self.url is not None and self.url.startswith("mqtt://"):
            raise ValueError(f"mqtt.url is mqtt:// (no TLS) but mqtt.{given[0]} is set")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"mqtt.{name}: no such file {path}")
        self.tls = self.tls or bool(given)
        return self


class InfluxSection(_Section):
    url: str = "http://127.0.0.1:8086"
    org: str = "stadtpuls"
    bucket: str = "stadtpuls"
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)
    chunk_size: int = Field(default=5000, ge=1)

    @model_validator(mode="after")
    def _secret(self) -> InfluxSection:
        self.token = read_secret(self.token, self.token_file, "influxdb.token")
        return self


class StoreSection(_Section):
    backend: Literal["sqlite", "influxdb"] = "sqlite"
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = "FULL"


class BatchSection(_Section):
    max_messages: int = Field(default=2000, ge=1)
    max_wait: Duration = timedelta(milliseconds=100)
    # Payload bytes that close a batch early: blocks of 100 samples fill it at about 700.
    max_bytes: int = Field(default=1 << 20, ge=1024)


class LimitsSection(_Section):
    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    max_records: int = Field(default=1000, ge=1)
    max_samples: int = Field(default=10_000, ge=1)
    max_future_skew: Duration = timedelta(minutes=5)
    backfill_horizon: Duration = timedelta(days=30)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


ADMIN_TOKEN_MIN_LENGTH = 16


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Guards /metrics and the alert endpoints; required once host is not a loopback address.
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None

    @model_validator(mode="after")
    def _admin_token(self) -> HttpSection:
        token = read_secret(self.admin_token, self.admin_token_file, "http.admin_token")
        if token is not None and len(token.get_secret_value()) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"http.admin_token must have at least {ADMIN_TOKEN_MIN_LENGTH} characters"
            )
        if token is None and not is_loopback(self.host):
            raise ValueError(
                f"http.host {self.host} is reachable from other machines, so /metrics and the "
                "alert endpoints need a token: set STADTPULS_HTTP__ADMIN_TOKEN or "
                "http.admin_token_file"
            )
        self.admin_token = token
        return self


class ExportSection(_Section):
    """Students' export: caps per read token, where tokens and the export log are kept."""

    token_db: Path | None = None  # default {data_dir}/tokens.sqlite
    max_range: Duration = timedelta(days=366)
    max_exports_per_minute: int = Field(default=20, ge=1)
    token_expiry: Duration = timedelta(days=30)  # default for `stadtpuls tokens create`
    licence: str = "Datenlizenz Deutschland - Namensnennung - Version 2.0 (dl-de/by-2-0)"


class NatsSection(_Section):
    """The NATS cluster of ``source: nats`` (README "Run on a NATS cluster")."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    creds_file: Path | None = None  # a NATS credentials file (JWT and nkey seed)
    nkey_seed_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Fixed for the life of the cluster's mapping: the servers' `mappings` block and the
    # consumers are made for this number (`stadtpuls nats server-config`, `nats setup`).
    partitions: int = Field(default=32, ge=1, le=1024)
    consumer_prefix: str = Field(default="stadtpuls", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    group: str = Field(default="stadtpuls", pattern=r"^[A-Za-z0-9_-]{1,16}$")
    priority_timeout: Duration = timedelta(seconds=3)
    ack_wait: Duration = timedelta(seconds=30)
    # How often each partition's anomaly state goes to the state bucket: a takeover starts
    # from the last one. Each checkpoint copies the whole state, so not every batch.
    checkpoint_every: Duration = timedelta(seconds=5)
    state_bucket: str = Field(default="stadtpuls_state", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    workers_bucket: str = Field(default="stadtpuls_workers", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    max_pending: int = Field(default=20000, ge=1)

    @model_validator(mode="after")
    def _secret(self) -> NatsSection:
        self.password = read_secret(self.password, self.password_file, "nats.password")
        if self.password is not None and self.user is None:
            raise ValueError("nats.password is set without nats.user")
        for name in ("creds_file", "nkey_seed_file", "tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"nats.{name}: no such file {path}")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("nats.tls_key is set without nats.tls_cert")
        return self


class WorkerSection(_Section):
    """This process's share when several ingest workers share the stream ("Several
    workers"): worker ``index`` of ``count`` takes the sites that hash to it."""

    index: int = Field(default=0, ge=0)
    count: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _index_in_range(self) -> WorkerSection:
        if self.index >= self.count:
            raise ValueError(
                f"worker.index ({self.index}) must be below worker.count ({self.count})"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STADTPULS_", env_nested_delimiter="__", extra="forbid"
    )

    registry: Path = Path("registry.yaml")
    data_dir: Path = Path("data")
    topic_prefix: str = "stadtpuls"

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        TopicScheme(value)  # raises ValueError naming the problem
        return value

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mqtt: MqttSection = Field(default_factory=MqttSection)
    store: StoreSection = Field(default_factory=StoreSection)
    influxdb: InfluxSection = Field(default_factory=InfluxSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    http: HttpSection = Field(default_factory=HttpSection)
    export: ExportSection = Field(default_factory=ExportSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)
    worker: WorkerSection = Field(default_factory=WorkerSection)
    # Where readings come from: one MQTT broker, or the partitions of a NATS cluster.
    source: Literal["mqtt", "nats"] = "mqtt"
    nats: NatsSection = Field(default_factory=NatsSection)

    @model_validator(mode="after")
    def _nats_owns_partitions(self) -> Settings:
        if self.source == "nats" and self.worker.count != 1:
            raise ValueError(
                "source is nats, which hands partitions to workers itself: remove "
                "worker.index and worker.count (every NATS worker runs the same settings)"
            )
        return self

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> Settings:
        if self.mqtt.receive_maximum < self.batch.max_messages:
            raise ValueError(
                f"mqtt.receive_maximum ({self.mqtt.receive_maximum}) is below "
                f"batch.max_messages ({self.batch.max_messages}): the broker would stall "
                "waiting for acknowledgements of a batch that waits for messages"
            )
        return self

    @model_validator(mode="after")
    def _influx_needs_token(self) -> Settings:
        if self.store.backend == "influxdb" and self.influxdb.token is None:
            raise ValueError(
                "store.backend is influxdb but no token: set STADTPULS_INFLUXDB__TOKEN "
                "or influxdb.token_file"
            )
        return self

    # The file the settings came from, with the line of each key, for messages that point
    # at a key (``where``); None for settings made without a file.
    _origin: LoadedYaml | None = PrivateAttr(default=None)

    def where(self, loc: Sequence[str | int]) -> str:
        """Where the value at ``loc`` (a key path such as ``("alerts", "thresholds", 0)``)
        was given: ``file:line``, or the environment variable that set it."""
        return _where(self._origin, loc)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init arguments.
        return env_settings, init_settings, file_secret_settings

    @property
    def worker_dir(self) -> Path:
        """Where this worker keeps its journal, anomaly and alert state: workers that
        shared these files would overwrite each other's state and drain one journal."""
        if self.worker.count == 1:
            return self.data_dir
        return self.data_dir / f"worker-{self.worker.index}"

    @property
    def database_path(self) -> Path:
        return self.worker_dir / "stadtpuls.db"

    @property
    def alerts_db_path(self) -> Path:
        return self.worker_dir / "alerts.sqlite"

    @property
    def token_db_path(self) -> Path:
        return self.export.token_db or self.data_dir / "tokens.sqlite"


def _resolve(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Paths in the file are relative to the file, not to the working directory."""
    for key in ("registry", "data_dir"):
        if isinstance(data.get(key), str):
            data[key] = str(base / data[key])
    for section, keys in (
        ("mqtt", ("password_file", "tls_ca", "tls_cert", "tls_key")),
        (
            "nats",
            ("password_file", "creds_file", "nkey_seed_file", "tls_ca", "tls_cert", "tls_key"),
        ),
        ("influxdb", ("token_file",)),
        ("http", ("admin_token_file",)),
        ("export", ("token_db",)),
    ):
        sec = data.get(section)
        if isinstance(sec, dict):
            for key in keys:
                if isinstance(sec.get(key), str):
                    sec[key] = str(base / sec[key])
    alerts = data.get("alerts")
    channels = alerts.get("channels") if isinstance(alerts, dict) else None
    for channel in channels if isinstance(channels, list) else []:
        if isinstance(channel, dict):
            for key in CHANNEL_FILE_KEYS:
                if isinstance(channel.get(key), str):
                    channel[key] = str(base / channel[key])
    return data


def _environment_name(loc: Sequence[str | int]) -> str | None:
    """The ``STADTPULS_*`` variable that set the value at ``loc`` (or a section above it)."""
    names = {name.upper() for name in os.environ}
    for n in range(len(loc), 0, -1):
        parts = loc[:n]
        if all(isinstance(p, str) for p in parts):
            name = "STADTPULS_" + "__".join(str(p).upper() for p in parts)
            if name in names:
                return name
    return None


def _where(origin: LoadedYaml | None, loc: Sequence[str | int]) -> str:
    env = _environment_name(loc)
    if env is not None:
        return env
    if origin is None:
        return "defaults"
    # A problem with the settings as a whole has no line of its own.
    return origin.where(loc) if loc else origin.source


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    data: dict[str, Any] = {}
    origin: LoadedYaml | None = None
    if path is not None:
        try:
            origin = load_yaml(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the settings: {exc}") from exc
        except YamlFileError as exc:
            raise ConfigError(str(exc)) from None
        if origin.data is not None and not isinstance(origin.data, dict):
            raise ConfigError(f"{path}:1: the configuration must be a mapping")
        data = _resolve(path.resolve().parent, origin.data or {})
    data.update(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
            key = key_path(loc) if loc else "(settings)"
            lines.append(f"{_where(origin, loc)}: {key}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None
    settings._origin = origin
    return settings


def check_against_registry(settings: Settings, registry: Registry) -> None:
    """Refuse settings that name what the registry does not have (a threshold rule's
    measurement, site or device, a device in ``alerts.silence.devices``): they would
    never match anything. Raises ``ConfigError`` with file, line and a did-you-mean."""
    problems = registry_problems(settings.alerts, registry)
    if problems:
        raise ConfigError(
            "\n".join(
                f"{settings.where(('alerts', *loc))}: {key_path(('alerts', *loc))}: {message}"
                for loc, message in problems
            )
        )


def config_warnings(settings: Settings) -> list[str]:
    """Settings that work but are probably not what was meant: said at start-up, in
    ``/readyz`` and by ``check-config``."""
    warnings = []
    if settings.alerts.enabled and not settings.alerts.channels:
        warnings.append(
            "alerts.enabled is on but alerts.channels is empty: alerts are recorded "
            "(stadtpuls alerts list, GET /api/v1/alerts) but sent nowhere; add a channel "
            "under alerts.channels, or set alerts.enabled: false"
        )
    return warnings
