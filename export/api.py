"""The students' export over HTTP: ``GET /api/v1/export``, its metadata, and the page.

The school comes from the read token, never from a parameter: a ``site`` parameter is
accepted only when it names the token's own school (anything else is 403), a room-scoped
token may ask only for its room, and every parameter is checked against a closed alphabet
or a fixed set of choices before it reaches a query, so a value that could be read as SQL,
Flux or a path is refused with 400. Each request with a valid token is logged in the token
database (token, parameters, time, outcome, rows and bytes) and counted against the token's
rate cap, refused ones included.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from devices.registry import ID_PATTERN, Registry, Series
from export.dictionary import DEFAULT_LICENCE, room_name
from export.formats import ExportFormat
from export.labels import measurement_label, unit_text
from export.query import (
    ExportRefused,
    ExportRequest,
    Layout,
    Resolution,
    Statistic,
    wide_header,
)
from export.stream import ExportStats, export_filename, export_stream
from export.tokens import RateLimited, TokenRefused, TokenScope, TokenStore
from ingest.stores.base import ReadingSource

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_ID_RE = re.compile(ID_PATTERN)
_TIME_RE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]{2,15})?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_PARAMS = {
    "token",
    "site",
    "rooms",
    "measurements",
    "start",
    "end",
    "resolution",
    "format",
    "layout",
    "statistic",
}
_MAX_IDS = 64


@dataclass(frozen=True, slots=True)
class ExportCaps:
    max_range: timedelta = timedelta(days=366)
    max_exports_per_minute: int = 20
    licence: str = DEFAULT_LICENCE


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_time(name: str, value: str) -> int:
    if len(value) > 40 or not _TIME_RE.fullmatch(value):
        raise _Refused(400, f"{name}: not an ISO 8601 time")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Refused(400, f"{name}: not an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000


def _ids(name: str, value: str | None) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = tuple(value.split(","))
    if len(items) > _MAX_IDS or not all(_ID_RE.fullmatch(i) for i in items):
        raise _Refused(400, f"{name}: a comma-separated list of ids ([a-z0-9_-])")
    return tuple(dict.fromkeys(items))


_E = TypeVar("_E", Resolution, Layout, Statistic, ExportFormat)


def _choice(kind: type[_E], name: str, value: str | None, default: _E) -> _E:
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise _Refused(400, f"{name}: one of {choices}") from None


def parse_export_params(
    params: Mapping[str, str], scope: TokenScope, caps: ExportCaps
) -> tuple[ExportRequest, ExportFormat]:
    """Turn query parameters into a request within the token's scope, or refuse."""
    unknown = set(params) - _PARAMS
    if unknown:
        raise _Refused(400, f"unknown parameter(s): {', '.join(sorted(unknown)[:5])}")
    site = params.get("site")
    if site is not None and site != scope.site:
        raise _Refused(403, "this token is not valid for that school")
    rooms = _ids("rooms", params.get("rooms"))
    if scope.device is not None:
        if any(r != scope.device for r in rooms):
            raise _Refused(403, "this token is valid for one room only")
        rooms = (scope.device,)
    start, end = params.get("start"), params.get("end")
    if start is None or end is None:
        raise _Refused(400, "start and end are required (ISO 8601)")
    start_ns, end_ns = _parse_time("start", start), _parse_time("end", end)
    if end_ns <= start_ns:
        raise _Refused(400, "end must lie after start")
    if end_ns - start_ns > caps.max_range.total_seconds() * 1e9:
        raise _Refused(400, f"the range is longer than {caps.max_range.days} days")
    request = ExportRequest(
        site=scope.site,
        start_ns=start_ns,
        end_ns=end_ns,
        devices=rooms,
        measurements=_ids("measurements", params.get("measurements")),
        resolution=_choice(Resolution, "resolution", params.get("resolution"), Resolution.RAW),
        layout=_choice(Layout, "layout", params.get("layout"), Layout.LONG),
        statistic=_choice(Statistic, "statistic", params.get("statistic"), Statistic.MEAN),
    )
    fmt = _choice(ExportFormat, "format", params.get("format"), ExportFormat.CSV)
    return request, fmt


def _single(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in out:
            raise _Refused(400, f"{key} given more than once")
        out[key] = value
    return out


def _series_meta(s: Series) -> dict[str, object]:
    """A series as the page shows it: labels in both languages, the unit as people write
    it, and the column it has in a wide export (JSON keeps the SenML unit in it)."""
    label = measurement_label(s.key.measurement, s.kind)
    return {
        "channel": s.key.channel,
        "measurement": s.key.measurement,
        "unit": s.unit,
        "unit_text": unit_text(s.unit),
        "label": {"de": label.de, "en": label.en},
        "about": {"de": label.about_de, "en": label.about_en},
        "description": s.measurement.description,
        "column": wide_header(s),
    }


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ExportApi:
    def __init__(
        self,
        source: ReadingSource,
        registry: Registry,
        tokens: TokenStore,
        caps: ExportCaps,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.source = source
        self.registry = registry
        self.tokens = tokens
        self.caps = caps
        self.clock = clock

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/export", self.export),
            Route("/api/v1/export/meta", self.meta),
            Route("/students", self.page),
            Mount("/students/static", StaticFiles(directory=STATIC_DIR), name="students-static"),
        ]

    def _scope(self, request: Request) -> TokenScope:
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else None
        if secret is None:
            secret = request.query_params.get("token")
        if not secret:
            raise _Refused(401, "a read token is required")
        if not _TOKEN_RE.fullmatch(secret):
            raise _Refused(401, "the token is not valid")
        try:
            return self.tokens.verify(secret, self.clock())
        except TokenRefused as exc:
            self.tokens.log(None, f"token refused: {exc.reason}", "unauthorized", self.clock())
            raise _Refused(401, "the token is not valid (unknown, expired or revoked)") from None

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "students.html", media_type="text/html; charset=utf-8")

    async def meta(self, request: Request) -> Response:
        try:
            scope = self._scope(request)
        except _Refused as exc:
            return _error(exc.status, exc.message, {"WWW-Authenticate": "Bearer"})
        site = self.registry.sites.get(scope.site)
        if site is None:
            return _error(404, "the token's school is no longer in the registry")
        rooms = [
            {
                "id": d.id,
                "name": room_name(d, d.id),
                "description": d.description,
                "interval_s": d.interval.total_seconds(),
                "series": [_series_meta(s) for s in d.series.values()],
            }
            for d in site.devices.values()
            if scope.device is None or d.id == scope.device
        ]
        return JSONResponse(
            {
                "site": {"id": site.id, "name": site.name, "city": site.city},
                "room": scope.device,
                "now": datetime.fromtimestamp(self.clock() // 1_000_000_000, UTC).isoformat(),
                "expires": datetime.fromtimestamp(scope.expires_ns / 1e9, UTC).isoformat(),
                "rooms": rooms,
                "max_range_days": self.caps.max_range.total_seconds() / 86400,
                "resolutions": [r.value for r in Resolution],
                "formats": [f.value for f in ExportFormat],
                "layouts": [m.value for m in Layout],
                "statistics": [s.value for s in Statistic],
            }
        )

    async def export(self, request: Request) -> Response:
        try:
            scope = self._scope(request)
        except _Refused as exc:
            return _error(exc.status, exc.message, {"WWW-Authenticate": "Bearer"})
        raw = [(k, v[:200]) for k, v in request.query_params.multi_items() if k != "token"]
        what = json.dumps(raw, ensure_ascii=False)[:2000]
        try:
            log_id = self.tokens.begin_export(
                scope, what, self.clock(), self.caps.max_exports_per_minute
            )
        except RateLimited as exc:
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        try:
            export_request, fmt = parse_export_params(_single(request), scope, self.caps)
            stats = ExportStats()
            chunks = export_stream(
                self.source, self.registry, export_request, fmt, stats=stats,
                licence=self.caps.licence,
            )  # fmt: skip
        except _Refused as exc:
            status = "forbidden" if exc.status == 403 else "refused"
            self.tokens.finish_export(log_id, status, 0, 0)
            return _error(exc.status, exc.message)
        except ExportRefused as exc:
            self.tokens.finish_export(log_id, "refused", 0, 0)
            return _error(400, str(exc))
        name = export_filename(export_request, fmt)
        return StreamingResponse(
            self._logged(chunks, log_id, stats),
            media_type=fmt.media_type,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _logged(self, chunks: Iterator[bytes], log_id: int, stats: ExportStats) -> Iterator[bytes]:
        status = "aborted"  # the client went away, unless we get to the end
        try:
            yield from chunks
            status = "ok"
        except Exception:
            status = "failed"
            log.exception("export %d failed", log_id)
            raise
        finally:
            self.tokens.finish_export(log_id, status, stats.rows, stats.bytes)
