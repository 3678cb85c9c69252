"""NvmlGpu/NvmlLibrary against ``create_autospec(pynvml)``: the real code path, a fake library.

Autospec checks every call's arity against the real bindings; errors are real ``NVMLError``s
built from real NVML codes.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pynvml
import pytest

from voltana.gpu import (
    GpuDevice,
    GpuError,
    GpuNotFoundError,
    GpuNotSupportedError,
    GpuPermissionError,
    InvalidClockError,
    NvmlLibrary,
    NvmlUnavailableError,
)

pytestmark = pytest.mark.unit

MEMORY_CLOCKS_MHZ = [1593, 810]
A100_SM_CLOCKS_DESCENDING_MHZ = list(range(1410, 209, -15))
HANDLE = object()


def _graphics_clocks(handle: Any, memory_clock_mhz: int) -> list[int]:
    assert handle is HANDLE
    if memory_clock_mhz == 1593:
        return A100_SM_CLOCKS_DESCENDING_MHZ
    return [810, 795, 780]  # the low memory clock allows only low SM clocks


@pytest.fixture
def nvml() -> Any:
    fake = mock.create_autospec(pynvml)
    fake.nvmlDeviceGetCount.return_value = 1
    fake.nvmlDeviceGetHandleByIndex.return_value = HANDLE
    fake.nvmlDeviceGetName.return_value = b"NVIDIA A100-SXM4-80GB"
    fake.nvmlDeviceGetUUID.return_value = "GPU-5f2c0a1e-0000-0000-0000-000000000000"
    fake.nvmlDeviceGetEnforcedPowerLimit.return_value = 400_000
    fake.nvmlDeviceGetSupportedMemoryClocks.return_value = MEMORY_CLOCKS_MHZ
    fake.nvmlDeviceGetSupportedGraphicsClocks.side_effect = _graphics_clocks
    fake.nvmlDeviceGetDefaultApplicationsClock.return_value = 1410
    fake.nvmlDeviceGetClockInfo.return_value = 1410
    fake.nvmlDeviceGetPowerUsage.return_value = 253_500
    fake.nvmlDeviceGetTotalEnergyConsumption.return_value = 123_456_789
    return fake


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def test_library_lifecycle_inits_and_shuts_down_once(nvml: Any) -> None:
    library = NvmlLibrary(nvml)
    nvml.nvmlInit.assert_not_called()  # nothing happens at construction
    with library:
        assert library.is_open
        library.open()  # idempotent
    library.close()
    nvml.nvmlInit.assert_called_once_with()
    nvml.nvmlShutdown.assert_called_once_with()
    assert not library.is_open


def test_device_before_open_is_refused(nvml: Any) -> None:
    with pytest.raises(NvmlUnavailableError, match="open"):
        NvmlLibrary(nvml).device(0)


def test_device_properties_and_supported_clocks(nvml: Any) -> None:
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        assert isinstance(gpu, GpuDevice)
        assert gpu.index == 0
        assert gpu.name == "NVIDIA A100-SXM4-80GB"
        assert gpu.uuid == "GPU-5f2c0a1e-0000-0000-0000-000000000000"
        supported = gpu.supported_sm_clocks_mhz()
        assert supported[0] == 210 and supported[-1] == 1410
        assert list(supported) == sorted(supported)
        assert len(supported) == 81
        assert gpu.default_sm_clock_mhz == 1410
    nvml.nvmlDeviceGetHandleByIndex.assert_called_once_with(0)
    # SM clocks are listed for the top memory clock.
    nvml.nvmlDeviceGetSupportedGraphicsClocks.assert_called_once_with(HANDLE, 1593)
    nvml.nvmlDeviceGetDefaultApplicationsClock.assert_called_once_with(HANDLE, pynvml.NVML_CLOCK_SM)


def test_name_as_str_is_accepted(nvml: Any) -> None:
    nvml.nvmlDeviceGetName.return_value = "NVIDIA H100 80GB HBM3"
    with NvmlLibrary(nvml) as library:
        assert library.device(0).name == "NVIDIA H100 80GB HBM3"


def test_default_clock_falls_back_to_max_when_not_supported(nvml: Any) -> None:
    nvml.nvmlDeviceGetDefaultApplicationsClock.side_effect = _nvml_error(
        pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    with NvmlLibrary(nvml) as library:
        assert library.device(0).default_sm_clock_mhz == 1410


def test_unit_conversions_and_clock_read_back(nvml: Any) -> None:
    nvml.nvmlDeviceGetClockInfo.return_value = 1005
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        assert gpu.power_w() == pytest.approx(253.5)
        assert gpu.energy_j() == pytest.approx(123_456.789)
        assert gpu.power_limit_w() == pytest.approx(400.0)
        assert gpu.sm_clock_mhz() == 1005
    nvml.nvmlDeviceGetClockInfo.assert_called_once_with(HANDLE, pynvml.NVML_CLOCK_SM)
    nvml.nvmlDeviceGetPowerUsage.assert_called_once_with(HANDLE)
    nvml.nvmlDeviceGetTotalEnergyConsumption.assert_called_once_with(HANDLE)


def test_set_and_reset_locked_clocks(nvml: Any) -> None:
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        gpu.set_locked_sm_clock_mhz(1005, 1005)
        gpu.reset_sm_clocks()
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with(HANDLE, 1005, 1005)
    nvml.nvmlDeviceResetGpuLockedClocks.assert_called_once_with(HANDLE)


def test_unsupported_clock_is_refused_before_nvml(nvml: Any) -> None:
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        with pytest.raises(InvalidClockError, match="1006"):
            gpu.set_locked_sm_clock_mhz(1006, 1006)
    nvml.nvmlDeviceSetGpuLockedClocks.assert_not_called()


def test_permission_error_is_typed(nvml: Any) -> None:
    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = _nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        with pytest.raises(GpuPermissionError, match="CAP_SYS_ADMIN") as caught:
            gpu.set_locked_sm_clock_mhz(1005, 1005)
    assert caught.value.nvml_code == pynvml.NVML_ERROR_NO_PERMISSION
    assert isinstance(caught.value.__cause__, pynvml.NVMLError_NoPermission)


def test_invalid_argument_on_set_is_an_invalid_clock(nvml: Any) -> None:
    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = _nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    with NvmlLibrary(nvml) as library, pytest.raises(InvalidClockError):
        library.device(0).set_locked_sm_clock_mhz(1005, 1005)


def test_not_supported_is_typed(nvml: Any) -> None:
    nvml.nvmlDeviceResetGpuLockedClocks.side_effect = _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    nvml.nvmlDeviceGetTotalEnergyConsumption.side_effect = _nvml_error(
        pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        with pytest.raises(GpuNotSupportedError):
            gpu.reset_sm_clocks()
        with pytest.raises(GpuNotSupportedError):
            gpu.energy_j()


def test_missing_supported_clocks_is_not_supported(nvml: Any) -> None:
    nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = []
    with NvmlLibrary(nvml) as library, pytest.raises(GpuNotSupportedError):
        library.device(0)


def test_library_not_found_is_unavailable(nvml: Any) -> None:
    nvml.nvmlInit.side_effect = _nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    library = NvmlLibrary(nvml)
    with pytest.raises(NvmlUnavailableError, match="driver") as caught:
        library.open()
    assert isinstance(caught.value.__cause__, pynvml.NVMLError_LibraryNotFound)
    assert not library.is_open
    library.close()
    nvml.nvmlShutdown.assert_not_called()


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, GpuNotFoundError),  # index out of range
        (pynvml.NVML_ERROR_NOT_FOUND, GpuNotFoundError),
        (pynvml.NVML_ERROR_GPU_IS_LOST, GpuNotFoundError),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, NvmlUnavailableError),
    ],
)
def test_opening_a_device_maps_errors(nvml: Any, code: int, error_type: type[GpuError]) -> None:
    nvml.nvmlDeviceGetHandleByIndex.side_effect = _nvml_error(code)
    with NvmlLibrary(nvml) as library, pytest.raises(error_type):
        library.device(7)


def test_unknown_code_is_a_plain_gpu_error(nvml: Any) -> None:
    nvml.nvmlDeviceGetPowerUsage.side_effect = _nvml_error(pynvml.NVML_ERROR_UNKNOWN)
    with NvmlLibrary(nvml) as library:
        gpu = library.device(0)
        with pytest.raises(GpuError) as caught:
            gpu.power_w()
    assert type(caught.value) is GpuError
    assert caught.value.nvml_code == pynvml.NVML_ERROR_UNKNOWN


def test_negative_index_is_not_found(nvml: Any) -> None:
    with NvmlLibrary(nvml) as library, pytest.raises(GpuNotFoundError):
        library.device(-1)
    nvml.nvmlDeviceGetHandleByIndex.assert_not_called()


def test_devices_lists_all_or_chosen(nvml: Any) -> None:
    nvml.nvmlDeviceGetCount.return_value = 2
    with NvmlLibrary(nvml) as library:
        assert [gpu.index for gpu in library.devices()] == [0, 1]
        assert [gpu.index for gpu in library.devices([1])] == [1]


def test_real_pynvml_without_a_gpu_is_unavailable() -> None:
    library = NvmlLibrary()
    try:
        library.open()
    except NvmlUnavailableError:
        return
    library.close()
    pytest.skip("a real NVML library is present on this host")
