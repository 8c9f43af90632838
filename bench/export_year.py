"""Benchmark (not a test): export a year of 1-minute data of a school with 10 sensors.

Fills a SQLite store in a child process (so its memory does not count), then exports the
year in this process, streamed to a file, and prints the time and the peak RSS per format.
The target is a peak below 200 MB: the export holds one day's chunk, never the year.

    uv run python -m bench.export_year [--days 365] [--formats csv,csv-de,parquet]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from devices.registry import Registry, parse_registry
from export.formats import ExportFormat
from export.query import ExportRequest, Layout, Resolution
from export.stream import ExportStats, export_stream
from ingest.batch import ReadingBatch
from ingest.stores.local import SqliteSettings
from ingest.stores.sqlite import SqliteStore

NS = 1_000_000_000
MIN = 60 * NS
DAY = 86_400 * NS
START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp()) * NS

REGISTRY = """
sites:
  bench-school:
    kind: school
    name: Benchmark school
    devices:
      room-1: {interval: 1m, measurements: [co2, temperature, humidity]}
      room-2: {interval: 1m, measurements: [co2, temperature, humidity]}
      room-3: {interval: 1m, measurements: [co2, temperature, humidity]}
      room-4: {interval: 1m, measurements: [co2]}
"""


def _fill(path: Path, days: int) -> None:
    registry = parse_registry(REGISTRY)
    store = SqliteStore(SqliteSettings(path, synchronous="OFF"), registry.series)
    rng = np.random.default_rng(1)
    n = len(registry.series)
    minutes = np.arange(1440, dtype=np.int64)
    for day in range(days):
        ts = START + day * DAY + minutes * MIN
        series = np.repeat(np.arange(n, dtype=np.int32), 1440)
        values = np.round(400 + 600 * rng.random(n * 1440), 1)
        store.commit(ReadingBatch.unchecked(series, np.tile(ts, n), values), [])
    store.close()


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--formats", default="csv,csv-de,parquet")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="stadtpuls-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "stadtpuls.db"
    registry: Registry = parse_registry(REGISTRY)
    if not db.exists():
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=_fill, args=(db, args.days))
        child.start()
        child.join()
        if child.exitcode != 0:
            sys.exit(f"filling the store failed ({child.exitcode})")
        print(f"filled {args.days} days x 10 sensors in {time.perf_counter() - started:.0f} s",
              flush=True)  # fmt: skip
    store = SqliteStore(SqliteSettings(db, synchronous="OFF"), registry.series)
    baseline = _peak_rss_mb()
    results: dict[str, object] = {"days": args.days, "sensors": 10, "baseline_rss_mb": baseline}
    request = ExportRequest("bench-school", START, START + args.days * DAY)
    cases = [(ExportFormat(f), request) for f in args.formats.split(",") if f]
    cases.append(
        (ExportFormat.CSV_DE, ExportRequest(
            "bench-school", START, START + args.days * DAY,
            resolution=Resolution.HOUR1, layout=Layout.WIDE,
        ))
    )  # fmt: skip
    for fmt, req in cases:
        name = f"{fmt.value}-{req.resolution.value}-{req.layout.value}"
        stats = ExportStats()
        started = time.perf_counter()
        with (work / f"export-{name}.{fmt.extension}").open("wb") as out:
            for chunk in export_stream(store, registry, req, fmt, stats=stats):
                out.write(chunk)
        seconds = time.perf_counter() - started
        results[name] = {
            "rows": stats.rows,
            "mb": round(stats.bytes / 1e6, 1),
            "seconds": round(seconds, 1),
            "rows_per_s": round(stats.rows / seconds),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        print(f"{name}: {results[name]}", flush=True)
    store.close()
    results["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
