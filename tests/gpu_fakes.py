"""GPU fakes shared by tests: the simulated GPU with one behaviour of real hardware added."""

from __future__ import annotations

import threading

from voltana.gpu import SimulatedGpu


class SlowLockingGpu(SimulatedGpu):
    """Locks at once, but the call returns only once ``release`` is set (a slow NVML call)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        super().set_locked_sm_clock_mhz(min_mhz, max_mhz)
        self.release.wait(timeout=10.0)
