"""What every command group of the ``stadtpuls`` command line shares: the ``--config``
option, loading the settings and the registry, time parsing, logging and the error exit.

This module imports no command module: the command modules import it, and the package
(``stadtpuls.cli``) imports them to register their commands on the root group.

``stadtpuls --help`` and every command's ``--help`` import the command modules and
nothing else, so they answer at once: the command modules import only click and the
standard library at module level (this module too), and each command imports what it
needs (the settings, the registry, numpy, pyarrow, paho, the InfluxDB and Grafana
clients) when it runs. ``tests/unit/test_cli_help.py`` holds them to it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import click

if TYPE_CHECKING:
    from devices.registry import Registry
    from stadtpuls.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

# Times for people are shown in the cities' own zone, with its abbreviation (CET, CEST).
LOCAL_ZONE = ZoneInfo("Europe/Berlin")

CONFIG_HELP = "Settings file (YAML). Environment variables STADTPULS_* override it."


def config_option(help_text: str = CONFIG_HELP) -> Callable[[F], F]:
    """The ``--config`` option (passed to the command as ``config_path``).

    The one declaration of it; ``help_text`` only lets a group keep its own wording.
    """
    return file_option("--config", "config_path", envvar="STADTPULS_CONFIG", help=help_text)


def file_option(*decls: str, envvar: str | None = None, help: str) -> Callable[[F], F]:
    """An option naming a file that must exist (passed as a ``Path``; none by default)."""
    return click.option(
        *decls,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar=envvar,
        default=None,
        help=help,
    )


CONFIG = config_option()


def fail(message: str) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and exit 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def load(config_path: Path | None, registry_path: Path | None = None) -> tuple[Settings, Registry]:
    """The settings, and the registry they name (or the one at ``registry_path``); a
    configuration error, or settings naming what the registry lacks, exits 2 with its
    message."""
    from devices.registry import RegistryError, load_registry
    from stadtpuls.settings import ConfigError, check_against_registry, load_settings

    try:
        settings = load_settings(config_path)
        registry = load_registry(registry_path or settings.registry)
        check_against_registry(settings, registry)
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


def local_time(value: datetime | int | None, *, seconds: bool = False) -> str:
    """A time (an aware datetime, or nanoseconds since the epoch) as Berlin local time
    with its zone: ``2026-11-23 09:31 CET``; ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1e9, UTC)
    return value.astimezone(LOCAL_ZONE).strftime(
        "%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z"
    )


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> str:
    """Rows as columns two spaces apart under a header, each column as wide as its widest
    cell; the columns numbered in ``right`` are right-aligned (numbers), the last column is
    never padded."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for r in (header, *rows):
        cells = [
            cell
            if i == len(r) - 1
            else cell.rjust(widths[i])
            if i in right
            else cell.ljust(widths[i])
            for i, cell in enumerate(r)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
