"""The daily digest of a site: what operations and teachers want to know each morning."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from alerts.incidents import INCIDENT
from alerts.state import AlertStore
from devices.registry import Registry
from ingest.stores.base import ReadingQuery, ReadingSource

CO2_AIR = 1000.0  # ppm, Umweltbundesamt: above this, air the room


def site_digest(
    registry: Registry,
    readings: ReadingSource,
    alerts: AlertStore,
    site: str,
    end: datetime,
    span: timedelta = timedelta(hours=24),
    top: int = 5,
) -> dict[str, Any]:
    """Summarise ``span`` up to ``end``: for a school the hours each room spent above
    1000 ppm CO2, for a bridge the gauges that came closest to their design limits, and
    for both the alerts that fired."""
    s = registry.sites[site]
    start = end - span
    start_ns, end_ns = int(start.timestamp() * 1e9), int(end.timestamp() * 1e9)
    out: dict[str, Any] = {
        "site": site,
        "name": s.name,
        "from": start.isoformat(),
        "to": end.isoformat(),
    }
    if s.kind == "school":
        rooms: dict[str, float] = {}
        for dev in s.devices.values():
            if "co2" not in dev.series:
                continue
            # A reading stands for the time until the next one, at most one interval, so
            # a gap does not count as hours of bad air.
            step = dev.interval.total_seconds()
            above, prev_t, prev_high = 0.0, None, False
            query = ReadingQuery(site, start_ns, end_ns, device=dev.id, measurement="co2")
            for r in readings.readings(query):
                if prev_t is not None and prev_high:
                    above += min((r.ts_ns - prev_t) / 1e9, step)
                prev_t, prev_high = r.ts_ns, r.value > CO2_AIR
            if prev_t is not None and prev_high:
                above += min((end_ns - prev_t) / 1e9, step)
            rooms[dev.id] = round(above / 3600.0, 2)
        out["hours_above_1000_ppm"] = dict(sorted(rooms.items()))
    else:
        closest: list[dict[str, Any]] = []
        for dev in s.devices.values():
            for series in dev.series.values():
                if not series.limit:
                    continue
                query = ReadingQuery(
                    site, start_ns, end_ns, device=dev.id, measurement=series.key.measurement
                )
                peak = max(
                    (
                        abs(r.value)
                        for r in readings.readings(query)
                        if r.channel == series.key.channel
                    ),
                    default=None,
                )
                if peak is not None:
                    closest.append(
                        {
                            "gauge": f"{dev.id}/{series.key.name}",
                            "peak": peak,
                            "limit": abs(series.limit),
                            "share_of_limit": round(peak / abs(series.limit), 3),
                        }
                    )
        closest.sort(key=lambda g: -float(g["share_of_limit"]))
        out["closest_to_limit"] = closest[:top]
    # Counted by rule: an incident's firing is already counted as its members' firings.
    fired: dict[str, int] = defaultdict(int)
    for h in alerts.history(limit=100_000):
        parts = h.alert_id.split("/")
        if parts[0] == INCIDENT:
            continue
        if h.event == "firing" and len(parts) > 1 and parts[1] == site and start <= h.at < end:
            fired[parts[0]] += 1
    out["alerts_fired"] = dict(sorted(fired.items()))
    return out
