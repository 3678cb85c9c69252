"""Pieces several dynamic policies share: candidate clocks and the fitted predictor."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any, cast

from voltana.hardware.gpus import GpuSpec
from voltana.perf.model import PerformanceModel
from voltana.perf.profile import sweep_profile
from voltana.policy.predictor import LatencyPredictor

# The clocks VoltanaLLM profiled on A100, as fractions of the maximum clock.
PAPER_CLOCK_FRACTIONS = (1005 / 1410, 1095 / 1410, 1200 / 1410, 1305 / 1410, 1.0)


def paper_candidate_clocks_mhz(
    gpu: GpuSpec, clock_range_mhz: tuple[int, int] | None = None
) -> tuple[int, ...]:
    """{1005, 1095, 1200, 1305, 1410} on A100; the same fractions of max clock elsewhere;
    raised into ``clock_range_mhz`` (lowest, highest allowed) where one falls below it."""
    low_mhz, high_mhz = clock_range_mhz or (gpu.min_sm_clock_mhz, gpu.max_sm_clock_mhz)
    return tuple(
        sorted(
            {
                min(high_mhz, gpu.clamp_sm_clock_mhz(max(low_mhz, gpu.max_sm_clock_mhz * f)))
                for f in PAPER_CLOCK_FRACTIONS
            }
        )
    )


def full_range_clocks_mhz(
    gpu: GpuSpec, clock_range_mhz: tuple[int, int] | None = None, step_mhz: int = 30
) -> tuple[int, ...]:
    """Every supported clock of ``clock_range_mhz`` (default: the GPU's whole range) at least
    ``step_mhz`` apart, always including both ends."""
    low_mhz, high_mhz = clock_range_mhz or (gpu.min_sm_clock_mhz, gpu.max_sm_clock_mhz)
    clocks = [
        c
        for c in gpu.supported_sm_clocks_mhz
        if low_mhz <= c <= high_mhz and (c - gpu.min_sm_clock_mhz) % step_mhz == 0
    ]
    ends = [c for c in gpu.supported_sm_clocks_mhz if low_mhz <= c <= high_mhz]
    return tuple(sorted({*clocks, ends[0], ends[-1]}))


def fit_predictor(
    perf: PerformanceModel,
    clocks_mhz: Sequence[int],
    token_breakpoints: Sequence[float] = (),
    *,
    max_batch: int = 1024,
) -> LatencyPredictor:
    """Profile ``perf`` at ``clocks_mhz`` up to decode batch ``max_batch`` (as a sweep on
    hardware would) and fit EcoPred. Predictors are immutable, so fits of a hashable (frozen)
    model are shared: a policy and its ablations do not profile the same model twice."""
    key = (tuple(clocks_mhz), tuple(token_breakpoints), max_batch)
    try:
        return _fit_shared(cast(Hashable, perf), *key)
    except TypeError:  # an unhashable model (e.g. a measured profile): fit it afresh
        return _fit(perf, *key)


def _fit(
    perf: Any,
    clocks_mhz: tuple[int, ...],
    token_breakpoints: tuple[float, ...],
    max_batch: int,
) -> LatencyPredictor:
    table = sweep_profile(perf, clocks_mhz, max_batch=max_batch)
    return LatencyPredictor.fit(table, perf.idle_power_w, token_breakpoints=token_breakpoints)


_fit_shared = functools.lru_cache(maxsize=32)(_fit)
