"""The native block format: ``t0`` (s since the epoch), ``dt`` (s), one array of samples per
series (named like a SenML record), optional units per series, optional device id.

Each sample is a record of its own: a sample out of range, not finite or outside the time
window is refused and the other samples are stored, and so is a series whose name or unit
is unknown. What makes the block unusable refuses it whole: it fails validation, repeats a
key, names another device, has an impossible ``t0`` or ``dt``, or too many samples.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, ValidationError

from devices.decoding import (
    INT64_SECONDS,
    Decoded,
    TimeWindow,
    check_plausible,
    check_unique_keys,
)
from devices.registry import Series
from devices.rejections import (
    ReadingRejected,
    RecordRejected,
    RejectReason,
    first_error,
    first_rejection,
)
from devices.senml import STRICT
from devices.vocabulary import UnitNotConvertible, conversion

# A NaN or infinite sample is one refused record, not a refused block.
_Sample = Annotated[float, Field(allow_inf_nan=True)]


class NativeBlock(BaseModel):
    model_config = STRICT

    device: str | None = None
    t0: float
    dt: float = Field(gt=0)
    series: dict[str, list[_Sample]] = Field(min_length=1)
    units: dict[str, str] = Field(default_factory=dict)


def _samples(count: int) -> str:
    return "1 sample" if count == 1 else f"{count} samples"


def decode_block(
    device: str,
    by_name: Mapping[str, Series],
    payload: bytes,
    window: TimeWindow,
    max_samples: int,
    only: Collection[int] | None = None,
) -> Decoded:
    """The block's readings and its refused samples; ``only``: decode just these samples
    (counted across the series in order), though the whole block is checked."""
    try:
        block = NativeBlock.model_validate_json(payload)
    except ValidationError as exc:
        raise first_error(exc) from None
    check_unique_keys(payload, len(block.model_fields_set) + len(block.series) + len(block.units))
    if block.device is not None and block.device != device:
        raise ReadingRejected(
            RejectReason.IDENTITY_MISMATCH,
            f"block names device {block.device!r}, topic names {device!r}",
        )
    check_plausible(block.t0, "t0")
    if block.dt > INT64_SECONDS:
        raise ReadingRejected(RejectReason.WRONG_TYPE, f"dt {block.dt:g} s is implausible")
    total = sum(len(v) for v in block.series.values())
    if total > max_samples:
        raise ReadingRejected(
            RejectReason.TOO_MANY_VALUES,
            f"block carries {total} samples, more than {max_samples}",
        )
    longest = max(len(v) for v in block.series.values())
    check_plausible(block.t0 + block.dt * longest, "the block's last sample")
    for name in block.units:
        if name not in block.series:
            raise ReadingRejected(
                RejectReason.UNKNOWN_FIELD, f"units names {name!r}, which is not in series"
            )
    t0_ns = round(block.t0 * 1_000_000) * 1000
    dt_ns = round(block.dt * 1_000_000_000)
    if dt_ns <= 0:
        raise ReadingRejected(RejectReason.WRONG_TYPE, f"dt {block.dt!r} is below 1 ns")
    chosen = None if only is None else np.fromiter(only, dtype=np.int64)
    parts_idx = []
    parts_ts = []
    parts_val = []
    refused: list[RecordRejected] = []
    first = 0  # the position of the series' first sample in the block
    for name, samples in block.series.items():
        start, first = first, first + len(samples)
        wanted = None
        if chosen is not None:
            wanted = np.isin(np.arange(start, first, dtype=np.int64), chosen)
            if not wanted.any():
                continue
        if not samples:
            continue
        series = by_name.get(name)
        if series is None:
            every = np.ones(len(samples), dtype=bool) if wanted is None else wanted
            detail = (
                f"{name}: device {device!r} has no series {name!r} "
                f"(known: {', '.join(sorted(by_name))}; {_samples(int(every.sum()))})"
            )
            problems = [(every, RejectReason.UNKNOWN_MEASUREMENT, detail)]
        else:
            ts = t0_ns + np.arange(len(samples), dtype=np.int64) * dt_ns
            unit = block.units.get(name)
            vals, ok, problems = _judge(name, samples, unit, series, ts, window, wanted)
            if ok is None:  # every sample stored
                parts_idx.append(np.full(len(vals), series.index, dtype=np.int32))
                parts_ts.append(ts)
                parts_val.append(vals)
            else:
                parts_idx.append(np.full(int(ok.sum()), series.index, dtype=np.int32))
                parts_ts.append(ts[ok])
                parts_val.append(vals[ok])
        for mask, reason, detail in problems:
            positions = start + np.flatnonzero(mask)
            refused.append(RecordRejected(tuple(positions.tolist()), name, reason, detail))
    if not any(len(v) for v in parts_val):
        if refused:
            raise first_rejection(refused, 0)
        raise ReadingRejected(RejectReason.EMPTY, "message carries no readings")
    return Decoded(
        np.concatenate(parts_idx),
        np.concatenate(parts_ts),
        np.concatenate(parts_val),
        rejected=refused,
    )


_Problem = tuple[npt.NDArray[np.bool_], RejectReason, str]


def _judge(
    name: str,
    samples: list[float],
    unit: str | None,
    series: Series,
    ts: npt.NDArray[np.int64],
    window: TimeWindow,
    wanted: npt.NDArray[np.bool_] | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_] | None, list[_Problem]]:
    """One series' values in its unit, which of the ``wanted`` samples (all when ``None``)
    can be stored (``None`` when all of them), and why the others cannot: a mask, a reason
    and a sentence for each kind of problem."""
    vals = np.asarray(samples, dtype=np.float64)
    if wanted is None and (unit is None or unit == series.unit) and len(vals):
        # The common block, every sample stored, judged in four scalar comparisons: the
        # times rise with the index, and a NaN makes min() NaN, which fails them.
        lo, hi = vals.min(), vals.max()
        if (
            lo >= series.minimum
            and hi <= series.maximum
            and ts[0] >= window.oldest_ns
            and ts[-1] <= window.newest_ns
        ):
            return vals, None, []
    every = np.ones(len(vals), dtype=bool) if wanted is None else wanted
    if unit is not None and unit != series.unit:
        try:
            scale, offset = conversion(unit, series.unit)
        except UnitNotConvertible as exc:
            detail = f"{name}: {exc} ({_samples(int(every.sum()))})"
            return (
                vals,
                np.zeros(len(vals), dtype=bool),
                [(every, RejectReason.UNKNOWN_UNIT, detail)],
            )
        with np.errstate(over="ignore", invalid="ignore"):
            vals = np.round(vals * scale + offset, 9)
    # NaN compares false, so it is never in range.
    in_range = (vals >= series.minimum) & (vals <= series.maximum)
    in_time = (ts >= window.oldest_ns) & (ts <= window.newest_ns)
    if wanted is None and in_range.all() and in_time.all():
        return vals, None, []
    finite = np.isfinite(vals)
    problems: list[_Problem] = []
    for mask, reason in (
        (~finite & every, RejectReason.NOT_FINITE),
        (finite & ~in_range & every, RejectReason.OUT_OF_RANGE),
        (in_range & (ts > window.newest_ns) & every, RejectReason.FUTURE_TIMESTAMP),
        (in_range & (ts < window.oldest_ns) & every, RejectReason.TOO_OLD),
    ):
        if not mask.any():
            continue
        k = int(np.argmax(mask))
        where = f"{name}[{k}]"
        if reason is RejectReason.NOT_FINITE:
            detail = (
                f"NaN or infinite number at {where}"
                if not math.isfinite(samples[k])
                else f"{where}: {samples[k]:g} {unit} overflows in {series.unit}"
            )
        elif reason is RejectReason.OUT_OF_RANGE:
            detail = (
                f"{where}: {vals[k]:g} {series.unit} is outside "
                f"[{series.minimum:g}, {series.maximum:g}]"
            )
        else:
            problem = window.problem(int(ts[k]))
            assert problem is not None
            detail = f"{where}: {problem[1]}"
        problems.append((mask, reason, f"{detail} ({_samples(int(mask.sum()))})"))
    return vals, in_range & in_time & every, problems
