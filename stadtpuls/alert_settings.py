"""The ``alerts:`` section of the settings: the rules (``alerts.config``) and the channels,
whose secrets are read here like every other secret of the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from alerts.channels.alertmanager import AlertmanagerChannel, AlertmanagerSettings
from alerts.channels.base import Channel
from alerts.channels.email import EmailChannel, EmailSettings
from alerts.channels.grafana import GrafanaAnnotationChannel, GrafanaSettings
from alerts.channels.mqtt import MqttChannel, MqttChannelSettings
from alerts.channels.webhook import WebhookChannel, WebhookSettings
from alerts.config import AlertsConfig
from alerts.model import Severity
from devices.registry import Duration
from stadtpuls.secrets import read_secret

# Keys of a channel entry that name files, resolved against the settings file's folder.
CHANNEL_FILE_KEYS = (
    "password_file",
    "secret_file",
    "bearer_token_file",
    "token_file",
    "ca_file",
    "tls_ca",
    "tls_cert",
    "tls_key",
)


def _plain(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Only alerts of this severity or above go to the channel; digests go to all.
    min_severity: Severity = Severity.INFO


class MqttChannelModel(_Channel):
    """Publishes to the service's own broker unless ``host`` is given."""

    type: Literal["mqtt"]
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    client_id: str = "stadtpuls-alerts"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout: Duration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _secret(self) -> Self:
        self.password = read_secret(self.password, self.password_file, f"{self.name}.password")
        return self


class WebhookChannelModel(_Channel):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _secret(self) -> Self:
        self.secret = read_secret(self.secret, self.secret_file, f"{self.name}.secret")
        if self.secret is None:
            raise ValueError(f"webhook {self.name} needs a secret (or secret_file) to sign with")
        return self


class EmailChannelModel(_Channel):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender: str
    recipients: list[str] = Field(min_length=1)
    ca_file: Path | None = None
    timeout: Duration = timedelta(seconds=15)
    timezone: str = "Europe/Berlin"

    @model_validator(mode="after")
    def _secret(self) -> Self:
        self.password = read_secret(self.password, self.password_file, f"{self.name}.password")
        return self


class AlertmanagerChannelModel(_Channel):
    type: Literal["alertmanager"]
    url: str = Field(pattern=r"^https?://")
    external_url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    ca_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _secret(self) -> Self:
        self.password = read_secret(self.password, self.password_file, f"{self.name}.password")
        self.bearer_token = read_secret(
            self.bearer_token, self.bearer_token_file, f"{self.name}.bearer_token"
        )
        return self


class GrafanaChannelModel(_Channel):
    """Alerts as annotations on the generated dashboards."""

    type: Literal["grafana"]
    url: str = Field(pattern=r"^https?://")
    token: SecretStr | None = None
    token_file: Path | None = None
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _secret(self) -> Self:
        self.token = read_secret(self.token, self.token_file, f"{self.name}.token")
        if self.token is None:
            raise ValueError(f"grafana channel {self.name} needs a token (or token_file)")
        return self


ChannelModel = Annotated[
    MqttChannelModel
    | WebhookChannelModel
    | EmailChannelModel
    | AlertmanagerChannelModel
    | GrafanaChannelModel,
    Field(discriminator="type"),
]


class AlertsSection(AlertsConfig):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)

    channels: list[ChannelModel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_channels(self) -> Self:
        names = [c.name for c in self.channels]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"alert channel names must be unique: {twice}")
        return self


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)


@dataclass(frozen=True, slots=True)
class ServiceBroker:
    """The service's own broker connection, which an MQTT channel without a host of its
    own shares: the same host, port, account and TLS."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def build_channel(model: ChannelModel, topic_prefix: str, broker: ServiceBroker) -> Channel:
    """A channel from its settings; an MQTT channel without a host uses ``broker``."""
    if isinstance(model, MqttChannelModel):
        if model.host is None:
            settings = MqttChannelSettings(
                host=broker.host,
                port=model.port or broker.port,
                client_id=model.client_id,
                username=model.username or broker.username,
                password=_plain(model.password) or broker.password,
                tls=broker.tls,
                tls_ca=_path(model.tls_ca) or broker.tls_ca,
                tls_cert=_path(model.tls_cert) or broker.tls_cert,
                tls_key=_path(model.tls_key) or broker.tls_key,
                timeout=model.timeout,
                topic_prefix=topic_prefix,
            )
        else:
            settings = MqttChannelSettings(
                host=model.host,
                port=model.port or 1883,
                client_id=model.client_id,
                username=model.username,
                password=_plain(model.password),
                tls_ca=_path(model.tls_ca),
                tls_cert=_path(model.tls_cert),
                tls_key=_path(model.tls_key),
                timeout=model.timeout,
                topic_prefix=topic_prefix,
            )
        return MqttChannel(model.name, settings)
    if isinstance(model, WebhookChannelModel):
        secret = _plain(model.secret)
        assert secret is not None  # the model refuses a webhook without one
        return WebhookChannel(
            model.name,
            WebhookSettings(
                url=model.url, secret=secret, timeout=model.timeout, ca_file=_path(model.ca_file)
            ),
        )
    if isinstance(model, EmailChannelModel):
        return EmailChannel(
            model.name,
            EmailSettings(
                host=model.host,
                port=model.port,
                security=model.security,
                username=model.username,
                password=_plain(model.password),
                sender=model.sender,
                recipients=tuple(model.recipients),
                ca_file=_path(model.ca_file),
                timeout=model.timeout,
                timezone=model.timezone,
            ),
        )
    if isinstance(model, GrafanaChannelModel):
        token = _plain(model.token)
        assert token is not None  # the model refuses a grafana channel without one
        return GrafanaAnnotationChannel(
            model.name, GrafanaSettings(url=model.url, token=token, timeout=model.timeout)
        )
    return AlertmanagerChannel(
        model.name,
        AlertmanagerSettings(
            url=model.url,
            external_url=model.external_url,
            username=model.username,
            password=_plain(model.password),
            bearer_token=_plain(model.bearer_token),
            ca_file=_path(model.ca_file),
            timeout=model.timeout,
        ),
    )
