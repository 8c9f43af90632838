"""Alert rules and lifecycle settings, as they appear under ``alerts:`` in the settings file.

The defaults follow DOMAIN.md: the Umweltbundesamt's guidance for classroom air (CO2 above
1000 ppm: air the room; above 2000 ppm: unacceptable) and each gauge's design limit from the
registry. Each channel's settings model lives with the channel in ``alerts.channels``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time, timedelta
from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from alerts.model import Severity
from devices.registry import (
    Duration,
    Registry,
    Series,
    UnknownIdError,
    check_device,
    check_site,
    parse_duration,
    suggest,
)
from devices.vocabulary import VOCABULARY, SiteKind
from ingest.batch import AnomalyFlag


def _wait(value: object) -> timedelta:
    """A duration that may be zero: no wait."""
    if value in (0, 0.0, "0", "0s"):
        return timedelta(0)
    return parse_duration(value)


Wait = Annotated[timedelta, BeforeValidator(_wait)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ThresholdRule(_Strict):
    """A level on one measurement, with a separate clear level (hysteresis) and minimum
    durations. It fires once the value has been beyond ``above`` (or ``below``) for
    ``for``, and resolves once it has stayed on the safe side of ``clear`` for
    ``clear_for``; in between, nothing changes."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    measurement: str
    kind: Literal["bridge", "school"] | None = None
    site: str | None = None
    device: str | None = None
    above: float | None = None
    below: float | None = None
    clear: float
    for_: Wait = Field(default=timedelta(0), alias="for")
    clear_for: Wait = timedelta(0)
    severity: Severity = Severity.WARNING
    magnitude: bool = Field(
        default=False, description="compare |value|: strain is negative under compression"
    )
    summary: str = ""

    @model_validator(mode="after")
    def _one_side(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError(f"rule {self.name}: give exactly one of 'above' and 'below'")
        if self.above is not None and self.clear > self.above:
            raise ValueError(
                f"rule {self.name}: 'clear' ({self.clear}) must not lie above 'above' "
                f"({self.above}), or the alert could never resolve while firing"
            )
        if self.below is not None and self.clear < self.below:
            raise ValueError(
                f"rule {self.name}: 'clear' ({self.clear}) must not lie below 'below' "
                f"({self.below})"
            )
        return self

    def applies(self, s: Series) -> bool:
        """Whether the rule watches the series ``s``."""
        return (
            s.key.measurement == self.measurement
            and (self.kind is None or s.kind == self.kind)
            and (self.site is None or s.key.site == self.site)
            and (self.device is None or s.key.device == self.device)
        )


def default_thresholds() -> list[ThresholdRule]:
    # The clear levels sit well below the thresholds: a lesson's CO2 hovers near 1000 ppm
    # for minutes, and an alert that resolves and refires with every breath is noise.
    return [
        ThresholdRule.model_validate(
            {
                "name": "co2-air-the-room",
                "measurement": "co2",
                "kind": "school",
                "above": 1000.0,
                "clear": 800.0,
                "for": "2m",
                "clear_for": "5m",
                "severity": "warning",
                "summary": "above 1000 ppm: air the room (Umweltbundesamt)",
            }
        ),
        ThresholdRule.model_validate(
            {
                "name": "co2-unacceptable",
                "measurement": "co2",
                "kind": "school",
                "above": 2000.0,
                "clear": 1500.0,
                "for": "1m",
                "clear_for": "5m",
                "severity": "critical",
                "summary": "above 2000 ppm: unacceptable air (Umweltbundesamt)",
            }
        ),
    ]


class RegistryThresholds(_Strict):
    """Rules from the registry's per-series ``limit`` (a gauge's design limit), ``warn``
    and ``alarm``, compared as magnitudes for strain."""

    enabled: bool = True
    clear_ratio: float = Field(default=0.95, gt=0, le=1)
    for_: Wait = Field(default=timedelta(0), alias="for")
    clear_for: Wait = timedelta(minutes=1)


DETECTORS = {f.name.lower(): f for f in AnomalyFlag if f.name is not None}


def _default_severity() -> dict[str, Severity | Literal["off"]]:
    return {
        "limit": "off",  # the registry's limit rule alerts on it, with hysteresis
        "spike": "off",  # a lone value: marked on the dashboard, not worth a page
        "step": Severity.WARNING,
        "stuck": Severity.WARNING,
        "rate": Severity.WARNING,
        "gap": "off",  # the silence rule covers a quiet device
        "drift": Severity.WARNING,
        # A lasting shift of strain that the temperature does not explain: a support
        # settling. The engineer on duty must hear of it.
        "shift": Severity.CRITICAL,
    }


class AnomalyRules(_Strict):
    """Severity per detector; ``off`` raises no alert. An anomaly alert resolves once the
    series has gone ``clear_for`` (in reading time) without that flag."""

    severity: dict[str, Severity | Literal["off"]] = Field(default_factory=_default_severity)
    clear_for: Wait = timedelta(minutes=30)

    @field_validator("severity")
    @classmethod
    def _known(cls, v: dict[str, Severity | str]) -> dict[str, Severity | str]:
        unknown = sorted(set(v) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; known: {sorted(DETECTORS)}")
        return v


class SilenceRule(_Strict):
    """A device is silent when nothing arrived for ``factor`` times its registry interval
    (at least ``minimum``); ``devices`` sets the window of single devices ("site/device")."""

    enabled: bool = True
    factor: float = Field(default=5.0, gt=1)
    minimum: Duration = timedelta(minutes=1)
    devices: dict[str, Duration] = Field(default_factory=dict)
    severity: Severity = Severity.WARNING


class HealthRules(_Strict):
    """The pipeline's own health."""

    quarantine_per_minute: float = Field(default=60.0, gt=0)
    journal_depth: int = Field(default=100_000, gt=0)
    broker_down_for: Duration = timedelta(seconds=30)


class AlertsConfig(_Strict):
    enabled: bool = True
    thresholds: list[ThresholdRule] = Field(default_factory=default_thresholds)
    registry: RegistryThresholds = RegistryThresholds()
    anomaly: AnomalyRules = AnomalyRules()
    silence: SilenceRule = SilenceRule()
    health: HealthRules = HealthRules()
    repeat_interval: Duration = timedelta(hours=4)
    # An alert that fires flap_max times within flap_window is flapping: its notifications
    # wait until it has kept one state for a whole window.
    flap_window: Duration = timedelta(hours=1)
    flap_max: int = Field(default=4, ge=2)
    # A transition whose reading lies more than backlog_after behind the wall clock belongs
    # to a backlog (data delayed by an outage, drained later): it is recorded at its reading
    # time, but told only once the backlog of its series is over, as one summary and one
    # firing at most. The backlog is over when a reading of the series arrives less than
    # backlog_after late, or when none has arrived for backlog_after. Above the lag of
    # normal delivery (a gateway's upload interval), below the wait people tolerate.
    backlog_after: Duration = timedelta(minutes=5)
    tick: Duration = timedelta(seconds=5)
    digest_at: time | None = time(7, 0)
    timezone: str = "Europe/Berlin"
    history_retention: Duration = timedelta(days=90)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [r.name for r in self.thresholds]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"threshold rule names must be unique: {twice}")
        return self


Problem = tuple[tuple[str | int, ...], str]
"""Where in ``alerts:`` (a key path, such as ``("thresholds", 0, "measurement")``) and what."""


def _rule_problems(rule: ThresholdRule, registry: Registry) -> Iterator[Problem]:
    kinds = [SiteKind(rule.kind)] if rule.kind is not None else list(SiteKind)
    site = None
    if rule.site is not None:
        try:
            site = check_site(registry, rule.site)
        except UnknownIdError as exc:
            yield ("site",), f"rule {rule.name}: {exc}"
    if site is not None:
        if rule.kind is not None and site.kind != rule.kind:
            yield ("kind",), f"rule {rule.name}: site {site.id} is a {site.kind}, not a {rule.kind}"
        kinds = [site.kind]
    vocab = {name for kind in kinds for name in VOCABULARY[kind]}
    if rule.measurement not in vocab:
        what = f"a {kinds[0]} measurement" if len(kinds) == 1 else "a measurement"
        yield (
            ("measurement",),
            f"rule {rule.name}: {rule.measurement!r} is not {what}; "
            f"{suggest(rule.measurement, vocab)}",
        )
    if rule.device is not None:
        if site is not None:
            try:
                check_device(registry, site.id, rule.device)
            except UnknownIdError as exc:
                yield ("device",), f"rule {rule.name}: {exc}"
        elif rule.site is None:
            ids = {d.id for d in registry.devices() if rule.kind is None or d.kind == rule.kind}
            if rule.device not in ids:
                yield (
                    ("device",),
                    f"rule {rule.name}: no device {rule.device!r} in the registry; "
                    f"{suggest(rule.device, ids)}",
                )


def registry_problems(config: AlertsConfig, registry: Registry) -> list[Problem]:
    """What in ``config`` names something the registry does not have, so that it would
    never match anything: a threshold rule's measurement, site or device, and a device in
    ``silence.devices``. Each message says what was probably meant (``suggest``)."""
    problems: list[Problem] = []
    for i, rule in enumerate(config.thresholds):
        found = [
            (("thresholds", i, *loc), message) for loc, message in _rule_problems(rule, registry)
        ]
        problems += found
        if (
            not found
            and (rule.site or rule.device)
            and not any(rule.applies(s) for s in registry.series)
        ):
            scope = ", ".join(
                f"{what} {value}"
                for what, value in (("site", rule.site), ("device", rule.device))
                if value is not None
            )
            problems.append(
                (
                    ("thresholds", i, "measurement"),
                    f"rule {rule.name} would never fire: the registry has no "
                    f"{rule.measurement} series at {scope}",
                )
            )
    devices = sorted(f"{d.site}/{d.id}" for d in registry.devices())
    for key in config.silence.devices:
        site, slash, device = key.partition("/")
        if not slash:
            same = [repr(d) for d in devices if d.rpartition("/")[2] == key]
            hint = f"did you mean {' or '.join(same)}?" if same else suggest(key, devices)
            message = f"{key!r} must be 'site/device'; {hint}"
        else:
            try:
                check_device(registry, site, device)
                continue
            except UnknownIdError as exc:
                message = str(exc)
        problems.append((("silence", "devices", key), f"silence window for {key!r}: {message}"))
    return problems
