"""``stadtpuls alerts`` as operations staff use it, over an alert state file written the way
the service writes it: what ``list`` says about each alert (how long, acknowledged,
silenced), silences as text in Berlin time, ``--for`` with a unit, ids without their
trailing slash, and the order of the checks of ``ack`` and ``silence``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from alerts.model import Alert, AlertKey, Severity, State
from alerts.state import AlertStore, Stored
from stadtpuls.cli import main
from stadtpuls.cli.alerts import canonical_id
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML

LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d CES?T")


@pytest.fixture
def config(config_file: ConfigWriter) -> Path:
    return config_file(
        {"registry": "registry.yaml", "data_dir": "data"}, registry_yaml=REGISTRY_YAML
    )


@pytest.fixture
def store(config: Path) -> Iterator[AlertStore]:
    (config.parent / "data").mkdir(exist_ok=True)
    s = AlertStore(config.parent / "data" / "alerts.sqlite")
    now = datetime.now(UTC)
    limit = Alert(
        AlertKey("incident", "b1", "sg1", "g1/strain"), Severity.CRITICAL, "bridge",
        State.FIRING, "strain beyond its design limit", 1100.0, 900.0, "ue",
        since=now - timedelta(hours=2, minutes=6), fired_at=now - timedelta(hours=2, minutes=5),
        labels={"measurement": "strain"}, annotations={"members": "limit"},
    )  # fmt: skip
    member = Alert(
        AlertKey("limit", "b1", "sg1", "g1/strain"), Severity.CRITICAL, "bridge",
        State.FIRING, "strain beyond its design limit", 1100.0, 900.0, "ue",
        fired_at=now - timedelta(hours=2, minutes=5),
        labels={"measurement": "strain", "incident": "incident/b1/sg1/g1/strain"},
    )  # fmt: skip
    silent = Alert(
        AlertKey("device-silent", "s1", "room-1"), Severity.WARNING, "school", State.FIRING,
        "no data from s1/room-1 for 10 min", fired_at=now - timedelta(minutes=12),
    )  # fmt: skip
    for a in (limit, member, silent):
        s.save(Stored(a), "firing", "fired", now)
    yield s
    s.close()


def run(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = CliRunner(env=env).invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result


def test_list_says_how_long_and_whether_acknowledged_or_silenced(
    config: Path, store: AlertStore
) -> None:
    cfg = str(config)
    run("alerts", "ack", "--config", cfg, "incident/b1/sg1/g1/strain", "--by", "ops")
    run("alerts", "silence", "--config", cfg, "--site", "s1", "--for", "8h", "--by", "J. Weber",
        "--comment", "lesson visit")  # fmt: skip
    out = run("alerts", "list", "--config", cfg).stdout
    blocks = {b.split()[2]: b for b in re.split(r"\n(?=\S)", out.strip())}
    limit, silent = blocks["incident/b1/sg1/g1/strain"], blocks["device-silent/s1/room-1/"]
    assert "firing for 2 h 05 min, since " in limit
    assert LOCAL_TIME.search(limit), limit
    assert "acknowledged by ops at " in limit
    assert "not silenced" in limit
    assert "firing for 12 min" in silent
    assert "not acknowledged" in silent
    assert re.search(r"silenced until .* CES?T by J\. Weber \(silence \w+: lesson visit\)", silent)
    listed = {
        a["id"]: a for a in json.loads(run("alerts", "list", "--config", cfg, "--json").stdout)
    }
    assert listed["device-silent/s1/room-1/"]["silenced_by"]
    assert listed["incident/b1/sg1/g1/strain"]["silenced_by"] == []
    assert listed["incident/b1/sg1/g1/strain"]["for_s"] == pytest.approx(7500, abs=60)


def test_silences_print_as_text_in_berlin_time(config: Path, store: AlertStore) -> None:
    cfg = str(config)
    made = run(
        "alerts", "silence", "--config", cfg, "--site", "b1", "--rule", "limit", "--for", "90m",
        "--by", "J. Weber", "--comment", "annual inspection",
    ).stdout  # fmt: skip
    assert "{" not in made
    assert "site=b1, alertname=limit" in made
    assert LOCAL_TIME.search(made), made
    assert "1 h 30 min" in made
    listed = run("alerts", "silences", "--config", cfg).stdout
    header, row = listed.splitlines()
    assert header.split() == ["ID", "STATE", "MATCHES", "FROM", "UNTIL", "BY", "COMMENT"]
    assert "{" not in row
    assert "site=b1, alertname=limit" in row
    assert len(LOCAL_TIME.findall(row)) == 2
    assert row.endswith("J. Weber  annual inspection")
    history = run("alerts", "history", "--config", cfg).stdout
    assert "site=b1, alertname=limit" in history
    assert "{" not in history


@pytest.mark.parametrize("given", ["8", "8.5", "eight hours", "8 hours"])
def test_silence_for_needs_a_unit(config: Path, store: AlertStore, given: str) -> None:
    result = run("alerts", "silence", "--config", str(config), "--site", "b1", "--for", given,
                 "--by", "ops", code=2)  # fmt: skip
    assert "--for" in result.output
    assert "unit" in result.output
    if given[0].isdigit() and " " not in given:
        assert f"{given}h" in result.output  # the fix is spelled out
    assert not store.silences(None)


def test_silence_of_an_unknown_site_is_refused_with_a_did_you_mean(
    config: Path, store: AlertStore
) -> None:
    result = run("alerts", "silence", "--config", str(config), "--site", "nosuchsite",
                 "--by", "ops", code=2)  # fmt: skip
    assert "no site 'nosuchsite' in the registry" in result.output
    assert "nothing" in result.output  # why: it would hold nothing back
    result = run("alerts", "silence", "--config", str(config), "--site", "b1x", "--by", "ops",
                 code=2)  # fmt: skip
    assert "did you mean 'b1'" in result.output
    result = run("alerts", "silence", "--config", str(config), "--site", "b1",
                 "--device", "sg2", "--by", "ops", code=2)  # fmt: skip
    assert "did you mean 'sg1'" in result.output
    result = run("alerts", "silence", "--config", str(config), "--site", "bridge-*",
                 "--by", "ops", code=2)  # fmt: skip
    assert "matches 'bridge-*'" in result.output
    assert not store.silences(None)
    run("alerts", "silence", "--config", str(config), "--site", "s*", "--by", "ops")
    assert len(store.silences(None)) == 1


def test_device_alert_ids_work_without_the_trailing_slash(config: Path, store: AlertStore) -> None:
    assert canonical_id("device-silent/s1/room-1") == "device-silent/s1/room-1/"
    assert canonical_id("broker-down") == "broker-down///"
    assert canonical_id("limit/b1/sg1/g1/strain") == "limit/b1/sg1/g1/strain"
    out = run("alerts", "ack", "--config", str(config), "device-silent/s1/room-1", "--by", "ops")
    assert "acknowledged device-silent/s1/room-1/ as ops" in out.stdout
    stored = store.get("device-silent/s1/room-1/")
    assert stored is not None
    assert stored.alert.acked_by == "ops"
    history = run("alerts", "history", "--config", str(config), "device-silent/s1/room-1").stdout
    assert "acknowledged" in history


def test_ack_checks_the_id_before_asking_who_you_are(config: Path, store: AlertStore) -> None:
    result = run("alerts", "ack", "--config", str(config), "incident/b1/sg1/g3/strain",
                 code=2, env={"USER": ""})  # fmt: skip
    assert "no alert 'incident/b1/sg1/g3/strain'" in result.output
    assert "--by" not in result.output
    # A known id, and no name: now it asks.
    result = run("alerts", "ack", "--config", str(config), "incident/b1/sg1/g1/strain",
                 code=2, env={"USER": ""})  # fmt: skip
    assert "--by" in result.output


def test_ack_of_a_member_rule_acknowledges_its_incident(config: Path, store: AlertStore) -> None:
    out = run("alerts", "ack", "--config", str(config), "limit/b1/sg1/g1/strain", "--by", "ops")
    assert "acknowledged incident/b1/sg1/g1/strain as ops" in out.stdout
    incident = store.get("incident/b1/sg1/g1/strain")
    assert incident is not None
    assert incident.alert.acked_by == "ops"
