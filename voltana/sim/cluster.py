"""Configuration of a simulated prefill/decode-disaggregated cluster and of its control loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.contract.state import SloTarget
from voltana.control import DEFAULT_PLACEMENT_HOLD_MS
from voltana.errors import ConfigError
from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.observation import DEFAULT_OBSERVATION, ObservationConfig


@dataclass(frozen=True)
class LoopTiming:
    """Delays of the live control path, which the simulator reproduces (defaults: `voltana up`).

    Policies never see an instance as it is now: an engine reports its load every
    ``report_interval_ms``, telemetry passes reports to the controller and the router on their
    watch intervals, every hop costs ``rpc_ms``, and a new clock takes the GPU's clock-change
    delay. With ``placement_trigger`` the router asks the controller to decide for the instances
    it just placed a request on (and dispatches once the controller answered), instead of
    letting the request wait for the next tick behind a parked clock; the notice then stands
    for the instance for up to ``placement_hold_ms`` (control/notices.py), as it does live.
    """

    report_interval_ms: float = 50.0
    controller_watch_ms: float = 50.0
    router_watch_ms: float = 100.0
    rpc_ms: float = 1.0
    placement_trigger: bool = True
    placement_hold_ms: float = DEFAULT_PLACEMENT_HOLD_MS

    def __post_init__(self) -> None:
        for name in (
            "report_interval_ms",
            "controller_watch_ms",
            "router_watch_ms",
            "rpc_ms",
            "placement_hold_ms",
        ):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def ideal(cls) -> LoopTiming:
        """Every decision sees the exact current state, with no delay (the old offline loop)."""
        return cls(0.0, 0.0, 0.0, 0.0, placement_trigger=False)

    @property
    def is_ideal(self) -> bool:
        return self.report_interval_ms == 0


@dataclass(frozen=True)
class ClusterConfig:
    gpu: GpuSpec
    model: ModelSpec  # carries the tensor-parallel degree of each instance
    num_prefill: int = 2
    num_decode: int = 2
    # Colocated instances (prefill and decode on one engine, SGLang without disaggregation),
    # alone or beside the PD instances.
    num_unified: int = 0
    slo: SloTarget = field(default_factory=SloTarget)
    chunked_prefill_tokens: int = 8192
    max_running_requests: int = 1024
    # None: the GPU catalog's measured delay between a clock request and the new clock.
    clock_change_delay_ms: float | None = None
    control_interval_ms: float = 50.0
    sample_interval_s: float = 1.0
    latency_jitter: float = 0.02  # relative std-dev of iteration latency noise
    observation: ObservationConfig = DEFAULT_OBSERVATION
    loop: LoopTiming = field(default_factory=LoopTiming)
    # Let policies use clocks outside the power/latency model's calibrated range (figures
    # there are extrapolated and marked so in reports).
    allow_extrapolated_clocks: bool = False
    # Elasticity (a suite with a planner): an engine's start time (None: the model's default,
    # voltana.perf.engine_costs), and what a GPU whose engine is stopped draws (None: its bare
    # idle power - it is still in the server; 0: given back to a pool that powers it down).
    engine_start_s: float | None = None
    released_gpu_w: float | None = None

    def __post_init__(self) -> None:
        for name in ("engine_start_s", "released_gpu_w"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if min(self.num_prefill, self.num_decode, self.num_unified) < 0:
            raise ConfigError("instance counts must be >= 0")
        if (self.num_prefill < 1) != (self.num_decode < 1):
            raise ConfigError(
                "PD serving needs at least one prefill and one decode instance "
                f"(got {self.num_prefill} prefill, {self.num_decode} decode)"
            )
        if self.num_prefill + self.num_unified < 1:
            raise ConfigError("a cluster needs a prefill and a decode instance, or a unified one")
        if self.chunked_prefill_tokens < 1 or self.max_running_requests < 1:
            raise ConfigError("chunked prefill size and max running requests must be >= 1")
        if (
            self.clock_change_delay_ms is not None and not self.clock_change_delay_ms >= 0
        ) or self.control_interval_ms <= 0:
            raise ConfigError("clock change delay must be >= 0 and control interval > 0")

    @property
    def clock_delay_ms(self) -> float:
        """The clock-change delay in effect (the catalog's unless overridden)."""
        if self.clock_change_delay_ms is None:
            return self.gpu.clock_change_delay_ms
        return self.clock_change_delay_ms

    @property
    def gpus_per_instance(self) -> int:
        return self.model.tensor_parallel

    @property
    def num_gpus(self) -> int:
        return (self.num_prefill + self.num_decode + self.num_unified) * self.gpus_per_instance
