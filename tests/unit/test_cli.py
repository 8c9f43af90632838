"""The command line over a real SQLite store in a temporary directory: export, quarantine,
check-config. The store is filled through the pipeline, as the service would."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from devices.codecs import DecodeLimits, Decoder
from devices.registry import Registry
from devices.topics import TopicScheme
from ingest.anomaly import LimitCheck
from ingest.messages import InboundMessage
from ingest.metrics import IngestMetrics
from ingest.pipeline import BatchSettings, IngestLoop, Pipeline
from ingest.sources import ListSource
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from stadtpuls.cli import main
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML

T0 = 1_790_000_000  # 2026-09-21T14:13:20Z


@pytest.fixture
def config(tmp_path: Path, config_file: ConfigWriter, registry: Registry) -> Path:
    # The SQLite store: the commands read through readings(), which for InfluxStore is
    # Flux, and VictoriaMetrics (the tests' InfluxDB) has no Flux.
    cfg = config_file(
        {"registry": "registry.yaml", "data_dir": "data"}, registry_yaml=REGISTRY_YAML
    )
    store = SqliteStore(SqliteSettings(tmp_path / "data" / "stadtpuls.db"), registry.series)
    messages = [
        InboundMessage(
            "stadtpuls/bridge/b1/sg1",
            json.dumps([
                {"bn": "sg1/", "bt": T0 + i, "n": "g1/strain", "v": 100.0 * i},
                {"n": "g1/temperature", "v": 7.5},
            ]).encode(),
            (T0 + 10) * 10**9,
        )
        for i in range(12)
    ]  # fmt: skip
    messages.append(InboundMessage("stadtpuls/bridge/b1/sg1", b"{oops", (T0 + 10) * 10**9))
    messages.append(
        InboundMessage("stadtpuls/school/s1/room-1", b'[{"n":"co2","v":-1}]', (T0 + 10) * 10**9)
    )
    pipeline = Pipeline(
        Decoder(registry, TopicScheme(), DecodeLimits()),
        LimitCheck(registry.series),
        store,
        IngestMetrics(),
    )
    source = ListSource(messages)
    stop = threading.Event()
    loop = threading.Thread(target=IngestLoop(source, pipeline, BatchSettings()).run, args=(stop,))
    loop.start()
    assert source.drained.wait(10)
    stop.set()
    loop.join(10)
    store.close()
    return cfg


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_export_csv_long_layout(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "b1.csv"
    invoke(
        "export", "--config", str(config), "--site", "b1", "--measurement", "strain",
        "--start", "2026-09-21T14:13:20Z", "--end", "2026-09-21T16:13:25+02:00", "--out", str(out),
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == [
        "time", "local_time", "site", "device", "channel", "measurement", "value", "unit",
        "anomaly", "score",
    ]  # fmt: skip
    # 14:13:20 UTC is 16:13:20 in Berlin in September (summer time, +02:00).
    assert rows[0]["local_time"] == "2026-09-21T16:13:20.000000+02:00"
    # The end is exclusive and given in local time: 16:13:25+02:00 is 14:13:25Z.
    assert [r["time"] for r in rows] == [f"2026-09-21T14:13:2{i}.000000Z" for i in range(5)]
    assert [float(r["value"]) for r in rows] == [0.0, 100.0, 200.0, 300.0, 400.0]
    assert {(r["site"], r["device"], r["channel"], r["unit"]) for r in rows} == {
        ("b1", "sg1", "g1", "ue")
    }


def test_export_json_marks_limit_anomalies(config: Path) -> None:
    text = invoke(
        "export", "--config", str(config), "--site", "b1", "--device", "sg1",
        "--measurement", "strain", "--start", "2026-09-21T14:13:29Z",
        "--end", "2026-09-22T00:00:00Z", "--format", "json",
    )  # fmt: skip
    rows = json.loads(text)
    # The gauge's design limit is 900 microstrain: 1000 and 1100 are beyond it.
    assert [(r["value"], r["anomaly"]) for r in rows] == [
        (900.0, ""),
        (1000.0, "limit"),
        (1100.0, "limit"),
    ]
    assert rows[1]["score"] == pytest.approx(1000 / 900, abs=1e-4)


def test_export_refuses_unknown_site(config: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["export", "--config", str(config), "--site", "nowhere", "--start", "2026-01-01",
         "--end", "2026-01-02"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "nowhere" in result.output


def test_quarantine_list_show_replay(config: Path) -> None:
    listed = json.loads(invoke("quarantine", "list", "--config", str(config), "--json"))
    assert sorted(e["reason"] for e in listed) == ["not_json", "out_of_range"]
    bad_json = next(e for e in listed if e["reason"] == "not_json")
    assert bad_json["topic"] == "stadtpuls/bridge/b1/sg1"
    shown = invoke("quarantine", "show", "--config", str(config), str(bad_json["id"]))
    assert "{oops" in shown
    assert "not_json" in shown
    replayed = invoke("quarantine", "replay", "--config", str(config), "--all")
    assert "still rejected" in replayed
    assert "0 stored, 2 still rejected" in replayed


def test_check_config_reports_registry_errors_with_line(
    tmp_path: Path, config_file: ConfigWriter
) -> None:
    cfg = config_file(
        "registry: registry.yaml\n", registry_yaml=REGISTRY_YAML.replace("[strain]", "[strian]")
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(cfg)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'registry.yaml'}:10: sites.b1.devices.sg1.channels.g2.0:" in result.output
    assert "'strian' is not a bridge measurement" in result.output
