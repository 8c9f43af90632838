"""Strain and the temperature that explains part of it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from devices.registry import Series
from ingest.anomaly.arrays import F64, I64, key_unit, latest_at, time_keys
from ingest.batch import ReadingBatch


def paired_temperature(pair: I64, last_value: F64, batch: ReadingBatch, s: I64, t: I64) -> F64:
    """For each strain reading, the latest reading of its temperature at or before its
    time (in this batch, else the last one seen); NaN for everything else."""
    out = np.full(len(s), np.nan)
    p = pair[s]
    want = np.flatnonzero(p >= 0)
    if len(want) == 0:
        return out
    bs, bt = batch.series.astype(np.int64), batch.ts_ns
    is_temp = np.flatnonzero(np.isin(bs, p[want]))
    out[want] = last_value[p[want]]
    if len(is_temp):
        lo = int(min(bt[is_temp].min(), t[want].min()))
        unit = key_unit(lo, int(max(bt[is_temp].max(), t[want].max())))
        keys = time_keys(bs[is_temp], bt[is_temp], lo, unit)
        o = np.argsort(keys, kind="stable")
        keys, rows = keys[o], is_temp[o]
        k = latest_at(keys, time_keys(p[want], t[want], lo, unit))
        ok = (k >= 0) & (bs[rows[np.maximum(k, 0)]] == p[want])
        out[want[ok]] = batch.values[rows[k[ok]]]
    return out


def both(compensated: F64, raw: F64) -> F64:
    """A gauge deviates only as far as both its compensated and its raw reading do, on the
    same side: a faulty thermometer moves only the one, a warming deck only the other."""
    same = np.sign(compensated) == np.sign(raw)
    out: F64 = np.where(
        same, np.sign(compensated) * np.minimum(np.abs(compensated), np.abs(raw)), 0.0
    )
    return out


def temperature_pairs(series: Sequence[Series]) -> I64:
    """For each strain gauge, inclinometer and crack gauge the temperature that explains
    part of it: the same channel's, else the device's own, else any of the device's, else
    any of the bridge's; -1 for none or another measurement."""
    by_key = {(x.key.site, x.key.device, x.key.channel, x.key.measurement): x.index for x in series}
    pair = np.full(len(series), -1, dtype=np.int64)
    for x in series:
        if x.key.measurement not in ("strain", "inclination", "crack_width"):
            continue
        site, dev = x.key.site, x.key.device
        candidates = [
            by_key.get((site, dev, x.key.channel, "temperature")),
            by_key.get((site, dev, "", "temperature")),
            *(
                i
                for (si, de, _, me), i in by_key.items()
                if (si, de, me) == (site, dev, "temperature")
            ),
            *(i for (si, _, _, me), i in by_key.items() if (si, me) == (site, "temperature")),
        ]
        found = next((c for c in candidates if c is not None), None)
        if found is not None:
            pair[x.index] = found
    return pair
