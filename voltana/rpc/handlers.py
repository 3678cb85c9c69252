"""Wrapping the behaviour of a grpc.aio method handler, whatever its streaming kind.

Server interceptors (error mapping, authentication) put code around a servicer method; this
module does the bookkeeping of the four handler kinds once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

Behavior = Callable[..., Any]
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
ServicerContext = grpc.aio.ServicerContext[Any, Any]
# Runs before the servicer method and returns the request (or request iterator) to hand it,
# possibly a wrapped one; raises (or aborts the call) to stop it.
Before = Callable[[Any, ServicerContext], Awaitable[Any]]
# Turns an exception escaping the servicer method into a status (must raise or abort).
OnError = Callable[[BaseException, ServicerContext], Awaitable[None]]


def _unary_response(
    behavior: Behavior, before: Before | None, on_error: OnError | None
) -> Behavior:
    async def call(request: Any, context: ServicerContext) -> Any:
        try:
            if before is not None:
                request = await before(request, context)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except Exception as error:
            if on_error is None:
                raise
            await on_error(error, context)
            raise

    return call


def _streaming_response(
    behavior: Behavior, before: Before | None, on_error: OnError | None
) -> Behavior:
    if not inspect.isasyncgenfunction(behavior):
        # Coroutine handlers that stream through context.write().
        return _unary_response(behavior, before, on_error)

    async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        try:
            if before is not None:
                request = await before(request, context)
            async for response in behavior(request, context):
                yield response
        except Exception as error:
            if on_error is None:
                raise
            await on_error(error, context)
            raise

    return stream


def wrap_handler(
    handler: grpc.RpcMethodHandler[_Request, _Response],
    *,
    before: Before | None = None,
    on_error: OnError | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[_Request, _Response]:
    """The same handler with ``before`` run ahead of its behaviour, ``on_error`` handling what
    escapes it (re-raised when ``on_error`` returns), and optionally another deserializer."""
    deserializer = request_deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_response(handler.unary_unary, before, on_error), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming_response(handler.unary_stream, before, on_error), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_response(handler.stream_unary, before, on_error), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming_response(handler.stream_stream, before, on_error),
            deserializer,
            serializer,
        )
    return handler
