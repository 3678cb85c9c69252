"""GPU catalog (facts: docs/calibration.md): clocks, bandwidth, compute peak, power envelope."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from voltana.errors import UnknownNameError


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet numbers of one GPU model. Clocks are SM (graphics) clocks."""

    key: str
    display_name: str
    min_sm_clock_mhz: int
    max_sm_clock_mhz: int
    sm_clock_step_mhz: int
    default_sm_clock_mhz: int
    memory_bandwidth_gb_s: float
    peak_bf16_tflops: float
    memory_gib: float
    tdp_w: float
    idle_w: float
    # Extra draw of an idle GPU holding a CUDA context (an engine that is up but not computing).
    context_w: float
    # Interconnect for tensor-parallel all-reduce and PD KV transfer.
    nvlink_gb_s: float
    kv_transfer_gb_s: float
    # Measured delay between a clock request and the new clock taking effect.
    clock_change_delay_ms: float

    @cached_property
    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """Every settable SM clock, ascending (NVML's supported-clocks query, sorted)."""
        clocks = range(self.min_sm_clock_mhz, self.max_sm_clock_mhz + 1, self.sm_clock_step_mhz)
        values = set(clocks) | {self.max_sm_clock_mhz}
        return tuple(sorted(values))

    def clamp_sm_clock_mhz(self, clock_mhz: float) -> int:
        """The nearest supported clock at or above ``clock_mhz`` (never slower than asked)."""
        for supported in self.supported_sm_clocks_mhz:
            if supported >= clock_mhz:
                return supported
        return self.max_sm_clock_mhz


GPU_CATALOG: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec(
            key="a100-80g",
            display_name="NVIDIA A100-SXM4-80GB",
            min_sm_clock_mhz=210,
            max_sm_clock_mhz=1410,
            sm_clock_step_mhz=15,
            default_sm_clock_mhz=1410,
            memory_bandwidth_gb_s=2039.0,
            peak_bf16_tflops=312.0,
            memory_gib=80.0,
            tdp_w=400.0,
            idle_w=60.0,
            context_w=30.0,
            nvlink_gb_s=300.0,
            kv_transfer_gb_s=25.0,
            clock_change_delay_ms=20.0,
        ),
        GpuSpec(
            key="h100-80g",
            display_name="NVIDIA H100-SXM5-80GB",
            min_sm_clock_mhz=345,
            max_sm_clock_mhz=1980,
            sm_clock_step_mhz=15,
            default_sm_clock_mhz=1980,
            memory_bandwidth_gb_s=3350.0,
            peak_bf16_tflops=989.0,
            memory_gib=80.0,
            tdp_w=700.0,
            idle_w=70.0,
            context_w=40.0,
            nvlink_gb_s=450.0,
            kv_transfer_gb_s=50.0,
            clock_change_delay_ms=50.0,
        ),
        GpuSpec(
            key="h200",
            display_name="NVIDIA H200-SXM-141GB",
            min_sm_clock_mhz=345,
            max_sm_clock_mhz=1980,
            sm_clock_step_mhz=15,
            default_sm_clock_mhz=1980,
            memory_bandwidth_gb_s=4800.0,
            peak_bf16_tflops=989.0,
            memory_gib=141.0,
            tdp_w=700.0,
            idle_w=75.0,
            context_w=40.0,
            nvlink_gb_s=450.0,
            kv_transfer_gb_s=50.0,
            clock_change_delay_ms=50.0,
        ),
    )
}


def get_gpu(key: str) -> GpuSpec:
    try:
        return GPU_CATALOG[key.lower()]
    except KeyError:
        raise UnknownNameError("GPU", key, GPU_CATALOG) from None
