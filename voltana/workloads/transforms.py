"""Pure reshaping of a workload: compress time, cut a window, cap its length (a request keeps
its SLO class through all of them).

Every function returns a new list sorted by arrival (stable) and numbered 0..n-1; the input is
not changed. Windows are half-open, [start, end).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from voltana.errors import ConfigError
from voltana.workloads.request import TraceRequest


def scale_rate(requests: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """Time compression: every arrival time divided by ``rate_scale`` (2.0 = twice the rate)."""
    _require_positive("rate_scale", rate_scale)
    return renumbered(replace(r, arrival_s=r.arrival_s / rate_scale) for r in requests)


def cut_window(
    requests: Sequence[TraceRequest], start_s: float, end_s: float | None = None
) -> list[TraceRequest]:
    """Requests arriving in [start_s, end_s) (no end when None), rebased so the first is at 0.0."""
    if not math.isfinite(start_s) or start_s < 0:
        raise ConfigError(f"window start must be >= 0 s, got {start_s:g}")
    if end_s is not None and not end_s > start_s:
        raise ConfigError(f"window end ({end_s:g} s) must be after its start ({start_s:g} s)")
    stop_s = math.inf if end_s is None else end_s
    kept = [r for r in requests if start_s <= r.arrival_s < stop_s]
    if not kept:
        return []
    first_s = min(r.arrival_s for r in kept)
    return renumbered(replace(r, arrival_s=r.arrival_s - first_s) for r in kept)


def cap_duration(requests: Sequence[TraceRequest], duration_s: float) -> list[TraceRequest]:
    """Requests arriving in [0, duration_s)."""
    _require_positive("duration_s", duration_s)
    return renumbered(r for r in requests if r.arrival_s < duration_s)


def cap_count(requests: Sequence[TraceRequest], max_requests: int) -> list[TraceRequest]:
    """The first ``max_requests`` requests by arrival."""
    if isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1:
        raise ConfigError(f"max_requests must be an integer >= 1, got {max_requests!r}")
    return renumbered(requests)[:max_requests]


def renumbered(requests: Iterable[TraceRequest]) -> list[TraceRequest]:
    """Sorted by arrival (stable) with request_id 0..n-1."""
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    return [
        r if r.request_id == index else replace(r, request_id=index)
        for index, r in enumerate(ordered)
    ]


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value:g}")
