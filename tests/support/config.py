"""Settings files as the service reads them (``stadtpuls.yaml``, and the registry beside it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

__all__ = ["ConfigWriter", "write_config"]


def write_config(
    directory: Path, settings: str | Mapping[str, Any] = "", *, registry_yaml: str | None = None
) -> Path:
    """Write ``directory/stadtpuls.yaml`` and return its path.

    `settings` is the file's text, or a mapping written as YAML. With `registry_yaml`,
    ``directory/registry.yaml`` is written too; the settings name it (``registry:
    registry.yaml``) only if the caller says so, as relative paths in the file are read
    against the file's directory.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if registry_yaml is not None:
        (directory / "registry.yaml").write_text(registry_yaml)
    path = directory / "stadtpuls.yaml"
    path.write_text(settings if isinstance(settings, str) else yaml.safe_dump(dict(settings)))
    return path


class ConfigWriter(Protocol):
    """`write_config` with the directory given: the ``config_file`` fixture."""

    def __call__(
        self, settings: str | Mapping[str, Any] = "", *, registry_yaml: str | None = None
    ) -> Path: ...
