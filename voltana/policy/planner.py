"""The elasticity planner: how many prefill, decode and colocated instances are in service.

Pure: arrivals and the time come in through the arguments, a decision goes out. Every
``interval_s`` the driver asks it for targets; each phase's target is

    ceil(forecast upper band / capacity per instance + warm_spare), within [1, pool size],

with the band taken over a horizon at least as long as an engine's start (voltana.policy.
forecast) and the capacity from the performance model at the SLO (voltana.policy.capacity).
Colocated instances serve both phases: their need is the sum of the two shares. A cluster that
has both PD and colocated instances plans its PD pools and keeps every colocated one in service.

Hysteresis: a higher target applies at once; a lower one only after the target has stayed below
the count in service for ``scale_down_hold_s``, and then to the highest target seen during that
hold, so a load oscillating faster than the hold never takes an instance away.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from voltana.contract.state import Phase, RequestSpec, SloTarget
from voltana.errors import ConfigError
from voltana.perf.model import PerformanceModel
from voltana.policy.base import PlanDecision, PlanInput
from voltana.policy.capacity import CapacityConfig, InstanceCapacity
from voltana.policy.forecast import ForecastConfig, LoadForecast, LoadRates

PHASES = (Phase.PREFILL, Phase.DECODE, Phase.UNIFIED)


@dataclass(frozen=True)
class PlannerConfig:
    # Spare capacity kept in service per phase, in instances (may be fractional).
    warm_spare: float = 0.5
    scale_down_hold_s: float = 120.0
    # The forecast horizon; never shorter than an engine's start time.
    horizon_s: float = 60.0
    interval_s: float = 1.0
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)

    def __post_init__(self) -> None:
        if not (self.warm_spare >= 0 and self.scale_down_hold_s >= 0 and self.horizon_s >= 0):
            raise ConfigError("warm spare, scale-down hold and horizon must be >= 0")
        if not self.interval_s > 0:
            raise ConfigError("planner interval must be > 0")


class _Hysteresis:
    """One phase's count: up at once, down after a hold, to the hold's highest target."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.count: int | None = None
        self.since_s = 0.0  # when ``count`` last changed
        self.history: deque[tuple[float, int]] = deque()

    def update(self, now_s: float, target: int, start_count: int) -> int:
        """The count to keep now for ``target``; ``start_count`` is the count on the first
        call (every instance is up when a run begins)."""
        self.history.append((now_s, target))
        while self.history and self.history[0][0] < now_s - self.hold_s:
            self.history.popleft()
        if self.count is None:
            self.count, self.since_s = max(start_count, target), now_s
        elif target > self.count:
            self.count, self.since_s = target, now_s
        elif target < self.count and now_s - self.since_s >= self.hold_s:
            highest = max(t for _, t in self.history)
            if highest < self.count:
                self.count, self.since_s = highest, now_s
        return self.count


class ElasticPlanner:
    """Sizes each phase from the forecast's upper band (see the module's docstring)."""

    name = "elastic"

    def __init__(
        self, perf: PerformanceModel, slo: SloTarget, config: PlannerConfig | None = None
    ) -> None:
        self.config = config or PlannerConfig()
        self.capacity = InstanceCapacity(perf, slo, self.config.capacity)
        self.forecast = LoadForecast(self.config.forecast)
        self._phases = {phase: _Hysteresis(self.config.scale_down_hold_s) for phase in PHASES}

    @property
    def interval_s(self) -> float:
        return self.config.interval_s

    def observe_arrival(self, request: RequestSpec) -> None:
        self.forecast.observe(request.arrival_s, request.input_tokens, request.max_output_tokens)

    def needs(self, band: LoadRates) -> dict[Phase, float]:
        """Instances' worth of load per phase (before the spare)."""
        mean_input = max(1.0, band.mean_input_tokens)
        context = mean_input + band.mean_output_tokens / 2.0
        prefill = band.input_tokens_per_s / self.capacity.prefill_tokens_per_s(mean_input)
        decode = band.output_tokens_per_s / self.capacity.decode_tokens_per_s(context)
        return {Phase.PREFILL: prefill, Phase.DECODE: decode, Phase.UNIFIED: prefill + decode}

    def plan(self, inputs: PlanInput) -> PlanDecision:
        horizon_s = max(self.config.horizon_s, inputs.engine_start_s)
        band = self.forecast.upper(inputs.now_s, horizon_s)
        needs = self.needs(band)
        pools = inputs.pool_sizes
        mixed = pools.get(Phase.UNIFIED, 0) > 0 and pools.get(Phase.PREFILL, 0) > 0
        targets: dict[Phase, int] = {}
        for phase in PHASES:
            size = pools.get(phase, 0)
            if size < 1:
                continue
            if mixed and phase is Phase.UNIFIED:
                targets[phase] = size
                continue
            wanted = math.ceil(needs[phase] + self.config.warm_spare - 1e-9)
            held = self._phases[phase].update(inputs.now_s, max(1, wanted), size)
            targets[phase] = min(size, held)
        return PlanDecision(targets, band, needs)
