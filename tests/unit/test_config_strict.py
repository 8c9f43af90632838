"""Configuration that must not fail silently (issue 14): keys given twice, names the
registry does not have, errors without a line, and alerts that go nowhere."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from devices.registry import (
    Registry,
    RegistryError,
    UnknownIdError,
    check_device,
    check_site,
    parse_registry,
    suggest,
)
from devices.yamlfile import YamlFileError, load_yaml
from stadtpuls.alert_settings import AlertsSection
from stadtpuls.cli import main
from stadtpuls.settings import (
    ConfigError,
    HttpSection,
    Settings,
    check_against_registry,
    config_warnings,
    load_settings,
)
from stadtpuls.web import build_app
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML

# -- keys given twice -----------------------------------------------------------------------

TWO_SITES = """\
sites:
  b1:
    kind: bridge
    name: First
    devices:
      sg1: {measurements: [strain]}
  b1:
    kind: bridge
    name: Second
    devices:
      sg2: {measurements: [strain]}
"""


def test_a_site_given_twice_stops_start_up_with_both_lines(
    tmp_path: Path, config_file: ConfigWriter
) -> None:
    cfg = config_file("registry: registry.yaml\n", registry_yaml=TWO_SITES)
    result = CliRunner().invoke(main, ["check-config", "--config", str(cfg)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'registry.yaml'}:7: sites: duplicate key 'b1' at lines 2 and 7" in (
        result.stderr
    )
    assert "ok:" not in result.output


def test_a_device_given_twice_is_refused_with_both_lines() -> None:
    text = REGISTRY_YAML.replace(
        "      env:\n", "      sg1:\n        measurements: [temperature]\n      env:\n"
    )
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "registry.yaml")
    assert str(info.value).startswith(
        "registry.yaml:13: sites.b1.devices: duplicate key 'sg1' at lines 6 and 13"
    )


def test_a_settings_key_given_twice_is_refused_with_both_lines(config_file: ConfigWriter) -> None:
    cfg = config_file("mqtt:\n  host: broker\n  port: 1883\nbatch: {}\nmqtt:\n  port: 1884\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert f"{cfg}:5: duplicate key 'mqtt' at lines 1 and 5" in str(info.value)

    cfg = config_file("mqtt:\n  port: 1883\n  keepalive: 30\n  port: 1884\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert f"{cfg}:4: mqtt: duplicate key 'port' at lines 2 and 4" in str(info.value)


def test_keys_from_a_merged_anchor_may_be_overridden() -> None:
    loaded = load_yaml("base: &b {a: 1, b: 2}\nthis:\n  <<: *b\n  a: 3\n", "f.yaml")
    assert loaded.data["this"] == {"a": 3, "b": 2}
    with pytest.raises(YamlFileError, match=r"f\.yaml:1: x: duplicate key 'a' at lines 1 and 1"):
        load_yaml("x: {a: 1, a: 2}\n", "f.yaml")


# -- names the registry does not have -------------------------------------------------------

RULE = """\
registry: registry.yaml
alerts:
  thresholds:
    - name: classroom-too-cold
      measurement: {measurement}
      kind: school
      {where}
      below: 17
      clear: 18.5
"""


def test_a_rule_on_an_unknown_measurement_is_refused(
    config_file: ConfigWriter, registry: Registry
) -> None:
    cfg = config_file(RULE.format(measurement="temprature", where=""))
    with pytest.raises(ConfigError) as info:
        check_against_registry(load_settings(cfg), registry)
    assert str(info.value) == (
        f"{cfg}:5: alerts.thresholds.0.measurement: rule classroom-too-cold: 'temprature' is "
        "not a school measurement; did you mean 'temperature'?"
    )


def test_a_rule_on_an_unknown_site_is_refused(
    config_file: ConfigWriter, registry: Registry
) -> None:
    cfg = config_file(RULE.format(measurement="temperature", where="site: s11"))
    with pytest.raises(ConfigError) as info:
        check_against_registry(load_settings(cfg), registry)
    assert str(info.value) == (
        f"{cfg}:7: alerts.thresholds.0.site: rule classroom-too-cold: no site 's11' in the "
        "registry; did you mean 's1'?"
    )


@pytest.mark.parametrize(
    ("where", "line", "needle"),
    [
        ("device: room-2", 7, "no device 'room-2' in the registry; did you mean"),
        ("site: b1", 6, "site b1 is a bridge, not a school"),
        ("site: s2", 5, "would never fire: the registry has no temperature series at site s2"),
    ],
)
def test_a_rule_that_could_never_match_is_refused(
    config_file: ConfigWriter, registry: Registry, where: str, line: int, needle: str
) -> None:
    cfg = config_file(RULE.format(measurement="temperature", where=where))
    with pytest.raises(ConfigError) as info:
        check_against_registry(load_settings(cfg), registry)
    assert str(info.value).startswith(f"{cfg}:{line}: alerts.thresholds.0.")
    assert needle in str(info.value)


def test_a_silence_window_for_an_unknown_device_is_refused(
    config_file: ConfigWriter, registry: Registry
) -> None:
    cfg = config_file(
        "alerts:\n  silence:\n    devices:\n      s1/room-1: 2h\n      s1/room-2: 2h\n"
        "      room-9: 1h\n"
    )
    with pytest.raises(ConfigError) as info:
        check_against_registry(load_settings(cfg), registry)
    assert str(info.value).splitlines() == [
        f"{cfg}:5: alerts.silence.devices.s1/room-2: silence window for 's1/room-2': site "
        "'s1' has no device 'room-2'; did you mean 'room-1'?",
        f"{cfg}:6: alerts.silence.devices.room-9: silence window for 'room-9': 'room-9' must "
        "be 'site/device'; did you mean 's2/room-9'?",
    ]


def test_check_config_refuses_a_rule_the_registry_cannot_match(
    tmp_path: Path, config_file: ConfigWriter
) -> None:
    cfg = config_file(RULE.format(measurement="temprature", where=""), registry_yaml=REGISTRY_YAML)
    result = CliRunner().invoke(main, ["check-config", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "did you mean 'temperature'?" in result.stderr


def test_settings_that_match_the_registry_pass(
    config_file: ConfigWriter, registry: Registry
) -> None:
    cfg = config_file(
        RULE.format(measurement="temperature", where="site: s1")
        + "  silence:\n    devices: {s1/room-1: 2h}\n"
    )
    check_against_registry(load_settings(cfg), registry)
    check_against_registry(Settings(), registry)  # the default CO2 rules


def test_check_site_and_device_say_what_was_meant(registry: Registry) -> None:
    assert check_site(registry, "b1").id == "b1"
    assert check_device(registry, "s1", "room-1").id == "room-1"
    with pytest.raises(UnknownIdError, match=r"no site 'B1' in the registry; did you mean 'b1'\?"):
        check_site(registry, "B1")
    with pytest.raises(UnknownIdError, match=r"site 'b1' has no device 'sg2'; did you mean"):
        check_device(registry, "b1", "sg2")
    assert suggest("zzz", ["b1", "s1"]) == "known: b1, s1"
    assert suggest("x", []) == "there are none"


# -- every error with its file and line -----------------------------------------------------


def test_a_settings_type_error_names_file_and_line(config_file: ConfigWriter) -> None:
    cfg = config_file("log_level: INFO\nmqtt:\n  host: broker\n  port: nope\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert str(info.value).startswith(f"{cfg}:4: mqtt.port: Input should be a valid integer")


def test_a_settings_error_from_the_environment_names_the_variable(
    config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STADTPULS_BATCH__MAX_MESSAGES", "many")
    with pytest.raises(ConfigError, match=r"^STADTPULS_BATCH__MAX_MESSAGES: batch\.max_messages:"):
        load_settings(config_file("batch: {max_wait: 1}\n"))


def test_yaml_syntax_errors_name_file_and_line_without_noise(config_file: ConfigWriter) -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry("sites:\n  b1: [\n", "registry.yaml")
    assert str(info.value).startswith("registry.yaml:3: not valid YAML:")
    assert "<unicode string>" not in str(info.value)
    cfg = config_file("mqtt:\n  host: a: b\n")
    with pytest.raises(ConfigError) as settings_info:
        load_settings(cfg)
    assert str(settings_info.value).startswith(f"{cfg}:2: not valid YAML: mapping values")
    assert "<unicode string>" not in str(settings_info.value)


# -- alerts with no channel -----------------------------------------------------------------


def test_alerts_without_a_channel_are_a_warning_in_check_config(
    config_file: ConfigWriter,
) -> None:
    cfg = config_file("registry: registry.yaml\n", registry_yaml=REGISTRY_YAML)
    result = CliRunner().invoke(main, ["check-config", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok:")
    assert "warning: alerts.enabled is on but alerts.channels is empty" in result.stderr

    cfg = config_file(
        "registry: registry.yaml\nalerts:\n  channels: [{name: ops, type: mqtt}]\n",
        registry_yaml=REGISTRY_YAML,
    )
    assert CliRunner().invoke(main, ["check-config", "--config", str(cfg)]).stderr == ""
    assert config_warnings(Settings(alerts=AlertsSection(enabled=False))) == []


def test_alerts_without_a_channel_are_logged_at_start_up_and_shown_by_readyz(
    tmp_path: Path, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    from stadtpuls.service import Service

    settings = Settings(data_dir=tmp_path / "data", http=HttpSection(port=0))
    with caplog.at_level(logging.WARNING, logger="stadtpuls.service"):
        service = Service(settings, registry)
    try:
        assert any("alerts.channels is empty" in r.getMessage() for r in caplog.records)
        assert service.warnings == config_warnings(settings)
    finally:
        assert service.alerting is not None
        service.alerting.dispatcher.close()
        service.alerting.store.close()
        service.tokens.close()
        service.store.close()

    app = build_app(lambda: {"broker_connected": True}, CollectorRegistry(), warnings=["w"])
    ready = TestClient(app).get("/readyz")
    assert ready.status_code == 200  # a warning does not make the service unready
    assert ready.json() == {"ready": True, "checks": {"broker_connected": True}, "warnings": ["w"]}
