"""Scale-out on real parts: three ingest workers share one Mosquitto, each owning a share of
the sites, and write to one VictoriaMetrics process standing in for InfluxDB. One worker is
SIGKILLed mid-stream and started again; afterwards the database holds every reading the
broker acknowledged to the publisher exactly once, and each site's readings went through
the one worker that owns it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devices.partition import site_owner
from stadtpuls.broker import MosquittoBroker
from tests.support.loadgen import reading
from tests.support.processes import ServiceFactory
from tests.support.registry import bridges_yaml
from tests.support.service import ServiceProcess
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WORKERS = 3
SITES = [f"w{n:02d}" for n in range(12)]
COUNT = 15_000
RATE = 1_500.0  # messages/s: the stream lasts 10 s
VICTIM = 1


@pytest.fixture
def workers(
    tmp_path: Path,
    broker: MosquittoBroker,
    victoria: VictoriaMetrics,
    service_factory: ServiceFactory,
) -> list[ServiceProcess]:
    """Started; the ``processes`` fixture stops them."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(bridges_yaml(SITES))
    procs = [
        service_factory(
            broker.port,
            name=f"worker-{index}",
            start=False,
            env={"STADTPULS_INFLUXDB__TOKEN": "test-token-not-a-placeholder"},
            registry=str(registry),
            store={"backend": "influxdb"},
            influxdb={"url": victoria.url, "org": "city", "bucket": "sensors", "chunk_size": 2000},
            worker={"index": index, "count": WORKERS},
        )
        for index in range(WORKERS)
    ]
    # Side by side: each takes seconds to import its dependencies.
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(ServiceProcess.start, procs))
    return procs


def start_load(tmp_path: Path, port: int) -> tuple[subprocess.Popen[bytes], Path, int]:
    out = tmp_path / "acked.json"
    base_ms = time.time_ns() // 1_000_000 - 60_000  # a minute ago: inside the allowed window
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.support.loadgen", "--port", str(port),
            "--count", str(COUNT), "--rate", str(RATE), "--base-ms", str(base_ms),
            "--sites", ",".join(SITES), "--out", str(out),
        ]
    )  # fmt: skip
    return proc, out, base_ms


def test_three_workers_one_killed_nothing_lost_or_duplicated(
    tmp_path: Path,
    broker: MosquittoBroker,
    victoria: VictoriaMetrics,
    workers: list[ServiceProcess],
) -> None:
    owner = {site: site_owner(site, WORKERS) for site in SITES}
    assert set(owner.values()) == set(range(WORKERS)), "every worker must own a site here"
    victim = workers[VICTIM]

    load, out, base_ms = start_load(tmp_path, broker.port)
    wait_until(
        lambda: victim.metric("stadtpuls_messages_committed_total") > 1_000,
        30,
        "the victim's first commits",
    )
    victim.kill()
    # Same client id, so the same session: the broker queued the victim's sites meanwhile.
    victim.start()
    assert load.wait(60) == 0
    acked: list[int] = json.loads(out.read_text())["acked"]
    assert len(acked) == COUNT

    def site_of(seq: int) -> str:
        return SITES[seq % len(SITES)]

    expected = sorted(
        (site_of(s), reading(base_ms, s).ts_ns // 1_000_000, reading(base_ms, s).value)
        for s in acked
    )
    wait_until(
        lambda: (
            all(w.metric("stadtpuls_journal_depth") == 0 for w in workers)
            and len(victoria.site_points()) >= len(expected)
        ),
        60,
        "every acknowledged reading in the database",
    )
    points = victoria.site_points()
    assert len(points) == len(set(points)), "a reading stored twice"
    missing = sorted(set(expected) - set(points))
    assert not missing, f"{len(missing)} acknowledged readings lost, first {missing[:5]}"
    assert points == expected

    # No worker received a site it does not own: its share of the registry would have
    # quarantined it as an unknown site.
    for w in workers:
        assert w.metric("stadtpuls_messages_rejected_total") == 0
    # The workers that ran throughout committed exactly their own sites' readings, each once.
    for index, w in enumerate(workers):
        share = sum(1 for s in acked if owner[site_of(s)] == index)
        stored = w.metric("stadtpuls_readings_stored_total")
        if index == VICTIM:
            # Since its restart: what was queued for it, and what was committed but not
            # acknowledged before the kill.
            assert 0 < stored <= share
        else:
            assert stored == share
