"""Rules compiled from the settings and the registry into per-series arrays, so a batch is
judged with a few numpy comparisons and only the series near a threshold reach Python."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alerts.config import DETECTORS, AlertsConfig
from alerts.model import Severity
from devices.registry import Registry

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class LevelRule:
    """A threshold with hysteresis. ``on`` and ``clear`` hold one level per series of the
    registry, NaN where the rule does not apply."""

    name: str
    severity: Severity
    on: F64
    clear: F64
    below: bool
    magnitude: BOOL
    for_ns: int
    clear_for_ns: int
    summary: str

    def judge(self, series: npt.NDArray[np.int64], values: F64) -> tuple[BOOL, BOOL]:
        """Per reading: beyond the threshold, and on the safe side of the clear level."""
        x = np.where(self.magnitude[series], np.abs(values), values)
        on, clear = self.on[series], self.clear[series]
        with np.errstate(invalid="ignore"):  # NaN levels compare False: rule not applicable
            if self.below:
                return x < on, x >= clear
            return x > on, x <= clear


@dataclass(frozen=True, slots=True)
class FlagRule:
    """An anomaly detector's flag on a reading."""

    name: str
    severity: Severity
    bit: int
    clear_for_ns: int
    summary: str

    def judge(self, flags: npt.NDArray[np.int32]) -> tuple[BOOL, BOOL]:
        on = (flags & self.bit) != 0
        return on, ~on


Rule = LevelRule | FlagRule


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def compile_rules(registry: Registry, config: AlertsConfig) -> list[Rule]:
    series = registry.series
    n = len(series)
    strain = np.array([s.key.measurement == "strain" for s in series], dtype=bool)
    rules: list[Rule] = []
    for r in config.thresholds:
        mask = np.array([r.applies(s) for s in series], dtype=bool)
        level = r.above if r.above is not None else r.below
        assert level is not None  # the model requires one of them
        rules.append(
            LevelRule(
                name=r.name,
                severity=r.severity,
                on=np.where(mask, level, np.nan),
                clear=np.where(mask, r.clear, np.nan),
                below=r.below is not None,
                magnitude=np.full(n, r.magnitude),
                for_ns=_ns(r.for_.total_seconds()),
                clear_for_ns=_ns(r.clear_for.total_seconds()),
                summary=r.summary or f"{r.measurement} {'below' if r.below else 'above'} {level}",
            )
        )
    reg = config.registry
    if reg.enabled:
        for name, severity, attr, what in (
            ("limit", Severity.CRITICAL, "limit", "beyond its design limit"),
            ("alarm", Severity.CRITICAL, "alarm", "above its alarm level"),
            ("warn", Severity.WARNING, "warn", "above its warning level"),
        ):
            levels = np.array(
                [np.nan if getattr(s, attr) is None else abs(getattr(s, attr)) for s in series]
            )
            if np.isnan(levels).all():
                continue
            # A design limit holds in tension and compression alike; the registry's warn
            # and alarm levels are magnitudes for strain for the same reason.
            rules.append(
                LevelRule(
                    name=name,
                    severity=severity,
                    on=levels,
                    clear=levels * reg.clear_ratio,
                    below=False,
                    magnitude=strain if attr != "limit" else np.ones(n, dtype=bool),
                    for_ns=_ns(reg.for_.total_seconds()),
                    clear_for_ns=_ns(reg.clear_for.total_seconds()),
                    summary=what,
                )
            )
    for detector, chosen in config.anomaly.severity.items():
        if chosen == "off":
            continue
        rules.append(
            FlagRule(
                name=f"anomaly-{detector}",
                severity=Severity(chosen),
                bit=int(DETECTORS[detector]),
                clear_for_ns=_ns(config.anomaly.clear_for.total_seconds()),
                summary=f"the {detector} detector flags this sensor",
            )
        )
    return rules
