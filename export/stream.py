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
from export.query import (
    ExportRequest,
    Progress,
    Row,
    columns,
    rows,
    select_series,
    utc_datetime,
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
    day = "%Y%m%d"
    start = utc_datetime(request.start_ns).strftime(day)
    end = utc_datetime(request.end_ns - 1).strftime(day)
    rooms = "-".join(request.devices) if len(request.devices) <= 3 and request.devices else "all"
    return (
        f"stadtpuls-{request.site}-{rooms}-{start}-{end}-{request.resolution.value}-"
        f"{request.layout.value}.{fmt.extension}"
    )


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
    default: the bundle is for students) or RFC 4180.
    """
    series = select_series(registry, request)
    cols = columns(request, series)
    counter = stats if stats is not None else ExportStats()
    body = _counted(rows(source, request, series, progress), counter)
    if fmt == ExportFormat.CSV:
        chunks = csv_chunks(cols, body, excel=False)
    elif fmt == ExportFormat.CSV_DE:
        chunks = csv_chunks(cols, body, excel=True)
    elif fmt in (ExportFormat.JSON, ExportFormat.NDJSON):
        chunks = json_chunks(cols, body, lines=fmt == ExportFormat.NDJSON)
    elif fmt == ExportFormat.PARQUET:
        chunks = parquet_chunks(cols, body)
    elif fmt == ExportFormat.ZIP:
        data_name = export_filename(request, ExportFormat.CSV)
        extras = dictionary_files(registry, request, series, cols, data_name, licence)
        chunks = zip_chunks(data_name, csv_chunks(cols, body, excel=excel_in_bundle), extras)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return _sized(chunks, counter)


def _sized(chunks: Iterator[bytes], stats: ExportStats) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk:
            stats.bytes += len(chunk)
            yield chunk
