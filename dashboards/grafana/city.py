"""The city overview (every site on a map with its status, active alerts) and the
pipeline's own health (the service's Prometheus metrics, README "HTTP endpoints and
metrics")."""

from __future__ import annotations

from collections.abc import Callable

from dashboards.grafana.panels import (
    GRAFANA,
    INFLUX,
    PROMETHEUS,
    Grid,
    Json,
    alert_annotation,
    custom_variable,
    dashboard,
    flux_string,
    prom_target,
    status_colors,
    steps,
    table,
    target,
    timeseries,
)
from devices.registry import Registry

OVERVIEW_UID = "stadtpuls-city"
PIPELINE_UID = "stadtpuls-pipeline"

# Site status by level, for the map's colours: readings but no flag, some flagged, none.
_LEVELS = {"ok": 0, "flagged": 1, "silent": 2}


def _sites_query(registry: Registry, bucket: str, uid_of: Callable[[str], str]) -> str:
    # The sites and their coordinates are in the registry, not in the database, so the
    # query carries them as a table and joins what the database knows about each site.
    rows = ",\n".join(
        f"  {{site: {flux_string(s.id)}, name: {flux_string(s.name)}, kind: "
        f'"{s.kind.value}", lat: {float(s.lat)!r}, lon: {float(s.lon)!r}, '
        f"uid: {flux_string(uid_of(s.id))}}}"
        for s in (registry.sites[k] for k in sorted(registry.sites))
        if s.lat is not None and s.lon is not None
    )
    return (
        'import "array"\nimport "join"\n'
        f"sites = array.from(rows: [\n{rows}\n])\n"
        "  |> filter(fn: (r) => r.site =~ /^${site:regex}$/)\n"
        f"seen = from(bucket: {flux_string(bucket)})\n"
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        "  |> filter(fn: (r) => r.site =~ /^${site:regex}$/)\n"
        '  |> filter(fn: (r) => r._field == "anomaly")\n'
        '  |> group(columns: ["site"])\n'
        "  |> reduce(identity: {readings: 0, flagged: 0}, fn: (r, accumulator) => ({\n"
        "      readings: accumulator.readings + 1,\n"
        "      flagged: accumulator.flagged + (if r._value != 0 then 1 else 0)}))\n"
        "  |> group()\n"
        "join.left(left: sites, right: seen, on: (l, r) => l.site == r.site, as: (l, r) => {\n"
        "    readings = if exists r.readings then r.readings else 0\n"
        "    flagged = if exists r.flagged then r.flagged else 0\n"
        '    status = if readings == 0 then "silent" else if flagged > 0 then "flagged" '
        'else "ok"\n'
        f'    level = if status == "ok" then {_LEVELS["ok"]} else if status == "flagged" '
        f"then {_LEVELS['flagged']} else {_LEVELS['silent']}\n"
        "    return {l with readings: readings, flagged: flagged, status: status, level: level}\n"
        "})"
    )


def _geomap(query: str) -> Json:
    return {
        "type": "geomap",
        "title": "Sites",
        "description": "green: readings, none flagged; orange: flagged readings; "
        "red: no readings in the time range",
        "datasource": dict(INFLUX),
        "targets": [target(query)],
        "fieldConfig": {
            "defaults": {
                "unit": "none",
                "color": {"mode": "thresholds"},
                "thresholds": steps((None, "green"), (1, "orange"), (2, "red")),
            },
            "overrides": [],
        },
        "options": {
            "view": {"id": "coords", "lat": 51.5, "lon": 7.5, "zoom": 11},
            "controls": {"showZoom": True, "mouseWheelZoom": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [
                {
                    "type": "markers",
                    "name": "Sites",
                    "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                    "config": {
                        "showLegend": True,
                        "style": {
                            "size": {"fixed": 10},
                            "color": {"field": "level"},
                            "text": {"field": "name", "mode": "field"},
                            "textConfig": {"fontSize": 12, "offsetY": -16},
                        },
                    },
                    "tooltip": True,
                }
            ],
            "tooltip": {"mode": "details"},
        },
    }


def overview_dashboard(registry: Registry, bucket: str, uid_of: Callable[[str], str]) -> Json:
    grid = Grid()
    query = _sites_query(registry, bucket, uid_of)
    grid.add(_geomap(query), w=14, h=14)
    sites_table = table(
        "Site status",
        [target(query)],
        "short",
        [
            status_colors("status", {"ok": "green", "flagged": "orange", "silent": "red"}),
            {
                "matcher": {"id": "byName", "options": "name"},
                "properties": [
                    {
                        "id": "links",
                        "value": [{"title": "Open dashboard", "url": "/d/${__data.fields.uid}"}],
                    }
                ],
            },
            {
                "matcher": {"id": "byRegexp", "options": "^(uid|level|lat|lon)$"},
                "properties": [{"id": "custom.hidden", "value": True}],
            },
        ],
    )
    grid.add(sites_table, w=10, h=14)
    grid.add(
        {
            "type": "annolist",
            "title": "Active alerts",
            "datasource": dict(GRAFANA),
            "options": {
                "onlyFromThisDashboard": False,
                "onlyInTimeRange": True,
                "tags": ["stadtpuls-alert"],
                "limit": 20,
                "showUser": False,
                "showTime": True,
                "showTags": True,
                "navigateToPanel": True,
            },
        },
        w=12,
        h=10,
    )
    flagged = (
        f"from(bucket: {flux_string(bucket)})\n"
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        "  |> filter(fn: (r) => r.site =~ /^${site:regex}$/)\n"
        '  |> filter(fn: (r) => r._field == "anomaly" and r._value != 0)\n'
        '  |> group(columns: ["site", "device", "_measurement"])\n'
        "  |> count()\n"
        "  |> group()\n"
        '  |> sort(columns: ["_value"], desc: true)'
    )
    grid.add(table("Flagged readings", [target(flagged)], "short", []), w=12, h=10)
    return dashboard(
        OVERVIEW_UID,
        "Stadtpuls: city overview",
        grid,
        tags=["stadtpuls", "overview"],
        variables=[
            custom_variable("site", "Site", sorted(registry.sites), multi=True),
        ],
        annotations=[alert_annotation(None)],
        time_from="now-1h",
    )


def _rate(metric: str) -> str:
    return f'sum(rate({metric}{{job="$job"}}[$__rate_interval]))'


def pipeline_dashboard() -> Json:
    grid = Grid()

    def panel(title: str, unit: str, *queries: tuple[str, str], w: int = 8) -> None:
        targets = [
            prom_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)
        ]
        grid.add(timeseries(title, targets, unit, datasource=PROMETHEUS), w=w, h=8)

    grid.row("Throughput")
    panel(
        "Messages",
        "suffix: msg/s",
        (_rate("stadtpuls_messages_received_total"), "received"),
        (_rate("stadtpuls_messages_committed_total"), "committed"),
    )
    panel(
        "Readings",
        "suffix: readings/s",
        (_rate("stadtpuls_readings_stored_total"), "stored"),
        (_rate("stadtpuls_readings_flagged_total"), "flagged"),
    )
    panel(
        "Quarantined messages by reason",
        "suffix: msg/s",
        (
            'sum by (reason) (rate(stadtpuls_messages_rejected_total{job="$job"}'
            "[$__rate_interval]))",
            "{{reason}}",
        ),
    )
    grid.row("Commit")
    panel(
        "Commit duration",
        "s",
        (
            "histogram_quantile(0.5, sum by (le) (rate(stadtpuls_commit_seconds_bucket"
            '{job="$job"}[$__rate_interval])))',
            "p50",
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(stadtpuls_commit_seconds_bucket"
            '{job="$job"}[$__rate_interval])))',
            "p99",
        ),
    )
    panel(
        "Messages per batch",
        "short",
        (
            'sum(rate(stadtpuls_batch_messages_sum{job="$job"}[$__rate_interval])) / '
            'sum(rate(stadtpuls_batch_messages_count{job="$job"}[$__rate_interval]))',
            "mean",
        ),
    )
    panel(
        "Failures",
        "suffix: /s",
        (_rate("stadtpuls_commit_failures_total"), "commit failures"),
        (
            'sum by (listener) (rate(stadtpuls_listener_errors_total{job="$job"}'
            "[$__rate_interval]))",
            "listener {{listener}}",
        ),
    )
    grid.row("Backlog and connections")
    panel(
        "Waiting",
        "short",
        ('sum(stadtpuls_pending_messages{job="$job"})', "unacknowledged messages"),
        ('sum(stadtpuls_journal_depth{job="$job"})', "journal (not yet in InfluxDB)"),
    )
    panel(
        "Connections",
        "bool_yes_no",
        ('min(stadtpuls_broker_connected{job="$job"})', "broker connected"),
        ('max(stadtpuls_influx_write_failing{job="$job"})', "InfluxDB write failing"),
        (_rate("stadtpuls_resubscribes_total"), "resubscribes"),
    )
    panel(
        "InfluxDB writes",
        "suffix: points/s",
        (_rate("stadtpuls_influx_points_written_total"), "written"),
        (_rate("stadtpuls_influx_write_retries_total"), "retries"),
        (_rate("stadtpuls_influx_points_quarantined_total"), "quarantined"),
    )
    return dashboard(
        PIPELINE_UID,
        "Stadtpuls: pipeline health",
        grid,
        tags=["stadtpuls", "pipeline"],
        variables=[custom_variable("job", "Prometheus job", ["stadtpuls"], multi=False)],
        annotations=[],
        time_from="now-6h",
        refresh="30s",
    )
