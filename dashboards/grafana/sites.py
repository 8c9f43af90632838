"""One dashboard per bridge and one per school, from the registry."""

from __future__ import annotations

from collections.abc import Sequence

from dashboards.grafana.panels import (
    ENVELOPE_MAX,
    ENVELOPE_MIN,
    UNITS,
    Grid,
    Json,
    alert_annotation,
    custom_variable,
    dashboard,
    dashboard_uid,
    envelope,
    flagged_bars,
    flux,
    stat,
    status_colors,
    steps,
    table,
    target,
    timeseries,
)
from devices.registry import Series, Site
from devices.vocabulary import VOCABULARY, SiteKind
from ingest.batch import AnomalyFlag

# UBA guidance on classroom CO2 (DOMAIN.md): below 1000 ppm harmless, 1000-2000 air the
# room, above 2000 unacceptable. A device's warn/alarm in the registry wins.
CO2_WARN_PPM = 1000.0
CO2_ALARM_PPM = 2000.0
# A published alarm scheme for strain gauges warns at 0.8 of the design limit.
LIMIT_WARN_FRACTION = 0.8

# Comfort and guidance bands drawn behind the school panels (DOMAIN.md): 20-26 °C,
# 30-70 %RH, WHO 24-hour guidance for PM2.5 and PM10.
_SCHOOL_BANDS: dict[str, Json] = {
    "temperature": steps((None, "blue"), (20.0, "green"), (26.0, "orange")),
    "humidity": steps((None, "orange"), (30.0, "green"), (70.0, "orange")),
    "pm2_5": steps((None, "green"), (15.0, "orange")),
    "pm10": steps((None, "green"), (45.0, "orange")),
}
# Structure measurements drawn one panel per series with their envelope (min and max per
# window around the mean), as strain is: a peak must not be averaged away.
_ENVELOPE_TITLES = {"inclination": "Inclination", "crack_width": "Crack width"}
# Structure measurements drawn as one mean line per device.
_BRIDGE_TITLES = {"temperature": "Temperature"}
_SCHOOL_TITLES = {
    "temperature": "Temperature",
    "humidity": "Relative humidity",
    "pm2_5": "PM2.5",
    "pm10": "PM10",
    "noise": "Noise",
    "light": "Light",
}


# A reading whose only flag is ``gap`` says a silence ended, not that the value is odd; a
# school's gateway makes them by the hundred. They are left out of the flagged counts.
GAP_ONLY = int(AnomalyFlag.GAP)


def flagged_query(bucket: str, measurement: str, *, device: str, channel: str | None) -> str:
    """How many readings of the series (of the selected devices) carry an anomaly flag
    other than ``gap`` alone, per window of ``v.windowPeriod``: one point per window
    however long the range, never one row per flagged reading."""
    return flux(
        bucket,
        measurements=[measurement],
        device=device,
        channel=channel,
        fields=("anomaly",),
        window=False,
        extra=[
            f"|> filter(fn: (r) => r._value != 0 and r._value != {GAP_ONLY})",
            '|> group(columns: ["_measurement", "_field"])',
            "|> aggregateWindow(every: v.windowPeriod, fn: count, createEmpty: false)",
        ],
    )


def _measurement_panel(bucket: str, name: str, title: str, unit: str, bands: Json | None) -> Json:
    return timeseries(
        title,
        [
            target(flux(bucket, measurements=[name])),
            target(flagged_query(bucket, name, device="${device:regex}", channel=None), "B"),
        ],
        UNITS[unit],
        description=f"{name} of the selected devices, in {unit}, mean per window; red bars "
        "count the flagged readings per window (a gap alone is not counted)",
        thresholds=bands,
        threshold_style="area" if bands else "off",
        overrides=[flagged_bars("B")],
    )


def _envelope_panel(bucket: str, s: Series, title: str, what: str) -> Json:
    """One series: its min and max per window as a band around the mean, lines at 0.8
    and 1.0 of its limit if the registry gives one, and the flagged readings counted per
    window. A lorry's peak over the limit stays visible at any zoom."""
    device, channel = s.key.device, s.key.channel or None

    def query(fn: str) -> str:
        return flux(bucket, measurements=[s.key.measurement], device=device, channel=channel,
                    fn=fn)  # fmt: skip

    limit = "" if s.limit is None else f", limit ±{s.limit:g} {s.unit}"
    lines = "; lines at 0.8 and 1.0 of the limit" if s.limit is not None else ""
    return timeseries(
        title,
        [
            target(query("mean")),
            target(flagged_query(bucket, s.key.measurement, device=device, channel=channel), "B"),
            target(query("min"), ENVELOPE_MIN),
            target(query("max"), ENVELOPE_MAX),
        ],
        UNITS[s.unit],
        description=f"{what}{limit}: the band is the min and max per window, the line its "
        f"mean{lines}; red bars count the flagged readings per window",
        thresholds=_limit_steps(s.limit),
        threshold_style="line" if s.limit is not None else "off",
        overrides=[*envelope("A"), flagged_bars("B")],
    )


def _variables(site: Site, device_label: str) -> list[Json]:
    return [
        custom_variable("site", "Site", [site.id], multi=False),
        custom_variable("device", device_label, sorted(site.devices), multi=True),
    ]


def _present(site: Site) -> set[str]:
    return {s.key.measurement for dev in site.devices.values() for s in dev.series.values()}


def _site_series(site: Site, measurement: str) -> list[Series]:
    return [
        s
        for dev_id in sorted(site.devices)
        for name, s in sorted(site.devices[dev_id].series.items())
        if s.key.measurement == measurement
    ]


def _limit_steps(limit: float | None) -> Json | None:
    if limit is None:
        return None
    warn = LIMIT_WARN_FRACTION * limit
    return steps(
        (None, "red"), (-limit, "orange"), (-warn, "green"), (warn, "orange"), (limit, "red")
    )


def _gauge_table(bucket: str, gauges: Sequence[Series]) -> Json:
    # The design limits live in the registry, not in the database, so the query carries
    # them: one branch per gauge, generated from the registry.
    limit_expr = "0.0"
    for s in reversed(gauges):
        if s.limit is not None:
            limit_expr = (
                f'if r.device == "{s.key.device}" and r.channel == "{s.key.channel}" '
                f"then {float(s.limit)!r} else {limit_expr}"
            )
    frac = LIMIT_WARN_FRACTION
    query = 'import "math"\n' + flux(
        bucket,
        measurements=["strain"],
        fields=("value", "anomaly"),
        window=False,
        extra=[
            '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            '|> last(column: "value")',
            "|> group()",
            f"|> map(fn: (r) => ({{r with limit: {limit_expr}}}))",
            "|> map(fn: (r) => ({r with status: "
            'if r.limit > 0.0 and math.abs(x: r.value) >= r.limit then "limit" '
            f'else if r.limit > 0.0 and math.abs(x: r.value) >= {frac} * r.limit then "warn" '
            'else if r.anomaly != 0 then "flagged" else "ok"}))',
            '|> keep(columns: ["_time", "device", "channel", "value", "limit", "status"])',
        ],
    )
    colors = {"ok": "green", "flagged": "yellow", "warn": "orange", "limit": "red"}
    return table(
        "Gauges: latest value and status",
        [target(query)],
        UNITS["ue"],
        [
            status_colors("status", colors),
            {
                "matcher": {"id": "byName", "options": "_time"},
                "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
            },
        ],
    )


def _site_dashboard(site: Site, kind: str, grid: Grid, variable: str) -> Json:
    """The frame every site's dashboard shares: its uid, title, tags, the device (or
    room) variable and the alert annotations."""
    return dashboard(
        dashboard_uid(f"stadtpuls-{kind.lower()}", site.id),
        f"{kind}: {site.name}",
        grid,
        tags=["stadtpuls", kind.lower(), site.id],
        variables=_variables(site, variable),
        annotations=[alert_annotation(site.id)],
    )


def bridge_dashboard(site: Site, bucket: str) -> Json:
    grid = Grid()
    present = _present(site)
    strain = _site_series(site, "strain")
    if strain:
        grid.row("Strain per gauge")
        for s in strain:
            grid.add(
                _envelope_panel(
                    bucket, s, f"Strain {s.key.device}/{s.key.channel or '-'}", "microstrain"
                ),
                w=12,
                h=8,
            )
        grid.add(_gauge_table(bucket, strain), w=24, h=8)
    grid.row("Structure")
    for name, title in _BRIDGE_TITLES.items():
        if name in present:
            unit = VOCABULARY[SiteKind.BRIDGE][name].unit
            grid.add(_measurement_panel(bucket, name, title, unit, None), w=8, h=8)
    for name, title in _ENVELOPE_TITLES.items():
        for s in _site_series(site, name):
            where = f"{s.key.device}/{s.key.channel}" if s.key.channel else s.key.device
            what = VOCABULARY[SiteKind.BRIDGE][name].description
            grid.add(_envelope_panel(bucket, s, f"{title} {where}", what), w=8, h=8)
    return _site_dashboard(site, "Bridge", grid, "Device")


def _co2_thresholds(series: Series) -> tuple[float, float]:
    return (
        CO2_WARN_PPM if series.warn is None else series.warn,
        CO2_ALARM_PPM if series.alarm is None else series.alarm,
    )


def school_dashboard(site: Site, bucket: str) -> Json:
    grid = Grid()
    co2 = _site_series(site, "co2")
    if co2:
        grid.row("CO2 per room")
        for s in co2:
            warn, alarm = _co2_thresholds(s)
            bands = steps((None, "green"), (warn, "yellow"), (alarm, "red"))
            last = flux(
                bucket, measurements=["co2"], device=s.key.device, window=False, extra=["|> last()"]
            )
            grid.add(
                stat(f"{s.key.device}", [target(last)], UNITS["ppm"], bands, textMode="value"),
                w=4,
                h=4,
            )
        grid.newline()
        for s in co2:
            warn, alarm = _co2_thresholds(s)
            grid.add(
                timeseries(
                    f"CO2 {s.key.device}",
                    [
                        target(flux(bucket, measurements=["co2"], device=s.key.device)),
                        target(
                            flagged_query(bucket, "co2", device=s.key.device, channel=None), "B"
                        ),
                    ],
                    UNITS["ppm"],
                    description=f"below {warn:g} ppm fine, up to {alarm:g} ppm air the room, "
                    "above that unacceptable (UBA)",
                    thresholds=steps((None, "green"), (warn, "yellow"), (alarm, "red")),
                    threshold_style="line+area",
                    overrides=[flagged_bars("B")],
                ),
                w=12,
                h=8,
            )
    grid.row("Climate, particulate matter, noise")
    present = _present(site)
    for name, title in _SCHOOL_TITLES.items():
        if name in present:
            unit = VOCABULARY[SiteKind.SCHOOL][name].unit
            grid.add(
                _measurement_panel(bucket, name, title, unit, _SCHOOL_BANDS.get(name)), w=12, h=8
            )
    return _site_dashboard(site, "School", grid, "Room")
