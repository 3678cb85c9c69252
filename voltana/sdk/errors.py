"""Errors the client SDK raises; each also derives from the matching voltana.errors kind."""

from __future__ import annotations

import grpc

from voltana import errors
from voltana.rpc import error_from_rpc


class VoltanaClientError(errors.VoltanaError):
    """Base class of SDK errors. ``code`` is the gRPC status when the router answered one."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        self.message = message
        self.code = code
        super().__init__(message)


class InvalidRequestError(VoltanaClientError, errors.InvalidArgumentError):
    """The router (or the engine behind it) refused the request as invalid."""


class UnavailableError(VoltanaClientError, errors.UnavailableError):
    """The router, or every instance of a phase behind it, cannot serve now; retry later."""


class DeadlineExceededError(VoltanaClientError, errors.DeadlineExceededError):
    """The request did not finish within its timeout."""


class AuthenticationError(VoltanaClientError, errors.PermissionDeniedError):
    """The router requires an API key and none (UNAUTHENTICATED) or a wrong one
    (PERMISSION_DENIED) was sent."""


class RequestCancelledError(VoltanaClientError):
    """The call was cancelled (by this client or the server shutting down)."""


class ServerError(VoltanaClientError):
    """Any other failure the router reported (INTERNAL, UNKNOWN, ...)."""


_BY_KIND: tuple[tuple[type[errors.VoltanaError], type[VoltanaClientError]], ...] = (
    (errors.InvalidArgumentError, InvalidRequestError),
    (errors.UnavailableError, UnavailableError),
    (errors.DeadlineExceededError, DeadlineExceededError),
    (errors.UnauthenticatedError, AuthenticationError),
    (errors.PermissionDeniedError, AuthenticationError),
)


def client_error_from_rpc(error: grpc.RpcError) -> VoltanaClientError:
    """The SDK error a failed gRPC call stands for (message = the router's details)."""
    code = error.code()
    if code == grpc.StatusCode.CANCELLED:
        return RequestCancelledError(error.details() or "the call was cancelled", code)
    kind = error_from_rpc(error)
    message = error.details() or code.name
    for base, sdk_class in _BY_KIND:
        if isinstance(kind, base):
            return sdk_class(message, code)
    return ServerError(f"{code.name}: {message}", code)
