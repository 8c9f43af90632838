"""Progress of the long commands: rows (or entries) so far and the time left, not only a
percentage; on a terminal one line redrawn in place, in a log a line now and then."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from stadtpuls.cli import main
from stadtpuls.cli.progress import Progress, format_seconds
from tests.unit.test_cli import config  # noqa: F401 - settings and a store with readings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_seconds() -> None:
    assert format_seconds(4.4) == "4 s"
    assert format_seconds(200) == "3 min 20 s"
    assert format_seconds(2 * 3600 + 5 * 60 + 9) == "2 h 05 min"
    assert format_seconds(3 * 86400 + 4 * 3600) == "3 d 4 h"


def test_log_lines_say_rows_and_time_left() -> None:
    clock, out = Clock(), io.StringIO()
    with Progress("exporting", 100, unit="rows", file=out, clock=clock) as p:
        clock.now += 1
        p.update(10, 1_500)  # before every_s: a log gets nothing yet
        assert out.getvalue() == ""
        clock.now += 9  # 10 s for a quarter: 30 s to go
        p.update(25, 4_000)
        clock.now += 10
        p.update(50, 8_000)
        clock.now += 10
        p.update(100, 16_000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "exporting: 25%, 4,000 rows, about 30 s left"
    assert lines[1] == "exporting: 50%, 8,000 rows, about 20 s left"
    assert lines[-1] == "exporting: 100%, 16,000 rows, done in 30 s"


def test_a_quick_command_writes_no_progress_to_a_log() -> None:
    out = io.StringIO()
    with Progress("replaying", 3, unit="readings stored", file=out) as p:
        for _ in range(3):
            p.advance(1, 10)
    assert out.getvalue() == ""


def test_terminal_line_is_redrawn_with_a_bar() -> None:
    clock, out = Clock(), Terminal()
    with Progress("pushing dashboards", 4, unit="written", file=out, clock=clock) as p:
        p.update(0, 0)
        clock.now += 2
        p.update(1, 1)
        p.echo("a line of the command's own")  # blanks the progress line first
    text = out.getvalue()
    assert text.startswith("\rpushing dashboards [--------------------]   0%  0 written")
    assert "estimating time left" in text
    assert "[#####---------------]  25%  1 written  about 6 s left" in text
    assert text.endswith("\n")


@pytest.fixture
def every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress lines in a log at once, so a short command shows them."""
    monkeypatch.setattr(Progress, "every_s", 0.0)


@pytest.mark.usefixtures("every_line")
def test_export_to_a_file_reports_rows_and_time_left(
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        main,
        ["export", "--config", str(config), "--site", "b1", "--start", "2026-09-20T00:00:00Z",
         "--end", "2026-09-23T00:00:00Z", "--out", str(tmp_path / "b1.csv")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("exporting:")]
    assert lines, result.stderr
    assert lines[-1].startswith("exporting: 100%, 24 rows, done in ")  # 12 strain + 12 temp
    assert any(" rows, " in ln and ("left" in ln or "done in" in ln) for ln in lines)
    assert "exported 24 rows" in result.stderr


@pytest.mark.usefixtures("every_line")
def test_quarantine_replay_reports_entries_and_time_left(config: Path) -> None:  # noqa: F811
    result = CliRunner().invoke(
        main, ["quarantine", "replay", "--config", str(config), "--all"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    progress = [ln for ln in result.stderr.splitlines() if ln.startswith("replaying:")]
    assert progress[0].startswith("replaying: 50%, 0 readings stored, ")
    assert progress[-1].startswith("replaying: 100%, 0 readings stored, done in ")
    assert "still rejected" in result.stdout
