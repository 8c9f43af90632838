"""A private VictoriaMetrics process that stands in for InfluxDB 2 in tests.

VictoriaMetrics accepts the requests influxdb-client sends to ``/api/v2/write``, so the
store's real write path can be exercised; ``export()`` reads back what was stored.

How VictoriaMetrics 1.79 (Debian's ``victoria-metrics``) stores InfluxDB lines, checked
by hand. The line

strain,kind=bridge,site=b1,device=sg1,channel=g1 value=12.5,anomaly=0i,score=0 1700000000000000000

posted to ``/api/v2/write?org=x&bucket=y&precision=ns`` becomes three series, one per
field, named ``<measurement>_<field>``, labelled with the tags only::

    strain_value{kind="bridge",site="b1",device="sg1",channel="g1"}    12.5 @ 1700000000000
    strain_anomaly{...same labels...}                                  0    @ 1700000000000
    strain_score{...same labels...}                                    0    @ 1700000000000

- ``org`` and ``bucket`` are ignored: no ``db`` label (only the v1 ``/write?db=...`` adds one).
- Values become float64: ``0i`` is 0, ``true`` is 1, and a string field (``f="x"``) is
  stored as 0, not rejected.
- Timestamps are kept in milliseconds; sub-millisecond digits are cut off, so two points
  of one series within the same millisecond collapse to one under deduplication.
- Malformed lines are not an HTTP error: the response is still 204, the bad line is
  skipped (or, for an unparsable field value such as ``value=abc``, stored as 0) and
  only logged. VictoriaMetrics never answers 422, and answers 400 only for a request it
  cannot read at all (e.g. ``Content-Encoding: gzip`` over a plain body), so the store's
  400/422 splitting has to be tested against a fake server, not this one.
- Points outside the retention period, or far in the future (2100 was), are dropped
  silently with 204, which is why ``-retentionPeriod=100y`` is passed: the tests'
  fixed timestamps (e.g. 2023) are older than the default one month.
- With ``-dedup.minScrapeInterval=1ms`` a re-sent identical point is stored once, like
  InfluxDB's overwrite. Unlike InfluxDB, when two *different* values share a timestamp,
  which one survives is not "the last written"; do not rely on it.
- influxdb-client's synchronous ``write_api`` succeeds against it (204).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from stadtpuls.broker import free_port
from stadtpuls.processes import ServerProcess

__all__ = ["VictoriaMetrics"]

BINARY = "victoria-metrics"


class VictoriaMetrics(ServerProcess):
    """``victoria-metrics`` on a free loopback port with its data in ``workdir/vmdata``."""

    name = "victoria-metrics"
    install_hint = "the InfluxDB write-path tests need it: `apt-get install victoria-metrics`"
    host = "127.0.0.1"
    stop_deadline_s = 30.0  # it flushes its in-memory rows to disk on the way out

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port if port is not None else free_port()
        self.data_path = workdir / "vmdata"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def executable(self) -> str | None:
        return shutil.which(BINARY)

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            f"-storageDataPath={self.data_path}",
            f"-httpListenAddr={self.host}:{self.port}",
            # A re-sent point (same series and timestamp) collapses to one, as in InfluxDB.
            "-dedup.minScrapeInterval=1ms",
            # Otherwise the query API hides the last 30 s of data.
            "-search.latencyOffset=0s",
            # Points older than the retention are dropped without an error (see above).
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
        ]

    def ready(self) -> bool:
        try:
            if httpx.get(f"{self.url}/health", timeout=0.5).status_code != 200:
                return False
            # Another process could hold the port; only ours reports our data path.
            metrics = httpx.get(f"{self.url}/metrics", timeout=0.5).text
        except httpx.TransportError:
            return False
        return f'flag{{name="storageDataPath", value="{self.data_path}"' in metrics

    def flush(self) -> None:
        """Make rows written so far visible to reads (they are buffered for ~1 s otherwise)."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=10).raise_for_status()

    def delete_all(self) -> None:
        """Delete every series, so that the next user of a shared process starts from an
        empty database. A series written again afterwards is a new one: deleted samples
        do not come back (checked by hand on 1.79)."""
        self.flush()
        response = httpx.post(
            f"{self.url}/api/v1/admin/tsdb/delete_series",
            data={"match[]": '{__name__=~".+"}'},
            timeout=10,
        )
        response.raise_for_status()

    def site_points(self, name: str = "strain_value") -> list[tuple[str, int, float]]:
        """Every stored sample of the metric ``name`` as (site, ms, value), sorted."""
        points: list[tuple[str, int, float]] = []
        for series in self.export(f'{{__name__="{name}"}}'):
            site = series["metric"]["site"]
            points.extend(
                (site, t, v) for t, v in zip(series["timestamps"], series["values"], strict=True)
            )
        return sorted(points)

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every stored sample of the series matching `match`, e.g. ``{__name__=~"strain_.*"}``.

        Each item has ``metric`` (labels, with ``__name__``), ``values`` and ``timestamps``
        (ms since the epoch). Items are sorted by name and labels; VictoriaMetrics returns
        them in no particular order.
        """
        self.flush()
        response = httpx.post(f"{self.url}/api/v1/export", data={"match[]": match}, timeout=10)
        response.raise_for_status()
        series = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        series.sort(
            key=lambda item: (item["metric"].get("__name__", ""), sorted(item["metric"].items()))
        )
        return series
