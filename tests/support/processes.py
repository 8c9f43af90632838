"""The servers a test starts as real processes, and who stops them.

`Processes` gives each server a work directory of its own and stops everything it started,
newest first, when the fixture that owns it ends, whatever state a test left a server in
(stopped, killed, restarted). ``tests/conftest.py`` has one per test (``processes``) and
one per module (``module_processes``), and the factory fixtures over them
(``broker_factory``, ``service_factory``, ``victoria_factory``).

Every broker listens on a free loopback port (`MosquittoBroker` picks one), never on 1883:
machines here run a Mosquitto of their own there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dashboards.broker_acl import broker_auth, write_broker_auth
from devices.registry import Registry
from devices.topics import TopicScheme
from stadtpuls.broker import MosquittoBroker
from stadtpuls.processes import StartStop
from tests.support.service import ServiceProcess
from tests.support.victoria import VictoriaMetrics

__all__ = [
    "BrokerFactory",
    "Processes",
    "ServiceFactory",
    "VictoriaFactory",
    "broker_auth_config",
]

S = TypeVar("S", bound=StartStop)


class Processes:
    """Starts servers in fresh work directories made by `make_workdir` and stops them all
    in `close`."""

    def __init__(self, make_workdir: Callable[[str], Path]) -> None:
        self._make_workdir = make_workdir
        self._started: list[StartStop] = []

    def workdir(self, name: str) -> Path:
        """A directory no other server of this owner uses, named after `name`."""
        return self._make_workdir(name)

    def start(self, server: S) -> S:
        """Start `server` and stop it with the others (also when its start fails half-way)."""
        self._started.append(server)
        server.start()
        return server

    def broker(
        self, *, extra_config: str = "", persistence: bool = True, name: str = "broker"
    ) -> MosquittoBroker:
        """A started private Mosquitto; `extra_config` is appended to its config file."""
        return self.start(
            MosquittoBroker(self.workdir(name), persistence=persistence, extra_config=extra_config)
        )

    def victoria(self, name: str = "vm") -> VictoriaMetrics:
        """A started VictoriaMetrics of the caller's own, which it may stop and restart."""
        return self.start(VictoriaMetrics(self.workdir(name)))

    def service(
        self,
        broker_port: int,
        *,
        name: str = "service",
        env: Mapping[str, str] | None = None,
        start: bool = True,
        **overrides: Any,
    ) -> ServiceProcess:
        """The service as a process on `broker_port`, its config (``ServiceProcess``) changed
        by `overrides` and its environment extended by `env`; with ``start=False`` the
        caller may edit its config first and starts it itself."""
        service = ServiceProcess(self.workdir(name), broker_port, **overrides)
        service.extra_env.update(env or {})
        if start:
            return self.start(service)
        self._started.append(service)
        return service

    def close(self) -> None:
        """Stop every server, newest first; the first failure is raised after all tried."""
        errors: list[Exception] = []
        while self._started:
            try:
                self._started.pop().stop()
            except Exception as exc:  # ServerProcess.stop kills a server that will not stop
                errors.append(exc)
        if errors:
            raise errors[0]


class BrokerFactory(Protocol):
    """`Processes.broker` of the test: the ``broker_factory`` fixture."""

    def __call__(
        self, *, extra_config: str = "", persistence: bool = True, name: str = "broker"
    ) -> MosquittoBroker: ...


class ServiceFactory(Protocol):
    """`Processes.service` of the test: the ``service_factory`` fixture."""

    def __call__(
        self,
        broker_port: int,
        *,
        name: str = "service",
        env: Mapping[str, str] | None = None,
        start: bool = True,
        **overrides: Any,
    ) -> ServiceProcess: ...


class VictoriaFactory(Protocol):
    """`Processes.victoria` of the test: the ``victoria_factory`` fixture."""

    def __call__(self, name: str = "vm") -> VictoriaMetrics: ...


def broker_auth_config(
    registry: Registry, master: str, directory: Path, topics: TopicScheme | None = None
) -> str:
    """Mosquitto config lines that admit only the accounts `dashboards.broker_acl` derives
    from `registry` and `master`, with the password file and ACL written to `directory`.

    The embedded broker's own config allows anonymous clients; Mosquitto takes the last
    value of a repeated global option, so these lines, appended to it, win."""
    auth = broker_auth(registry, topics if topics is not None else TopicScheme(), master)
    passwd, acl = write_broker_auth(auth, directory)
    return f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
