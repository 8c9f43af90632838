"""The ``stadtpuls`` command line: the root group, with one module per command group.

``common`` holds what the groups share (the ``--config`` option, loading the settings and
the registry, time parsing, the error exit); it imports no command module. The command
modules import it, and this package imports them to register their commands on ``main``.
"""

from __future__ import annotations

import click

from stadtpuls.cli import alerts, export, nats, quarantine, service, simulate, stack


@click.group()
@click.version_option(package_name="stadtpuls")
def main() -> None:
    """Stadtpuls: bridge and classroom sensors over MQTT into a time-series store."""


main.add_command(service.check_config)
main.add_command(service.run)
main.add_command(service.demo)
main.add_command(simulate.simulate)
main.add_command(quarantine.quarantine)
main.add_command(export.export)
main.add_command(export.tokens)
main.add_command(stack.dashboards)
main.add_command(stack.broker_auth)
main.add_command(alerts.alerts)
main.add_command(nats.nats)

__all__ = ["main"]
