"""Settings: file, environment overrides, secrets, and errors that say where."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from stadtpuls.settings import ConfigError, load_settings
from tests.support.config import ConfigWriter


def test_file_values_and_relative_paths(tmp_path: Path, config_file: ConfigWriter) -> None:
    cfg = config_file(
        "registry: reg.yaml\ndata_dir: data\nmqtt: {host: broker.local, port: 8883}\n"
        "batch: {max_messages: 100, max_wait: 0.25}\n",
    )
    s = load_settings(cfg)
    assert s.registry == tmp_path / "reg.yaml"
    assert s.database_path == tmp_path / "data" / "stadtpuls.db"
    assert (s.mqtt.host, s.mqtt.port) == ("broker.local", 8883)
    assert s.batch.max_wait == timedelta(milliseconds=250)


def test_environment_overrides_file(
    config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_file("mqtt: {host: from-file, port: 1884}\n")
    monkeypatch.setenv("STADTPULS_MQTT__HOST", "from-env")
    s = load_settings(cfg)
    assert (s.mqtt.host, s.mqtt.port) == ("from-env", 1884)


def test_secret_from_file_never_in_repr(tmp_path: Path, config_file: ConfigWriter) -> None:
    (tmp_path / "pw").write_text("s3cr3t-value\n")
    s = load_settings(config_file("mqtt: {username: svc, password_file: pw}\n"))
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t" not in repr(s)
    assert "s3cr3t" not in str(s.model_dump())


@pytest.mark.parametrize("secret", ["", "changeme", "password", "  "])
def test_placeholder_secret_refuses_start(
    config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("STADTPULS_MQTT__PASSWORD", secret)
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(config_file("mqtt: {username: svc}\n"))


def test_influx_backend_needs_a_token(config_file: ConfigWriter) -> None:
    with pytest.raises(ConfigError, match="STADTPULS_INFLUXDB__TOKEN"):
        load_settings(config_file("store: {backend: influxdb}\n"))


def test_errors_name_the_file_line_and_key(config_file: ConfigWriter) -> None:
    cfg = config_file("mqtt: {port: 99999}\nbatch: {max_messages: 0}\ncolour: red\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    message = str(info.value)
    assert f"{cfg}:1: mqtt.port:" in message
    assert f"{cfg}:2: batch.max_messages:" in message
    assert f"{cfg}:3: colour:" in message


def test_durations_and_protocol_take_what_people_write(
    config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_file("mqtt: {protocol: 5, session_expiry: 2h}\nbatch: {max_wait: 250ms}\n")
    monkeypatch.setenv("STADTPULS_MQTT__KEEPALIVE", "45")
    s = load_settings(cfg)
    assert s.mqtt.protocol == "5"
    assert s.mqtt.keepalive == timedelta(seconds=45)
    assert s.mqtt.session_expiry == timedelta(hours=2)
    assert s.batch.max_wait == timedelta(milliseconds=250)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("topic_prefix: 'city/#'\n", "topic_prefix"),
        ("mqtt: {receive_maximum: 100}\nbatch: {max_messages: 500}\n", "receive_maximum"),
    ],
)
def test_settings_that_cannot_work_refuse_start(
    config_file: ConfigWriter, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(config_file(text))
