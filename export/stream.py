"""Export of stored readings, streamed: a request, a reading source, a format -> byte chunks.

``export_stream`` checks the request before it returns, so a caller can still answer with an
error; from then on it yields the file chunk by chunk and never holds it whole. The CLI
(``stadtpuls export``) and the HTTP API (``GET /api/v1/export``) both use it; formats are in
``export.formats``, rows in ``export.query``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from devices.registry import Registry
from export.dictionary import DEFAULT_LICENCE, dictionary_files
from export.formats import ExportFormat, csv_chunks, json_chunks, parquet_chunks, zip_chunks
from export.labels import UNIT_TEXT
from export.query import (
    LOCAL_ZONE,
    NS,
    ExportRequest,
    Progress,
    Row,
    columns,
    rows,
    select_series,
)
from ingest.stores.base import ReadingSource


def iso_utc(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


@dataclass
class ExportStats:
    """Filled while the stream runs: rows and bytes written so far."""

    rows: int = 0
    bytes: int = 0


def export_filename(request: ExportRequest, fmt: ExportFormat) -> str:
    """``stadtpuls-{site}-{rooms|all}-{first day}-{last day}-{resolution}-{layout}.{ext}``;
    the days are Berlin calendar days, as the pupil chose them (a week from Monday 00:00 is
    ``…-20261123-20261129-…``), and German Excel's CSV ends in ``-excel-de.csv`` so it is
    not mistaken for, or overwritten by, the RFC 4180 file."""
    day = "%Y%m%d"
    start = local_datetime(request.start_ns).strftime(day)
    end = local_datetime(request.end_ns - 1).strftime(day)
    rooms = "-".join(request.devices) if len(request.devices) <= 3 and request.devices else "all"
    dialect = "-excel-de" if fmt == ExportFormat.CSV_DE else ""
    return (
        f"stadtpuls-{request.site}-{rooms}-{start}-{end}-{request.resolution.value}-"
        f"{request.layout.value}{dialect}.{fmt.extension}"
    )


def local_datetime(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns // NS, LOCAL_ZONE)


def _counted(it: Iterable[Row], stats: ExportStats) -> Iterator[Row]:
    for row in it:
        stats.rows += 1
        yield row


def export_stream(
    source: ReadingSource,
    registry: Registry,
    request: ExportRequest,
    fmt: ExportFormat,
    *,
    progress: Progress = lambda _t: None,
    stats: ExportStats | None = None,
    licence: str = DEFAULT_LICENCE,
    excel_in_bundle: bool = True,
) -> Iterator[bytes]:
    """Check ``request`` (raises ``ExportRefused``) and return the file as byte chunks.

    ``excel_in_bundle`` picks the CSV dialect inside a ZIP bundle: German Excel's (the
    default: the bundle is for students) or RFC 4180. German Excel's CSV writes units as
    people write them (``°C``, ``µg/m³``); the other formats keep the SenML names.
    """
    series = select_series(registry, request)
    excel = fmt == ExportFormat.CSV_DE or (fmt == ExportFormat.ZIP and excel_in_bundle)
    units = UNIT_TEXT if excel else None
    cols = columns(request, series, units)
    counter = stats if stats is not None else ExportStats()
    body = _counted(rows(source, request, series, progress), counter)
    if fmt == ExportFormat.CSV:
        chunks = csv_chunks(cols, body, excel=False)
    elif fmt == ExportFormat.CSV_DE:
        chunks = csv_chunks(cols, body, excel=True, unit_text=units)
    elif fmt in (ExportFormat.JSON, ExportFormat.NDJSON):
        chunks = json_chunks(cols, body, lines=fmt == ExportFormat.NDJSON)
    elif fmt == ExportFormat.PARQUET:
        chunks = parquet_chunks(cols, body)
    elif fmt == ExportFormat.ZIP:
        data_name = export_filename(request, ExportFormat.CSV_DE if excel else ExportFormat.CSV)
        extras = dictionary_files(registry, request, series, cols, data_name, licence, excel=excel)
        data = csv_chunks(cols, body, excel=excel, unit_text=units)
        chunks = zip_chunks(data_name, data, extras)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return _sized(chunks, counter)


def _sized(chunks: Iterator[bytes], stats: ExportStats) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            stats.bytes += len(chunk)
            yield chunk
