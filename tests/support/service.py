"""The service as a real process (``python -m stadtpuls run``), so tests can SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stadtpuls.broker import free_port
from tests.registry_fixture import REGISTRY_YAML
from tests.support.waiting import wait_until


class ServiceProcess:
    def __init__(self, workdir: Path, broker_port: int, **overrides: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "registry.yaml").write_text(REGISTRY_YAML)
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
        self.config = workdir / "stadtpuls.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.db = workdir / "data" / "stadtpuls.db"
        self.log = workdir / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stadtpuls", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        wait_until(self.ready, 30, f"service ready (log: {self.log})")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited {self.proc.returncode}: {self.log_tail()}")
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

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
