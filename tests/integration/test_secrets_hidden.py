"""No secret leaves the service: not in its log at DEBUG, not in ``/metrics``, not in what
``check-config`` prints, even about a file with errors. The run also shows the admin token
guarding ``/metrics`` and the alert endpoints, and the databases created 0600.

The service runs with a password-protected Mosquitto (so the MQTT password is really sent),
the InfluxDB store pointed at a closed port (so the token is used by a failing, retrying
writer), a webhook alert channel with its signing secret, and an admin token. The service's
own secrets come from the environment, as in production; the webhook's is in the file."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from dashboards.broker_acl import SERVICE_ACCOUNT, derive_password
from devices.registry import Registry
from stadtpuls.broker import MosquittoBroker, free_port
from stadtpuls.cli import main
from tests.support.processes import BrokerFactory, ServiceFactory, broker_auth_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

MASTER = "master-" + secrets.token_hex(16)
DEVICE = "s1/room-1"


def the_secrets() -> dict[str, str]:
    return {
        "STADTPULS_MQTT__PASSWORD": derive_password(MASTER, SERVICE_ACCOUNT),
        "STADTPULS_INFLUXDB__TOKEN": "influx-" + secrets.token_hex(16),
        "STADTPULS_HTTP__ADMIN_TOKEN": "admin-" + secrets.token_hex(16),
        "HOOK_SECRET": "hook-" + secrets.token_hex(16),
    }


def leaked(text: str, values: dict[str, str]) -> list[str]:
    return [name for name, value in values.items() if value in text]


def publish_co2_alarm(broker: MosquittoBroker) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set(DEVICE, derive_password(MASTER, DEVICE))
    client.connect(broker.host, broker.port)
    client.loop_start()
    # Above the registry's alarm level for this room (2000 ppm): an alert fires at once.
    payload = json.dumps([{"bn": "room-1/", "n": "co2", "v": 3000.0, "t": time.time() - 1}])
    client.publish(f"stadtpuls/school/{DEVICE}", payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_no_secret_in_logs_metrics_or_check_config(
    tmp_path: Path,
    registry: Registry,
    broker_factory: BrokerFactory,
    service_factory: ServiceFactory,
) -> None:
    broker = broker_factory(extra_config=broker_auth_config(registry, MASTER, tmp_path / "auth"))
    values = the_secrets()
    admin = values["STADTPULS_HTTP__ADMIN_TOKEN"]
    service = service_factory(
        broker.port,
        name="svc",
        env={k: v for k, v in values.items() if k.startswith("STADTPULS_")},
        log_level="DEBUG",
        mqtt={"username": SERVICE_ACCOUNT},
        store={"backend": "influxdb"},
        influxdb={"url": f"http://127.0.0.1:{free_port()}", "timeout": 1},
        alerts={
            "tick": "1s",
            "channels": [
                {
                    "type": "webhook",
                    "name": "hook",
                    "url": f"http://127.0.0.1:{free_port()}/hook",
                    "secret": values["HOOK_SECRET"],
                    "timeout": 1,
                }
            ],
        },
    )
    try:
        publish_co2_alarm(broker)
        auth = {"Authorization": f"Bearer {admin}"}

        def alerts() -> list[object]:
            answer = httpx.get(f"{service.url}/api/v1/alerts", headers=auth, timeout=5)
            listed: list[object] = answer.json()["alerts"]
            return listed

        wait_until(lambda: len(alerts()) > 0, 15, "the CO2 alert")
        wait_until(
            lambda: "InfluxDB write failed" in service.output_path.read_text(),
            15,
            "the InfluxDB writer to have tried its server with the token",
        )

        metrics = httpx.get(f"{service.url}/metrics", headers=auth, timeout=5)
        assert metrics.status_code == 200
        assert "stadtpuls_readings_stored_total 1.0" in metrics.text
        assert leaked(metrics.text, values) == []

        # The guard itself, as wired by the service.
        assert httpx.get(f"{service.url}/metrics", timeout=5).status_code == 401
        assert httpx.get(f"{service.url}/api/v1/alerts", timeout=5).status_code == 401
        assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
        # The admin token is not a students' read token.
        assert httpx.get(f"{service.url}/api/v1/export", headers=auth).status_code == 401

        data = service.workdir / "data"
        databases = [p for p in data.iterdir() if ".sqlite" in p.name or ".db" in p.name]
        assert {"stadtpuls.db", "alerts.sqlite", "tokens.sqlite"} <= {p.name for p in databases}
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in databases}
        assert modes == dict.fromkeys(modes, "0o600")
    finally:
        service.stop()

    log = service.output_path.read_text()
    assert " DEBUG " in log  # the level took effect, so the check below saw everything
    assert leaked(log, values) == []

    runner = CliRunner()
    check_config = ["check-config", "--config", str(service.config)]
    checked = runner.invoke(main, check_config, env=values)
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("ok:")
    assert leaked(checked.output, values) == []

    # A secret pasted into the wrong key: the error names the key, never the value.
    wrong_env = {
        **values,
        "STADTPULS_MQTT__PORT": values["STADTPULS_MQTT__PASSWORD"],
        "STADTPULS_HTTP__ADMIN_TOKEN": "too-short",
    }
    wrong = runner.invoke(main, check_config, env=wrong_env)
    assert wrong.exit_code == 2
    assert "mqtt.port" in wrong.output
    assert "http.admin_token must have at least 16 characters" in wrong.output
    assert leaked(wrong.output, wrong_env) == []
