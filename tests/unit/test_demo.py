"""The demo's closing lines: the count it prints and the per-site lines agree, and say what
they count; the students' page and how to get a token are among them. The demo itself,
with a broker, runs in ``tests/integration/test_processes.py``."""

from __future__ import annotations

import re
from pathlib import Path

from devices.registry import load_registry
from stadtpuls.demo import students_lines, summary

EXAMPLE = Path(__file__).resolve().parents[2] / "stadtpuls" / "examples" / "registry.yaml"


def test_summary_counts_what_this_run_added_and_the_sites_add_up() -> None:
    # A reused data directory: 1399 readings from an earlier run were there already.
    before = {"b1": 1000, "s1": 399}
    after = {"b1": 1300, "s1": 535}
    lines = summary(before, after, 4, Path("/data/stadtpuls.db"))
    head = re.match(r"This run: (\d+) new readings stored, 4 messages quarantined", lines[0])
    assert head is not None
    per_site = [int(m.group(1)) for ln in lines[1:] if (m := re.search(r"(\d+) readings$", ln))]
    assert per_site[:2] == [300, 136]
    assert int(head.group(1)) == sum(per_site[:2]) == 436
    assert (
        lines[-1]
        == "In all:    /data/stadtpuls.db holds 1835 readings, 1399 of them from earlier runs."
    )


def test_summary_of_a_first_run() -> None:
    lines = summary({"b1": 0}, {"b1": 50}, 0, Path("d.db"))
    assert lines[0].startswith("This run: 50 new readings stored")
    assert lines[-1] == "In all:    d.db holds 50 readings."


def test_closing_lines_name_the_students_page_and_how_to_get_a_token() -> None:
    registry = load_registry(EXAMPLE)
    lines = students_lines("http://127.0.0.1:8080", Path("/demo/stadtpuls.yaml"), registry)
    text = "\n".join(lines)
    assert "http://127.0.0.1:8080/students" in text
    assert "stadtpuls tokens create --config /demo/stadtpuls.yaml --site gymnasium-schwerte" in text
