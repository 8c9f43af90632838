"""Secrets from the settings: read from a file when one is named, and refused when empty
or a placeholder, so a stack never runs on ``changeme``."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

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
