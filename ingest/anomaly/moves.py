"""Which neighbours moved: the test that tells a sensor's own fault from a lorry or an
opened window. A reading moved when it jumped from the reading before it by more than a
few of its own robust sigmas; its group is the bridge's gauges of one measurement, or a
classroom device's sensors. The question is always about the ten seconds up to a
reading, and the last move of every series at each level is remembered across batches,
so the answer is the same however the readings are batched (given that they arrive in
time order)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from devices.registry import Series
from ingest.anomaly.arrays import F64, I64, NO_TIME, Bool, StateArrays, key_unit, time_keys

SHARED_NS = 10 * 1_000_000_000
# A neighbour moving this much (in its own robust sigmas) counts as moving with it: a lorry
# loads a gauge near a support far less than one at mid-span.
SHARED_Z = 3.0
# Levels of a move that the test tells apart, and how large a neighbour's move must be,
# against a run's first jump, to explain it: a lorry's few sigmas on the next gauge do not
# explain a jump of a hundred.
MOVE_LEVELS = np.array([SHARED_Z, 6.0, 12.0, 24.0, 48.0])
PROPORTION = 4.0


def levels_passed(jump: F64) -> I64:
    """How many of MOVE_LEVELS each jump (in sigmas; NaN: none) passed."""
    passed: I64 = np.where(np.isfinite(jump), np.searchsorted(MOVE_LEVELS, jump, "left"), 0).astype(
        np.int64
    )
    return passed


def in_proportion(jump: F64) -> I64:
    """The level a neighbour's move must pass to explain a run that began with ``jump``:
    the largest level of at most a quarter of it, and at least the first."""
    with np.errstate(invalid="ignore"):
        share = np.nan_to_num(jump / PROPORTION)
    need: I64 = np.maximum(np.searchsorted(MOVE_LEVELS, share, "right"), 1).astype(np.int64)
    return need


class Moves(StateArrays):
    def __init__(self, series: Sequence[Series]) -> None:
        devices = {(x.key.site, x.key.device) for x in series}
        device_ids = {d: i for i, d in enumerate(sorted(devices))}
        device = np.array([device_ids[(x.key.site, x.key.device)] for x in series], dtype=np.int64)
        sites = {x.key.site: i for i, x in enumerate(series)}
        site = np.array([sites[x.key.site] for x in series], dtype=np.int64)
        bridge = np.array([x.kind == "bridge" for x in series], dtype=bool)
        measures = {m: i for i, m in enumerate(sorted({x.key.measurement for x in series}))}
        measure = np.array([measures[x.key.measurement] for x in series], dtype=np.int64)
        # A lorry loads every strain gauge of a bridge (and nothing else: under traffic
        # some gauge of a bridge moves every few seconds); an opened window moves all of a
        # room's sensors.
        self.group = np.where(bridge, len(device_ids) + site * len(measures) + measure, device)
        # The last reading that moved beyond each of MOVE_LEVELS.
        self.moved_ts = np.full((len(series), len(MOVE_LEVELS)), NO_TIME, dtype=np.int64)

    _STATE = ("moved_ts",)

    def shared(self, s: I64, t: I64, level: I64, at: I64, need: I64) -> Bool:
        """For each reading at positions ``at``: did another series of its group move
        beyond ``MOVE_LEVELS[need - 1]`` within the ten seconds up to it (this batch, or
        remembered)? ``level``: per reading, how many of the levels its move passed. Every
        call remembers the batch's moves, so each batch is asked about once."""
        out = np.zeros(len(at), dtype=bool)
        lo = int(t[at].min()) - SHARED_NS if len(at) else 0
        # Moves are few among a batch's readings: the levels are sorted out among them.
        rows = np.flatnonzero(level >= 1)
        ms, mt, ml = s[rows], t[rows], level[rows]
        for k in range(1, len(MOVE_LEVELS) + 1):
            col = self.moved_ts[:, k - 1]
            q = np.flatnonzero(need == k)
            if len(q):
                m = np.flatnonzero((ml >= k) & (mt >= lo))  # earlier moves: no one's window
                recent = np.flatnonzero(col >= lo)
                ev_s = np.concatenate([ms[m], recent])
                ev_t = np.concatenate([mt[m], col[recent]])
                out[q] = self._near(ev_s, ev_t, s[at[q]], t[at[q]], lo)
            keep = ml >= k
            ms, mt, ml = ms[keep], mt[keep], ml[keep]
            if len(ms):
                np.maximum.at(col, ms, mt)
        return out

    def _near(self, ev_s: I64, ev_t: I64, qs: I64, qt: I64, lo: int) -> Bool:
        if len(ev_s) == 0:
            return np.zeros(len(qs), dtype=bool)
        unit = key_unit(lo, int(max(ev_t.max(), qt.max())))

        def within(high_ev: I64, high_q: I64) -> I64:
            keys = np.sort(time_keys(high_ev, ev_t, lo, unit))
            a = np.searchsorted(keys, time_keys(high_q, qt - SHARED_NS, lo, unit), "left")
            b = np.searchsorted(keys, time_keys(high_q, qt, lo, unit), "right")
            return (b - a).astype(np.int64)

        others: Bool = within(self.group[ev_s], self.group[qs]) > within(ev_s, qs)
        return others
