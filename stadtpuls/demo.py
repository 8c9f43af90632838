"""``stadtpuls demo``: an embedded broker, the simulator for the Dortmund example registry,
and the service with SQLite, all in one process tree, with a live one-line status."""

from __future__ import annotations

import signal
import socket
import sqlite3
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from devices.publisher import publish
from devices.registry import Registry, load_registry
from devices.simulator import Simulator
from devices.topics import TopicScheme
from devices.vocabulary import SiteKind
from stadtpuls.broker import free_port, start_embedded_broker
from stadtpuls.service import Service
from stadtpuls.settings import load_settings

# A few hostile messages during the demo show the quarantine at work.
_BAD_MESSAGES = (
    ("stadtpuls/bridge/b1-wittekindstrasse/sg-north", b'[{"n":"g1/strain","v":NaN}]'),
    ("stadtpuls/bridge/b1-wittekindstrasse/unknown-gauge", b'[{"n":"g1/strain","v":1.0}]'),
    ("stadtpuls/school/gymnasium-schwerte/room-101", b"not json at all"),
    ("stadtpuls/school/gymnasium-schwerte/room-101", b'[{"n":"co2","v":-50}]'),
)


def _example_registry(data_dir: Path) -> Path:
    target = data_dir / "registry.yaml"
    if not target.exists():
        source = resources.files("stadtpuls") / "examples" / "registry.yaml"
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return target


def _send_bad(host: str, port: int, protocol: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="stadtpuls-demo-bad",
        protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311,
    )
    client.connect(host, port)
    client.loop_start()
    for topic, payload in _BAD_MESSAGES:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def _per_site(db: Path, registry: Registry) -> dict[str, int]:
    """Readings in the database per site of the registry (0 for a site without any, and
    for every site while there is no database yet)."""
    counts = dict.fromkeys(registry.sites, 0)
    if not db.exists():
        return counts
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT s.site, count(*) FROM readings r JOIN series s ON s.id = r.series_id "
            "GROUP BY s.site"
        ).fetchall()
    except sqlite3.OperationalError:  # a data directory whose tables are not there yet
        rows = []
    finally:
        conn.close()
    counts.update({site: int(n) for site, n in rows if site in counts})
    return counts


def summary(before: dict[str, int], after: dict[str, int], quarantined: int, db: Path) -> list[str]:
    """The closing count: what this run added to the database, per site, and what the
    data directory holds in all. Both come from the database, so the per-site lines add
    up to the total (a rewrite of a reading already stored, after a redelivery, adds
    nothing)."""
    added = {site: after[site] - before.get(site, 0) for site in after}
    new = sum(added.values())
    lines = [
        f"This run: {new} new readings stored, {quarantined} messages quarantined. "
        "New readings per site:"
    ]
    lines += [f"  {site:<28} {n:>8} readings" for site, n in added.items()]
    total = sum(after.values())
    earlier = f", {total - new} of them from earlier runs" if total > new else ""
    lines.append(f"In all:    {db} holds {total} readings{earlier}.")
    return lines


def students_lines(url: str, config_path: Path, registry: Registry) -> list[str]:
    """Where the students' page is and how a teacher gets it a read token."""
    school = next((s.id for s in registry.sites.values() if s.kind == SiteKind.SCHOOL), None)
    if school is None:
        return []
    return [
        f"Students:  {url}/students (while the demo runs) with a read token; to get one:",
        f"           stadtpuls tokens create --config {config_path} --site {school}",
        "           prints the token once and the page's address with it",
    ]


def run_demo(
    data_dir: Path,
    duration: float | None,
    http_port: int,
    seed: int,
    broker_kind: Literal["auto", "mosquitto", "python"] = "auto",
) -> int:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    registry_path = _example_registry(data_dir)
    registry = load_registry(registry_path)
    broker = start_embedded_broker(data_dir / "broker", broker_kind)
    try:
        port = http_port
        if port:
            try:
                with socket.create_server(("127.0.0.1", port)):
                    pass
            except OSError:
                port = free_port()
        config_path = data_dir / "stadtpuls.yaml"
        config_path.write_text(
            "# Written by `stadtpuls demo`, so `stadtpuls export` and `stadtpuls quarantine`\n"
            "# find the demo's data: stadtpuls quarantine list --config "
            + str(config_path)
            + "\n"
            + yaml.safe_dump(
                {
                    "registry": "registry.yaml",
                    "data_dir": ".",
                    "log_level": "WARNING",
                    "mqtt": {
                        "host": broker.host,
                        "port": broker.port,
                        "protocol": broker.mqtt_version,
                        "client_id": "stadtpuls-demo",
                    },
                    "http": {"host": "127.0.0.1", "port": port},
                    # Alerts go to the demo's own broker, where `mosquitto_sub -t
                    # 'stadtpuls/alerts/#'` shows them, rather than nowhere.
                    "alerts": {"channels": [{"name": "demo", "type": "mqtt"}]},
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        settings = load_settings(config_path)
        # What the data directory held before: the closing count is what this run added.
        before = _per_site(settings.database_path, registry)
        service = Service(settings, registry)
        service.start()
        service.source.wait_connected(10)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        sim = Simulator(
            registry,
            TopicScheme(settings.topic_prefix),
            seed=seed,
            start_ns=time.time_ns(),
            bridge_rate_hz=1.0,
            school_interval_s=5.0,  # faster than real senseBoxes, so a short demo shows schools
        )
        publisher = threading.Thread(
            target=publish,
            args=(sim.messages(None),),
            kwargs={
                "host": broker.host,
                "port": broker.port,
                "client_id": "stadtpuls-demo-sim",
                "pace": "realtime",
                "stop": stop,
                "protocol": broker.mqtt_version,
            },
            name="simulator",
            daemon=True,
        )
        publisher.start()
        _send_bad(broker.host, broker.port, broker.mqtt_version)
        url = f"http://127.0.0.1:{service.http.port}"
        started = time.monotonic()
        print(f"Stadtpuls demo: broker {broker.host}:{broker.port}, web {url}, data {data_dir}")
        if duration is None:
            print("Ctrl-C stops it.")
            for line in students_lines(url, config_path, registry):
                print(line)
        else:
            print(f"Running for {duration:g} s.")
        while not stop.wait(1.0):
            st = service.status()
            line = (
                f"\r{time.monotonic() - started:6.0f} s | received {st.received} messages | "
                f"stored {st.stored} readings | quarantined {st.rejected} | "
                f"broker {'up' if st.connected else 'DOWN'}"
            )
            sys.stdout.write(line)
            sys.stdout.flush()
            if duration is not None and time.monotonic() - started >= duration:
                break
        stop.set()
        publisher.join(timeout=15)
        # Let the ingest loop commit what the broker already delivered before stopping.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not service.caught_up():
            time.sleep(0.05)
        service.stop()
        st = service.status()
        per_site = _per_site(settings.database_path, registry)
        print()
        for line in summary(before, per_site, st.rejected, settings.database_path):
            print(line)
        print(f"Data:      {settings.database_path}")
        print(f"Web:       {url}/healthz  {url}/readyz  {url}/metrics (while running)")
        for line in students_lines(url, config_path, registry):
            print(line)
        print(f"Config:    {config_path}")
        print(
            f"Export:    stadtpuls export --config {config_path} "
            f"--site {next(iter(registry.sites))} --start <ISO time> --end <ISO time>"
        )
        print(f"Quarantine: stadtpuls quarantine list --config {config_path}")
        missing = [s for s, n in per_site.items() if n == before[s]]
        if missing:
            print(f"warning: no new readings from {', '.join(missing)}", file=sys.stderr)
            return 1
        return 0
    finally:
        broker.stop()
