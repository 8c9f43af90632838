"""Settings: one YAML file, overridable by environment variables, read once at start-up.

Environment variables win over the file: ``STADTPULS_MQTT__HOST=broker`` overrides
``mqtt.host``. Secrets (the MQTT password, the InfluxDB token) come from the environment or
from a file named by ``*_file``, are held as ``SecretStr`` so they never reach a log, and a
placeholder secret refuses start-up.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from devices.registry import Duration
from devices.topics import TopicScheme
from stadtpuls.alert_settings import CHANNEL_FILE_KEYS, AlertsSection
from stadtpuls.secrets import read_secret


class ConfigError(ValueError):
    """The configuration is wrong; the message says where and what."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="stadtpuls-ingest", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # YAML reads an unquoted 5 as a number; the protocol is a name, so take either.
    protocol: Annotated[Literal["5", "3.1.1"], BeforeValidator(str)] = "5"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    keepalive: Duration = timedelta(seconds=30)
    session_expiry: Duration = timedelta(days=1)
    receive_maximum: int = Field(default=20000, ge=1, le=65535)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _secret(self) -> MqttSection:
        self.password = read_secret(self.password, self.password_file, "mqtt.password")
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


class LimitsSection(_Section):
    max_payload_bytes: int = Field(default=256 * 1024, ge=64)
    max_records: int = Field(default=1000, ge=1)
    max_samples: int = Field(default=10_000, ge=1)
    max_future_skew: Duration = timedelta(minutes=5)
    backfill_horizon: Duration = timedelta(days=30)


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class ExportSection(_Section):
    """Students' export: caps per read token, where tokens and the export log are kept."""

    token_db: Path | None = None  # default {data_dir}/tokens.sqlite
    max_range: Duration = timedelta(days=366)
    max_exports_per_minute: int = Field(default=20, ge=1)
    token_expiry: Duration = timedelta(days=30)  # default for `stadtpuls tokens create`
    licence: str = "Datenlizenz Deutschland - Namensnennung - Version 2.0 (dl-de/by-2-0)"


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
    def database_path(self) -> Path:
        return self.data_dir / "stadtpuls.db"

    @property
    def alerts_db_path(self) -> Path:
        return self.data_dir / "alerts.sqlite"

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
        ("influxdb", ("token_file",)),
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


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping")
        data = _resolve(path.resolve().parent, loaded or {})
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = [
            f"{source}: {'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
