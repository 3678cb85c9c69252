"""What taking an engine out of service and bringing it back costs (docs/policies.md,
"Energy-aware elasticity").

- Start time: weights loading, warm-up and CUDA-graph capture grow with the model; the default
  is ``SECONDS_PER_BILLION_PARAMS`` per billion parameters of the whole model (30 s for an 8B
  model, about 120 s for a 32B one, whatever its tensor-parallel degree: the ranks load in
  parallel but pay for their NCCL setup and graph capture), overridable (`--engine-start-s`).
- Power while starting: a GPU holding a fresh context at its default (highest) clock, plus
  ``STARTING_EXTRA_TDP_SHARE`` of its TDP for the copies and kernels of loading and capture.
- Power with no engine: the GPU's bare idle draw, no CUDA context (the catalog's ``idle_w``).
- Parked with a context at the lowest clock: the model's idle power there (an engine that is
  up, drained and locked low - the floor the clock laws cannot go under).
"""

from __future__ import annotations

from dataclasses import dataclass

from voltana.errors import ConfigError
from voltana.perf.model import PerformanceModel, calibrated_clock_range_mhz

SECONDS_PER_BILLION_PARAMS = 3.75
STARTING_EXTRA_TDP_SHARE = 0.10


def default_engine_start_s(perf: PerformanceModel) -> float:
    """The engine's start time for this model (seconds, one decimal)."""
    return round(perf.model.param_count / 1e9 * SECONDS_PER_BILLION_PARAMS, 1)


@dataclass(frozen=True)
class EngineCosts:
    """Per GPU of an instance: start time and draws by state (W)."""

    start_s: float
    starting_w: float
    no_engine_w: float
    parked_w: float

    def __post_init__(self) -> None:
        for name in ("start_s", "starting_w", "no_engine_w", "parked_w"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def engine_costs(perf: PerformanceModel, start_s: float | None = None) -> EngineCosts:
    """The costs of ``perf``'s model on its GPU; ``start_s`` overrides the start time."""
    gpu = perf.gpu
    return EngineCosts(
        start_s=default_engine_start_s(perf) if start_s is None else start_s,
        starting_w=perf.idle_power_w(gpu.default_sm_clock_mhz)
        + STARTING_EXTRA_TDP_SHARE * gpu.tdp_w,
        no_engine_w=gpu.idle_w,
        parked_w=perf.idle_power_w(calibrated_clock_range_mhz(perf)[0]),
    )
