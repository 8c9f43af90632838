"""``--help`` of every command: it says something, and it answers at once because it
imports none of the heavy parts (numpy, pyarrow, paho, the InfluxDB and Grafana clients,
pydantic, the web server). Timing a subprocess on a loaded two-core CI machine would be
flaky; which modules got imported is not."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest

from export.formats import ExportFormat
from export.query import Layout, Resolution, Statistic
from stadtpuls.cli import export as export_cli
from stadtpuls.cli import main

HEAVY = (
    "numpy", "pyarrow", "paho", "influxdb_client", "grafana_client", "niquests", "urllib3",
    "pydantic", "pydantic_settings", "yaml", "apscheduler", "starlette", "uvicorn", "amqtt",
    "prometheus_client",
)  # fmt: skip


def commands(group: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(group, click.Group):
        for name, sub in sorted(group.commands.items()):
            yield from commands(sub, (*path, name))


# Runs every --help in one fresh interpreter, then names the heavy modules it imported.
_PROBE = """
import json, sys
from stadtpuls.cli import main
for path in json.loads(sys.argv[1]):
    try:
        main([*path, "--help"], standalone_mode=False)
    except SystemExit:
        pass
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""


def test_help_of_every_command_imports_nothing_heavy() -> None:
    paths = [list(p) for p in commands()]
    assert ["quarantine", "list"] in paths
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(paths), json.dumps(HEAVY)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_stadtpuls_help_runs_as_a_program_without_heavy_imports() -> None:
    probe = (
        "import runpy, sys\n"
        f"heavy = {list(HEAVY)!r}\n"
        "sys.argv = ['stadtpuls', '--help']\n"
        "try:\n    runpy.run_module('stadtpuls', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "Commands:" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("path", [p for p in commands() if p], ids=" ".join)
def test_every_command_has_help_text(path: tuple[str, ...]) -> None:
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    assert (cmd.help or "").strip(), f"`stadtpuls {' '.join(path)}` has no --help text"
    assert cmd.get_short_help_str(80).strip()


def test_quarantine_list_and_show_explain_themselves() -> None:
    from click.testing import CliRunner

    listed = CliRunner().invoke(main, ["quarantine", "list", "--help"]).output
    assert "waiting for a replay" in listed
    assert "--reason TEXT" in listed
    assert "Only entries with this reason" in listed
    shown = CliRunner().invoke(main, ["quarantine", "show", "--help"]).output
    assert "payload" in shown


def test_export_choices_are_the_export_enums() -> None:
    # Written out in the CLI so --help need not import pyarrow; they must not drift.
    assert tuple(f.value for f in ExportFormat) == export_cli.FORMATS
    assert tuple(r.value for r in Resolution) == export_cli.RESOLUTIONS
    assert tuple(x.value for x in Layout) == export_cli.LAYOUTS
    assert tuple(s.value for s in Statistic) == export_cli.STATISTICS
