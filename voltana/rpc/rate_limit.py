"""Per-caller call rates: a token bucket for each caller host (pure logic, injectable clock).

For open (unauthenticated) reads whose cost grows with what the server holds: one caller may
not make the server spend all its time on them, however many connections it opens.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# Callers remembered at once; the least recently seen is forgotten beyond this (a forgotten
# caller starts again with a full bucket, which bounds memory, not the rate of a known one).
MAX_CALLERS = 4096


class CallRateLimiter:
    """At most ``burst`` calls at once per caller, refilled at ``rate_per_s`` calls a second."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = MAX_CALLERS,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_callers = max_callers
        # caller -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, caller: str, cost: float = 1.0) -> float:
        """Take a call costing ``cost`` calls (at most ``burst``) for ``caller``: 0.0 when it
        may go ahead now, else the seconds until it may (nothing is taken then)."""
        cost = min(cost, float(self.burst))
        now_s = self._clock()
        tokens, counted_s = self._buckets.pop(caller, (float(self.burst), now_s))
        tokens = min(float(self.burst), tokens + (now_s - counted_s) * self.rate_per_s)
        wait_s = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait_s = (cost - tokens) / self.rate_per_s
        self._buckets[caller] = (tokens, now_s)
        while len(self._buckets) > self._max_callers:
            self._buckets.popitem(last=False)
        return wait_s
