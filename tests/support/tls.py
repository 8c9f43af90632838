"""Certificates made with the ``openssl`` command for TLS tests, a Mosquitto with a TLS
listener that wants a client certificate, and MQTT clients that use them."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from stadtpuls.broker import LOOPBACK, MosquittoBroker
from tests.support.service import ServiceProcess

# P-256 keys are generated in milliseconds; RSA keys would make every test run wait.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30
    )


@dataclass(frozen=True)
class CertKey:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A CA with a server certificate for 127.0.0.1, and a second CA that signed nothing
    the broker presents, for clients that must fail to verify the broker."""

    ca: CertKey
    server: CertKey
    other_ca: CertKey
    directory: Path

    def client(self, name: str) -> CertKey:
        """A client certificate whose common name is ``name`` (Mosquitto's username when
        ``use_identity_as_username`` is on)."""
        return issue_certificate(self.directory, self.ca, name, client=True)


def make_ca(directory: Path, name: str) -> CertKey:
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertKey(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *_KEY, "-keyout", pair.key, "-out", pair.cert, "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return pair


def issue_certificate(directory: Path, ca: CertKey, name: str, *, client: bool) -> CertKey:
    pair = CertKey(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    # Hostname checks look at subjectAltName only; an IP address needs an IP entry there.
    san = "" if client else f"subjectAltName=IP:{LOOPBACK}\n"
    ext.write_text(
        f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
        f"authorityKeyIdentifier=keyid\n{san}"
    )
    _openssl("req", "-new", *_KEY, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={name}",
             cwd=directory)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", pair.cert, "-days", "2", "-extfile", ext,
        cwd=directory,
    )  # fmt: skip
    return pair


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "test-ca")
    return Pki(
        ca=ca,
        server=issue_certificate(directory, ca, "broker", client=False),
        other_ca=make_ca(directory, "other-ca"),
        directory=directory,
    )


class TlsMosquitto(MosquittoBroker):
    """The embedded Mosquitto whose only listener speaks TLS and admits a client only with
    a certificate from the test CA, taking the certificate's common name as its username."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        # Listener options apply to the listener above them, here the only one.
        super().__init__(
            workdir,
            extra_config=(
                f"cafile {pki.ca.cert}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
                "require_certificate true\nuse_identity_as_username true\n"
            ),
        )


@dataclass
class ConnectOutcome:
    connected: bool
    reason: str


def try_connect(
    port: int, ca: Path, client_cert: CertKey | None, timeout: float = 10.0
) -> tuple[mqtt.Client | None, ConnectOutcome]:
    """Connect an MQTT 5 client over TLS; on success the client comes back with its loop
    running, else ``None`` and what went wrong (a CONNACK refusal, a failed handshake, or
    the broker closing the connection)."""
    outcome: list[ConnectOutcome] = []
    decided = threading.Event()

    def decide(connected: bool, reason: str) -> None:
        if not decided.is_set():
            outcome.append(ConnectOutcome(connected, reason))
            decided.set()

    def on_connect(
        c: mqtt.Client, u: object, f: mqtt.ConnectFlags, rc: ReasonCode, p: object
    ) -> None:
        decide(not rc.is_failure, str(rc))

    def on_disconnect(
        c: mqtt.Client, u: object, f: mqtt.DisconnectFlags, rc: ReasonCode, p: object
    ) -> None:
        decide(False, f"disconnected: {rc}")

    def on_connect_fail(c: mqtt.Client, u: object) -> None:
        decide(False, "connection failed")

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set(
        ca_certs=str(ca),
        certfile=None if client_cert is None else str(client_cert.cert),
        keyfile=None if client_cert is None else str(client_cert.key),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_connect_fail = on_connect_fail
    try:
        client.connect(LOOPBACK, port)
    except (OSError, ssl.SSLError) as exc:  # TLS 1.2 fails here, in the handshake
        return None, ConnectOutcome(False, f"handshake: {exc}")
    client.loop_start()
    if not decided.wait(timeout):
        client.loop_stop()
        raise AssertionError(f"no CONNACK, refusal or disconnect within {timeout:g} s")
    if not outcome[0].connected:
        client.loop_stop()
        return None, outcome[0]
    return client, outcome[0]


class ServingService(ServiceProcess):
    """The service process, counted as started once it answers HTTP, ready or not: a
    service that cannot reach its broker still serves its health endpoints."""

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
