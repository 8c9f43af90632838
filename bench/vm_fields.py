"""What VictoriaMetrics' own CPU costs per reading, with Stadtpuls' three fields and with one.

    python -m bench.vm_fields [--readings N] [--rounds R]

VictoriaMetrics takes every field of an InfluxDB line as a sample of a series of its own
(``strain_value``, ``strain_anomaly``, ``strain_score``), so the schema's three fields per
reading (README, "InfluxDB schema") cost it about three times what the value alone would.
This measures it apart from everything else: a fresh ``victoria-metrics`` per variant, the
same readings (20 gauges, 100 Hz, values with three decimals) sent in 5,000-line requests
one after another, and its utime+stime (``/proc/PID/stat``) from before the first request
until two seconds after the last, so that the flush of its in-memory rows is counted.
Prints a line per run and one JSON object as the last line. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.throughput import cpu_seconds
from ingest.stores.lineprotocol import reading_lines, reading_prefix
from tests.support.victoria import VictoriaMetrics

CHUNK = 5000
SETTLE_S = 2.0  # its rows reach storage about once a second; count that work too


def bodies(readings: int, all_fields: bool) -> list[bytes]:
    """The requests: with all fields, the very lines the InfluxDB store sends."""
    rng = np.random.default_rng(1)
    values = (100 + 20 * rng.random(readings)).round(3).tolist()
    ts = (1_700_000_000_000_000_000 + np.arange(readings) * 10_000_000).tolist()
    gauge_prefixes = [
        reading_prefix("bridge", "bench", f"sg{g:02d}", "g1", "strain") for g in range(20)
    ]
    prefixes = [gauge_prefixes[i // 100 % 20] for i in range(readings)]
    out = []
    for i in range(0, readings, CHUNK):
        part = slice(i, i + CHUNK)
        if all_fields:
            n = len(values[part])
            body = reading_lines(prefixes[part], ts[part], values[part], [0] * n, [0.0] * n)
        else:
            body = "\n".join(
                f"{p} value={v!r} {t}"
                for p, v, t in zip(prefixes[part], values[part], ts[part], strict=True)
            )
        out.append(body.encode())
    return out


def run_once(all_fields: bool, readings: int) -> float:
    """VictoriaMetrics' CPU-seconds per 100k readings of one variant."""
    payloads = bodies(readings, all_fields)
    with tempfile.TemporaryDirectory(prefix="vm-fields-") as tmp:
        vm = VictoriaMetrics(Path(tmp))
        vm.start()
        try:
            assert vm.pid is not None
            url = f"{vm.url}/api/v2/write?org=bench&bucket=bench&precision=ns"
            with httpx.Client(timeout=30) as client:
                before = cpu_seconds(vm.pid)
                for body in payloads:
                    client.post(url, content=body).raise_for_status()
                time.sleep(SETTLE_S)
                spent = cpu_seconds(vm.pid) - before
        finally:
            vm.stop()
    return spent / readings * 1e5


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench.vm_fields", description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"three fields": [], "value only": []}
    for round_no in range(1, args.rounds + 1):
        for name, costs in results.items():
            cost = run_once(name == "three fields", args.readings)
            costs.append(cost)
            print(f"round {round_no} {name:12} {cost:.3f} CPU-s per 100k readings", flush=True)
    medians = {name: statistics.median(costs) for name, costs in results.items()}
    print(
        json.dumps(
            {
                "readings": args.readings,
                "rounds": args.rounds,
                "cpu_s_per_100k": {k: round(v, 4) for k, v in medians.items()},
                "ratio": round(medians["three fields"] / medians["value only"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
