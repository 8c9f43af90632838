"""The embedded MQTT brokers and the VictoriaMetrics test store, run as real processes, and
the demo that runs a broker, the simulator and the service together."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from stadtpuls import broker as broker_module
from stadtpuls.broker import AmqttBroker, MosquittoBroker, start_embedded_broker
from tests.support.processes import VictoriaFactory
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SYSTEM_MQTT_PORT = 1883
TIMEOUT_S = 10.0


class Collector:
    """An MQTT client process, as far as the broker can tell, that records what it receives.

    Every `connect()` uses a fresh paho client, like a restarted process would (and because
    paho leaks its wake-up socket pair when one client's loop is started twice).
    """

    def __init__(self, client_id: str, version: MQTTProtocolVersion) -> None:
        self.client_id = client_id
        self.version = version
        self.client = self._new_client()
        self._lock = threading.Lock()
        self._payloads: list[bytes] = []
        self._connected = threading.Event()
        self.session_present: bool | None = None
        self._looping = False

    def _new_client(self) -> mqtt.Client:
        if self.version == MQTTProtocolVersion.MQTTv5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=MQTTProtocolVersion.MQTTv5,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=self.version,
                clean_session=False,
            )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.session_present = flags.session_present
        self._connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._payloads.append(bytes(msg.payload))

    @property
    def payloads(self) -> list[bytes]:
        with self._lock:
            return list(self._payloads)

    def connect(self, host: str, port: int) -> None:
        if self._looping:
            raise RuntimeError(f"{self.client_id} is still connected")
        self._connected.clear()
        self.client = self._new_client()
        if self.version == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect(host, port, clean_start=False, properties=props)
        else:
            self.client.connect(host, port)
        self.client.loop_start()
        self._looping = True
        wait_until(self._connected.is_set, TIMEOUT_S, f"{self.client_id} to connect")

    def subscribe(self, topic: str) -> None:
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        wait_until(subscribed.is_set, TIMEOUT_S, f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {payload!r}"

    def disconnect(self) -> None:
        if not self._looping:
            return
        self.client.disconnect()
        self.client.loop_stop()
        self._looping = False


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    made: list[Collector] = []
    yield made
    for collector in made:
        collector.disconnect()


def _make(collectors: list[Collector], client_id: str, version: MQTTProtocolVersion) -> Collector:
    collector = Collector(client_id, version)
    collectors.append(collector)
    return collector


def test_mosquitto_delivers_qos1_and_keeps_offline_messages_across_restart(
    tmp_path: Path, collectors: list[Collector]
) -> None:
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        assert broker.port != SYSTEM_MQTT_PORT
        assert broker.is_running
        assert broker.mqtt_version == "5"
        config = broker.config_path.read_text()
        assert "/etc/mosquitto" not in config
        assert f"listener {broker.port} 127.0.0.1" in config

        subscriber = _make(collectors, "ingest-test", MQTTProtocolVersion.MQTTv5)
        subscriber.connect(broker.host, broker.port)
        assert subscriber.session_present is False
        subscriber.subscribe("city/#")
        publisher = _make(collectors, "sensor-test", MQTTProtocolVersion.MQTTv5)
        publisher.connect(broker.host, broker.port)

        publisher.publish("city/bridge/b1", b"one")
        wait_until(lambda: subscriber.payloads == [b"one"], TIMEOUT_S, "the live message")

        subscriber.disconnect()
        publisher.publish("city/bridge/b1", b"two")
        publisher.publish("city/school/s1", b"three")
        publisher.disconnect()

        pid_before = broker.pid
        broker.restart()
        assert broker.is_running
        assert broker.pid != pid_before
        assert "Saving in-memory database" in broker.log_path.read_text()

        subscriber.connect(broker.host, broker.port)
        assert subscriber.session_present is True
        wait_until(
            lambda: subscriber.payloads == [b"one", b"two", b"three"],
            TIMEOUT_S,
            "the queued messages after restart",
        )
    assert not broker.is_running


def test_mosquitto_kill_then_start_on_same_port(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "mosquitto", persistence=False)
    broker.start()
    try:
        # A connection open at shutdown leaves the broker's side in TIME_WAIT; the next
        # bind succeeds only because Mosquitto sets SO_REUSEADDR.
        with socket.create_connection((broker.host, broker.port)):
            port = broker.port
            broker.kill()
            assert not broker.is_running
            broker.start()
        assert broker.port == port
        assert broker.is_running
        broker.kill()
        broker.kill()  # idempotent, like stop()
        broker.stop()
    finally:
        broker.stop()


def test_mosquitto_start_failure_reports_the_log(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "first") as first:
        second = MosquittoBroker(tmp_path / "second", port=first.port)
        with pytest.raises(RuntimeError, match=r"exited with code") as info:
            second.start()
        assert "mosquitto.log" in str(info.value) or "mosquitto.stderr" in str(info.value)

    missing = MosquittoBroker(tmp_path / "missing", binary="no-such-mosquitto")
    with pytest.raises(RuntimeError, match="apt-get install mosquitto"):
        missing.start()


def _amqtt_session_state(broker: AmqttBroker, client_id: str) -> str | None:
    entry = broker._broker._sessions.get(client_id)
    return None if entry is None else str(entry[0].transitions.state)


def test_amqtt_fallback_with_mqtt311_persistent_session(
    tmp_path: Path, collectors: list[Collector]
) -> None:
    with AmqttBroker() as broker:
        assert broker.mqtt_version == "3.1.1"
        subscriber = _make(collectors, "ingest-test", MQTTProtocolVersion.MQTTv311)
        subscriber.connect(broker.host, broker.port)
        subscriber.subscribe("city/#")
        publisher = _make(collectors, "sensor-test", MQTTProtocolVersion.MQTTv311)
        publisher.connect(broker.host, broker.port)

        publisher.publish("city/bridge/b1", b"one")
        wait_until(lambda: subscriber.payloads == [b"one"], TIMEOUT_S, "the live message")

        subscriber.disconnect()
        # amqtt drops a QoS 1 message sent to a session whose connection is closing instead
        # of keeping it for redelivery, so publish only once it has noticed the DISCONNECT.
        wait_until(
            lambda: _amqtt_session_state(broker, "ingest-test") == "disconnected",
            TIMEOUT_S,
            "amqtt to register the DISCONNECT",
        )
        publisher.publish("city/bridge/b1", b"two")
        subscriber.connect(broker.host, broker.port)
        assert subscriber.session_present is True
        wait_until(
            lambda: subscriber.payloads == [b"one", b"two"],
            TIMEOUT_S,
            "the message queued while offline",
        )
        for collector in collectors:
            collector.disconnect()
        collectors.clear()
    assert not broker.is_running
    with pytest.raises(OSError), socket.create_connection((broker.host, broker.port), 1):
        pass


def test_start_embedded_broker_prefers_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = start_embedded_broker(tmp_path / "embedded")
    try:
        assert isinstance(embedded, MosquittoBroker)
        assert embedded.mqtt_version == "5"
    finally:
        embedded.stop()

    monkeypatch.setattr(broker_module, "find_mosquitto", lambda binary="mosquitto": None)
    fallback = start_embedded_broker(tmp_path / "fallback")
    try:
        assert isinstance(fallback, AmqttBroker)
        assert fallback.mqtt_version == "3.1.1"
    finally:
        fallback.stop()


LINES = [
    "strain,kind=bridge,site=b1,device=sg1,channel=g1 value=12.5,anomaly=0i,score=0 "
    "1700000000000000000",
    "strain,kind=bridge,site=b1,device=sg1,channel=g1 value=13.25,anomaly=1i,score=4.5 "
    "1700000001000000000",
]
LABELS = {"kind": "bridge", "site": "b1", "device": "sg1", "channel": "g1"}


def _write(vm: VictoriaMetrics, lines: list[str]) -> None:
    with InfluxDBClient(url=vm.url, token="x", org="x") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="b", record=lines, write_precision="ns"
        )


def test_victoria_stores_influx_lines_once(victoria_factory: VictoriaFactory) -> None:
    victoria = victoria_factory()  # its own: the test restarts it
    _write(victoria, LINES)
    _write(victoria, LINES[:1])  # a retry after a lost acknowledgement

    exported = victoria.export('{__name__=~"strain_.*"}')
    assert exported == [
        {
            "metric": {"__name__": "strain_anomaly", **LABELS},
            "values": [0, 1],
            "timestamps": [1700000000000, 1700000001000],
        },
        {
            "metric": {"__name__": "strain_score", **LABELS},
            "values": [0, 4.5],
            "timestamps": [1700000000000, 1700000001000],
        },
        {
            "metric": {"__name__": "strain_value", **LABELS},
            "values": [12.5, 13.25],
            "timestamps": [1700000000000, 1700000001000],
        },
    ]

    victoria.restart()
    assert victoria.export("strain_value")[0]["values"] == [12.5, 13.25]


def test_victoria_accepts_malformed_lines_with_204(victoria: VictoriaMetrics) -> None:
    """Pins what the store's tests may not expect from VictoriaMetrics: no 400/422."""
    response = httpx.post(
        f"{victoria.url}/api/v2/write",
        params={"org": "x", "bucket": "b", "precision": "ns"},
        content=b"good value=1 1700000000000000000\nthis is not line protocol\n",
    )
    assert response.status_code == 204
    assert [s["metric"]["__name__"] for s in victoria.export('{__name__=~".+"}')] == ["good_value"]


def test_victoria_refuses_to_mistake_another_process_for_itself(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="exited with code"):
        VictoriaMetrics(tmp_path / "second", port=victoria.port).start()


def test_victoria_missing_binary_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install victoria-metrics"):
        VictoriaMetrics(tmp_path / "vm").start()


def _demo(data_dir: Path) -> tuple[int, dict[str, int], str]:
    done = subprocess.run(
        [sys.executable, "-m", "stadtpuls", "demo", "--duration", "7", "--data-dir",
         str(data_dir), "--http-port", "0"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.replace("\r", "\n")
    head = re.search(r"^This run: (\d+) new readings stored, \d+ messages quarantined", out, re.M)
    assert head is not None, out
    per_site = {m[0]: int(m[1]) for m in re.findall(r"^  (\S+) +(\d+) readings$", out, re.M)}
    return int(head.group(1)), per_site, out


def test_demo_counts_agree_when_the_data_directory_is_reused(tmp_path: Path) -> None:
    first, first_sites, _ = _demo(tmp_path / "demo")
    assert first == sum(first_sites.values()) > 0
    second, second_sites, out = _demo(tmp_path / "demo")
    # The per-site lines count this run, as the total does; the data directory's total is
    # said apart.
    assert second == sum(second_sites.values()) > 0
    assert all(n > 0 for n in second_sites.values()), second_sites
    assert f"holds {first + second} readings, {first} of them from earlier runs." in out, out
    assert "/students" in out
    assert "stadtpuls tokens create --config" in out
