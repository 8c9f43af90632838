"""The fault suite's short form (``bench/faults.py --short``; ``make faults`` runs the full
one): each fault on real processes, and every reading the broker acknowledged is stored or
quarantined exactly once. The service killed mid-stream and the database outage run here
as ``test_delivery.py`` and ``test_influx_outage.py``; the broker is restarted, not killed
(README, "Fault suite": a killed Mosquitto can lose what it acknowledged last). The
disk-full fault mounts a small tmpfs, so it needs root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.faults import SCENARIOS, SHORT, table

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", SHORT)
def test_fault_loses_and_duplicates_nothing(name: str, tmp_path: Path) -> None:
    if name == "disk-full" and os.geteuid() != 0:
        pytest.fail("the disk-full fault mounts a tmpfs: run the suite as root")
    outcome = SCENARIOS[name](tmp_path, True)
    print(table([outcome]))
    assert outcome.acked > 0
    assert outcome.lost == 0, table([outcome])
    assert outcome.duplicated == 0, table([outcome])
    assert outcome.stored + outcome.quarantined >= outcome.acked
