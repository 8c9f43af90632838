"""Push the generated folders, datasources and dashboards to a running Grafana through its
HTTP API, with grafana-client.

Everything is upserted by uid and compared before it is written, so a second push with the
same registry writes nothing. Each pushed dashboard carries the digest of the JSON that was
pushed (key ``stadtpuls_push``). A dashboard whose content no longer matches its digest was
edited in Grafana since the last push, and one without a digest was never pushed from
here: the push refuses to overwrite either unless forced, and says which and at what
version. Updates send the version they were compared against and no ``overwrite``, so a
save in the UI between the check and the write makes Grafana refuse (HTTP 412) instead of
losing that edit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# grafana-client 5 talks through niquests, whose urllib3-future installs over the `urllib3`
# package that influxdb-client writes through. The InfluxDB store's tests (writes, outages,
# retries) and a client closed at interpreter exit behave the same with it, so the
# maintained major version is used rather than the requests-based 3.x.
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, TokenAuth

from dashboards.grafana import FOLDERS, GeneratedDashboard, render
from dashboards.grafana.panels import INFLUX_UID, Json
from dashboards.provisioning import DatasourceTarget, datasource_specs

__all__ = ["DIGEST_KEY", "DashboardDrift", "PushReport", "connect", "push"]

log = logging.getLogger(__name__)

# grafana-client ships py.typed but leaves its methods unannotated, which strict mypy
# refuses to call from typed code; its API object is therefore handled as Any here.
Grafana = Any

DIGEST_KEY = "stadtpuls_push"
_NOT_FOUND = 404
_VERSION_MISMATCH = 412
# Fields Grafana sets on a stored dashboard that the generated JSON does not have.
_SERVER_FIELDS = ("id", "version", DIGEST_KEY)


class DashboardDrift(Exception):
    """Dashboards were changed in Grafana since the last push and were left alone."""

    def __init__(self, report: PushReport) -> None:
        self.report = report
        super().__init__(
            "changed in Grafana since the last push, not overwritten (use --force to "
            "overwrite them): " + "; ".join(report.drifted)
        )


@dataclass
class PushReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary(self) -> str:
        return (
            f"created {len(self.created)}, updated {len(self.updated)}, "
            f"unchanged {len(self.unchanged)}, refused {len(self.drifted)}"
        )


def connect(url: str, token: str, timeout_s: float = 10.0) -> Grafana:
    """A client authenticated with a service-account token (``Authorization: Bearer``)."""
    auth = TokenAuth(token)  # type: ignore[no-untyped-call]
    return GrafanaApi.from_url(url, credential=auth, timeout=timeout_s)


def digest(model: Json) -> str:
    """The digest of a dashboard's content, leaving out what Grafana adds on save."""
    content = {k: v for k, v in model.items() if k not in _SERVER_FIELDS}
    return "sha256:" + hashlib.sha256(render(content).encode("utf-8")).hexdigest()


def _get(call: Any, *args: Any) -> Any | None:
    """The resource, or ``None`` when Grafana answers 404."""
    try:
        return call(*args)
    except GrafanaClientError as exc:
        if exc.status_code == _NOT_FOUND:
            return None
        raise


def _push_folders(api: Grafana, report: PushReport) -> None:
    for folder in FOLDERS.values():
        current = _get(api.folder.get_folder, folder.uid)
        name = f"folder {folder.uid}"
        if current is None:
            api.folder.create_folder(folder.title, uid=folder.uid)
            report.created.append(name)
        elif current.get("title") != folder.title:
            api.folder.update_folder(folder.uid, title=folder.title, version=current.get("version"))
            report.updated.append(name)
        else:
            report.unchanged.append(name)


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a datasource as Grafana returns it lacks what we want; Grafana adds fields
    of its own (id, orgId, version, ...), which are not a difference."""
    for key, value in wanted.items():
        if isinstance(value, Mapping):
            inner = current.get(key) or {}
            if any(inner.get(k) != v for k, v in value.items()):
                return True
        elif current.get(key) != value:
            return True
    return False


def _push_datasources(
    api: Grafana, target: DatasourceTarget, influx_token: str | None, report: PushReport
) -> None:
    for spec in datasource_specs(target):
        uid = spec["uid"]
        name = f"datasource {uid}"
        body = dict(spec)
        # Grafana never returns a secret, so it cannot be compared: the token is sent
        # when the datasource is created, or when one is given and something else changed.
        if uid == INFLUX_UID and influx_token is not None:
            body["secureJsonData"] = {"token": influx_token}
        current = _get(api.datasource.get_datasource_by_uid, uid)
        if current is None:
            if uid == INFLUX_UID and influx_token is None:
                raise ValueError(
                    "creating the InfluxDB datasource needs Grafana's InfluxDB read token "
                    "(--influx-token-file or GRAFANA_INFLUXDB_TOKEN)"
                )
            api.datasource.create_datasource(body)
            report.created.append(name)
        elif _differs(current, spec):
            api.datasource.update_datasource_by_uid(uid, body)
            report.updated.append(name)
        else:
            report.unchanged.append(name)


def _push_dashboard(api: Grafana, gen: GeneratedDashboard, force: bool, report: PushReport) -> None:
    wanted = digest(gen.model)
    name = f"dashboard {gen.uid}"
    found = _get(api.dashboard.get_dashboard, gen.uid)
    body: Json = {**gen.model, DIGEST_KEY: wanted}
    payload: Json = {
        "dashboard": body,
        "folderUid": gen.folder.uid,
        "message": f"stadtpuls dashboards push ({wanted[:19]})",
        "overwrite": False,
    }
    if found is None:
        body["id"] = None
        api.dashboard.update_dashboard(payload)
        report.created.append(name)
        return
    current: Json = found["dashboard"]
    meta: Json = found.get("meta", {})
    version = current.get("version")
    pushed = current.get(DIGEST_KEY)
    if pushed is None or pushed != digest(current):
        why = "never pushed from here" if pushed is None else "edited in Grafana"
        if not force:
            report.drifted.append(f"{gen.uid} ({why}, now version {version})")
            return
        log.warning("overwriting dashboard %s (%s, version %s)", gen.uid, why, version)
    elif pushed == wanted and meta.get("folderUid") == gen.folder.uid:
        report.unchanged.append(name)
        return
    body["id"] = current.get("id")
    if force:
        payload["overwrite"] = True
    else:
        body["version"] = version
    try:
        api.dashboard.update_dashboard(payload)
    except GrafanaClientError as exc:
        if exc.status_code != _VERSION_MISMATCH:
            raise
        report.drifted.append(f"{gen.uid} (saved in Grafana during the push)")
        return
    report.updated.append(name)


def push(
    api: Grafana,
    dashboards: list[GeneratedDashboard],
    target: DatasourceTarget,
    *,
    influx_token: str | None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PushReport:
    """Upsert folders, datasources and dashboards; raise `DashboardDrift` at the end if
    any dashboard was refused, after everything else was pushed. ``progress`` is called
    after each dashboard with the number handled and the number written so far."""
    report = PushReport()
    _push_folders(api, report)
    _push_datasources(api, target, influx_token, report)
    written = len(report.created) + len(report.updated)
    for i, gen in enumerate(dashboards, 1):
        _push_dashboard(api, gen, force, report)
        if progress is not None:
            progress(i, len(report.created) + len(report.updated) - written)
    if report.drifted:
        raise DashboardDrift(report)
    return report
