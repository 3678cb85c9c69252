"""One reading of a GPU's clock, power and energy, as streamed to telemetry."""

from __future__ import annotations

from dataclasses import dataclass

from voltana.gpu.device import GpuDevice


@dataclass(frozen=True, slots=True)
class GpuSample:
    gpu_index: int
    timestamp_s: float
    sm_clock_mhz: int
    power_w: float
    energy_j: float


def read_gpu_sample(device: GpuDevice, timestamp_s: float) -> GpuSample:
    return GpuSample(
        gpu_index=device.index,
        timestamp_s=timestamp_s,
        sm_clock_mhz=device.sm_clock_mhz(),
        power_w=device.power_w(),
        energy_j=device.energy_j(),
    )
