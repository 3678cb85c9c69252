"""A dependency-free progress bar on stderr (redrawn in place on a terminal)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.interactive = self.stream.isatty()
        self._started = time.monotonic()
        self._last_percent = -1

    def update(self, fraction: float) -> None:
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        if percent == self._last_percent:
            return
        # Off a terminal, print a line every 25% instead of redrawing.
        if not self.interactive and percent % 25 != 0:
            return
        self._last_percent = percent
        filled = int(self.width * percent / 100)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self._started
        line = f"{self.label} [{bar}] {percent:3d}% {elapsed:5.1f}s"
        if self.interactive:
            self.stream.write("\r" + line)
            if percent == 100:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a progress line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class RowProgress:
    """Progress of work made of rows (e.g. one per load), each a sequence of steps (e.g. one
    per policy): a line on ``stream`` at most every ``interval_s`` and at the end of each row,
    with what runs, the time spent and an ETA of the whole.

    The ETA extrapolates the time spent over the fraction done. Within a row each step counts
    by the time it took in the row before (a hindsight sweep costs many replays), in the first
    row as an equal share: rough while the first row runs, close once a row has ended.
    """

    def __init__(
        self,
        rows: int,
        stream: TextIO | None = None,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rows = rows
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._clock = clock
        self._started_s = clock()
        self._last_line_s = -math.inf
        self._rows_done = 0
        self._row_label = ""
        self._steps: list[str] = []
        # Seconds each step took in the last row that ended (the weights), and in this one.
        self._step_weights: dict[str, float] = {}
        self._step_starts_s: dict[str, float] = {}

    def start_row(self, label: str, steps: Sequence[str]) -> None:
        self._row_label, self._steps = label, list(steps)
        self._step_starts_s = {}

    def step(self, name: str) -> Callable[[float], None]:
        """The progress callback (fraction 0..1 of this step) of step ``name`` of the row,
        asked for as the step starts."""
        index = self._steps.index(name)
        self._step_starts_s[name] = self._clock()

        def update(fraction: float) -> None:
            self._report(name, index, max(0.0, min(1.0, fraction)))

        return update

    def end_row(self) -> None:
        now_s = self._clock()
        starts = [self._step_starts_s[name] for name in self._steps if name in self._step_starts_s]
        if len(starts) == len(self._steps):  # every step ran: their times weigh the next row
            ends = [*starts[1:], now_s]
            self._step_weights = {
                name: max(1e-9, end - start)
                for name, start, end in zip(self._steps, starts, ends, strict=True)
            }
        self._rows_done += 1
        self._write(self._rows_done / self.rows, f"row {self._rows_done}/{self.rows} done")

    def row_fraction(self, index: int, fraction: float) -> float:
        """How much of the row is done when step ``index`` is ``fraction`` through."""
        weights = [self._step_weights.get(name, 1.0) for name in self._steps]
        if len(self._step_weights) != len(self._steps):
            weights = [1.0] * len(self._steps)
        return (sum(weights[:index]) + fraction * weights[index]) / sum(weights)

    def _report(self, name: str, index: int, fraction: float) -> None:
        if self._clock() - self._last_line_s < self.interval_s:
            return
        what = (
            f"row {self._rows_done + 1}/{self.rows}, step {index + 1}/{len(self._steps)}: "
            f"{name} {fraction:.0%}"
        )
        self._write((self._rows_done + self.row_fraction(index, fraction)) / self.rows, what)

    def _write(self, done: float, what: str) -> None:
        now_s = self._clock()
        self._last_line_s = now_s
        elapsed_s = now_s - self._started_s
        eta = format_duration(elapsed_s * (1 - done) / done) if done > 0 else "?"
        self.stream.write(
            f"  {self._row_label} {what}; {format_duration(elapsed_s)} elapsed, ETA {eta}\n"
        )
        self.stream.flush()
