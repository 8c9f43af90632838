"""Held jumps: a change far beyond a series' usual reading-to-reading changes that then
holds its new level is a sensor's step, even while the level itself moves.

The deviation-run step compares readings with the previous segment's median and spread,
which through a lesson are wide (CO2 climbing a thousand ppm in 45 minutes): a sensor
offset of a few hundred ppm that appears between two readings then hides in that spread.
The reading-to-reading change does not: it stands out as an odd change (a spike
candidate), and what tells it from a spike is that the readings after it stay on the far
side of the jump instead of coming back. The jump is remembered per series until it has
held ``need`` readings or a reading comes back, so the mark is the same however the
readings are batched.
"""

from __future__ import annotations

import numpy as np

from ingest.anomaly.arrays import F64, I64, Bool, StateArrays

# A reading still holds the jump while it stays beyond this share of it from the level
# before the jump; a spike's next reading is back near that level.
_HOLD_SHARE = 0.5
# ... and it is no step if a reading after it moves on the same way by this share of it.
_FURTHER_SHARE = 0.25


class HeldJumps(StateArrays):
    def __init__(self, need: I64) -> None:
        n = len(need)
        self.need = need
        self.pending = np.zeros(n, dtype=bool)
        self.base = np.zeros(n)  # the level before the jump
        self.jump = np.zeros(n)  # signed size of the jump
        self.held = np.zeros(n, dtype=np.int64)  # readings since the jump that held it

    _STATE = ("pending", "base", "jump", "held")

    def judge(self, s: I64, eff: F64, prev_eff: F64, first: Bool, jumps: I64) -> I64:
        """Positions (in a batch sorted by series, then time; ``first`` marks each
        series' first reading) of readings that complete a held jump. ``jumps``: sorted
        positions of this batch's lone odd changes, each starting a new jump. A jump that
        goes on in the same direction is no step: an opened window takes the CO2 down by
        hundreds of ppm a minute for several minutes, a sensor's offset jumps once."""
        # Only series with a jump in this batch or one carried over take part: the rest
        # of a backlog's millions of readings need no look.
        involved = self.pending.copy()
        involved[s[jumps]] = True
        rows = np.flatnonzero(involved[s])
        if len(rows) == 0:
            return rows
        done = self._judge(s[rows], eff[rows], prev_eff[rows], first[rows],
                           np.searchsorted(rows, jumps))  # fmt: skip
        return rows[done]

    def _judge(self, s: I64, eff: F64, prev_eff: F64, first: Bool, jumps: I64) -> I64:
        n = len(s)
        pos = np.arange(n, dtype=np.int64)
        row_start = np.maximum.accumulate(np.where(first, pos, 0))
        marker = np.full(n, -1, dtype=np.int64)
        marker[jumps] = jumps
        last_jump = np.maximum.accumulate(marker)
        own = last_jump >= row_start  # a jump of this batch is the one that counts
        carried = ~own & self.pending[s]
        active = own | carried
        anchor = np.where(own, last_jump, 0)
        base = np.where(own, prev_eff[anchor], self.base[s])
        jump = np.where(own, eff[anchor] - prev_eff[anchor], self.jump[s])
        after = np.where(own, pos - anchor, self.held[s] + pos - row_start + 1)
        with np.errstate(invalid="ignore"):
            off = eff - base
            holds = (np.sign(off) == np.sign(jump)) & (np.abs(off) > _HOLD_SHARE * np.abs(jump))
            further = (eff - prev_eff) * np.sign(jump) > _FURTHER_SHARE * np.abs(jump)
        fail = active & (after >= 1) & (~holds | further)
        fails = np.cumsum(fail)
        # Fails strictly after the anchor: after a jump of this batch, since its position;
        # for a carried jump, since the series' first reading of the batch.
        since = np.where(own, fails[anchor], fails[row_start] - fail[row_start])
        alive = active & (fails == since)
        need = self.need[s]
        done = np.flatnonzero(alive & (after == need))
        # The state each series leaves off with: a jump still waiting to be confirmed.
        lasts = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        ls = s[lasts]
        waiting = alive[lasts] & (after[lasts] < need[lasts])
        self.pending[ls] = waiting
        self.base[ls] = np.where(waiting, base[lasts], 0.0)
        self.jump[ls] = np.where(waiting, jump[lasts], 0.0)
        self.held[ls] = np.where(waiting, after[lasts], 0)
        return done
