"""Typed GPU errors, so callers (the node agent, the CLI) never see raw NVML exceptions.

Each also derives from the cross-service kind (voltana.errors) that fixes its gRPC status code.
"""

from __future__ import annotations

from voltana.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    VoltanaError,
)


class GpuError(VoltanaError):
    """A GPU query or control call failed. ``nvml_code`` is set when NVML reported it."""

    def __init__(self, message: str, nvml_code: int | None = None) -> None:
        super().__init__(message)
        self.nvml_code = nvml_code


class GpuPermissionError(GpuError, PermissionDeniedError):
    """Changing clocks needs root or CAP_SYS_ADMIN (NVML_ERROR_NO_PERMISSION)."""


class GpuNotSupportedError(GpuError, FailedPreconditionError):
    """This GPU or driver does not support the call (e.g. locked clocks on a consumer card)."""


class GpuNotFoundError(GpuError, NotFoundError):
    """No GPU with that index, or the GPU fell off the bus."""


class NvmlUnavailableError(GpuError, UnavailableError):
    """NVML cannot be used at all: no driver or no libnvidia-ml on this host."""


class InvalidClockError(GpuError, InvalidArgumentError):
    """A requested clock is not positive, not a number, or not one the GPU supports."""
