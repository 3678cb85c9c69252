"""Policy interfaces. Policies are pure: state in, decision out; no I/O, no wall clock.

A policy may keep memory between calls (hysteresis, round-robin position, fitted corrections),
but everything it knows arrives through its arguments, so the simulator and the live services
get identical decisions from identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from voltana.contract.state import (
    ClockDecision,
    ClusterSnapshot,
    InstanceState,
    Phase,
    Placement,
    RequestSpec,
    SloTarget,
)
from voltana.hardware.gpus import GpuSpec
from voltana.perf.model import PerformanceModel, calibrated_clock_range_mhz
from voltana.policy.forecast import LoadRates


@dataclass(frozen=True)
class PolicyContext:
    """What a policy is built with: the hardware it runs on and the physics it may consult."""

    gpu: GpuSpec
    perf: PerformanceModel
    slo: SloTarget
    # The engine's batch limit: predictors are profiled up to it and know nothing beyond it.
    max_running_requests: int = 1024
    # False: every clock a policy may choose lies where ``perf`` is calibrated (its figures
    # rest on measurements); True: the GPU's whole range, the rest extrapolated.
    allow_extrapolated_clocks: bool = False

    @property
    def clock_range_mhz(self) -> tuple[int, int]:
        """The lowest and highest clock (MHz) a policy may choose."""
        if self.allow_extrapolated_clocks:
            return self.gpu.min_sm_clock_mhz, self.gpu.max_sm_clock_mhz
        return calibrated_clock_range_mhz(self.perf)

    @property
    def supported_clocks_mhz(self) -> tuple[int, ...]:
        """Every clock the GPU supports inside the allowed range, ascending."""
        low_mhz, high_mhz = self.clock_range_mhz
        return tuple(c for c in self.gpu.supported_sm_clocks_mhz if low_mhz <= c <= high_mhz)


class FrequencyPolicy(Protocol):
    """Chooses the SM clock of one instance from its observed state."""

    @property
    def name(self) -> str: ...

    @property
    def is_static(self) -> bool:
        """True when the decision never depends on state (lets drivers skip control loops)."""
        ...

    def decide(self, state: InstanceState, slo: SloTarget, now_s: float) -> ClockDecision: ...


class RoutingPolicy(Protocol):
    """Chooses a prefill and a decode instance for one request from a cluster snapshot."""

    @property
    def name(self) -> str: ...

    def place(self, request: RequestSpec, snapshot: ClusterSnapshot) -> Placement: ...


@dataclass(frozen=True, slots=True)
class PlanInput:
    """What a planner is asked with: the time, an engine's start time, and how many instances of
    each phase the cluster has (in service or not)."""

    now_s: float
    engine_start_s: float
    pool_sizes: dict[Phase, int]


@dataclass(frozen=True, slots=True)
class PlanDecision:
    """Instances to keep in service (serving or starting) per phase; the forecast band and the
    load per phase (in instances) it was sized from."""

    targets: dict[Phase, int]
    band: LoadRates
    needs: dict[Phase, float]


class InstancePlanner(Protocol):
    """Decides how many instances of each phase are in service (voltana.policy.planner): it is
    told of every arrival and asked for targets every ``interval_s``."""

    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float: ...

    def observe_arrival(self, request: RequestSpec) -> None: ...

    def plan(self, inputs: PlanInput) -> PlanDecision: ...


@dataclass
class PolicySuite:
    """A complete operating policy: a clock law per phase and a router; colocated (unified)
    instances run ``unified``, the two phase laws composed (voltana.policy.unified; the
    registry builds it, with the physics the policy believes). ``planner``, where set, takes
    whole instances in and out of service (energy-aware elasticity); None: all stay up."""

    name: str
    prefill: FrequencyPolicy
    decode: FrequencyPolicy
    router: RoutingPolicy
    unified: FrequencyPolicy | None = None
    planner: InstancePlanner | None = None

    @property
    def is_static(self) -> bool:
        return self.prefill.is_static and self.decode.is_static
