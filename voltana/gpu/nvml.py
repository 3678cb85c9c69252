"""``GpuDevice`` over NVML (package ``nvidia-ml-py``, module ``pynvml``).

``NvmlLibrary`` owns the nvmlInit/nvmlShutdown lifecycle; nothing touches NVML at import time.
The NVML module can be injected (tests pass ``unittest.mock.create_autospec(pynvml)``); constants
and the ``NVMLError`` class always come from the real ``pynvml`` so a stand-in module only has to
provide the functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import pynvml

from voltana.gpu.clocks import check_locked_range_mhz
from voltana.gpu.errors import (
    GpuError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    InvalidClockError,
    NvmlUnavailableError,
)

_ERROR_TYPE_BY_CODE: dict[int, type[GpuError]] = {
    pynvml.NVML_ERROR_NO_PERMISSION: GpuPermissionError,
    pynvml.NVML_ERROR_NOT_SUPPORTED: GpuNotSupportedError,
    # The loaded driver library predates the function we called.
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: GpuNotSupportedError,
    pynvml.NVML_ERROR_FREQ_NOT_SUPPORTED: InvalidClockError,
    pynvml.NVML_ERROR_NOT_FOUND: GpuNotFoundError,
    pynvml.NVML_ERROR_GPU_NOT_FOUND: GpuNotFoundError,
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuNotFoundError,
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: NvmlUnavailableError,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: NvmlUnavailableError,
    pynvml.NVML_ERROR_UNINITIALIZED: NvmlUnavailableError,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: NvmlUnavailableError,
}

_HINT_BY_TYPE: dict[type[GpuError], str] = {
    GpuPermissionError: "; changing clocks needs root or CAP_SYS_ADMIN",
    NvmlUnavailableError: "; is the NVIDIA driver installed and libnvidia-ml.so.1 on this host?",
}


def _describe(error: pynvml.NVMLError) -> str:
    try:
        return str(error)
    except Exception:  # str() may call into a half-loaded library; the code is enough then
        return "NVML error"


def translate_nvml_error(
    error: pynvml.NVMLError, action: str, invalid_argument: type[GpuError] = GpuError
) -> GpuError:
    """The typed error for an NVML failure while doing ``action``.

    NVML_ERROR_INVALID_ARGUMENT means different things per call (bad index, bad clock), so the
    caller says which typed error it stands for.
    """
    code = int(getattr(error, "value", pynvml.NVML_ERROR_UNKNOWN))
    if code == pynvml.NVML_ERROR_INVALID_ARGUMENT:
        error_type = invalid_argument
    else:
        error_type = _ERROR_TYPE_BY_CODE.get(code, GpuError)
    hint = _HINT_BY_TYPE.get(error_type, "")
    return error_type(f"{action} failed: {_describe(error)} (NVML code {code}){hint}", code)


@contextmanager
def _translated(action: str, invalid_argument: type[GpuError] = GpuError) -> Iterator[None]:
    try:
        yield
    except pynvml.NVMLError as error:
        raise translate_nvml_error(error, action, invalid_argument) from error


def _text(value: Any) -> str:
    # Older bindings return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlGpu:
    """One GPU behind NVML. Build it through ``NvmlLibrary.device``."""

    def __init__(self, nvml: Any, handle: Any, index: int) -> None:
        self._nvml = nvml
        self._handle = handle
        self._index = index
        with _translated(f"reading the name of GPU {index}"):
            raw_name = nvml.nvmlDeviceGetName(handle)
        self._name = _text(raw_name)
        with _translated(f"reading the UUID of GPU {index}"):
            self._uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        # Supported clocks do not change while the driver is loaded: query them once.
        self._supported_sm_clocks_mhz = self._query_supported_sm_clocks_mhz()
        self._default_sm_clock_mhz = self._query_default_sm_clock_mhz()

    def _query_supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        with _translated(f"listing supported clocks of GPU {self._index}"):
            memory_clocks_mhz = self._nvml.nvmlDeviceGetSupportedMemoryClocks(self._handle)
            if not memory_clocks_mhz:
                raise GpuNotSupportedError(f"GPU {self._index} reports no supported memory clocks")
            # Data-centre GPUs run memory at its top clock; SM clocks are listed per memory clock.
            graphics_clocks_mhz = self._nvml.nvmlDeviceGetSupportedGraphicsClocks(
                self._handle, max(memory_clocks_mhz)
            )
        if not graphics_clocks_mhz:
            raise GpuNotSupportedError(f"GPU {self._index} reports no supported SM clocks")
        return tuple(sorted({int(clock) for clock in graphics_clocks_mhz}))

    def _query_default_sm_clock_mhz(self) -> int:
        try:
            with _translated(f"reading the default SM clock of GPU {self._index}"):
                default_mhz = int(
                    self._nvml.nvmlDeviceGetDefaultApplicationsClock(
                        self._handle, pynvml.NVML_CLOCK_SM
                    )
                )
        except GpuNotSupportedError:
            return self._supported_sm_clocks_mhz[-1]
        return default_mhz if default_mhz > 0 else self._supported_sm_clocks_mhz[-1]

    @property
    def index(self) -> int:
        return self._index

    @property
    def name(self) -> str:
        return self._name

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def default_sm_clock_mhz(self) -> int:
        return self._default_sm_clock_mhz

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return self._supported_sm_clocks_mhz

    def sm_clock_mhz(self) -> int:
        with _translated(f"reading the SM clock of GPU {self._index}"):
            return int(self._nvml.nvmlDeviceGetClockInfo(self._handle, pynvml.NVML_CLOCK_SM))

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        check_locked_range_mhz(self._supported_sm_clocks_mhz, min_mhz, max_mhz)
        action = f"locking the SM clock of GPU {self._index} to {min_mhz}..{max_mhz} MHz"
        with _translated(action, invalid_argument=InvalidClockError):
            self._nvml.nvmlDeviceSetGpuLockedClocks(self._handle, min_mhz, max_mhz)

    def reset_sm_clocks(self) -> None:
        with _translated(f"resetting the SM clock of GPU {self._index}"):
            self._nvml.nvmlDeviceResetGpuLockedClocks(self._handle)

    def power_w(self) -> float:
        with _translated(f"reading the power of GPU {self._index}"):
            power_mw = self._nvml.nvmlDeviceGetPowerUsage(self._handle)
        return float(power_mw) / 1000.0

    def power_limit_w(self) -> float:
        with _translated(f"reading the power limit of GPU {self._index}"):
            limit_mw = self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)
        return float(limit_mw) / 1000.0

    def energy_j(self) -> float:
        with _translated(f"reading the energy counter of GPU {self._index}"):
            energy_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        return float(energy_mj) / 1000.0

    def persistence_mode_enabled(self) -> bool:
        """Whether the driver stays loaded with no client (``nvidia-smi -pm 1``)."""
        with _translated(f"reading the persistence mode of GPU {self._index}"):
            mode = self._nvml.nvmlDeviceGetPersistenceMode(self._handle)
        return int(mode) == pynvml.NVML_FEATURE_ENABLED

    def __repr__(self) -> str:
        return f"NvmlGpu(index={self._index}, name={self._name!r})"


class NvmlLibrary:
    """Owns one nvmlInit/nvmlShutdown pair; hands out ``NvmlGpu`` objects while open.

    Use as a context manager or call ``open``/``close``. NVML counts inits, so several libraries
    in one process are fine.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = pynvml if nvml is None else nvml
        self._is_open = False

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        if self._is_open:
            return
        with _translated("initialising NVML"):
            self._nvml.nvmlInit()
        self._is_open = True

    def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        with _translated("shutting NVML down"):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlLibrary:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self) -> None:
        if not self._is_open:
            raise NvmlUnavailableError("NVML is not initialised; call NvmlLibrary.open() first")

    def driver_version(self) -> str:
        """The NVIDIA driver's version, e.g. "550.54.15"."""
        self._require_open()
        with _translated("reading the driver version"):
            return _text(self._nvml.nvmlSystemGetDriverVersion())

    def device_count(self) -> int:
        self._require_open()
        with _translated("counting GPUs"):
            return int(self._nvml.nvmlDeviceGetCount())

    def device(self, index: int) -> NvmlGpu:
        self._require_open()
        if index < 0:
            raise GpuNotFoundError(f"GPU index must be >= 0, got {index}")
        with _translated(f"opening GPU {index}", invalid_argument=GpuNotFoundError):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return NvmlGpu(self._nvml, handle, index)

    def devices(self, indices: Sequence[int] | None = None) -> list[NvmlGpu]:
        """The GPUs at ``indices``, or every GPU on the host when ``indices`` is None."""
        chosen = range(self.device_count()) if indices is None else indices
        return [self.device(index) for index in chosen]
