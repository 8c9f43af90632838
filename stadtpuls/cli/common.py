"""What every command group of the ``stadtpuls`` command line shares: the ``--config``
option, loading the settings and the registry, time parsing, logging and the error exit.

This module imports no command module: the command modules import it, and the package
(``stadtpuls.cli``) imports them to register their commands on the root group.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from devices.registry import Registry, RegistryError, load_registry
from stadtpuls.settings import ConfigError, Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_HELP = "Settings file (YAML). Environment variables STADTPULS_* override it."


def config_option(help_text: str = CONFIG_HELP) -> Callable[[F], F]:
    """The ``--config`` option (passed to the command as ``config_path``).

    The one declaration of it; ``help_text`` only lets a group keep its own wording.
    """
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar="STADTPULS_CONFIG",
        help=help_text,
    )


CONFIG = config_option()


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and exit 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def load(config_path: Path | None, registry_path: Path | None = None) -> tuple[Settings, Registry]:
    """The settings, and the registry they name (or the one at ``registry_path``); a
    configuration error exits 2 with its message."""
    try:
        settings = load_settings(config_path)
        registry = load_registry(registry_path or settings.registry)
    except (ConfigError, RegistryError) as exc:
        fail(str(exc))
    return settings, registry


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # apscheduler logs every run of every job at INFO: the alert tick alone, every 5 s,
    # would bury the service's own lines.
    logging.getLogger("apscheduler").setLevel(max(logging.getLevelName(level), logging.WARNING))


def parse_time(value: str) -> int:
    """An ISO 8601 time (UTC unless it has an offset) as nanoseconds since the epoch."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000
