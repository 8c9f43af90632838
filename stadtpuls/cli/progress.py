"""Progress of a long command (an export to a file, a quarantine replay, a dashboards push)
on stderr: how far, how many rows (entries, dashboards) so far, and about how long is left.

On a terminal the line is redrawn in place (at most ten times a second), with a bar. When
stderr is a file or a pipe (cron, CI, ``2> log``) a plain line is written every
``every_s`` seconds instead (the first after ``every_s``, so a quick command writes
none), so a log shows that the command moves and how fast. click's
own ``progressbar`` writes nothing at all there, and has no place for the rows, which is
why this small reporter exists.

The estimate is the time taken so far scaled by the part still to do; it is left out
until there is a part done and a second has passed, so it never starts with nonsense.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Self

import click

__all__ = ["Progress", "format_seconds"]

_BAR = 20


def format_seconds(seconds: float) -> str:
    """A readable span: ``45 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 4 h``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h} h"


class Progress:
    """``with Progress("exporting", total, unit="rows") as p: p.update(done, rows)``.

    ``done`` counts toward ``total`` in any unit (seconds of an export's range, entries,
    dashboards); ``count`` is what the line reports in ``unit``. ``hidden`` writes
    nothing (``--quiet``, or output that is not worth a line).
    """

    every_s = 5.0  # between two lines when the output is not a terminal

    def __init__(
        self,
        label: str,
        total: float,
        *,
        unit: str = "rows",
        file: IO[str] | None = None,
        hidden: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = max(float(total), 1e-9)
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.hidden = hidden
        self.clock = clock
        self.tty = _isatty(self.file)
        self.started = clock()
        self.done = 0.0
        self.count = 0
        # A terminal shows the line at once; a log gets its first line after every_s, so a
        # command that is done sooner writes none.
        self._last = float("-inf") if self.tty else self.started
        self._drawn = 0  # length of the line on the terminal, to blank it
        self._text = ""  # the line last written

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    # -- what the line says --------------------------------------------------------------

    def fraction(self) -> float:
        return min(1.0, max(0.0, self.done / self.total))

    def remaining_s(self) -> float | None:
        """Seconds left at the pace so far, or None while that pace is not known."""
        elapsed = self.clock() - self.started
        part = self.fraction()
        if part <= 0.0 or elapsed < 1.0:
            return None
        return elapsed * (1.0 - part) / part

    def line(self) -> str:
        part = self.fraction()
        left = self.remaining_s()
        eta = "estimating time left" if left is None else f"about {format_seconds(left)} left"
        if part >= 1.0:
            eta = f"done in {format_seconds(self.clock() - self.started)}"
        count = f"{self.count:,} {self.unit}"
        if self.tty:
            filled = round(part * _BAR)
            bar = "#" * filled + "-" * (_BAR - filled)
            return f"{self.label} [{bar}] {part:4.0%}  {count}  {eta}"
        return f"{self.label}: {part:.0%}, {count}, {eta}"

    # -- drawing -------------------------------------------------------------------------

    def update(self, done: float, count: int | None = None) -> None:
        """Set how far it is (``done`` of ``total``) and, if given, the count so far."""
        self.done = done
        if count is not None:
            self.count = count
        now = self.clock()
        if now - self._last >= (0.1 if self.tty else self.every_s):
            self._last = now
            self._draw()

    def advance(self, steps: float = 1.0, count: int = 0) -> None:
        """``steps`` more done and ``count`` more counted."""
        self.update(self.done + steps, self.count + count)

    def echo(self, message: str, *, err: bool = False) -> None:
        """Print a line of the command's own output without garbling the progress line
        (on a terminal the line is blanked first and drawn again after it)."""
        self._blank()
        click.echo(message, err=err)
        if self.tty and self._text and not self.hidden:
            self._draw()

    def finish(self) -> None:
        """The last line: as far as it got. A terminal's line is ended with a newline."""
        if self.hidden or not self._text:
            return  # nothing was shown: nothing to end
        if self.tty or self.line() != self._text:
            self._draw()
        if self.tty:
            self.file.write("\n")
            self.file.flush()
            self._drawn = 0

    def _draw(self) -> None:
        if self.hidden:
            return
        text = self._text = self.line()
        if self.tty:
            pad = " " * max(0, self._drawn - len(text))
            self.file.write("\r" + text + pad)
            self._drawn = len(text)
        else:
            self.file.write(text + "\n")
        self.file.flush()

    def _blank(self) -> None:
        if self.tty and self._drawn:
            self.file.write("\r" + " " * self._drawn + "\r")
            self.file.flush()
            self._drawn = 0


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
