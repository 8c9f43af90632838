"""Export file formats, each written incrementally as a stream of byte chunks.

Every writer takes the column list and an iterator of row tuples (``export.query``) and
yields bytes as it goes, so neither the CLI nor the HTTP response ever holds the file: CSV and
JSON every ``_ROWS_PER_CHUNK`` rows, Parquet one row group at a time, the ZIP bundle as its
deflate stream produces output (written with data descriptors, so it needs no seeking).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from export.query import LOCAL_ZONE, NS, Column, Row

_ROWS_PER_CHUNK = 2000
_ROWS_PER_ROW_GROUP = 32_768


class ExportFormat(StrEnum):
    CSV = "csv"  # RFC 4180
    CSV_DE = "csv-de"  # German Excel: semicolon, decimal comma, UTF-8 with BOM
    JSON = "json"
    NDJSON = "ndjson"
    PARQUET = "parquet"
    ZIP = "zip"  # the data as CSV plus a data dictionary

    @property
    def extension(self) -> str:
        return {"csv-de": "csv", "ndjson": "ndjson"}.get(self.value, self.value)

    @property
    def media_type(self) -> str:
        return {
            "csv": "text/csv; charset=utf-8; header=present",
            "csv-de": "text/csv; charset=utf-8; header=present",
            "json": "application/json",
            "ndjson": "application/x-ndjson",
            "parquet": "application/vnd.apache.parquet",
            "zip": "application/zip",
        }[self.value]


class _Stamps:
    """ISO 8601 text for nanosecond times. Exports run through time in order and several
    series share a timestamp, so the last stamp and the minute's prefix are cached: formatting
    a datetime per row would otherwise dominate the cost of a long export."""

    def __init__(self, excel: bool) -> None:
        self.excel = excel
        self._sep = "," if excel else "."
        self._t = "T" if not excel else " "
        self._utc: tuple[int, str] = (-1, "")
        self._utc_last: tuple[int, str] = (-1, "")
        self._local: tuple[int, str, str] = (-1, "", "")
        self._local_last: tuple[int, str] = (-1, "")

    def _prefix(self, dt: datetime) -> str:
        return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{self._t}{dt.hour:02d}:{dt.minute:02d}:"

    def _fraction(self, ts_ns: int) -> str:
        sec, rest = divmod(ts_ns % (60 * NS), NS)
        return f"{sec:02d}{self._sep}{rest // 1000:06d}"

    def utc(self, ts_ns: int) -> str:
        if ts_ns == self._utc_last[0]:
            return self._utc_last[1]
        minute = ts_ns // (60 * NS)
        if minute != self._utc[0]:
            self._utc = (minute, self._prefix(datetime.fromtimestamp(minute * 60, UTC)))
        text = self._utc[1] + self._fraction(ts_ns) + ("" if self.excel else "Z")
        self._utc_last = (ts_ns, text)
        return text

    def local(self, ts_ns: int) -> str:
        if ts_ns == self._local_last[0]:
            return self._local_last[1]
        minute = ts_ns // (60 * NS)
        if minute != self._local[0]:
            dt = datetime.fromtimestamp(minute * 60, LOCAL_ZONE)
            offset = dt.utcoffset()
            assert offset is not None
            hours, rest = divmod(int(offset.total_seconds()), 3600)
            zone = (
                ""
                if self.excel
                else f"{'+' if hours >= 0 else '-'}{abs(hours):02d}:{rest // 60:02d}"
            )
            self._local = (minute, self._prefix(dt), zone)
        text = self._local[1] + self._fraction(ts_ns) + self._local[2]
        self._local_last = (ts_ns, text)
        return text


def _float_text(decimal_comma: bool) -> Callable[[Any], str]:
    def text(v: Any) -> str:
        if v is None:
            return ""
        s = repr(float(v))
        return s.replace(".", ",") if decimal_comma else s

    return text


def csv_chunks(
    cols: Sequence[Column],
    rows: Iterable[Row],
    *,
    excel: bool,
    unit_text: Mapping[str, str] | None = None,
) -> Iterator[bytes]:
    """RFC 4180 (comma, CRLF), or German Excel's dialect: semicolon, decimal comma and a BOM,
    which is how Excel recognises UTF-8 (otherwise it reads "µg/m³" as Windows-1252).

    ``unit_text`` rewrites the cells of a ``unit`` column (SenML name -> the text people
    write); the headers come with ``cols``."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";" if excel else ",", lineterminator="\r\n")
    writer.writerow([c.name for c in cols])
    head = buf.getvalue().encode("utf-8")
    yield (b"\xef\xbb\xbf" + head) if excel else head
    buf.seek(0)
    buf.truncate()
    # Only cells that need it are touched: the csv module already writes None as an empty
    # field and a float as its shortest repr, which is what RFC 4180 output wants. This is
    # the hot loop of a year-long export.
    stamps = _Stamps(excel)
    utc = [i for i, c in enumerate(cols) if c.kind == "time"]
    local = [i for i, c in enumerate(cols) if c.kind == "local_time"]
    floats = [i for i, c in enumerate(cols) if c.kind == "float"] if excel else []
    texts: Mapping[str, str] = unit_text or {}
    units = [i for i, c in enumerate(cols) if c.name == "unit"] if texts else []
    to_text = _float_text(decimal_comma=True)
    batch: list[list[Any]] = []
    for row in rows:
        cells = list(row)
        for i in utc:
            cells[i] = stamps.utc(cells[i])
        for i in local:
            cells[i] = stamps.local(cells[i])
        for i in floats:
            cells[i] = to_text(cells[i])
        for i in units:
            cells[i] = texts.get(cells[i], cells[i])
        batch.append(cells)
        if len(batch) >= _ROWS_PER_CHUNK:
            writer.writerows(batch)
            batch.clear()
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if batch:
        writer.writerows(batch)
        yield buf.getvalue().encode("utf-8")


def _json_values(cols: Sequence[Column]) -> Callable[[Row], dict[str, object]]:
    stamps = _Stamps(excel=False)
    names = [c.name for c in cols]
    kinds = [c.kind for c in cols]

    def obj(row: Row) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, kind, v in zip(names, kinds, row, strict=True):
            if kind == "time":
                out[name] = stamps.utc(v)
            elif kind == "local_time":
                out[name] = stamps.local(v)
            else:
                out[name] = v
        return out

    return obj


def json_chunks(cols: Sequence[Column], rows: Iterable[Row], *, lines: bool) -> Iterator[bytes]:
    """One JSON array of objects, or NDJSON (one object per line); empty cells are null."""
    obj = _json_values(cols)
    parts: list[str] = [] if lines else ["["]
    n = 0
    for row in rows:
        text = json.dumps(obj(row), ensure_ascii=False)
        if lines:
            parts.append(text + "\n")
        else:
            parts.append(("," if n else "") + "\n" + text)
        n += 1
        if n % _ROWS_PER_CHUNK == 0:
            yield "".join(parts).encode("utf-8")
            parts = []
    if not lines:
        parts.append("\n]\n" if n else "]\n")
    if parts:
        yield "".join(parts).encode("utf-8")


class _Spool:
    """A write-only file whose bytes are taken out as they arrive. It can tell its position
    but not seek, so zipfile writes data descriptors and pyarrow writes straight through."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        b = bytes(data)
        self._parts.append(b)
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def arrow_schema(cols: Sequence[Column]) -> pa.Schema:
    types = {
        "time": pa.timestamp("us", tz="UTC"),
        "local_time": pa.timestamp("us", tz=str(LOCAL_ZONE)),
        "text": pa.string(),
        "float": pa.float64(),
        "int": pa.int64(),
    }
    return pa.schema(
        [
            pa.field(c.name, types[c.kind], metadata={"unit": c.unit} if c.unit else None)
            for c in cols
        ]
    )


def parquet_chunks(cols: Sequence[Column], rows: Iterable[Row]) -> Iterator[bytes]:
    """Typed columns (timestamps with their zone, float64, int64, strings), one row group per
    ``_ROWS_PER_ROW_GROUP`` rows, so a reader can skip through a long file. Cells are
    gathered column by column, so a row group costs one list per column, not a tuple per
    row (that keeps a year-long export under 200 MB)."""
    schema = arrow_schema(cols)
    spool = _Spool()
    timelike = [c.kind in ("time", "local_time") for c in cols]
    columns: list[list[Any]] = [[] for _ in cols]
    appenders = [c.append for c in columns]
    with pq.ParquetWriter(spool, schema, compression="zstd") as writer:

        def flush() -> None:
            arrays = [
                pa.array([v // 1000 for v in col] if is_time else col, type=field.type)
                for col, is_time, field in zip(columns, timelike, schema, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            for col in columns:
                col.clear()

        n = 0
        for row in rows:
            for append, v in zip(appenders, row, strict=True):
                append(v)
            n += 1
            if n == _ROWS_PER_ROW_GROUP:
                flush()
                n = 0
                yield spool.take()
        if n:
            flush()
    yield spool.take()


def zip_chunks(
    data_name: str, data: Iterable[bytes], extras: Sequence[tuple[str, bytes]]
) -> Iterator[bytes]:
    """A ZIP holding ``data`` (streamed in) and small files such as the data dictionary."""
    spool = _Spool()
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in extras:
            zf.writestr(name, content)
            yield spool.take()
        # force_zip64: the data's size is unknown up front and may pass 4 GiB.
        with zf.open(data_name, "w", force_zip64=True) as member:
            for chunk in data:
                member.write(chunk)
                if spool.pending:
                    yield spool.take()
    yield spool.take()
