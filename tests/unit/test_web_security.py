"""The admin token in front of ``/metrics`` and the alert endpoints, and the settings that
refuse an open admin surface or a broker address that cannot be right."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from stadtpuls.settings import ConfigError, is_loopback, load_settings
from stadtpuls.web import build_app
from tests.support.config import ConfigWriter

TOKEN = "an-admin-token-of-some-length"


async def _alerts(request: Request) -> Response:
    return JSONResponse({"alerts": []})


async def _ack(request: Request) -> Response:
    return JSONResponse({"acknowledged": (await request.json())["id"]})


async def _export(request: Request) -> Response:
    # Stands in for the students' export, which checks its own read tokens.
    if request.headers.get("authorization") != "Bearer spx_school":
        return JSONResponse({"error": "a read token is required"}, status_code=401)
    return PlainTextResponse("csv\n")


def client(token: str | None) -> TestClient:
    registry = CollectorRegistry()
    Counter("stadtpuls_test_things", "things", registry=registry).inc()
    app = build_app(
        lambda: {"broker_connected": True},
        registry,
        extra_routes=[Route("/api/v1/export", _export)],
        admin_routes=[
            Route("/api/v1/alerts", _alerts, methods=["GET"]),
            Route("/api/v1/alerts/ack", _ack, methods=["POST"]),
        ],
        admin_token=token,
    )
    return TestClient(app)


ADMIN_REQUESTS = [
    ("GET", "/metrics"),
    ("GET", "/metrics/"),
    ("GET", "/api/v1/alerts"),
    ("POST", "/api/v1/alerts/ack"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_REQUESTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
     f"Bearer {TOKEN[:-1]}", TOKEN],
)  # fmt: skip
def test_admin_paths_refuse_a_missing_or_wrong_token(
    method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = client(TOKEN).request(
        method, path, headers=headers, json={"id": "x"}, follow_redirects=False
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "stadtpuls_test_things" not in answer.text
    assert TOKEN not in answer.text


def test_the_token_opens_the_admin_paths() -> None:
    c = client(TOKEN)
    for scheme in ("Bearer", "bearer"):
        auth = {"Authorization": f"{scheme} {TOKEN}"}
        metrics = c.get("/metrics", headers=auth)
        assert metrics.status_code == 200
        assert "stadtpuls_test_things_total 1.0" in metrics.text
        assert c.get("/api/v1/alerts", headers=auth).json() == {"alerts": []}
        ack = c.post("/api/v1/alerts/ack", headers=auth, json={"id": "a/b"})
        assert ack.json() == {"acknowledged": "a/b"}


def test_health_readiness_and_the_export_stay_outside_the_admin_token() -> None:
    c = client(TOKEN)
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").json() == {"ready": True, "checks": {"broker_connected": True}}
    # The export answers with its own verdict: the admin token neither opens nor blocks it.
    assert c.get("/api/v1/export").status_code == 401
    assert c.get("/api/v1/export", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    export = c.get("/api/v1/export", headers={"Authorization": "Bearer spx_school"})
    assert export.text == "csv\n"


def test_without_a_token_everything_is_open() -> None:
    c = client(None)
    assert c.get("/metrics").status_code == 200
    assert c.get("/api/v1/alerts").status_code == 200


def test_admin_routes_must_be_plain_routes() -> None:
    with pytest.raises(TypeError, match="Route"):
        build_app(
            dict, CollectorRegistry(), admin_routes=[Mount("/x", routes=[])], admin_token=TOKEN
        )


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("", False),
     ("192.168.1.10", False), ("stadtpuls.example", False), ("localhost.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_start_up_needs_an_admin_token(config_file: ConfigWriter) -> None:
    with pytest.raises(ConfigError, match=r"http: .*http.host 0.0.0.0 .*admin_token"):
        load_settings(config_file("http: {host: 0.0.0.0}\n"))
    assert load_settings(config_file("http: {host: 127.0.0.1}\n")).http.admin_token is None


def test_admin_token_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_file: ConfigWriter
) -> None:
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    s = load_settings(config_file("http: {host: 0.0.0.0, admin_token_file: admin.token}\n"))
    assert s.http.admin_token is not None
    assert s.http.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s)
    monkeypatch.setenv("STADTPULS_HTTP__ADMIN_TOKEN", "from-the-environment-1234")
    s = load_settings(config_file("http: {host: 0.0.0.0}\n"))
    assert s.http.admin_token is not None
    assert s.http.admin_token.get_secret_value() == "from-the-environment-1234"


@pytest.mark.parametrize(
    ("token", "message"),
    [("changeme", "placeholder"), ("", "placeholder"), ("short-token", "at least 16")],
)
def test_weak_admin_tokens_refuse_start_up(
    config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch, token: str, message: str
) -> None:
    monkeypatch.setenv("STADTPULS_HTTP__ADMIN_TOKEN", token)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config_file("http: {host: 127.0.0.1}\n"))
    assert token not in str(info.value) or not token


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("mqtts://broker.example:9883", "broker.example", 9883, True),
        ("mqtt://10.0.0.5", "10.0.0.5", 1883, False),
        ("mqtts://[::1]:8883/", "::1", 8883, True),
    ],
)
def test_mqtt_url_sets_host_port_and_tls(
    config_file: ConfigWriter, url: str, host: str, port: int, tls: bool
) -> None:
    s = load_settings(config_file(f"mqtt: {{url: '{url}'}}\n"))
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ("{url: 'http://broker:1883'}", "expected mqtts://HOST"),
        ("{url: 'mqtts://:8883'}", "expected mqtts://HOST"),
        ("{url: 'mqtts://broker:99999'}", "port must be 1-65535"),
        ("{url: 'mqtts://broker/topic'}", "expected mqtts://HOST"),
        ("{url: 'mqtts://svc:hunter2-pw@broker'}", "must not carry credentials"),
        ("{url: 'mqtts://broker', port: 8883}", "remove mqtt.port"),
        ("{url: 'mqtt://broker', tls_ca: ca.crt}", "mqtt:// \\(no TLS\\) but mqtt.tls_ca"),
        ("{tls_ca: missing.crt}", "mqtt.tls_ca: no such file"),
        ("{tls_key: ca.crt}", "tls_key is set without mqtt.tls_cert"),
    ],
)
def test_mqtt_url_and_tls_mistakes_refuse_start_up(
    tmp_path: Path, mqtt: str, message: str, config_file: ConfigWriter
) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config_file(f"mqtt: {mqtt}\n"))
    assert "hunter2" not in str(info.value)


def test_any_tls_file_turns_tls_on(tmp_path: Path, config_file: ConfigWriter) -> None:
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings(config_file("mqtt: {port: 8883, tls_ca: ca.crt}\n"))
    assert s.mqtt.tls
    assert s.mqtt.tls_ca == tmp_path / "ca.crt"
    assert not load_settings(config_file("mqtt: {port: 1883}\n")).mqtt.tls
