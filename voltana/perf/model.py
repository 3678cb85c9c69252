"""The performance-model interface: latency and power of one serving iteration at a clock.

Everything that needs physics (simulator, simulated engine, predictors, policies) depends on
this protocol only, so a measured profile can replace the analytical model without touching
any caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from voltana.hardware.gpus import GpuSpec
from voltana.hardware.models import ModelSpec


@dataclass(frozen=True, slots=True)
class IterationEstimate:
    """One forward pass of an instance: how long it takes and what each GPU draws meanwhile."""

    latency_s: float
    power_w: float  # per GPU of the instance

    @property
    def energy_j(self) -> float:
        """Energy of one GPU over the iteration."""
        return self.latency_s * self.power_w


class PerformanceModel(Protocol):
    """Latency and power of prefill and decode iterations as a function of SM clock."""

    @property
    def gpu(self) -> GpuSpec: ...

    @property
    def model(self) -> ModelSpec: ...

    def prefill_iteration(
        self, new_tokens: int, sm_clock_mhz: float, attention_pairs: float | None = None
    ) -> IterationEstimate:
        """A prefill (or chunked-prefill) pass over ``new_tokens`` tokens.

        ``attention_pairs`` is the sum over requests of new_tokens_i * (prefix_i + new_tokens_i / 2)
        (query-key pairs of causal attention); ``None`` means one request with no cached prefix.
        """
        ...

    def decode_iteration(
        self, batch_size: int, kv_tokens: int, sm_clock_mhz: float
    ) -> IterationEstimate:
        """One decode step of ``batch_size`` requests that together hold ``kv_tokens`` KV tokens."""
        ...

    def idle_power_w(self, sm_clock_mhz: float) -> float:
        """Draw of a GPU whose engine is up but has nothing to run, locked at ``sm_clock_mhz``."""
        ...

    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens one instance can hold (per TP group)."""
        ...


def calibrated_clock_range_mhz(perf: PerformanceModel) -> tuple[int, int]:
    """The SM clocks (lowest, highest MHz) where ``perf`` rests on measurements: the fitted
    range of the analytical model, the profiled clocks of a measured profile. A model that
    does not say (a test's fake) is taken at its word over the GPU's whole range."""
    known = getattr(perf, "calibrated_clock_range_mhz", None)
    if known is None:
        return perf.gpu.min_sm_clock_mhz, perf.gpu.max_sm_clock_mhz
    low_mhz, high_mhz = known
    return int(low_mhz), int(high_mhz)
