"""HTTP tracing with opentelemetry-instrumentation-aiohttp-client and -aiohttp-server.

Client: ``client_trace_configs`` for an ``aiohttp.ClientSession``: one CLIENT span per request
with the W3C ``traceparent`` injected into its headers, with both the stable HTTP semantic
conventions (``http.request.method``, ``url.full``, ``server.address``, ``server.port``,
``http.response.status_code``) and the older ``http.*`` ones that many backends still read.

Server: ``server_middlewares`` for an ``aiohttp.web.Application``: the instrumentation's SERVER
span (named ``POST /generate``, continuing the caller's ``traceparent``), plus ``server.address``,
``server.port`` and ``client.address``. Polled endpoints (``/health``, ``/metrics``, load
probes) are traced only when the caller sends a ``traceparent``: as roots every few hundred
milliseconds they would bury the request traces.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.aiohttp_server import (
    AioHttpServerInstrumentor,
    create_aiohttp_middleware,
)

TRACEPARENT = "traceparent"
POLLED_PATHS = frozenset(
    {"/health", "/health_generate", "/metrics", "/get_load", "/get_server_info", "/server_info"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_trace_configs(
    tracer_provider: trace.TracerProvider | None,
) -> list[aiohttp.TraceConfig]:
    """Trace configs for a ClientSession whose requests should be traced (and carry context)."""
    return [
        create_trace_config(
            tracer_provider=tracer_provider, sem_conv_opt_in_mode=_StabilityMode.HTTP_DUP
        )
    ]


@functools.cache
def _prepare_server_instrumentation() -> None:
    """The instrumentation's standalone middleware reads settings (excluded URLs, semantic
    convention mode, its request counter) that only ``instrument()`` initialises; take those,
    then put ``web.Application`` back, so only the applications given the middleware (with
    their own tracer provider) are traced. Once per process, on first use."""
    instrumentor = AioHttpServerInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        with warnings.catch_warnings():
            # It subclasses web.Application, which aiohttp discourages; we never use that class.
            warnings.simplefilter("ignore", DeprecationWarning)
            instrumentor.instrument()
        instrumentor.uninstrument()


def server_middlewares(tracer_provider: trace.TracerProvider | None) -> list[Middleware]:
    """Middlewares (outermost first) that trace an aiohttp application's requests."""
    _prepare_server_instrumentation()
    instrumented = create_aiohttp_middleware(tracer_provider=tracer_provider)

    @web.middleware
    async def skip_polls(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in POLLED_PATHS and TRACEPARENT not in request.headers:
            return await handler(request)
        return await instrumented(request, handler)

    @web.middleware
    async def enrich(request: web.Request, handler: Handler) -> web.StreamResponse:
        span = trace.get_current_span()
        if span.is_recording():
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            if isinstance(sockname, tuple) and len(sockname) >= 2:
                span.set_attribute("server.address", str(sockname[0]))
                span.set_attribute("server.port", int(sockname[1]))
            if request.remote:
                span.set_attribute("client.address", request.remote)
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", request.path)
        return await handler(request)

    return [skip_polls, enrich]
