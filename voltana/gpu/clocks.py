"""Validation of requested clocks against what a GPU supports."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from voltana.gpu.errors import InvalidClockError


def resolve_sm_clock_mhz(supported_mhz: Sequence[int], requested_mhz: float) -> int:
    """The nearest supported clock at or above ``requested_mhz``; above the maximum → maximum.

    Rounding up keeps a clock decision from ever making the GPU slower than the policy asked for.
    """
    if not supported_mhz:
        raise InvalidClockError("the GPU reports no supported SM clocks")
    if math.isnan(requested_mhz) or requested_mhz <= 0:
        raise InvalidClockError(f"SM clock must be a positive number of MHz, got {requested_mhz}")
    ascending = sorted(supported_mhz)
    position = bisect.bisect_left(ascending, requested_mhz)
    return ascending[min(position, len(ascending) - 1)]


def check_locked_range_mhz(supported_mhz: Sequence[int], min_mhz: int, max_mhz: int) -> None:
    """Refuse a lock range whose ends are not supported clocks or are in the wrong order."""
    supported = set(supported_mhz)
    for label, value in (("min", min_mhz), ("max", max_mhz)):
        if value not in supported:
            low, high = (min(supported), max(supported)) if supported else (0, 0)
            raise InvalidClockError(
                f"{label} SM clock {value} MHz is not supported (supported: {low}..{high} MHz; "
                "use resolve_sm_clock_mhz to round to a supported clock)"
            )
    if min_mhz > max_mhz:
        raise InvalidClockError(f"min SM clock {min_mhz} MHz is above max {max_mhz} MHz")
