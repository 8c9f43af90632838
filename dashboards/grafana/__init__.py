"""Grafana dashboards generated from the registry (README, "Dashboards").

`build_dashboards` gives every dashboard with the folder it belongs in; `render` turns
one into the bytes written to disk and compared between builds, so the same registry
always gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dashboards.grafana.city import (
    OVERVIEW_UID,
    PIPELINE_UID,
    overview_dashboard,
    pipeline_dashboard,
)
from dashboards.grafana.panels import (
    GRAFANA_UID,
    INFLUX_UID,
    PROMETHEUS_UID,
    Json,
    dashboard_uid,
)
from dashboards.grafana.sites import bridge_dashboard, school_dashboard
from devices.registry import Registry
from devices.vocabulary import SiteKind

__all__ = [
    "FOLDERS",
    "GRAFANA_UID",
    "INFLUX_UID",
    "OVERVIEW_UID",
    "PIPELINE_UID",
    "PROMETHEUS_UID",
    "Folder",
    "GeneratedDashboard",
    "build_dashboards",
    "render",
    "site_dashboard_uid",
]


@dataclass(frozen=True, slots=True)
class Folder:
    uid: str
    title: str
    path: str  # directory of its dashboards in the build output


FOLDERS: dict[str, Folder] = {
    "bridge": Folder("stadtpuls-bridges", "Stadtpuls: bridges", "bridges"),
    "school": Folder("stadtpuls-schools", "Stadtpuls: schools", "schools"),
    "city": Folder("stadtpuls-city", "Stadtpuls: city", "city"),
    "pipeline": Folder("stadtpuls-pipeline", "Stadtpuls: pipeline", "pipeline"),
}


@dataclass(frozen=True, slots=True)
class GeneratedDashboard:
    folder: Folder
    model: Json

    @property
    def uid(self) -> str:
        uid: str = self.model["uid"]
        return uid

    @property
    def filename(self) -> str:
        return f"{self.folder.path}/{self.uid}.json"


def site_dashboard_uid(kind: SiteKind, site: str) -> str:
    return dashboard_uid(f"stadtpuls-{kind.value}", site)


def build_dashboards(registry: Registry, bucket: str) -> list[GeneratedDashboard]:
    """Every dashboard, in a fixed order: bridges and schools by site id, then the city
    overview and the pipeline's health."""
    out: list[GeneratedDashboard] = []
    for site_id in sorted(registry.sites):
        site = registry.sites[site_id]
        if site.kind is SiteKind.BRIDGE:
            out.append(GeneratedDashboard(FOLDERS["bridge"], bridge_dashboard(site, bucket)))
        else:
            out.append(GeneratedDashboard(FOLDERS["school"], school_dashboard(site, bucket)))
    uid_of = {s.id: site_dashboard_uid(s.kind, s.id) for s in registry.sites.values()}
    out.append(
        GeneratedDashboard(
            FOLDERS["city"], overview_dashboard(registry, bucket, uid_of.__getitem__)
        )
    )
    out.append(GeneratedDashboard(FOLDERS["pipeline"], pipeline_dashboard()))
    return out


def render(model: Json) -> str:
    """Stable text: sorted keys, fixed indentation, a final newline."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
