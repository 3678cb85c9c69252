"""A load forecast for the elasticity planner: arrivals and tokens per second, and an upper band.

Arrivals are counted in buckets of ``bucket_s``. Each closed bucket updates an EWMA of the rate
and of its squared deviation (time constant ``ewma_tau_s``). The upper band over a horizon is the
largest of: the EWMA plus ``band_sigmas`` standard deviations, the highest bucket seen within the
last ``max(horizon, peak_window_s)`` seconds (a burst that came once in that long may come again
before a started engine would be ready), and the open bucket's rate so far (a burst starting
now raises the band at once). Pure: everything arrives through the arguments.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from voltana.errors import ConfigError


@dataclass(frozen=True)
class ForecastConfig:
    bucket_s: float = 5.0
    ewma_tau_s: float = 60.0
    band_sigmas: float = 2.0
    peak_window_s: float = 120.0

    def __post_init__(self) -> None:
        if not (self.bucket_s > 0 and self.ewma_tau_s > 0):
            raise ConfigError("forecast bucket and EWMA time constant must be > 0")
        if not (self.band_sigmas >= 0 and self.peak_window_s >= 0):
            raise ConfigError("forecast band sigmas and peak window must be >= 0")


@dataclass(frozen=True, slots=True)
class LoadRates:
    """Requests, prompt tokens and output tokens per second."""

    requests_per_s: float = 0.0
    input_tokens_per_s: float = 0.0
    output_tokens_per_s: float = 0.0

    @property
    def mean_input_tokens(self) -> float:
        return self.input_tokens_per_s / self.requests_per_s if self.requests_per_s > 0 else 0.0

    @property
    def mean_output_tokens(self) -> float:
        return self.output_tokens_per_s / self.requests_per_s if self.requests_per_s > 0 else 0.0


class _Series:
    """One rate: EWMA mean and variance over closed buckets, and the recent buckets."""

    __slots__ = ("mean", "recent", "var")

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 0.0
        self.recent: deque[tuple[float, float]] = deque()  # (bucket end s, rate)

    def close(self, end_s: float, rate: float, alpha: float) -> None:
        deviation = rate - self.mean
        self.mean += alpha * deviation
        self.var = (1.0 - alpha) * (self.var + alpha * deviation * deviation)
        self.recent.append((end_s, rate))

    def upper(self, now_s: float, window_s: float, sigmas: float, open_rate: float) -> float:
        while self.recent and self.recent[0][0] < now_s - window_s:
            self.recent.popleft()
        peak = max((rate for _, rate in self.recent), default=0.0)
        return max(self.mean + sigmas * math.sqrt(self.var), peak, open_rate)


class LoadForecast:
    """Arrival and token rates, forecast with an upper band over a horizon."""

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = config or ForecastConfig()
        self._alpha = 1.0 - math.exp(-self.config.bucket_s / self.config.ewma_tau_s)
        self._bucket_start_s: float | None = None
        self._open = [0.0, 0.0, 0.0]  # requests, input tokens, output tokens in the open bucket
        self._series = (_Series(), _Series(), _Series())

    def observe(self, now_s: float, input_tokens: int, output_tokens: int) -> None:
        """A request arrived."""
        self._roll(now_s)
        self._open[0] += 1.0
        self._open[1] += input_tokens
        self._open[2] += output_tokens

    def _roll(self, now_s: float) -> None:
        """Close every bucket that ended by ``now_s`` (empty ones count as zero)."""
        bucket_s = self.config.bucket_s
        if self._bucket_start_s is None:
            self._bucket_start_s = now_s
            return
        while now_s >= self._bucket_start_s + bucket_s:
            end_s = self._bucket_start_s + bucket_s
            for series, count in zip(self._series, self._open, strict=True):
                series.close(end_s, count / bucket_s, self._alpha)
            self._open = [0.0, 0.0, 0.0]
            self._bucket_start_s = end_s

    def mean(self) -> LoadRates:
        """The EWMA rates (closed buckets only)."""
        return LoadRates(*(series.mean for series in self._series))

    def upper(self, now_s: float, horizon_s: float) -> LoadRates:
        """The upper band of the rates over the next ``horizon_s`` seconds."""
        self._roll(now_s)
        config = self.config
        window_s = max(horizon_s, config.peak_window_s)
        bands = [
            series.upper(now_s, window_s, config.band_sigmas, count / config.bucket_s)
            for series, count in zip(self._series, self._open, strict=True)
        ]
        return LoadRates(*bands)
