"""Map Voltana errors to gRPC status codes and back.

Servers: raise a VoltanaError subclass in a servicer; ErrorStatusInterceptor (installed by
start_grpc_server) turns it into the matching status code with the error's message.
Clients: ``error_from_rpc`` turns a failed call back into the matching VoltanaError.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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
    UnavailableError,
    VoltanaError,
)

# Looked up along the error's MRO, so subclasses inherit their base's code.
DEFAULT_STATUS_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
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


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any],
    error: VoltanaError,
    extra_codes: Mapping[type[BaseException], grpc.StatusCode] | None = None,
) -> NoReturn:
    """End the RPC with the status code and message of ``error`` (never returns)."""
    code = status_code_for(error, extra_codes) or grpc.StatusCode.INTERNAL
    await context.abort(code, str(error) or type(error).__name__)
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


_Behavior = Callable[..., Any]
BehaviorWrapper = Callable[[_Behavior], _Behavior]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def rewrap_handler(
    handler: grpc.RpcMethodHandler[_Request, _Response],
    wrap_unary_response: BehaviorWrapper,
    wrap_streaming_response: BehaviorWrapper,
) -> grpc.RpcMethodHandler[_Request, _Response]:
    """``handler`` with its behavior wrapped: by ``wrap_unary_response`` when it answers one
    message, by ``wrap_streaming_response`` when it streams (for server interceptors)."""
    deserializer = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary_response(handler.unary_unary), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap_streaming_response(handler.unary_stream), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary_response(handler.stream_unary), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            wrap_streaming_response(handler.stream_stream), deserializer, serializer
        )
    return handler


class ErrorStatusInterceptor(grpc.aio.ServerInterceptor):
    """Turns VoltanaErrors escaping a servicer method into gRPC status codes.

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
        return self._wrap_handler(handler)

    def _wrap_handler(
        self, handler: grpc.RpcMethodHandler[_Request, _Response]
    ) -> grpc.RpcMethodHandler[_Request, _Response]:
        return rewrap_handler(handler, self._wrap_unary_response, self._wrap_streaming_response)

    def _wrap_unary_response(self, behavior: _Behavior) -> _Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except VoltanaError as error:
                await abort_with_error(context, error, self._extra_codes)

        return call

    def _wrap_streaming_response(self, behavior: _Behavior) -> _Behavior:
        if not inspect.isasyncgenfunction(behavior):
            # Coroutine handlers that stream through context.write().
            return self._wrap_unary_response(behavior)

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except VoltanaError as error:
                await abort_with_error(context, error, self._extra_codes)

        return stream
