"""The Grafana annotation channel against a local HTTP server that implements the three
annotation endpoints it calls (``POST /api/annotations``, ``GET /api/annotations`` with
tag and time filters, ``PUT /api/annotations/{id}``) the way Grafana's HTTP API documents
them. No Grafana server can run on these machines, so the server stands in for it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from alerts.channels.base import DeliveryError
from alerts.channels.grafana import TAG, GrafanaAnnotationChannel, GrafanaSettings
from alerts.model import Alert, AlertKey, Episode, Event, Notification, Severity, State

pytestmark = pytest.mark.integration

TOKEN = "glsa_annotation-writer-9c1f"
FIRED = datetime(2026, 11, 23, 8, 0, 5, tzinfo=UTC)


class FakeGrafana:
    def __init__(self) -> None:
        self.annotations: dict[int, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                outer.requests.append((method, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._reply(401, {"message": "invalid API key"})
                    return
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else {}
                parts = url.path.strip("/").split("/")
                if method == "POST" and parts == ["api", "annotations"]:
                    new_id = len(outer.annotations) + 1
                    outer.annotations[new_id] = {"id": new_id, **body}
                    self._reply(200, {"id": new_id, "message": "Annotation added"})
                elif method == "GET" and parts == ["api", "annotations"]:
                    q = parse_qs(url.query)
                    wanted = set(q.get("tags", []))
                    lo, hi = int(q["from"][0]), int(q["to"][0])
                    self._reply(
                        200,
                        [
                            a
                            for a in outer.annotations.values()
                            if wanted <= set(a["tags"]) and lo <= a["time"] <= hi
                        ],
                    )
                elif method == "PUT" and parts[:2] == ["api", "annotations"] and len(parts) == 3:
                    outer.annotations[int(parts[2])].update(body)
                    self._reply(200, {"message": "Annotation updated"})
                else:
                    self._reply(404, {"message": "not found"})

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    yield g
    g.server.shutdown()
    g.server.server_close()


def _alert(state: State, resolved: datetime | None = None) -> Alert:
    return Alert(
        key=AlertKey("limit", "b1", "sg1", "g1/strain"),
        severity=Severity.CRITICAL,
        kind="bridge",
        state=state,
        summary="b1/sg1/g1/strain: strain beyond its design limit",
        value=1210.0,
        threshold=900.0,
        unit="ue",
        since=FIRED,
        fired_at=FIRED,
        resolved_at=resolved,
    )


def test_firing_then_resolved_becomes_one_region(grafana: FakeGrafana) -> None:
    channel = GrafanaAnnotationChannel("ops-grafana", GrafanaSettings(grafana.url, TOKEN))
    channel.send(Notification(Event.FIRING, FIRED, "stadtpuls", alert=_alert(State.FIRING)))
    channel.send(Notification(Event.REPEAT, FIRED, "stadtpuls", alert=_alert(State.FIRING)))
    resolved = FIRED + timedelta(minutes=7)
    done = _alert(State.RESOLVED, resolved)
    channel.send(Notification(Event.RESOLVED, resolved, "stadtpuls", alert=done))
    assert len(grafana.annotations) == 1
    (a,) = grafana.annotations.values()
    assert a["time"] == int(FIRED.timestamp() * 1000)
    assert a["timeEnd"] == int(resolved.timestamp() * 1000)
    assert {TAG, "site:b1", "alert:limit/b1/sg1/g1/strain", "severity:critical"} <= set(a["tags"])
    assert a["text"].startswith("RESOLVED: b1/sg1/g1/strain")


def test_resolution_without_its_firing_annotation_adds_a_region(grafana: FakeGrafana) -> None:
    channel = GrafanaAnnotationChannel("ops-grafana", GrafanaSettings(grafana.url, TOKEN))
    resolved = FIRED + timedelta(minutes=2)
    done = _alert(State.RESOLVED, resolved)
    channel.send(Notification(Event.RESOLVED, resolved, "stadtpuls", alert=done))
    (a,) = grafana.annotations.values()
    assert (a["time"], a["timeEnd"]) == (
        int(FIRED.timestamp() * 1000),
        int(resolved.timestamp() * 1000),
    )


def test_refused_token_is_not_retried_and_unreachable_is(grafana: FakeGrafana) -> None:
    wrong = GrafanaAnnotationChannel("g", GrafanaSettings(grafana.url, "glsa_wrong-token-1"))
    with pytest.raises(DeliveryError) as refused:
        wrong.send(Notification(Event.FIRING, FIRED, "stadtpuls", alert=_alert(State.FIRING)))
    assert refused.value.retry is False
    gone = GrafanaAnnotationChannel(
        "g", GrafanaSettings("http://127.0.0.1:9", TOKEN, timeout=timedelta(seconds=2))
    )
    with pytest.raises(DeliveryError) as unreachable:
        gone.send(Notification(Event.FIRING, FIRED, "stadtpuls", alert=_alert(State.FIRING)))
    assert unreachable.value.retry is True


def test_escalation_is_a_point_and_a_backlog_one_region_per_episode(grafana: FakeGrafana) -> None:
    channel = GrafanaAnnotationChannel("grafana", GrafanaSettings(grafana.url, TOKEN))
    changed = FIRED + timedelta(minutes=3)
    up = replace(_alert(State.FIRING), annotations={"severity_since": changed.isoformat()})
    channel.send(Notification(Event.FIRING, FIRED, "stadtpuls", alert=_alert(State.FIRING)))
    channel.send(Notification(Event.ESCALATED, changed, "stadtpuls", alert=up))
    point = grafana.annotations[2]
    assert point["time"] == int(changed.timestamp() * 1000)
    assert "timeEnd" not in point or point["timeEnd"] in (None, point["time"])
    assert point["text"].startswith("SEVERITY CRITICAL:")
    episodes = tuple(
        Episode(FIRED + timedelta(hours=h), FIRED + timedelta(hours=h, minutes=40),
                Severity.WARNING, "warn", 1100.0)
        for h in (1, 2)
    )  # fmt: skip
    done = _alert(State.RESOLVED, FIRED + timedelta(hours=3))
    channel.send(Notification(Event.BACKLOG, FIRED, "stadtpuls", alert=done, episodes=episodes))
    regions = [grafana.annotations[3], grafana.annotations[4]]
    assert [(r["time"], r["timeEnd"]) for r in regions] == [
        (int(e.fired_at.timestamp() * 1000), int(e.resolved_at.timestamp() * 1000))
        for e in episodes
    ]
    assert all("delayed" in r["tags"] and "severity:warning" in r["tags"] for r in regions)
