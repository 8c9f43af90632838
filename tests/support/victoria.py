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
import signal
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from stadtpuls.broker import free_port

__all__ = ["VictoriaMetrics"]

BINARY = "victoria-metrics"
_START_DEADLINE_S = 20.0
_STOP_DEADLINE_S = 30.0
_POLL_S = 0.02


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class VictoriaMetrics:
    """``victoria-metrics`` on a free loopback port with its data in ``workdir/vmdata``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.data_path = workdir / "vmdata"
        self.log_path = workdir / "victoria-metrics.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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

    def start(self) -> None:
        if self.is_running:
            raise RuntimeError(f"victoria-metrics is already running on port {self.port}")
        executable = shutil.which(BINARY)
        if executable is None:
            raise RuntimeError(
                f"{BINARY!r} not found on PATH; the InfluxDB write-path tests need it: "
                "`apt-get install victoria-metrics`"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(executable),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Its own session means it would outlive a test that forgot to stop it.
        weakref.finalize(self, _terminate, self._proc)
        deadline = time.monotonic() + _START_DEADLINE_S
        while not self._healthy():
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"victoria-metrics exited with code {code} during start on port "
                    f"{self.port}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"victoria-metrics was not healthy on port {self.port} within "
                    f"{_START_DEADLINE_S:.0f} s\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)

    def _healthy(self) -> bool:
        try:
            if httpx.get(f"{self.url}/health", timeout=0.5).status_code != 200:
                return False
            # Another process could hold the port; only ours reports our data path.
            metrics = httpx.get(f"{self.url}/metrics", timeout=0.5).text
        except httpx.TransportError:
            return False
        return f'flag{{name="storageDataPath", value="{self.data_path}"' in metrics

    def stop(self) -> None:
        """SIGTERM and wait: VictoriaMetrics flushes its in-memory rows on the way out."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"victoria-metrics ignored SIGTERM for {_STOP_DEADLINE_S:.0f} s and was "
                f"killed\n{self.log_tail()}"
            ) from None

    def kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        """Make rows written so far visible to reads (they are buffered for ~1 s otherwise)."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=10).raise_for_status()

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

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(victoria-metrics wrote no log)"
        return "\n".join(tail) or "(victoria-metrics wrote no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
