"""The service as a real process (``python -m stadtpuls run``), so tests can SIGKILL it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stadtpuls.broker import free_port
from stadtpuls.processes import ServerProcess
from tests.support.config import write_config
from tests.support.registry import REGISTRY_YAML


class ServiceProcess(ServerProcess):
    name = "stadtpuls"
    stop_deadline_s = 30.0  # the committer finishes its batch first

    def __init__(self, workdir: Path, broker_port: int, **overrides: Any) -> None:
        super().__init__(workdir)
        self.http_port = free_port()
        config: dict[str, Any] = {
            "registry": "registry.yaml",
            "data_dir": "data",
            "log_level": "INFO",
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": "test-ingest"},
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "batch": {"max_messages": 500, "max_wait": 0.05},
        }
        for key, value in overrides.items():
            if isinstance(value, dict):
                config.setdefault(key, {}).update(value)
            else:
                config[key] = value
        self.config = write_config(workdir, config, registry_yaml=REGISTRY_YAML)
        self.db = workdir / "data" / "stadtpuls.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def executable(self) -> str | None:
        return sys.executable

    def command(self, executable: str) -> list[str]:
        return [executable, "-m", "stadtpuls", "run", "--config", str(self.config)]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )
