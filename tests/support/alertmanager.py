"""A private Prometheus Alertmanager process (Debian's ``prometheus-alertmanager``) on a
free loopback port, for the Alertmanager channel's tests.

Its configuration routes everything to a receiver with no integrations, so nothing is
sent anywhere; alerts posted to it can be read back with ``alerts()``. Clustering is off
(an empty ``--cluster.listen-address``), otherwise it would open the gossip port 9094
and wait for peers before settling.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from stadtpuls.broker import free_port
from stadtpuls.processes import ServerProcess

__all__ = ["Alertmanager"]

BINARY = "prometheus-alertmanager"

_CONFIG = """\
route:
  receiver: null-receiver
receivers:
  - name: null-receiver
"""


class Alertmanager(ServerProcess):
    name = "alertmanager"
    install_hint = "the alert channel tests need it: `apt-get install prometheus-alertmanager`"
    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port if port is not None else free_port()
        self.config_path = workdir / "alertmanager.yml"
        self.storage_path = workdir / "data"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def executable(self) -> str | None:
        return shutil.which(BINARY) or shutil.which(BINARY, path="/usr/bin:/usr/sbin")

    def prepare(self) -> None:
        self.config_path.write_text(_CONFIG)

    def command(self, executable: str) -> list[str]:
        return [
            executable,
            f"--config.file={self.config_path}",
            f"--storage.path={self.storage_path}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def ready(self) -> bool:
        # Our own process must still be up: an Alertmanager that lost the port to another
        # one exits, and the other's /-/ready must not pass for ours.
        if not self.is_running:
            return False
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def alerts(self, *, active: bool | None = None, **labels: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager lists, filtered by exact label values and, when given,
        by its ``active`` flag. It lists no alert whose ``endsAt`` has passed."""
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("filter", f'{name}="{value}"') for name, value in labels.items()
        ]
        if active is not None:
            params.append(("active", str(active).lower()))
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found
