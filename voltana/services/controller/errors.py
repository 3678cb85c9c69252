"""Errors the controller raises on purpose; each carries its gRPC status through its base."""

from __future__ import annotations

from voltana.errors import FailedPreconditionError, InvalidArgumentError, VoltanaError


class ControllerError(VoltanaError):
    """Base class of controller errors."""


class InvalidSloError(ControllerError, InvalidArgumentError):
    """An SLO target is missing, not finite, or not positive."""


class ControllerNotRunningError(ControllerError, FailedPreconditionError):
    """The controller is not started (or already stopped)."""
