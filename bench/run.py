"""``make bench``: the subscriber fed live by a raw-socket publisher, each in its own
process, on a real Mosquitto; the method is described in `bench.throughput`.

    python -m bench.run [--rounds R] [--quick] [--only NAME ...] [--no-latency]

The figure this module printed before (the service draining a session queued beforehand,
timed from its first to its last commit) flattered the service: it excluded filling the
queue, and the service ran inside the benchmark's own process. It is no longer printed.
`publish` stays because `bench.workers` queues its stream with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.throughput import main

__all__ = ["main", "publish"]


def publish(port: int, mode: str, count: int, rate: float = 0.0) -> dict[str, Any]:
    """Publish with `bench.publish` (paho) in a process of its own; its JSON result."""
    import time

    base_s = time.time() - 3600
    out = subprocess.run(
        [sys.executable, "-m", "bench.publish", "--port", str(port), "--mode", mode,
         "--count", str(count), "--rate", str(rate), "--base-s", str(base_s)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
