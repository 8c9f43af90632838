"""What every channel shares: the ``Channel`` protocol, ``DeliveryError``, the settings
model a channel's entry under ``alerts.channels`` is read into, and the registry of
channel kinds those models fill."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from alerts.model import Notification, Severity
from devices.mqtt_client import BrokerAccess
from ingest.secrets import read_secret


class DeliveryError(Exception):
    """A delivery failed. ``retry`` says whether the same notification may succeed later
    (a timeout, a 5xx) or never will (a 4xx, a refused recipient); ``retry_after`` is
    how long the other side asked us to wait (HTTP ``Retry-After``), in seconds."""

    def __init__(
        self, message: str, *, retry: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retry = retry
        self.retry_after = retry_after


class Channel(Protocol):
    name: str  # unique per configured channel, e.g. "ops-mail"

    def send(self, notification: Notification) -> None:
        """Deliver one notification with one attempt, blocking until it is accepted by
        the other side; raise ``DeliveryError`` when it was not. Retrying is the
        dispatcher's job alone (``alerts.dispatch``)."""
        ...

    def close(self) -> None: ...


# The service's own broker connection, which an MQTT channel without a host of its own
# shares: the same host, port, account and TLS.
ServiceBroker = BrokerAccess


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel is built with besides its own settings."""

    topic_prefix: str
    broker: ServiceBroker
    # The service's MQTT version: a channel on its broker speaks it too (NATS' MQTT
    # listener knows no MQTT 5).
    mqtt_protocol: Literal["5", "3.1.1"] = "5"


class ChannelSettings(BaseModel, ABC):
    """One entry of ``alerts.channels``: the keys every channel has. A channel module
    subclasses it with ``type: Literal["<kind>"]`` and its own keys, implements
    ``build``, and registers the subclass with ``@register_channel``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Only alerts of this severity or above go to the channel; digests go to all.
    min_severity: Severity = Severity.INFO

    # The keys that hold a secret: each is given as ``<key>`` or read from the file
    # ``<key>_file`` names, and is never empty or a placeholder ...
    secret_keys: ClassVar[tuple[str, ...]] = ()
    # ... and those of them the channel cannot work without.
    required_secret_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _read_secrets(self) -> Self:
        for key in self.secret_keys:
            value = read_secret(
                getattr(self, key), getattr(self, f"{key}_file"), f"{self.name}.{key}"
            )
            if value is None and key in self.required_secret_keys:
                kind = getattr(self, "type", "")
                raise ValueError(f"{kind} channel {self.name} needs a {key} (or {key}_file)")
            setattr(self, key, value)
        return self

    @abstractmethod
    def build(self, context: ChannelContext) -> Channel:
        """The channel these settings describe."""

    @classmethod
    def file_keys(cls) -> tuple[str, ...]:
        """The keys that name files, which the settings resolve against their folder."""
        return tuple(
            name
            for name, info in cls.model_fields.items()
            if info.annotation is Path or Path in get_args(info.annotation)
        )


# The kinds of channel the settings accept: ``type`` -> its settings model.
CHANNEL_KINDS: dict[str, type[ChannelSettings]] = {}

_M = TypeVar("_M", bound=ChannelSettings)


def register_channel(model: type[_M]) -> type[_M]:
    """Class decorator: the settings accept entries of ``model``'s ``type``."""
    declared = model.model_fields.get("type")
    kinds = () if declared is None else get_args(declared.annotation)
    if len(kinds) != 1 or not isinstance(kinds[0], str):
        raise TypeError(f"{model.__name__} needs a field type: Literal['<kind>']")
    kind = kinds[0]
    known = CHANNEL_KINDS.get(kind)
    if known is not None and known is not model:
        raise TypeError(f"channel kind {kind!r} is taken by {known.__name__}")
    CHANNEL_KINDS[kind] = model
    return model


def plain(value: SecretStr | None) -> str | None:
    """A secret from the settings as the plain string a channel sends."""
    return None if value is None else value.get_secret_value()


def path_str(value: Path | None) -> str | None:
    return None if value is None else str(value)


def json_body(notification: Notification) -> bytes:
    """``Notification.to_json()`` as compact UTF-8, the payload of MQTT and webhooks."""
    return json.dumps(notification.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
