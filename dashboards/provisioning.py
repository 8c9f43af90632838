"""Grafana's file provisioning: the dashboards as JSON files, one directory per folder,
and the YAML that tells Grafana where they are and which datasources to create.

Layout of the build output (``stadtpuls dashboards build --out DIR``)::

    DIR/dashboards/<folder>/<uid>.json
    DIR/provisioning/datasources/stadtpuls.yaml
    DIR/provisioning/dashboards/stadtpuls.yaml

Grafana mounts ``DIR/provisioning`` as ``/etc/grafana/provisioning`` and ``DIR/dashboards``
at ``dashboards_path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dashboards.grafana import (
    FOLDERS,
    INFLUX_UID,
    PROMETHEUS_UID,
    GeneratedDashboard,
    build_dashboards,
    render,
)
from devices.registry import Registry

__all__ = [
    "DatasourceTarget",
    "datasource_specs",
    "influx_datasource",
    "provisioning_files",
    "write_build",
]

# Where Grafana finds the InfluxDB read token: a file, so the token never sits in the
# provisioning YAML or in Grafana's environment (Grafana expands $__file{} itself).
DEFAULT_TOKEN_REF = "$__file{/var/lib/stadtpuls-tokens/grafana.token}"  # noqa: S105 - a path


@dataclass(frozen=True, slots=True)
class DatasourceTarget:
    """Where the datasources point, as Grafana's server (not the browser) sees them."""

    influx_url: str
    org: str
    bucket: str
    prometheus_url: str = "http://prometheus:9090"


def influx_datasource(target: DatasourceTarget) -> dict[str, Any]:
    """The InfluxDB 2 datasource in Flux mode, without its token: Grafana's HTTP API
    and its provisioning files take the same fields."""
    return {
        "uid": INFLUX_UID,
        "name": "Stadtpuls InfluxDB",
        "type": "influxdb",
        "access": "proxy",
        "url": target.influx_url,
        "isDefault": True,
        "jsonData": {
            "version": "Flux",
            "organization": target.org,
            "defaultBucket": target.bucket,
            "httpMode": "POST",
        },
    }


def prometheus_datasource(target: DatasourceTarget) -> dict[str, Any]:
    return {
        "uid": PROMETHEUS_UID,
        "name": "Stadtpuls Prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": target.prometheus_url,
        "isDefault": False,
        "jsonData": {"httpMethod": "POST"},
    }


def datasource_specs(target: DatasourceTarget) -> list[dict[str, Any]]:
    return [influx_datasource(target), prometheus_datasource(target)]


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, allow_unicode=True, default_flow_style=False)


def provisioning_files(
    target: DatasourceTarget,
    *,
    token_ref: str = DEFAULT_TOKEN_REF,
    dashboards_path: str = "/var/lib/grafana/dashboards",
) -> dict[str, str]:
    """Relative path -> text of both provisioning files."""
    datasources = []
    for spec in datasource_specs(target):
        entry = {**spec, "editable": False}
        if spec["uid"] == INFLUX_UID:
            entry["secureJsonData"] = {"token": token_ref}
        datasources.append(entry)
    providers = [
        {
            "name": folder.uid,
            "orgId": 1,
            "type": "file",
            "folder": folder.title,
            "folderUid": folder.uid,
            # The files are the source of truth: an edit in the UI could not be saved
            # back to them, so Grafana refuses it instead of losing it at the next load.
            "allowUiUpdates": False,
            "disableDeletion": False,
            "updateIntervalSeconds": 30,
            "options": {"path": f"{dashboards_path}/{folder.path}"},
        }
        for folder in FOLDERS.values()
    ]
    return {
        "provisioning/datasources/stadtpuls.yaml": _yaml(
            {"apiVersion": 1, "datasources": datasources}
        ),
        "provisioning/dashboards/stadtpuls.yaml": _yaml({"apiVersion": 1, "providers": providers}),
    }


def write_build(
    registry: Registry,
    target: DatasourceTarget,
    out: Path,
    *,
    token_ref: str = DEFAULT_TOKEN_REF,
    dashboards_path: str = "/var/lib/grafana/dashboards",
) -> list[Path]:
    """Write every dashboard and both provisioning files; dashboards of sites no longer
    in the registry are removed, so Grafana drops them too."""
    generated: list[GeneratedDashboard] = build_dashboards(registry, target.bucket)
    files = {f"dashboards/{d.filename}": render(d.model) for d in generated}
    files.update(provisioning_files(target, token_ref=token_ref, dashboards_path=dashboards_path))
    for folder in FOLDERS.values():
        directory = out / "dashboards" / folder.path
        if directory.is_dir():
            for stale in directory.glob("*.json"):
                if f"dashboards/{folder.path}/{stale.name}" not in files:
                    stale.unlink()
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
