"""GPU device abstraction: one interface (``GpuDevice``), an NVML backend and a simulated one."""

from voltana.gpu.capabilities import energy_counter_supported
from voltana.gpu.clocks import check_locked_range_mhz, resolve_sm_clock_mhz
from voltana.gpu.device import GpuDevice
from voltana.gpu.errors import (
    GpuError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    InvalidClockError,
    NvmlUnavailableError,
)
from voltana.gpu.nvml import NvmlGpu, NvmlLibrary, translate_nvml_error
from voltana.gpu.sample import GpuSample, read_gpu_sample
from voltana.gpu.shared_sim import SharedSimulatedGpu
from voltana.gpu.sim import PowerSource, SimulatedGpu

__all__ = [
    "GpuDevice",
    "GpuError",
    "GpuNotFoundError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuSample",
    "InvalidClockError",
    "NvmlGpu",
    "NvmlLibrary",
    "NvmlUnavailableError",
    "PowerSource",
    "SharedSimulatedGpu",
    "SimulatedGpu",
    "check_locked_range_mhz",
    "energy_counter_supported",
    "read_gpu_sample",
    "resolve_sm_clock_mhz",
    "translate_nvml_error",
]
