"""Alert channels: one module each, all behind ``alerts.channels.base.Channel``.

A channel module holds the channel, the settings model of its entry under
``alerts.channels`` (a ``ChannelSettings`` with ``type: Literal["<kind>"]`` whose
``build`` makes the channel) and registers that model with ``@register_channel``. Every
public module of this package is imported here, so a new channel is one new module: the
settings accept its kind as soon as it exists.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from alerts.channels.base import CHANNEL_KINDS, ChannelContext, ChannelSettings, ServiceBroker

__all__ = [
    "CHANNEL_KINDS",
    "AnyChannelSettings",
    "ChannelContext",
    "ChannelSettings",
    "ServiceBroker",
    "channel_file_keys",
]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


class _ByKind:
    """Validates a channel entry as the registered settings model its ``type`` names: a
    discriminated union over ``CHANNEL_KINDS``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        choices = {kind: handler.generate_schema(model) for kind, model in CHANNEL_KINDS.items()}
        return core_schema.tagged_union_schema(choices, discriminator="type")


# The type of one entry of ``alerts.channels``, for a settings model's field.
AnyChannelSettings = Annotated[ChannelSettings, _ByKind()]


def channel_file_keys() -> tuple[str, ...]:
    """The keys of any channel entry that name files."""
    keys = (key for model in CHANNEL_KINDS.values() for key in model.file_keys())
    return tuple(dict.fromkeys(keys))
