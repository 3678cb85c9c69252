"""Arrival rates per instance, derived from the completions the router reports.

Engines' load samples may omit their arrival rate; the router knows every request's arrival
time, so counting completed requests by arrival time gives the rate. It lags by the requests
still in flight, which is the price of not tracking arrivals separately.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class ArrivalRates:
    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._arrivals_s: dict[str, deque[float]] = {}

    def record(self, instance_ids: Iterable[str], arrival_s: float) -> None:
        for instance_id in instance_ids:
            arrivals_s = self._arrivals_s.setdefault(instance_id, deque())
            arrivals_s.append(arrival_s)
            self._drop_before(arrivals_s, arrival_s - self._window_s)

    def rate_rps(self, instance_id: str, now_s: float) -> float:
        arrivals_s = self._arrivals_s.get(instance_id)
        if not arrivals_s:
            return 0.0
        start_s = now_s - self._window_s
        self._drop_before(arrivals_s, start_s)
        recent = sum(1 for arrival_s in arrivals_s if start_s < arrival_s <= now_s)
        return recent / self._window_s

    @staticmethod
    def _drop_before(arrivals_s: deque[float], start_s: float) -> None:
        # Completions come roughly in arrival order, so what left the window is at the front.
        while arrivals_s and arrivals_s[0] <= start_s:
            arrivals_s.popleft()

    def forget(self, instance_id: str) -> None:
        self._arrivals_s.pop(instance_id, None)
