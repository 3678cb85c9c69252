"""The one window and statistic behind every observed quantity."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.errors import ConfigError


@dataclass(frozen=True)
class ObservationConfig:
    # Recent TTFT/ITL and arrival rates cover this many seconds up to the observation.
    window_s: float = 5.0
    # Recent TTFT is this quantile of the window (tail-sensitive: TTFT SLOs are on the tail);
    # recent ITL is the window's mean inter-token gap (the ITL SLO is on each request's mean).
    ttft_quantile: float = 0.9

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ConfigError(f"observation window must be > 0 s, got {self.window_s}")
        if not 0 < self.ttft_quantile < 1:
            raise ConfigError(f"TTFT quantile must lie in (0, 1), got {self.ttft_quantile}")


DEFAULT_OBSERVATION = ObservationConfig()
