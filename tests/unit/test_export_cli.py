"""``stadtpuls tokens`` and the new ``stadtpuls export`` options over a real SQLite store."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from click.testing import CliRunner

from devices.registry import Registry
from export.tokens import TokenStore
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore
from stadtpuls.cli import main
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML
from tests.unit.test_export_api import fill_store

NS = 1_000_000_000


@pytest.fixture
def config(tmp_path: Path, config_file: ConfigWriter, registry: Registry) -> Path:
    # The SQLite store: the export reads through readings(), which for InfluxStore is Flux,
    # and VictoriaMetrics (the tests' InfluxDB) has no Flux.
    cfg = config_file(
        {"registry": "registry.yaml", "data_dir": "data"}, registry_yaml=REGISTRY_YAML
    )
    store = SqliteStore(SqliteSettings(tmp_path / "data" / "stadtpuls.db"), registry.series)
    fill_store(store, registry)
    store.close()
    return cfg


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_tokens_create_list_revoke(config: Path, tmp_path: Path) -> None:
    out = run("tokens", "create", "--config", str(config), "--site", "s1", "--room", "room-1",
              "--expires", "2d", "--label", "7b physics")  # fmt: skip
    secret = re.search(r"secret \(shown once\): (\S+)", out)
    assert secret is not None
    tokens = TokenStore(tmp_path / "data" / "tokens.sqlite")
    try:
        scope = tokens.verify(secret.group(1), tokens.all()[0].created_ns)
        assert (scope.site, scope.device, scope.label) == ("s1", "room-1", "7b physics")
        lifetime = scope.expires_ns - tokens.all()[0].created_ns
        assert lifetime == 2 * 86_400 * NS
    finally:
        tokens.close()
    listed = run("tokens", "list", "--config", str(config))
    assert "active" in listed
    assert "s1/room-1" in listed
    assert secret.group(1) not in listed
    run("tokens", "revoke", "--config", str(config), str(scope.token_id))
    assert "revoked" in run("tokens", "list", "--config", str(config))
    run("tokens", "revoke", "--config", str(config), str(scope.token_id), code=2)


def test_tokens_are_for_schools_and_their_rooms(config: Path) -> None:
    assert "school" in run("tokens", "create", "--config", str(config), "--site", "b1", code=2)
    out = run("tokens", "create", "--config", str(config), "--site", "s1", "--room", "room-9",
              code=2)  # fmt: skip
    assert "room-9" in out


def test_export_parquet_wide_with_progress(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "s1.parquet"
    result = CliRunner().invoke(
        main,
        ["export", "--config", str(config), "--site", "s1", "--device", "room-1",
         "--measurement", "co2", "--measurement", "temperature",
         "--start", "2026-11-23T00:00:00Z", "--end", "2026-11-24T00:00:00Z",
         "--resolution", "15min", "--layout", "wide", "--format", "parquet", "--out", str(out)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "exported 96 rows" in result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["time", "local_time", "room-1 co2 [ppm]",
                                  "room-1 temperature [Cel]"]  # fmt: skip
    assert table.schema.field("room-1 co2 [ppm]").type == pa.float64()
    assert table.schema.field("room-1 co2 [ppm]").metadata == {b"unit": b"ppm"}
    assert table.column("room-1 temperature [Cel]").to_pylist() == [21.0] * 96


def test_export_german_csv_to_stdout(config: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["export", "--config", str(config), "--site", "s1", "--measurement", "co2",
         "--start", "2026-11-23T00:00:00Z", "--end", "2026-11-23T00:03:00Z",
         "--format", "csv-de"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = io.BytesIO(result.stdout_bytes).read().decode("utf-8-sig").splitlines()
    assert lines[0] == "time;local_time;site;device;channel;measurement;value;unit;anomaly;score"
    assert lines[1] == (
        "2026-11-23 00:00:00,000000;2026-11-23 01:00:00,000000;s1;room-1;;co2;400,0;ppm;;0,0"
    )
    assert len(lines) == 4


def test_export_refuses_unknown_room(config: Path) -> None:
    out = run("export", "--config", str(config), "--site", "s1", "--device", "room-9",
              "--start", "2026-11-23", "--end", "2026-11-24", code=2)  # fmt: skip
    assert "room-9" in out
