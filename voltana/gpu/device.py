"""The one GPU interface the rest of Voltana talks to (NVML-backed or simulated).

Units are in the names: clocks in MHz, power in W, energy in J. Implementations raise the typed
errors of ``voltana.gpu.errors`` and never a backend's own exceptions.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class GpuDevice(Protocol):
    @property
    def index(self) -> int:
        """Index of the GPU on its host (NVML ordering)."""
        ...

    @property
    def name(self) -> str:
        """Product name, e.g. ``NVIDIA A100-SXM4-80GB``."""
        ...

    @property
    def uuid(self) -> str:
        """Stable identifier (NVML UUID, ``GPU-...``), or a fixed fake one for simulated GPUs."""
        ...

    @property
    def default_sm_clock_mhz(self) -> int:
        """The SM clock the GPU runs at when nothing is locked (the baseline we save against)."""
        ...

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        """Every SM clock the GPU accepts as a locked clock, ascending."""
        ...

    def sm_clock_mhz(self) -> int:
        """The SM clock the GPU runs at now, read back from the device."""
        ...

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz]; both must be supported clocks."""
        ...

    def reset_sm_clocks(self) -> None:
        """Remove any clock lock: the GPU goes back to its default clock behaviour."""
        ...

    def power_w(self) -> float:
        """Current board power draw."""
        ...

    def power_limit_w(self) -> float:
        """Enforced board power limit."""
        ...

    def energy_j(self) -> float:
        """Total energy consumed since an arbitrary origin; never decreases."""
        ...
