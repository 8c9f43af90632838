"""The service's HTTP endpoints: health, readiness and Prometheus metrics; other parts' routes
come in as ``extra_routes`` (the students' export, which checks its own read tokens) or as
``admin_routes`` (the alert list and acknowledgement), which like ``/metrics`` require the
admin token when one is configured."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Collection, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class AdminTokenGuard:
    """Answers 401 to a request for one of ``paths`` that lacks
    ``Authorization: Bearer <token>``; every other path passes untouched."""

    def __init__(self, app: ASGIApp, token: str, paths: Collection[str]) -> None:
        self.app = app
        self._token = token.encode("utf-8")
        self.paths = frozenset(paths)

    def _authorised(self, scope: Scope) -> bool:
        scheme, _, supplied = Headers(scope=scope).get("authorization", "").partition(" ")
        # compare_digest takes as long for a wrong first byte as for a wrong last one, so
        # response times do not reveal how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            supplied.strip().encode("utf-8"), self._token
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # "/metrics/" would only be redirected to "/metrics", but refusing it here keeps the
        # rule independent of the router's slash handling.
        path = str(scope.get("path", "")).rstrip("/") or "/"
        if scope["type"] == "http" and path in self.paths and not self._authorised(scope):
            client = scope.get("client")
            log.info(
                "refused %s %s without a valid admin token",
                scope.get("method"),
                path,
                extra={"client": client[0] if client else None},
            )
            response = JSONResponse(
                {"error": "this endpoint needs Authorization: Bearer <admin token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="stadtpuls-admin"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _route_path(route: BaseRoute) -> str:
    if not isinstance(route, Route):
        raise TypeError(f"an admin route must be a starlette Route, not {route!r}")
    return route.path


def build_app(
    readiness: Callable[[], dict[str, bool]],
    metrics: CollectorRegistry,
    before_scrape: Callable[[], None] = lambda: None,
    extra_routes: Sequence[BaseRoute] = (),
    *,
    admin_routes: Sequence[BaseRoute] = (),
    admin_token: str | None = None,
    warnings: Sequence[str] = (),
) -> Starlette:
    """Without ``admin_token`` every route is open, which the settings allow only on a
    loopback address; with it, ``/metrics`` and ``admin_routes`` need the token.
    ``warnings`` (settings that work but are probably not what was meant) are listed by
    ``/readyz`` and do not make the service unready."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        checks = readiness()
        ok = all(checks.values())
        body: dict[str, object] = {"ready": ok, "checks": checks}
        if warnings:
            body["warnings"] = list(warnings)
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        before_scrape()
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    middleware = []
    if admin_token is not None:
        paths = {METRICS_PATH, *(_route_path(r) for r in admin_routes)}
        middleware.append(Middleware(AdminTokenGuard, token=admin_token, paths=paths))
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(METRICS_PATH, metrics_endpoint),
            *extra_routes,
            *admin_routes,
        ],
        middleware=middleware,
    )


class HttpServer:
    """uvicorn on a background thread, so the ingest loop keeps its own thread."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server did not start (is the port in use?)")
            if deadline.wait(0.02) or timeout <= 0:
                break
            timeout -= 0.02

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
