"""The ``alerts:`` section of the settings: channels, their secrets, and the files they
name resolved against the settings file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from alerts.channels import ChannelContext, ServiceBroker
from alerts.channels.mqtt import MqttChannel
from alerts.channels.webhook import WebhookChannel, WebhookChannelModel
from stadtpuls.settings import ConfigError, load_settings
from tests.support.config import ConfigWriter


def test_channels_with_secret_files_relative_to_the_settings(
    tmp_path: Path, config_file: ConfigWriter
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "hook").write_text("a-real-signing-key-41\n")
    path = config_file(
        """
alerts:
  channels:
    - {name: ops-hook, type: webhook, url: "https://ops.example.org/h", secret_file: secrets/hook}
    - {name: ops-am, type: alertmanager, url: "http://am:9093", min_severity: critical}
""",
    )
    settings = load_settings(path)
    hook = settings.alerts.channels[0]
    assert isinstance(hook, WebhookChannelModel)
    assert hook.secret is not None
    assert hook.secret.get_secret_value() == "a-real-signing-key-41"
    assert "a-real-signing-key" not in repr(settings)
    channel = hook.build(ChannelContext("stadtpuls", ServiceBroker("127.0.0.1", 1883)))
    assert isinstance(channel, WebhookChannel)
    assert channel.name == "ops-hook"


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ('{name: h, type: webhook, url: "https://x.org", secret: changeme}', "placeholder"),
        ('{name: h, type: webhook, url: "https://x.org"}', "needs a secret"),
        ('{name: g, type: grafana, url: "http://g:3000"}', "needs a token"),
        ('{name: p, type: pager, url: "http://p"}', "type"),
        ("{name: m, type: email, host: smtp, sender: a@b.c, recipients: []}", "recipients"),
    ],
)
def test_bad_channels_are_refused_with_a_reason(
    config_file: ConfigWriter, channel: str, message: str
) -> None:
    path = config_file(f"alerts:\n  channels:\n    - {channel}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_channel_names_must_be_unique(config_file: ConfigWriter) -> None:
    path = config_file(
        "alerts:\n  channels:\n    - {name: a, type: mqtt}\n    - {name: a, type: mqtt}\n",
    )
    with pytest.raises(ConfigError, match="unique"):
        load_settings(path)


@pytest.mark.parametrize(
    ("entry", "service", "expected"),
    [
        ("{name: m, type: mqtt}", "3.1.1", "3.1.1"),  # NATS' MQTT listener has no MQTT 5
        ("{name: m, type: mqtt}", "5", "5"),
        ("{name: m, type: mqtt, protocol: '3.1.1'}", "5", "3.1.1"),
        ("{name: m, type: mqtt, host: ops.example.org}", "3.1.1", "5"),
    ],
)
def test_the_mqtt_channel_speaks_the_service_brokers_version_unless_told(
    config_file: ConfigWriter, entry: str, service: Literal["5", "3.1.1"], expected: str
) -> None:
    settings = load_settings(config_file(f"alerts:\n  channels:\n    - {entry}\n"))
    context = ChannelContext("stadtpuls", ServiceBroker("127.0.0.1", 1), service)
    channel = settings.alerts.channels[0].build(context)
    try:
        assert isinstance(channel, MqttChannel)
        assert channel.settings.protocol == expected
    finally:
        channel.close()
