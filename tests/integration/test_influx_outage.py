"""The InfluxDB write path end to end: Mosquitto, the service process with the InfluxDB
store, and a real VictoriaMetrics process standing in for InfluxDB 2 (no InfluxDB 2 server
installs here; VictoriaMetrics accepts the same ``/api/v2/write`` requests). The database
is stopped for 30 s mid-stream: acknowledgements continue, the journal absorbs the
outage, and afterwards every acknowledged reading is in the database exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from stadtpuls.broker import MosquittoBroker
from tests.integration.test_delivery import start_load
from tests.support.loadgen import reading
from tests.support.processes import ServiceFactory, VictoriaFactory
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

STRAIN = '{__name__="strain_value",site="b1",device="sg1",channel="g1"}'


def exported(vm: VictoriaMetrics) -> list[tuple[int, float]]:
    points: list[tuple[int, float]] = []
    for series in vm.export(STRAIN):
        points.extend(zip(series["timestamps"], series["values"], strict=True))
    return sorted(points)


def test_database_down_30s_mid_stream(
    tmp_path: Path,
    broker: MosquittoBroker,
    service_factory: ServiceFactory,
    victoria_factory: VictoriaFactory,
) -> None:
    victoria = victoria_factory()  # its own: the test stops it
    service = service_factory(
        broker.port,
        name="svc",
        env={"STADTPULS_INFLUXDB__TOKEN": "test-token-not-a-placeholder"},
        store={"backend": "influxdb"},
        influxdb={"url": victoria.url, "org": "city", "bucket": "sensors", "chunk_size": 2000},
    )
    load = start_load(tmp_path, broker.port, count=24_000, rate=500, name="outage")
    wait_until(
        lambda: service.metric("stadtpuls_influx_points_written_total") > 1_000,
        30,
        "the first points in the database",
    )
    victoria.stop()
    committed_at_stop = service.metric("stadtpuls_messages_committed_total")
    # 15,000 readings at 500/s: the database stays down for about 30 s.
    wait_until(
        lambda: service.metric("stadtpuls_journal_depth") >= 15_000,
        60,
        "30 s of readings absorbed by the journal",
    )
    # Acknowledgements went on while the database was down.
    assert service.metric("stadtpuls_messages_committed_total") > committed_at_stop + 14_000
    assert service.metric("stadtpuls_influx_write_failing") == 1
    victoria.start()
    acked = load.finish()
    assert len(acked) == load.count
    wait_until(
        lambda: (
            service.metric("stadtpuls_messages_committed_total") >= load.count
            and service.metric("stadtpuls_journal_depth") == 0
        ),
        120,
        "the journal drained",
    )
    points = exported(victoria)
    expected = sorted(
        (reading(load.base_ms, s).ts_ns // 1_000_000, reading(load.base_ms, s).value) for s in acked
    )
    assert len(points) == len(set(points))
    assert points == expected
    assert service.metric("stadtpuls_influx_write_retries_total") > 0
