"""Export of stored readings: long layout, streamed, CSV (RFC 4180) or JSON.

Rows are written as they come from the store, so memory stays flat however long the range.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

from ingest.batch import AnomalyFlag
from ingest.stores.base import StoredReading

COLUMNS = ("time", "site", "device", "channel", "measurement", "value", "unit", "anomaly", "score")

ExportFormat = Literal["csv", "json", "ndjson"]


def iso_utc(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


def _record(r: StoredReading) -> tuple[str, str, str, str, str, float, str, str, float]:
    return (
        iso_utc(r.ts_ns),
        r.site,
        r.device,
        r.channel,
        r.measurement,
        r.value,
        r.unit,
        AnomalyFlag.names(r.anomaly),
        round(r.score, 4),
    )


def write_export(rows: Iterable[StoredReading], out: TextIO, fmt: ExportFormat) -> int:
    """Write ``rows`` to ``out``; return how many were written."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow(_record(r))
            n += 1
    elif fmt in ("json", "ndjson"):
        array = fmt == "json"
        if array:
            out.write("[")
        for r in rows:
            obj = dict(zip(COLUMNS, _record(r), strict=True))
            if array:
                out.write(",\n" if n else "\n")
            out.write(json.dumps(obj, ensure_ascii=False))
            if not array:
                out.write("\n")
            n += 1
        if array:
            out.write("\n]\n" if n else "]\n")
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return n
