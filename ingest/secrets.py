"""Secrets from the settings: read from a file when one is named, and refused when empty
or a placeholder, so a stack never runs on ``changeme``; revealed only where the settings
become the plain values a part runs with (``plain_settings``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_D = TypeVar("_D", bound="DataclassInstance")

PLACEHOLDERS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "token", "xxx", "todo"}
)


def is_placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDERS


def read_secret(value: SecretStr | None, file: Path | None, what: str) -> SecretStr | None:
    if file is not None:
        try:
            value = SecretStr(file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ValueError(f"{what}: cannot read the secret file {file}: {exc}") from exc
    if value is not None and is_placeholder(value.get_secret_value()):
        raise ValueError(f"{what} is empty or a placeholder; set a real secret")
    return value


def plain_settings(cls: type[_D], model: BaseModel, **given: Any) -> _D:
    """``cls``, the frozen settings a part runs with, from a validated settings ``model``:
    each field of ``cls`` that ``model`` has a key of takes that key's value as the part
    uses it (a secret revealed, a path as a string, a list as a tuple), unless ``given``;
    the other fields keep their defaults."""
    keys = type(model).model_fields
    values = {
        f.name: _plain(getattr(model, f.name))
        for f in dataclasses.fields(cls)
        if f.name in keys and f.name not in given
    }
    return cls(**values, **given)


def _plain(value: object) -> object:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return tuple(value)
    return value
