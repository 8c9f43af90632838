"""The small registry most tests share (the ``registry`` fixture of ``tests/conftest.py``):
a bridge and two schools."""

from __future__ import annotations

from devices.registry import Registry, parse_registry

REGISTRY_YAML = """\
sites:
  b1:
    kind: bridge
    name: Test bridge
    devices:
      sg1:
        interval: 1s
        channels:
          g1: [strain, temperature]
          g2: [strain]
        overrides:
          strain: {limit: 900}
      env:
        interval: 30m
        measurements: [temperature]
        channels:
          crack-1: [crack_width]
  s1:
    kind: school
    name: Test school
    devices:
      room-1:
        interval: 1m
        measurements: [co2, temperature, humidity]
        overrides:
          co2: {max: 5000, warn: 1000, alarm: 2000}
  s2:
    kind: school
    name: Other school
    devices:
      room-9:
        interval: 1m
        measurements: [co2]
"""


def sample_registry() -> Registry:
    return parse_registry(REGISTRY_YAML, "test-registry.yaml")


def bridges_yaml(sites: list[str]) -> str:
    """A registry of ``sites``, each a bridge with one strain gauge ``sg1/g1`` at 1 s."""
    body = "".join(
        f"  {site}:\n    kind: bridge\n    name: Bridge {site}\n    devices:\n"
        "      sg1:\n        interval: 1s\n        channels: {g1: [strain]}\n"
        for site in sites
    )
    return f"sites:\n{body}"
