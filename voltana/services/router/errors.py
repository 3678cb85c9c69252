"""Errors the router raises on purpose, each deriving from the cross-service kind
(voltana.errors) that gives its gRPC status."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from voltana.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    UnavailableError,
    VoltanaError,
)


class RouterError(VoltanaError):
    """Base class of router errors. ``engine_url``: the engine call that failed, if any."""

    engine_url: str = ""


class InvalidGenerateRequestError(RouterError, InvalidArgumentError):
    """The request is malformed or over a limit (INVALID_ARGUMENT)."""


class NoInstanceAvailableError(RouterError, UnavailableError):
    """No routable prefill or decode instance, or no snapshot from telemetry yet (UNAVAILABLE)."""


class EngineRejectedError(RouterError, InvalidArgumentError):
    """The engine refused the request as invalid (HTTP 4xx)."""


class EngineUnreachableError(RouterError, UnavailableError):
    """The chosen engine cannot be reached or dropped the request."""


class EngineDeadlineError(RouterError, DeadlineExceededError):
    """The engine did not finish within the request's deadline."""


class EngineAbortedError(RouterError, UnavailableError):
    """The engine ended the request without finishing it (finish reason "abort", e.g. it is
    shutting down): an error status, never an OK stream that ends early."""


class RouterShuttingDownError(RouterError, UnavailableError):
    """The router is stopping: new requests are refused and those still running when the
    drain time is over are ended. Clients may send the request to another router (the SDK
    does when nothing of it was streamed yet)."""

    retry_elsewhere = True


class EngineFailedError(RouterError):
    """The engine failed in a way no other class describes (HTTP 5xx, a broken stream)."""


# Extra status mappings for start_grpc_server: an engine's own failure is "an error from
# another address space" (UNKNOWN), not a bug of the router (INTERNAL).
ROUTER_STATUS_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    EngineFailedError: grpc.StatusCode.UNKNOWN,
}
