"""``stadtpuls tokens log``: the export log in columns a person reads, not a dump."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from export.tokens import TokenStore
from stadtpuls.cli import main
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML

NS = 1_000_000_000
T0 = 1_795_420_800 * NS  # 2026-11-23T08:00:00Z, 09:00 in Berlin


def test_tokens_log_prints_readable_columns(tmp_path: Path, config_file: ConfigWriter) -> None:
    cfg = config_file(
        {"registry": "registry.yaml", "data_dir": "data"}, registry_yaml=REGISTRY_YAML
    )
    (tmp_path / "data").mkdir()
    store = TokenStore(tmp_path / "data" / "tokens.sqlite")
    try:
        token_id, secret = store.create("s1", None, T0 + 86_400 * NS, "7b", T0)
        scope = store.verify(secret, T0)
        asked = {"site": "s1", "measurement": ["co2", "temperature"], "format": "csv-de"}
        log_id = store.begin_export(scope, json.dumps(asked), T0 + 60 * NS, 20)
        store.finish_export(log_id, "ok", 1_234_567, 45_678_901)
        store.log(None, "token refused: unknown token", "unauthorized", T0 + 120 * NS)
    finally:
        store.close()
    result = CliRunner().invoke(main, ["tokens", "log", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    header, refused, done = result.stdout.splitlines()
    assert header.split() == ["ENTRY", "TIME", "TOKEN", "OUTCOME", "ROWS", "BYTES", "REQUEST"]
    # Columns line up: each row's outcome starts where the header's OUTCOME does.
    column = header.index("OUTCOME")
    assert refused[column:].startswith("unauthorized")
    assert done[column:].startswith("ok")
    assert "2026-11-23 09:01:00 CET" in done  # Berlin time, with its zone
    assert re.search(r"\b1,234,567\b", done)
    assert re.search(r"\b45,678,901\b", done)
    assert done.endswith("site=s1 measurement=co2,temperature format=csv-de")
    assert "{" not in done
    assert refused.endswith("token refused: unknown token")
    assert done.split()[4] == str(token_id)  # entry, date, time, zone, token
