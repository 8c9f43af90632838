"""Fixtures shared by the unit and integration tests; the helpers behind them live in
``tests/support``.

- ``registry``, ``topics``: the small test registry (``tests.support.registry``) and the
  default topic scheme. A module that needs another registry overrides ``registry``.
- ``config_file``: writes the test's ``stadtpuls.yaml`` (and a registry beside it).
- ``processes`` / ``module_processes``: start servers as real processes and stop them
  when the test / module ends (``tests.support.processes``). Over them:
  ``broker_factory`` and ``broker`` (a private Mosquitto on a free loopback port, never a
  broker someone else started), ``service_factory`` and ``service`` (the service as a
  process), ``victoria_factory`` (a VictoriaMetrics of the test's own, to stop and start).
- ``victoria``: one VictoriaMetrics for the whole session, emptied before each test that
  asks for it; a test must not stop it.
- ``store`` and ``store_rig``: the store under test, once as ``SqliteStore`` and once as
  ``InfluxStore`` writing to ``victoria`` (``tests.support.stores``); ``store_rig`` reads
  back what reached the final database.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.registry import Registry
from devices.topics import TopicScheme
from stadtpuls.broker import MosquittoBroker
from tests.support.config import ConfigWriter, write_config
from tests.support.processes import BrokerFactory, Processes, ServiceFactory, VictoriaFactory
from tests.support.registry import sample_registry
from tests.support.service import ServiceProcess
from tests.support.stores import InfluxRig, LocalStore, SqliteRig, StoreRig
from tests.support.victoria import VictoriaMetrics

# -- the registry and settings -----------------------------------------------------------


@pytest.fixture(scope="session")
def registry() -> Registry:
    return sample_registry()


@pytest.fixture(scope="session")
def topics() -> TopicScheme:
    return TopicScheme()


@pytest.fixture
def config_file(tmp_path: Path) -> ConfigWriter:
    """``config_file(settings, registry_yaml=...)`` writes ``tmp_path/stadtpuls.yaml``."""
    return functools.partial(write_config, tmp_path)


# -- servers as processes -----------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Servers of this test, each in a directory of its own under ``tmp_path``."""
    taken: set[Path] = set()

    def workdir(name: str) -> Path:
        path, n = tmp_path / name, 1
        while path in taken or path.exists():
            n += 1
            path = tmp_path / f"{name}-{n}"
        taken.add(path)
        return path

    owner = Processes(workdir)
    yield owner
    owner.close()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Servers shared by the tests of a module."""
    owner = Processes(tmp_path_factory.mktemp)
    yield owner
    owner.close()


@pytest.fixture
def broker_factory(processes: Processes) -> BrokerFactory:
    """``broker_factory(extra_config="...", persistence=False, name="broker")``: a started
    private Mosquitto; the test may stop, kill and restart it."""
    return processes.broker


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    return broker_factory()


@pytest.fixture
def service_factory(processes: Processes) -> ServiceFactory:
    """``service_factory(broker_port, name=..., env=..., start=True, **config)``: the
    service as a process (``tests.support.service.ServiceProcess``)."""
    return processes.service


@pytest.fixture
def service(service_factory: ServiceFactory, broker: MosquittoBroker) -> ServiceProcess:
    """The service as a started process on ``broker``, with the SQLite store."""
    return service_factory(broker.port)


@pytest.fixture
def victoria_factory(processes: Processes) -> VictoriaFactory:
    """``victoria_factory(name="vm")``: a started VictoriaMetrics of this test's own."""
    return processes.victoria


@pytest.fixture(scope="session")
def shared_victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as vm:
        yield vm


@pytest.fixture
def victoria(shared_victoria: VictoriaMetrics) -> VictoriaMetrics:
    """The session's VictoriaMetrics, empty: InfluxDB's org and bucket mean nothing to it,
    and the measurements come from the registry, so tests are kept apart by deleting
    what the ones before wrote. A test that stops the database uses ``victoria_factory``."""
    shared_victoria.delete_all()
    assert shared_victoria.export('{__name__=~".+"}') == []
    return shared_victoria


# -- the store under test -----------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        # A real VictoriaMetrics process (the support code says how to install one).
        pytest.param("influx", marks=pytest.mark.integration),
    ]
)
def store_rig(
    request: pytest.FixtureRequest, tmp_path: Path, registry: Registry
) -> Iterator[StoreRig]:
    """The store under test over ``registry``, once per kind of store."""
    path = tmp_path / "stadtpuls.db"
    rig: StoreRig
    if request.param == "influx":
        rig = InfluxRig(path, registry.series, request.getfixturevalue("victoria"))
    else:
        rig = SqliteRig(path, registry.series)
    yield rig
    rig.close()


@pytest.fixture
def store(store_rig: StoreRig) -> LocalStore:
    return store_rig.store
