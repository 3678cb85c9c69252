"""Arrival rates per instance, counted at placement (the observation contract's definition).

The router reports every placement as it happens (ReportPlacements); each instance's requests
and prompt tokens per second over the observation window come from those, not from
completions, which would lag by a request's lifetime.
"""

from __future__ import annotations

from voltana.observation import ArrivalWindow


class ArrivalRates:
    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._windows: dict[str, ArrivalWindow] = {}

    def record(self, instance_id: str, placed_at_s: float, input_tokens: int) -> None:
        window = self._windows.get(instance_id)
        if window is None:
            window = self._windows[instance_id] = ArrivalWindow(self._window_s)
        window.add(placed_at_s, input_tokens)

    def rates(self, instance_id: str, now_s: float) -> tuple[float, float]:
        """(requests per second, prompt tokens per second) over the window ending at now."""
        window = self._windows.get(instance_id)
        if window is None:
            return 0.0, 0.0
        return window.requests_per_s(now_s), window.tokens_per_s(now_s)

    def forget(self, instance_id: str) -> None:
        self._windows.pop(instance_id, None)
