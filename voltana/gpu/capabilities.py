"""What a GPU can do, found out with read-only calls."""

from __future__ import annotations

from voltana.gpu.device import GpuDevice
from voltana.gpu.errors import GpuNotSupportedError


def energy_counter_supported(device: GpuDevice) -> bool:
    """True when the device has a total-energy counter (NVML: Volta and newer)."""
    try:
        device.energy_j()
    except GpuNotSupportedError:
        return False
    return True
