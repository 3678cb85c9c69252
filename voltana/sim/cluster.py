"""Configuration of a simulated prefill/decode-disaggregated cluster."""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.errors import ConfigError
from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.policy.state import SloTarget


@dataclass(frozen=True)
class ClusterConfig:
    gpu: GpuSpec
    model: ModelSpec  # carries the tensor-parallel degree of each instance
    num_prefill: int = 2
    num_decode: int = 2
    slo: SloTarget = field(default_factory=SloTarget)
    chunked_prefill_tokens: int = 8192
    max_running_requests: int = 1024
    clock_change_delay_ms: float = 20.0
    control_interval_ms: float = 50.0
    sample_interval_s: float = 1.0
    latency_jitter: float = 0.02  # relative std-dev of iteration latency noise
    # Window over which instances report recent TTFT/ITL and arrival rate.
    observation_window_s: float = 5.0

    def __post_init__(self) -> None:
        if self.num_prefill < 1 or self.num_decode < 1:
            raise ConfigError("a PD cluster needs at least one prefill and one decode instance")
        if self.chunked_prefill_tokens < 1 or self.max_running_requests < 1:
            raise ConfigError("chunked prefill size and max running requests must be >= 1")
        if self.clock_change_delay_ms < 0 or self.control_interval_ms <= 0:
            raise ConfigError("clock change delay must be >= 0 and control interval > 0")

    @property
    def gpus_per_instance(self) -> int:
        return self.model.tensor_parallel

    @property
    def num_gpus(self) -> int:
        return (self.num_prefill + self.num_decode) * self.gpus_per_instance
