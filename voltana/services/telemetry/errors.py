"""Errors the telemetry store and service raise on purpose.

Each also derives from the cross-service kind (voltana.errors) that gives its gRPC status.
"""

from __future__ import annotations

import grpc

from voltana.errors import InvalidArgumentError, NotFoundError, UnavailableError, VoltanaError


class TelemetryError(VoltanaError):
    """Base class of telemetry errors."""


class InvalidTelemetryError(TelemetryError, InvalidArgumentError):
    """A report carries a value that cannot be true (negative count, unknown phase, ...)."""


class UnknownInstanceError(TelemetryError, NotFoundError):
    """The instance was never registered (or was unregistered)."""


class TelemetryStoreError(TelemetryError, UnavailableError):
    """The backing store (Redis) cannot be reached or failed a command."""


class TelemetryStoreAuthError(TelemetryStoreError):
    """Redis refused telemetry's credentials: no retry heals that, so telemetry stops (the
    command exits with 2) rather than serving NOT_SERVING until someone notices."""


class CorruptTelemetryError(TelemetryError):
    """The backing store holds data this version cannot read (maps to INTERNAL)."""


class TooManyInstancesError(TelemetryError):
    """Registering one more instance would pass TelemetrySettings.max_instances."""


class RateLimitedError(TelemetryError):
    """The caller made more calls of a costly open read than its rate allows."""


# Codes the shared table (voltana.rpc.status) has no kind for.
TELEMETRY_STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    TooManyInstancesError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimitedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
