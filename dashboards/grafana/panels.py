"""Building blocks of Grafana's dashboard JSON model: datasources, a grid that places
panels without overlaps, panels, template variables and Flux queries.

Everything here is a pure function of its arguments, so the same registry always gives
the same JSON (the dashboards are compared byte for byte between builds and pushes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

INFLUX_UID = "stadtpuls-influxdb"
PROMETHEUS_UID = "stadtpuls-prometheus"
# Grafana's own annotation store; built into every Grafana, not provisioned.
GRAFANA_UID = "-- Grafana --"
INFLUX = {"type": "influxdb", "uid": INFLUX_UID}
PROMETHEUS = {"type": "prometheus", "uid": PROMETHEUS_UID}
GRAFANA = {"type": "grafana", "uid": GRAFANA_UID}

SCHEMA_VERSION = 39
GRID_WIDTH = 24
_UID_MAX = 40  # Grafana refuses longer dashboard uids

# Grafana's unit ids for the vocabulary's units; strain has none, so it gets a suffix.
UNITS: Mapping[str, str] = {
    "ue": "suffix: µε",
    "Cel": "celsius",
    "deg": "degree",
    "mm": "lengthmm",
    "ppm": "ppm",
    "%RH": "humidity",
    "ug/m3": "conµgm3",
    "dB": "dB",
    "lx": "lux",
}


def dashboard_uid(prefix: str, site: str) -> str:
    """``prefix-site``, shortened with a digest when a long site id would pass 40 chars."""
    uid = f"{prefix}-{site}"
    if len(uid) <= _UID_MAX:
        return uid
    digest = hashlib.sha256(site.encode("utf-8")).hexdigest()[:8]
    return f"{uid[: _UID_MAX - 9]}-{digest}"


@dataclass
class Grid:
    """Places panels left to right in rows of 24 columns; a row is as tall as its tallest
    panel, so panels never overlap."""

    x: int = 0
    y: int = 0
    row_height: int = 0
    panels: list[Json] = field(default_factory=list)

    def add(self, panel: Json, w: int, h: int) -> None:
        if self.x + w > GRID_WIDTH:
            self.newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = len(self.panels) + 1
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        """A collapsible section header across the whole width."""
        if self.x:
            self.newline()
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.newline()


# -- Flux ------------------------------------------------------------------------------


def flux_string(value: str) -> str:
    """A Flux string literal. Registry ids need no escaping (their alphabet is
    ``[a-z0-9_-]``), but display names may hold any text."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'


def flux(
    bucket: str,
    *,
    measurements: Sequence[str],
    site: str = "${site}",
    device: str | None = "${device:regex}",
    channel: str | None = None,
    fields: Sequence[str] = ("value",),
    extra: Iterable[str] = (),
    window: bool = True,
    fn: str = "mean",
) -> str:
    """A Flux query over the storage schema (README, "InfluxDB schema").

    ``site`` is a literal id or a template variable; ``device`` a regex over device ids
    (a multi-value variable formatted ``:regex``) or ``None`` for every device. With
    ``window``, each window of ``v.windowPeriod`` gives one point: its ``fn`` (``mean``,
    ``min``, ``max``).
    """
    meas = " or ".join(f'r._measurement == "{m}"' for m in measurements)
    field_filter = " or ".join(f'r._field == "{f}"' for f in fields)
    lines = [
        f"from(bucket: {flux_string(bucket)})",
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)",
        f"  |> filter(fn: (r) => {meas})",
        f'  |> filter(fn: (r) => r.site == "{site}")',
    ]
    if device is not None:
        lines.append(f"  |> filter(fn: (r) => r.device =~ /^{device}$/)")
    if channel is not None:
        lines.append(f'  |> filter(fn: (r) => r.channel == "{channel}")')
    lines.append(f"  |> filter(fn: (r) => {field_filter})")
    if window:
        # Grafana asks for about one point per pixel; a 100 Hz load test would otherwise
        # send millions of points to the browser.
        lines.append(f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)")
    lines.extend(f"  {step}" for step in extra)
    return "\n".join(lines)


def target(query: str, ref: str = "A") -> Json:
    return {"datasource": dict(INFLUX), "query": query, "refId": ref}


def prom_target(expr: str, legend: str, ref: str) -> Json:
    return {
        "datasource": dict(PROMETHEUS),
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }


# -- panels ----------------------------------------------------------------------------


def steps(*points: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in points],
    }


def timeseries(
    title: str,
    targets: list[Json],
    unit: str,
    *,
    description: str = "",
    thresholds: Json | None = None,
    threshold_style: str = "off",
    overrides: list[Json] | None = None,
    datasource: Mapping[str, str] = INFLUX,
) -> Json:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": dict(datasource),
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "spanNulls": False,
                    "showPoints": "never",
                    "thresholdsStyle": {"mode": threshold_style},
                },
                "thresholds": thresholds or steps((None, "green")),
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def flagged_bars(ref: str) -> Json:
    """Shows query ``ref`` (flagged readings counted per window) as red bars on an axis of
    their own at the right, so counts and values never share a scale."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [
            {"id": "custom.drawStyle", "value": "bars"},
            {"id": "custom.fillOpacity", "value": 60},
            {"id": "custom.lineWidth", "value": 0},
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "custom.axisLabel", "value": "flagged per window"},
            {"id": "custom.axisSoftMin", "value": 0},
            {"id": "custom.thresholdsStyle", "value": {"mode": "off"}},
            {"id": "unit", "value": "short"},
            {"id": "decimals", "value": 0},
            {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}},
            {"id": "displayName", "value": "flagged readings"},
        ],
    }


ENVELOPE_MIN, ENVELOPE_MAX = "min", "max"


def envelope(mean_ref: str = "A") -> list[Json]:
    """Overrides drawing a series' min and max per window (queries ``min`` and ``max``)
    as a shaded band, with its mean (``mean_ref``) as the line through it: a peak inside
    a window shows in the band however far the view is zoomed out."""

    def look(ref: str, name: str, extra: list[Json]) -> Json:
        return {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "displayName", "value": name},
                {"id": "color", "value": {"fixedColor": "blue", "mode": "fixed"}},
                *extra,
            ],
        }

    edge = [{"id": "custom.lineWidth", "value": 1}]
    return [
        look(mean_ref, "mean", [{"id": "custom.lineWidth", "value": 2}]),
        look(ENVELOPE_MIN, "min", edge),
        look(
            ENVELOPE_MAX,
            "max",
            [
                *edge,
                {"id": "custom.fillBelowTo", "value": "min"},
                {"id": "custom.fillOpacity", "value": 20},
            ],
        ),
    ]


def stat(title: str, targets: list[Json], unit: str, thresholds: Json, **options: Any) -> Json:
    return {
        "type": "stat",
        "title": title,
        "datasource": dict(targets[0]["datasource"]),
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": thresholds, "color": {"mode": "thresholds"}},
            "overrides": [],
        },
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "textMode": "value_and_name",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            **options,
        },
    }


def table(title: str, targets: list[Json], unit: str, overrides: list[Json]) -> Json:
    return {
        "type": "table",
        "title": title,
        "datasource": dict(targets[0]["datasource"]),
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm"},
    }


def status_colors(field_name: str, colors: Mapping[str, str]) -> Json:
    """A table override colouring the cells of a text status column."""
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [
            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            {
                "id": "mappings",
                "value": [
                    {
                        "type": "value",
                        "options": {
                            text: {"color": color, "index": i}
                            for i, (text, color) in enumerate(colors.items())
                        },
                    }
                ],
            },
        ],
    }


# -- template variables and annotations ------------------------------------------------


def custom_variable(
    name: str, label: str, values: Sequence[str], *, multi: bool, hide: int = 0
) -> Json:
    """A variable whose options come from the registry, not from a query: the dashboard
    then needs no datasource to draw its pickers, and its JSON depends on the registry
    alone."""
    options = [{"selected": i == 0 or multi, "text": v, "value": v} for i, v in enumerate(values)]
    if multi:
        current: Json = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        current = {"selected": True, "text": values[0], "value": values[0]}
    return {
        "type": "custom",
        "name": name,
        "label": label,
        "query": ",".join(values),
        "options": options,
        "current": current,
        "multi": multi,
        "includeAll": multi,
        "hide": hide,
    }


def alert_annotation(site: str | None) -> Json:
    """Alerts recorded as Grafana annotations tagged ``stadtpuls-alert`` (and
    ``site:<id>``), as an alert channel or an operator writes them."""
    tags = ["stadtpuls-alert"] + ([f"site:{site}"] if site else [])
    return {
        "name": "Alerts",
        "datasource": dict(GRAFANA),
        "enable": True,
        "iconColor": "red",
        "target": {"type": "tags", "tags": tags, "matchAny": False, "limit": 500},
    }


def builtin_annotation() -> Json:
    return {
        "builtIn": 1,
        "name": "Annotations & Alerts",
        "datasource": dict(GRAFANA),
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "type": "dashboard",
        "target": {"type": "dashboard", "limit": 100, "matchAny": False, "tags": []},
    }


def dashboard(
    uid: str,
    title: str,
    grid: Grid,
    *,
    tags: list[str],
    variables: list[Json],
    annotations: list[Json],
    time_from: str = "now-24h",
    refresh: str = "1m",
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "tags": tags,
        "schemaVersion": SCHEMA_VERSION,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "time": {"from": time_from, "to": "now"},
        "refresh": refresh,
        "templating": {"list": variables},
        "annotations": {"list": [builtin_annotation(), *annotations]},
        "panels": grid.panels,
        "links": [],
    }
