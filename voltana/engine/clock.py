"""The simulated engine's time source: wall-clock time sped up by a constant factor."""

from __future__ import annotations

import time
from collections.abc import Callable


class ScaledClock:
    """Simulated seconds that pass ``speedup`` times faster than ``time.monotonic``.

    At speedup 1 it reads exactly ``time.monotonic()``, so engine timestamps line up with those of
    other processes on the host. Pass one instance to the engine and to the ``SimulatedGpu`` it
    runs on, so iteration times and energy integrate on the same clock.
    """

    def __init__(self, speedup: float = 1.0, wall_s: Callable[[], float] = time.monotonic) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0, got {speedup}")
        self._speedup = float(speedup)
        self._wall_s = wall_s
        self._wall_origin_s = wall_s()

    @property
    def speedup(self) -> float:
        return self._speedup

    def __call__(self) -> float:
        return self._wall_origin_s + (self._wall_s() - self._wall_origin_s) * self._speedup

    def wall_duration_s(self, simulated_s: float) -> float:
        """How long ``simulated_s`` simulated seconds last on the wall clock."""
        return simulated_s / self._speedup
