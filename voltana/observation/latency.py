"""Recent latency from histogram buckets over a sliding window.

Real SGLang exposes TTFT and ITL only as cumulative Prometheus histograms, so the recent value is
computed from bucket increments - and the simulator and the simulated engine, which see every
sample, put their samples through the same buckets. Quantiles interpolate linearly inside the
bucket, as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence

import numpy as np

# The bucket bounds (seconds) the simulator and the simulated engine use: SGLang's defaults of
# an earlier release. SGLang 0.5.23's differ (tests/fixtures/sglang-0.5.23): TTFT 0.1, 0.2, 0.4,
# 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400; ITL without 0.05, 0.15 and 0.3, up
# to 8. The SGLang reporter reads each server's own bounds from its scrape; these stay as they
# are so that evaluated figures do not move with an SGLang release.
TTFT_BUCKETS_S = (
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 20.0,
    40.0, 60.0, 120.0,
)  # fmt: skip
ITL_BUCKETS_S = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.050, 0.060,
    0.080, 0.100, 0.150, 0.200, 0.300, 0.400, 0.600, 0.800, 1.0, 2.0,
)  # fmt: skip


class LatencyWindow:
    """Bucketed latency samples of the last ``window_s`` seconds (times on the caller's clock).

    Feed it either single samples (`add`, for sources that see each one) or the increments of a
    cumulative histogram between two scrapes (`add_increments`, for a real SGLang server).
    """

    def __init__(self, buckets_s: Sequence[float], window_s: float) -> None:
        self._bounds_s = tuple(buckets_s)
        self.window_s = window_s
        # The last bucket is +Inf. A list: one sample per decode step is added to it, and a
        # float in a list adds several times faster than an element of an array.
        self._counts = [0.0] * (len(self._bounds_s) + 1)
        self._sum_s = 0.0
        self._total = 0.0
        # (time, bucket index or -1 for an array of increments, counts, seconds)
        self._entries: deque[tuple[float, int, np.ndarray | float, float]] = deque()
        # Bumped whenever the counts change; the last quantile is kept until then (reports
        # ask several times a second, samples arrive far less often on a prefill instance).
        self._version = 0
        self._quantile: tuple[int, float, float | None] | None = None

    def add(self, at_s: float, latency_s: float, weight: float = 1.0) -> None:
        if weight <= 0:
            return
        index = bisect.bisect_left(self._bounds_s, latency_s)
        self._version += 1
        self._counts[index] += weight
        self._sum_s += latency_s * weight
        self._total += weight
        self._entries.append((at_s, index, float(weight), latency_s * weight))

    def add_increments(
        self, at_s: float, bucket_counts: Sequence[float], sum_s: float, count: float
    ) -> None:
        """Per-bucket (non-cumulative) increments since the last scrape, with their sum."""
        counts = np.asarray(bucket_counts, dtype=float)
        if counts.shape != (len(self._counts),) or count <= 0:
            return
        self._version += 1
        self._counts = [
            total + added for total, added in zip(self._counts, counts.tolist(), strict=True)
        ]
        self._sum_s += sum_s
        self._total += count
        self._entries.append((at_s, -1, counts, sum_s))

    def _prune(self, now_s: float) -> None:
        horizon_s = now_s - self.window_s
        entries = self._entries
        if not entries or entries[0][0] >= horizon_s:
            return
        self._version += 1
        while entries and entries[0][0] < horizon_s:
            _, index, counts, seconds = entries.popleft()
            if index >= 0:
                assert isinstance(counts, float)
                self._counts[index] -= counts
                self._total -= counts
            else:
                assert isinstance(counts, np.ndarray)
                self._counts = [
                    total - gone for total, gone in zip(self._counts, counts.tolist(), strict=True)
                ]
                self._total -= float(counts.sum())
            self._sum_s -= seconds
        if not entries:  # no float drift survives an empty window
            self._counts = [0.0] * len(self._counts)
            self._sum_s = self._total = 0.0

    def mean_ms(self, now_s: float) -> float | None:
        self._prune(now_s)
        return self._sum_s / self._total * 1e3 if self._total > 0 else None

    def quantile_ms(self, now_s: float, quantile: float) -> float | None:
        """The window's ``quantile`` by linear interpolation inside its bucket (None if empty)."""
        self._prune(now_s)
        cached = self._quantile
        if cached is not None and cached[0] == self._version and cached[1] == quantile:
            return cached[2]
        value = self._quantile_ms(quantile)
        self._quantile = (self._version, quantile, value)
        return value

    def _quantile_ms(self, quantile: float) -> float | None:
        if self._total <= 0:
            return None
        # In Python, not numpy: the same sequential sums for a couple of dozen buckets without
        # numpy's per-call overhead (reports ask at every new sample).
        cumulative = list(itertools.accumulate(self._counts))
        rank = quantile * cumulative[-1]
        index = bisect.bisect_left(cumulative, rank)
        if index >= len(self._bounds_s):  # in the +Inf bucket: the largest finite bound
            return self._bounds_s[-1] * 1e3
        lower = self._bounds_s[index - 1] if index > 0 else 0.0
        upper = self._bounds_s[index]
        below = cumulative[index - 1] if index > 0 else 0.0
        in_bucket = self._counts[index]
        fraction = (rank - below) / in_bucket if in_bucket > 0 else 1.0
        return (lower + (upper - lower) * fraction) * 1e3
