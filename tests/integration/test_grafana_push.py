"""`stadtpuls dashboards push` against a local HTTP server that implements the Grafana
endpoints the push calls, with Grafana's semantics for uids, versions, the ``overwrite``
flag and the 412 version-mismatch refusal.

No Grafana server can run on these machines (no Grafana package or image can be installed
here), so this fake stands in for it; it is a real HTTP server on a free loopback port,
and the push talks to it through grafana-client as it would to Grafana.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from dashboards.grafana import FOLDERS, build_dashboards
from dashboards.provisioning import DatasourceTarget, datasource_specs
from dashboards.push import DIGEST_KEY, DashboardDrift, connect, push
from devices.registry import Registry, parse_registry
from stadtpuls.cli import main
from tests.support.registry import REGISTRY_YAML

pytestmark = pytest.mark.integration

TOKEN = "glsa_test-service-account-token"
TARGET = DatasourceTarget("http://influxdb:8086", "stadtpuls", "stadtpuls")
Json = dict[str, Any]


class FakeGrafana(ThreadingHTTPServer):
    """Grafana's folder, datasource and dashboard endpoints, in memory."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folders: dict[str, Json] = {}
        self.datasources: dict[str, Json] = {}
        self.dashboards: dict[str, Json] = {}
        self.writes: list[str] = []
        self.lock = threading.Lock()
        self._next_id = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def handle_api(self, method: str, path: str, body: Json | None) -> tuple[int, Json]:
        parts = path.strip("/").split("/")[1:]  # without "api"
        match method, parts:
            case "GET", ["folders", uid]:
                return self._found(self.folders.get(uid))
            case "POST", ["folders"]:
                assert body is not None
                if body["uid"] in self.folders:
                    return 409, {"message": "a folder with that uid already exists"}
                folder = {**body, "id": self.next_id(), "version": 1}
                self.folders[body["uid"]] = folder
                return 200, folder
            case "PUT", ["folders", uid]:
                assert body is not None
                folder = self.folders[uid]
                if body.get("version") != folder["version"] and not body.get("overwrite"):
                    return 412, {"message": "the folder has been changed by someone else"}
                folder.update(title=body["title"], version=folder["version"] + 1)
                return 200, folder
            case "GET", ["datasources", "uid", uid]:
                ds = self.datasources.get(uid)
                if ds is None:
                    return self._found(None)
                # Grafana never returns secrets, only which ones are set.
                shown = {k: v for k, v in ds.items() if k != "secureJsonData"}
                shown["secureJsonFields"] = dict.fromkeys(ds.get("secureJsonData", {}), True)
                return 200, shown
            case "POST", ["datasources"]:
                assert body is not None
                if body["uid"] in self.datasources:
                    return 409, {"message": "data source with the same uid already exists"}
                self.datasources[body["uid"]] = {**body, "id": self.next_id(), "version": 1}
                return 200, {"message": "Datasource added", "datasource": body}
            case "PUT", ["datasources", "uid", uid]:
                assert body is not None
                old = self.datasources[uid]
                secure = body.get("secureJsonData", old.get("secureJsonData", {}))
                self.datasources[uid] = {
                    **body,
                    "secureJsonData": secure,
                    "id": old["id"],
                    "version": old["version"] + 1,
                }
                return 200, {"message": "Datasource updated"}
            case "GET", ["dashboards", "uid", uid]:
                return self._found(copy.deepcopy(self.dashboards.get(uid)))
            case "POST", ["dashboards", "db"]:
                assert body is not None
                return self._save_dashboard(body)
        return 404, {"message": "Not found"}

    def _found(self, item: Json | None) -> tuple[int, Json]:
        return (200, item) if item is not None else (404, {"message": "Not found"})

    def _save_dashboard(self, body: Json) -> tuple[int, Json]:
        dash = copy.deepcopy(body["dashboard"])
        folder_uid = body.get("folderUid", "")
        if folder_uid and folder_uid not in self.folders:
            return 400, {"message": "folder not found"}
        old = self.dashboards.get(dash["uid"])
        if old is None:
            dash.update(id=self.next_id(), version=1)
        else:
            stored = old["dashboard"]
            if not body.get("overwrite") and dash.get("version") != stored["version"]:
                return 412, {"status": "version-mismatch", "message": "changed by someone else"}
            dash.update(id=stored["id"], version=stored["version"] + 1)
        self.dashboards[dash["uid"]] = {
            "dashboard": dash,
            "meta": {"folderUid": folder_uid, "version": dash["version"]},
        }
        return 200, {"status": "success", "uid": dash["uid"], "version": dash["version"]}


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            status, answer = 401, {"message": "invalid API key"}
        else:
            with self.server.lock:
                status, answer = self.server.handle_api(method, self.path.split("?")[0], body)
                if method != "GET" and status == 200:
                    self.server.writes.append(f"{method} {self.path}")
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    # A short poll interval: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def do_push(grafana: FakeGrafana, registry: Registry, *, force: bool = False) -> Any:
    return push(
        connect(grafana.url, TOKEN),
        build_dashboards(registry, TARGET.bucket),
        TARGET,
        influx_token="grafana-read-token",
        force=force,
    )


def edit_in_ui(grafana: FakeGrafana, uid: str, title: str) -> None:
    """Save a dashboard the way Grafana's UI does: the stored JSON, changed, at its version."""
    current = httpx.get(
        f"{grafana.url}/api/dashboards/uid/{uid}", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    current["dashboard"]["title"] = title
    answer = httpx.post(
        f"{grafana.url}/api/dashboards/db",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"dashboard": current["dashboard"], "folderUid": current["meta"]["folderUid"]},
    )
    assert answer.status_code == 200


def test_first_push_creates_folders_datasources_and_dashboards(
    grafana: FakeGrafana, registry: Registry
) -> None:
    report = do_push(grafana, registry)
    generated = build_dashboards(registry, TARGET.bucket)
    assert set(grafana.folders) == {f.uid for f in FOLDERS.values()}
    assert set(grafana.datasources) == {ds["uid"] for ds in datasource_specs(TARGET)}
    influx = next(ds for ds in grafana.datasources.values() if ds["type"] == "influxdb")
    assert influx["secureJsonData"] == {"token": "grafana-read-token"}
    assert set(grafana.dashboards) == {d.uid for d in generated}
    for d in generated:
        stored = grafana.dashboards[d.uid]
        assert stored["meta"]["folderUid"] == d.folder.uid
        content = {k: v for k, v in stored["dashboard"].items() if k not in ("id", "version")}
        assert content.pop(DIGEST_KEY).startswith("sha256:")
        assert content == d.model
    assert len(report.created) == len(FOLDERS) + 2 + len(generated)


def test_second_push_changes_nothing(grafana: FakeGrafana, registry: Registry) -> None:
    do_push(grafana, registry)
    writes, stored = list(grafana.writes), copy.deepcopy(grafana.dashboards)
    report = do_push(grafana, registry)
    assert not report.changed
    assert grafana.writes == writes
    assert grafana.dashboards == stored


def test_a_registry_change_updates_only_its_dashboards(
    grafana: FakeGrafana, registry: Registry
) -> None:
    do_push(grafana, registry)
    versions = {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()}
    grown = parse_registry(
        REGISTRY_YAML + "      room-2:\n        measurements: [co2, noise]\n", "grown.yaml"
    )
    report = do_push(grafana, grown)
    changed = {uid for uid, d in grafana.dashboards.items() if d["dashboard"]["version"] > 1}
    # s2's new room changes s2's dashboard and the overview's device-free site list not at all.
    s2 = next(d.uid for d in build_dashboards(grown, "b") if "s2" in d.model["tags"])
    assert changed == {s2}
    assert report.updated == [f"dashboard {s2}"]
    assert grafana.dashboards[s2]["dashboard"]["version"] == versions[s2] + 1


def test_dashboard_edited_in_grafana_is_not_overwritten_without_force(
    grafana: FakeGrafana, registry: Registry
) -> None:
    do_push(grafana, registry)
    edited = next(iter(grafana.dashboards))
    edit_in_ui(grafana, edited, "Changed by an engineer")
    version = grafana.dashboards[edited]["dashboard"]["version"]

    with pytest.raises(DashboardDrift) as refused:
        do_push(grafana, registry)
    assert refused.value.report.drifted == [f"{edited} (edited in Grafana, now version {version})"]
    assert grafana.dashboards[edited]["dashboard"]["title"] == "Changed by an engineer"

    report = do_push(grafana, registry, force=True)
    assert report.updated == [f"dashboard {edited}"]
    assert grafana.dashboards[edited]["dashboard"]["title"] != "Changed by an engineer"
    assert not do_push(grafana, registry).changed


def test_cli_push_reads_the_token_from_a_file_and_exits_1_on_drift(
    grafana: FakeGrafana, tmp_path: Path
) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(REGISTRY_YAML, encoding="utf-8")
    token_file = tmp_path / "grafana.token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    influx_token = tmp_path / "influx.token"
    influx_token.write_text("grafana-read-token", encoding="utf-8")
    args = [
        "dashboards", "push", "--registry", str(registry_file), "--url", grafana.url,
        "--token-file", str(token_file), "--influx-token-file", str(influx_token),
    ]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(main, args, env={"STADTPULS_CONFIG": None})
    assert first.exit_code == 0, first.output
    assert "unchanged 0" in first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "created 0, updated 0" in again.output

    edited = next(iter(grafana.dashboards))
    edit_in_ui(grafana, edited, "Changed by an engineer")
    drift = runner.invoke(main, args)
    assert drift.exit_code == 1
    assert edited in drift.output
    assert "--force" in drift.output
    forced = runner.invoke(main, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "updated 1" in forced.output


def test_cli_push_with_a_wrong_token_fails_with_a_message(
    grafana: FakeGrafana, tmp_path: Path
) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(REGISTRY_YAML, encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["dashboards", "push", "--registry", str(registry_file), "--url", grafana.url],
        env={"GRAFANA_TOKEN": "glsa_wrong", "GRAFANA_TOKEN_FILE": None},
    )
    assert result.exit_code == 2
    assert "Unauthorized" in result.output
    assert not grafana.writes


def test_push_reports_progress_per_dashboard(
    grafana: FakeGrafana, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    generated = build_dashboards(registry, TARGET.bucket)
    push(
        connect(grafana.url, TOKEN), generated, TARGET, influx_token="grafana-read-token",
        progress=lambda done, written: calls.append((done, written)),
    )  # fmt: skip
    n = len(generated)
    assert calls == [(i, i) for i in range(1, n + 1)]  # each dashboard handled, and written

    # The command: dashboards handled and written so far, and the time left, on stderr
    # (a line now and then in a log; here at once), the summary on stdout.
    from stadtpuls.cli.progress import Progress

    monkeypatch.setattr(Progress, "every_s", 0.0)
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(REGISTRY_YAML, encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["dashboards", "push", "--registry", str(registry_file), "--url", grafana.url],
        env={"GRAFANA_TOKEN": TOKEN, "GRAFANA_TOKEN_FILE": None, "STADTPULS_CONFIG": None},
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("pushing dashboards:")]
    assert len(lines) == n
    assert lines[0].startswith(f"pushing dashboards: {1 / n:.0%}, 0 written, ")
    assert lines[-1].startswith("pushing dashboards: 100%, 0 written, done in ")
    assert "unchanged" in result.stdout
