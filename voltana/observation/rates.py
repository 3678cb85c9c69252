"""Arrivals counted at placement: requests and prompt tokens per second over a window."""

from __future__ import annotations

from collections import deque


class ArrivalWindow:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def add(self, at_s: float, tokens: int) -> None:
        self._entries.append((at_s, tokens))
        self._tokens += tokens

    def _prune(self, now_s: float) -> None:
        horizon_s = now_s - self.window_s
        while self._entries and self._entries[0][0] < horizon_s:
            self._tokens -= self._entries.popleft()[1]

    def requests_per_s(self, now_s: float) -> float:
        self._prune(now_s)
        return len(self._entries) / self.window_s

    def tokens_per_s(self, now_s: float) -> float:
        self._prune(now_s)
        return self._tokens / self.window_s
