"""MQTT over TLS against a real Mosquitto whose listener wants a client certificate.

The certificates are made by the ``openssl`` command in the test's directory: a CA, a
server certificate for 127.0.0.1, client certificates for the service and a publisher, and
a second CA that the broker does not know."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from stadtpuls.broker import find_mosquitto
from tests.support.processes import Processes, ServiceFactory
from tests.support.service import ServiceProcess
from tests.support.tls import (
    CertKey,
    Pki,
    ServingService,
    TlsMosquitto,
    have_openssl,
    issue_certificate,
    make_pki,
    try_connect,
)
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        find_mosquitto() is None or not have_openssl(), reason="needs mosquitto and openssl"
    ),
]

TOPIC = "stadtpuls/bridge/b1/sg1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(module_processes: Processes, pki: Pki) -> TlsMosquitto:
    """Instead of conftest's plain broker: TLS only, one for the module."""
    return module_processes.start(TlsMosquitto(module_processes.workdir("tls-broker"), pki))


def tls_settings(ca: Path, client: CertKey) -> dict[str, str]:
    return {"tls_ca": str(ca), "tls_cert": str(client.cert), "tls_key": str(client.key)}


def use_url(service: ServiceProcess, url: str) -> None:
    """Point the service's config at the broker by ``mqtt.url`` instead of host and port."""
    config = yaml.safe_load(service.config.read_text())
    del config["mqtt"]["host"], config["mqtt"]["port"]
    config["mqtt"]["url"] = url
    service.config.write_text(yaml.safe_dump(config))


def stored_strain(db: Path) -> list[float]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [v for (v,) in conn.execute("SELECT value FROM readings ORDER BY ts_ns")]


def test_readings_published_over_tls_are_stored(
    pki: Pki, broker: TlsMosquitto, service_factory: ServiceFactory
) -> None:
    service = service_factory(
        broker.port,
        name="svc",
        start=False,
        mqtt=tls_settings(pki.ca.cert, pki.client("stadtpuls")),
    )
    use_url(service, f"mqtts://127.0.0.1:{broker.port}")
    service.start()  # returns once /readyz says the broker connection is up
    publisher, outcome = try_connect(broker.port, pki.ca.cert, pki.client("publisher"))
    assert publisher is not None, outcome
    now = time.time()
    for i in range(3):
        record = {"bn": "sg1/", "bt": now - 10 + i, "n": "g1/strain", "v": 100.0 + i}
        publisher.publish(TOPIC, json.dumps([record]), qos=1).wait_for_publish(10)
    publisher.disconnect()
    publisher.loop_stop()
    wait_until(lambda: len(stored_strain(service.db)) == 3, 15, "3 readings stored")
    assert stored_strain(service.db) == [100.0, 101.0, 102.0]
    # The broker took the service's identity from its certificate, not from a password.
    assert "as test-ingest (p5, c0, k30, u'stadtpuls')" in broker.log_tail(200)


@pytest.mark.parametrize("certificate", ["none", "from another CA"])
def test_broker_refuses_a_client_without_a_certificate_it_trusts(
    pki: Pki, broker: TlsMosquitto, certificate: str
) -> None:
    client_cert = (
        None
        if certificate == "none"
        else issue_certificate(pki.directory, pki.other_ca, "rogue", client=True)
    )
    client, outcome = try_connect(broker.port, pki.ca.cert, client_cert)
    assert client is None
    assert not outcome.connected
    expected = {
        "none": "peer did not return a certificate",
        "from another CA": "certificate verify failed",
    }[certificate]
    wait_until(lambda: expected in broker.log_tail(200), 5, f"the broker to log {expected!r}")


def test_service_refuses_a_broker_its_ca_did_not_sign_and_says_so(
    pki: Pki, broker: TlsMosquitto, processes: Processes
) -> None:
    service = processes.start(
        ServingService(
            processes.workdir("svc"),
            broker.port,
            mqtt=tls_settings(pki.other_ca.cert, pki.client("stadtpuls")),
        )
    )
    expected = f"cannot connect to the broker at 127.0.0.1:{broker.port} over TLS"
    wait_until(lambda: expected in service.output_path.read_text(), 10, "the refusal in the log")
    line = next(ln for ln in service.output_path.read_text().splitlines() if expected in ln)
    assert "CERTIFICATE_VERIFY_FAILED" in line
    answer = httpx.get(f"{service.url}/readyz", timeout=5)
    assert answer.status_code == 503
    assert answer.json()["checks"]["broker_connected"] is False
