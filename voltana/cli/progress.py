"""A dependency-free progress bar on stderr (redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time
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
