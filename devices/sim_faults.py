"""Fault injection for the simulator: fault kinds, ground-truth labels, and their application.

``apply_faults`` turns the clean values of one series into faulty ones and labels each sample:
0 (``CLEAN``) for a clean sample and ``FAULT_KINDS.index(kind) + 1`` for a faulty one
(``label_kinds`` turns them into names). The device's rounding and the clip into the range
stay with the simulator (``devices/simulator.py``), which applies them afterwards.

Determinism: faults depend on (seed, series ids, timestamp) only; spike instants and signs
are counter-based hashes of absolute time, so any chunking of a span gives the same faults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from devices.registry import Series
from devices.sim_common import F64, I64, hash_uniform, stable_key

# New kinds go at the end: labels are ``FAULT_KINDS.index(kind) + 1``, and stored or
# published labels keep their meaning only if the existing kinds keep their places.
FaultKind = Literal["spike", "drift", "stuck", "step", "gap", "out_of_range", "settlement"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
CLEAN: Final = 0
Labels = npt.NDArray[np.uint8]

# What magnitude 1.0 means for spike, drift (at the end of the window), step and settlement,
# per measurement: an amount an engineer would notice, well above the sensor noise and below
# a structural alarm. ``FaultSpec(absolute=True)`` gives the amount in the unit instead.
FAULT_SCALE: Final[dict[str, float]] = {
    "strain": 50.0,
    "temperature": 5.0,
    "inclination": 0.02,
    "crack_width": 0.05,
    "co2": 300.0,
    "humidity": 10.0,
    "pm2_5": 20.0,
    "pm10": 30.0,
    "noise": 15.0,
    "light": 300.0,
}


@dataclass(frozen=True)
class FaultSpec:
    """A data fault injected into one series (``series`` = index in ``Registry.series``) or,
    with ``series=None``, into all of them, for samples in [start_ns, start_ns + duration_ns).

    ``magnitude`` scales ``FAULT_SCALE`` of the measurement (its sign gives the direction),
    or with ``absolute=True`` is the amount itself in the measurement's unit (a step of 4 ue
    on a quiet strain gauge): spike: isolated single-sample outliers (about five per window,
    at least one); drift: a linear ramp from 0 to the amount at the end of the window; stuck:
    the value frozen at its value at ``start_ns``; step: an offset of the amount; gap: no
    samples; out_of_range: values (5 + 10 x |magnitude|) % of the range beyond the maximum
    (below the minimum if magnitude < 0; ``absolute`` does not apply).

    settlement is the one kind that outlasts its window: a monotone rise (a half-cosine, so
    it starts and ends smoothly) from 0 at ``start_ns`` to the amount at the end of the
    window, which then stays, as when a support settles. Every sample from ``start_ns`` on
    carries it and is labelled with it; a later fault on the same series adds to it.
    Faulty values other than out_of_range stay inside the range.
    """

    kind: FaultKind
    series: int | None
    start_ns: int
    duration_ns: int
    magnitude: float = 1.0
    absolute: bool = False

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


def label_kinds(labels: Labels) -> list[FaultKind | None]:
    """Turn a label array from ``series_values`` into fault kinds (None for clean)."""
    return [None if c == CLEAN else FAULT_KINDS[c - 1] for c in labels.tolist()]


def apply_faults(
    faults: Sequence[FaultSpec],
    s: Series,
    ts: I64,
    clean: F64,
    *,
    seed: int,
    period_ns: int,
    reported_at: Callable[[int], float],
) -> tuple[F64, Labels]:
    """Values and labels of series ``s`` at ``ts`` with ``faults`` applied to its ``clean``
    values, in the order given (a later label wins). ``period_ns`` is the series' sample
    spacing (spikes hit samples of this grid); ``reported_at(t_ns)`` is the clean value the
    device reports at ``t_ns`` (rounded as it rounds), at which stuck freezes. The result
    is not yet rounded or clipped into the range."""
    v = clean.astype(np.float64, copy=True)
    labels = np.zeros(len(ts), dtype=np.uint8)
    lo, hi = s.minimum, s.maximum
    for f in faults:
        if f.series is not None and f.series != s.index:
            continue
        lasting = f.kind == "settlement"
        window = (ts >= f.start_ns) & ((ts < f.end_ns) | lasting)
        if not window.any():
            continue
        code = FAULT_KINDS.index(f.kind) + 1
        amount = f.magnitude * (1.0 if f.absolute else FAULT_SCALE[s.key.measurement])
        if f.kind == "spike":
            window &= _spike_mask(seed, s, f, ts, period_ns)
            key = stable_key(seed, "spike-sign", s.key.name, s.key.device, f.start_ns)
            sign = np.where(hash_uniform(key, ts) < 0.5, -1.0, 1.0)
            up = v + sign * amount
            # Point the spike away from a range limit, so clipping cannot erase it.
            up = np.where((up < lo) | (up > hi), v - sign * amount, up)
            v = np.where(window, up, v)
        elif f.kind == "drift":
            frac = (ts - f.start_ns).astype(np.float64) / f.duration_ns
            v = np.where(window, v + amount * frac, v)
        elif f.kind == "stuck":
            v = np.where(window, reported_at(f.start_ns), v)
        elif f.kind == "step":
            v = np.where(window, v + amount, v)
        elif f.kind == "settlement":
            frac = np.clip((ts - f.start_ns).astype(np.float64) / f.duration_ns, 0.0, 1.0)
            v = np.where(window, v + amount * (0.5 - 0.5 * np.cos(np.pi * frac)), v)
        elif f.kind == "gap":
            v = np.where(window, np.nan, v)
        else:  # out_of_range
            beyond = (0.05 + 0.1 * abs(f.magnitude)) * (hi - lo)
            v = np.where(window, hi + beyond if f.magnitude >= 0 else lo - beyond, v)
        labels[window] = code
    return v, labels


def _spike_mask(seed: int, s: Series, f: FaultSpec, ts: I64, period: int) -> npt.NDArray[np.bool_]:
    """Spike instants: one at a jittered point of every fifth of the window (at least ten
    samples apart), each hitting the first sample of the series' grid (spacing ``period``)
    after it. Defined on absolute time, so any chunking of a span gives the same spikes."""
    spacing = max(f.duration_ns // 5, 10 * period)
    k = (ts - f.start_ns) // spacing
    key = stable_key(seed, "spike-at", s.key.name, s.key.device, f.start_ns)
    jitter = hash_uniform(key, k) * 0.8 * spacing
    at = f.start_ns + k * spacing + np.where(k == 0, 0, jitter.astype(np.int64))
    return np.asarray((ts >= at) & (ts < at + period))
