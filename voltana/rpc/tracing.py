"""gRPC tracing with opentelemetry-instrumentation-grpc, plus what it leaves out.

The instrumentation's interceptors make the CLIENT/SERVER span pair of every call, propagate the
W3C ``traceparent`` in the metadata and set ``rpc.system``, ``rpc.service``, ``rpc.method`` and
``rpc.grpc.status_code``. Two small interceptors of ours run inside its spans and

- name them ``voltana.v1.RouterService/Generate`` (the semantic conventions' ``$service/$method``;
  the instrumentation keeps gRPC's leading slash),
- add ``server.address``/``server.port`` (and on server spans ``client.address``),

and the server interceptor starts its spans with today's attribute names (``client.port`` and
``user_agent.original``, no older ``net.peer.*``), so every span follows one convention.

Background calls (telemetry sample streams and watches, completion reports, lease renewals,
health checks) are traced only when they continue a trace: they run on timers, and as roots they
would bury the request and clock-change traces (a lease renewal per GPU every second).

A server whose tracer provider records nothing (none given and no SDK provider installed
globally, the ``none`` exporter) skips the instrumentation: a call that brings a
``traceparent`` just runs in that context, so what it calls (engines, the controller) still
continues the caller's trace, and a call without one costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor

from voltana.rpc.handlers import wrap_handler
from voltana.rpc.names import NODE_AGENT_SERVICE, TELEMETRY_SERVICE

# Never traced: health and reflection (also their streaming handlers write through the
# context, which the instrumentation's streaming wrapper cannot drive).
_UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")
# Traced only inside a trace someone else started.
_BACKGROUND_SERVICES = (TELEMETRY_SERVICE,)
_BACKGROUND_METHODS = frozenset({f"/{NODE_AGENT_SERVICE}/RenewLease"})
TRACEPARENT = "traceparent"
# Instrumentation scope of the gRPC spans (the instrumentation's own, also for our server start).
_GRPC_INSTRUMENTATION = "opentelemetry.instrumentation.grpc"

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Behavior = Callable[..., Any]


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def _service_of(method: str) -> str:
    return method.lstrip("/").partition("/")[0]


def span_name(method: str | bytes) -> str:
    """``/pkg.Service/Method`` as the semantic conventions name the span: ``pkg.Service/Method``."""
    return _method_name(method).lstrip("/")


def is_background(method: str | bytes) -> bool:
    name = _method_name(method)
    return name in _BACKGROUND_METHODS or _service_of(name).startswith(_BACKGROUND_SERVICES)


def _untraced(method: str) -> bool:
    return _service_of(method).startswith(_UNTRACED_SERVICES)


def _server_filter(details: grpc.HandlerCallDetails) -> bool:
    method = _method_name(details.method)
    if _untraced(method):
        return False
    if not is_background(method):
        return True
    metadata = details.invocation_metadata or ()
    return any(item[0] == TRACEPARENT for item in metadata)


def _client_filter(details: grpc.aio.ClientCallDetails) -> bool:
    method = _method_name(details.method)
    if _untraced(method):
        return False
    return not is_background(method) or trace.get_current_span().get_span_context().is_valid


def _split(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, None
    return host.strip("[]"), int(port) if port.isdigit() else None


def _peer_address(peer: str) -> tuple[str, int | None] | None:
    """(host, port) of a gRPC peer string such as ``ipv4:127.0.0.1:57284`` or
    ``ipv6:[::1]:1``; None for a Unix socket or an empty peer."""
    if not peer or peer.startswith("unix:"):
        return None
    host, port = _split(peer.split(",")[0].partition(":")[2])
    return (host, port) if host else None


def peer_host(peer: str) -> str | None:
    """The host of a gRPC peer string such as ``ipv4:127.0.0.1:57284`` or ``ipv6:[::1]:1``."""
    address = _peer_address(peer)
    return None if address is None else address[0]


class _StableServerInterceptor(OpenTelemetryAioServerInterceptor):
    """The instrumentation's server interceptor, its spans started with today's semantic
    conventions: the instrumentation names the caller ``net.peer.ip``/``net.peer.port``/
    ``net.peer.name`` (older conventions); these carry ``client.address``/``client.port``."""

    def _start_span(
        self,
        handler_call_details: grpc.HandlerCallDetails,
        context: grpc.aio.ServicerContext[Any, Any],
        set_status_on_exception: bool = False,
    ) -> Any:
        method = _method_name(handler_call_details.method)
        service, _, rpc_method = method.lstrip("/").partition("/")
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc",
            "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
            "rpc.service": service,
            "rpc.method": rpc_method,
        }
        user_agent = dict(context.invocation_metadata() or ()).get("user-agent")
        if isinstance(user_agent, str):
            attributes["user_agent.original"] = user_agent
        client = _peer_address(context.peer())
        if client is not None:
            attributes["client.address"] = client[0]
            if client[1] is not None:
                attributes["client.port"] = client[1]
        return self._tracer.start_as_current_span(
            name=span_name(method),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
            set_status_on_exception=set_status_on_exception,
        )


class _ServerSpanEnricher(grpc.aio.ServerInterceptor):
    """Adds ``server.address``/``server.port`` to the server span (the port once bound)."""

    def __init__(self, host: str, port: int | None) -> None:
        self._host = host
        self._port = port

    def set_port(self, port: int) -> None:
        self._port = port

    def _enrich(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        span.update_name(span_name(method))
        span.set_attribute("server.address", self._host)
        if self._port is not None:
            span.set_attribute("server.port", self._port)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        handler = await continuation(handler_call_details)
        method = _method_name(handler_call_details.method)
        if handler is None or _untraced(method):
            return handler

        async def enrich(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._enrich(method, context)
            return request

        return wrap_handler(handler, before=enrich)


class _ClientSpanEnricher:
    """Renames the instrumentation's client span and adds ``server.address``/``server.port``.

    grpc.aio files a channel interceptor under the first call type it implements, so there is
    one subclass per call type.
    """

    def __init__(self, target: str) -> None:
        self._host, self._port = _split(target)

    def _enrich(self, details: grpc.aio.ClientCallDetails) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        if getattr(span, "kind", None) is not trace.SpanKind.CLIENT:
            return  # untraced call: the current span is the caller's, leave it alone
        span.update_name(span_name(details.method))
        span.set_attribute("server.address", self._host)
        if self._port is not None:
            span.set_attribute("server.port", self._port)


class _UnaryUnaryEnricher(_ClientSpanEnricher, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self._enrich(client_call_details)
        return await continuation(client_call_details, request)


class _UnaryStreamEnricher(_ClientSpanEnricher, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self._enrich(client_call_details)
        return await continuation(client_call_details, request)


class _StreamUnaryEnricher(_ClientSpanEnricher, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        self._enrich(client_call_details)
        return await continuation(client_call_details, request_iterator)


class _StreamStreamEnricher(_ClientSpanEnricher, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        self._enrich(client_call_details)
        return await continuation(client_call_details, request_iterator)


def global_tracer_provider() -> trace.TracerProvider:
    """``trace.get_tracer_provider()`` without its environment lookup on every call (it looks
    for ``OTEL_PYTHON_TRACER_PROVIDER`` until a provider is installed): the API's global as it
    is now, or the proxy while there is none."""
    provider = getattr(trace, "_TRACER_PROVIDER", None)
    if isinstance(provider, trace.TracerProvider):
        return provider
    if _PROVIDER_FROM_ENV or not hasattr(trace, "_TRACER_PROVIDER"):
        return trace.get_tracer_provider()
    return _PROXY_PROVIDER


_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_PROXY_PROVIDER = trace.ProxyTracerProvider()


def records(tracer_provider: trace.TracerProvider | None) -> bool:
    """Whether spans from ``tracer_provider`` (None: the global one, as it is now) are real:
    the API's no-op and proxy providers (nothing installed) record nothing."""
    provider = tracer_provider or global_tracer_provider()
    return not isinstance(provider, (trace.NoOpTracerProvider, trace.ProxyTracerProvider))


class _WhenRecording(grpc.aio.ServerInterceptor):
    """``traced`` while the tracer provider records; otherwise the call only continues the
    caller's context (a ``traceparent`` in its metadata), or just goes on."""

    def __init__(
        self,
        traced: grpc.aio.ServerInterceptor,
        tracer_provider: trace.TracerProvider | None,
        *,
        continue_context: bool,
    ) -> None:
        self._traced = traced
        self._provider = tracer_provider
        # A given provider stays what it is; the global one may be installed later.
        self._fixed = records(tracer_provider) if tracer_provider is not None else None
        self._continue_context = continue_context

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_Request, _Response] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        recording = self._fixed if self._fixed is not None else records(None)
        if recording:
            return await self._traced.intercept_service(continuation, handler_call_details)
        if self._continue_context:
            metadata = handler_call_details.invocation_metadata or ()
            if any(item[0] == TRACEPARENT for item in metadata):
                # grpc.aio serves each call in a task of its own, interceptors included: the
                # context attached here is the call's, and ends with its task.
                otel_context.attach(propagate.extract({key: value for key, value in metadata}))
        return await continuation(handler_call_details)


class ServerTracing:
    """The interceptors of one traced gRPC server. The instrumentation's goes first (outermost),
    so a status code set by an inner interceptor (error mapping) lands on its span; ours goes
    last. Call ``bound(port)`` once the server bound its port. Both stand aside while the
    tracer provider records nothing (see the module docstring)."""

    def __init__(self, listen_address: str, tracer_provider: trace.TracerProvider | None) -> None:
        host, port = _split(listen_address)
        self._enricher = _ServerSpanEnricher(host or "0.0.0.0", port or None)
        tracer = trace.get_tracer(_GRPC_INSTRUMENTATION, tracer_provider=tracer_provider)
        self.outer: grpc.aio.ServerInterceptor = _WhenRecording(
            _StableServerInterceptor(tracer, filter_=_server_filter),
            tracer_provider,
            continue_context=True,
        )
        self.inner: grpc.aio.ServerInterceptor = _WhenRecording(
            self._enricher, tracer_provider, continue_context=False
        )

    def bound(self, port: int) -> None:
        self._enricher.set_port(port)


def client_interceptors(
    target: str, tracer_provider: trace.TracerProvider | None
) -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel to ``target`` ("host:port"): the instrumentation's (client
    span, ``traceparent`` injection) around our enricher."""
    instrumented: list[grpc.aio.ClientInterceptor] = list(
        aio_client_interceptors(tracer_provider=tracer_provider, filter_=_client_filter)
    )
    enrichers: list[grpc.aio.ClientInterceptor] = [
        _UnaryUnaryEnricher(target),
        _UnaryStreamEnricher(target),
        _StreamUnaryEnricher(target),
        _StreamStreamEnricher(target),
    ]
    return [*instrumented, *enrichers]
