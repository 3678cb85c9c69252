"""Map Voltana errors to gRPC status codes and back.

Servers: raise a VoltanaError subclass in a servicer; ErrorStatusInterceptor (installed by
start_grpc_server) turns it into the matching status code with the error's message.
Clients: ``error_from_rpc`` turns a failed call back into the matching VoltanaError.
Status messages are cut at MAX_STATUS_DETAILS_CHARS.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from voltana.errors import (
    AlreadyExistsError,
    ConfigError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    UnauthenticatedError,
    UnavailableError,
    VoltanaError,
)
from voltana.rpc.handlers import ServicerContext, wrap_handler
from voltana.text import truncate

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# Looked up along the error's MRO, so subclasses inherit their base's code.
DEFAULT_STATUS_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    # A downstream failure we cannot classify: "error from another address space".
    RemoteError: grpc.StatusCode.UNKNOWN,
    VoltanaError: grpc.StatusCode.INTERNAL,
}

# Client side: codes that have a specific error class (the rest become RemoteError).
_ERRORS_BY_CODE: Mapping[grpc.StatusCode, Callable[[str], VoltanaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def status_code_for(
    error: BaseException,
    extra_codes: Mapping[type[BaseException], grpc.StatusCode] | None = None,
) -> grpc.StatusCode | None:
    """The status code for ``error``, or None when it is not a mapped (Voltana) error.

    ``extra_codes`` take precedence over the defaults at every level of the MRO, so a service
    can map its own error classes (or remap a default) without touching this module.
    """
    for cls in type(error).__mro__:
        if extra_codes is not None and cls in extra_codes:
            return extra_codes[cls]
        if cls in DEFAULT_STATUS_CODES:
            return DEFAULT_STATUS_CODES[cls]
    return None


# Trailing metadata of every error status a Voltana server sends: "1" when the request may go
# to another replica unchanged (error.retry_elsewhere), else "0". A failed call without it
# never reached a Voltana handler (connection refused or lost, the server stopping).
RETRY_ELSEWHERE_KEY = "voltana-retry-elsewhere"


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any],
    error: VoltanaError,
    extra_codes: Mapping[type[BaseException], grpc.StatusCode] | None = None,
) -> NoReturn:
    """End the RPC with the status code and message of ``error`` (never returns)."""
    code = status_code_for(error, extra_codes) or grpc.StatusCode.INTERNAL
    details = truncate(str(error) or type(error).__name__, MAX_STATUS_DETAILS_CHARS)
    retry = "1" if error.retry_elsewhere else "0"
    await context.abort(code, details, trailing_metadata=((RETRY_ELSEWHERE_KEY, retry),))
    raise AssertionError("context.abort returned")  # abort always raises


def error_from_rpc(error: grpc.RpcError) -> VoltanaError:
    """The VoltanaError a failed call stands for (client side).

    Works for both grpc.aio.AioRpcError and the sync channel's errors (which carry code() and
    details()). The message is the server's details string.
    """
    code = error.code()
    details = error.details() or ""
    make_error = _ERRORS_BY_CODE.get(code)
    if make_error is not None:
        return make_error(details)
    return RemoteError(code.name, details)


_LOG = logging.getLogger(__name__)
# Longest status message sent back; longer ones are cut (they may quote what a caller sent).
MAX_STATUS_DETAILS_CHARS = 2000


class UndecodableRequestError(InvalidArgumentError):
    """The request bytes are not a valid message of the method's request type."""


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """Stands in for a request whose bytes did not parse (so grpc never sees the exception)."""

    error: str
    size: int


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError and whatever a custom deserializer raises
            return _Undecodable(f"{type(error).__name__}: {error}", len(data))

    return deserialize


def _refuse_undecodable(request: _Undecodable, context: ServicerContext) -> NoReturn:
    # One line, no traceback: garbage on the wire is the caller's problem, not ours.
    _LOG.warning(
        "refused an undecodable request (%d bytes) from %s: %s",
        request.size,
        context.peer(),
        truncate(request.error, 200),
    )
    raise UndecodableRequestError(f"the request does not decode: {truncate(request.error, 200)}")


async def _checked_stream(
    requests: AsyncIterator[Any], context: ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            _refuse_undecodable(request, context)
        yield request


class ErrorStatusInterceptor(grpc.aio.ServerInterceptor):
    """Turns VoltanaErrors escaping a servicer method into gRPC status codes, and requests
    whose bytes do not decode into INVALID_ARGUMENT (one warning line, no traceback).

    Other exceptions pass through unchanged (grpc reports them as UNKNOWN and logs them).
    """

    def __init__(
        self, extra_codes: Mapping[type[BaseException], grpc.StatusCode] | None = None
    ) -> None:
        self._extra_codes = dict(extra_codes or {})

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: let grpc answer UNIMPLEMENTED
            return None
        return wrap_handler(
            handler,
            before=self._check_request,
            on_error=self._abort_on_voltana_error,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
        )

    @staticmethod
    async def _check_request(request: Any, context: ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            _refuse_undecodable(request, context)
        if hasattr(request, "__aiter__"):  # client-streaming: check each message as it comes
            return _checked_stream(request, context)
        return request

    async def _abort_on_voltana_error(self, error: BaseException, context: ServicerContext) -> None:
        if isinstance(error, VoltanaError):
            await abort_with_error(context, error, self._extra_codes)
