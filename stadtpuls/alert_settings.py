"""The ``alerts:`` section of the settings: the rules (``alerts.config``) and the channels,
each read into the settings model its ``type`` names (``alerts.channels``)."""

from __future__ import annotations

from typing import Self

from pydantic import ConfigDict, Field, model_validator

from alerts.channels import AnyChannelSettings, channel_file_keys
from alerts.config import AlertsConfig

# Keys of a channel entry that name files, resolved against the settings file's folder.
CHANNEL_FILE_KEYS = channel_file_keys()


class AlertsSection(AlertsConfig):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)

    channels: list[AnyChannelSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_channels(self) -> Self:
        names = [c.name for c in self.channels]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"alert channel names must be unique: {twice}")
        return self
